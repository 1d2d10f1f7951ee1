"""The CLI's answer to each failure of docs/failures.md: one sentence on stderr, exit code 2 for bad
input and 1 for failures, never a traceback. Run in-process against real servers and files."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from core.access.policy import cannot_listen
from core.cli import main
from tests.fixtures.hub_server import HubServer
from tests.fixtures.tiny_models import install_ready


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, captured.err


def test_bad_input_exits_2_with_a_sentence(capsys: pytest.CaptureFixture[str], hub: HubServer) -> None:
    code, err = run(capsys, "download", "no-such-model")
    assert (
        code == 2 and "No model 'no-such-model' in the catalog (it has qwen2.5-0.5b, tinyllama-1.1b)." in err
    )
    code, err = run(capsys, "chat", "x" * 100_000, "--prompt", "hi")
    assert code == 2 and f"No model '{'x' * 100}' in the catalog" in err and len(err) < 400  # echoed bounded
    code, err = run(capsys, "chat", "qwen2.5-0.5b", "--prompt", "  ")
    assert code == 2 and "The message is empty." in err  # said before anything is looked up or loaded

    code, err = run(capsys, "download", "org/name.", "--endpoint", hub.url)
    assert code == 2 and "is not a Hugging Face repository id" in err
    assert hub.requests() == []

    code, err = run(capsys, "download", "org/missing", "--endpoint", hub.url)
    assert code == 2 and "org/missing" in err and "not found" in err

    code, err = run(capsys, "verify", "qwen2.5-0.5b")
    assert code == 2 and "is not downloaded" in err


def test_failures_exit_1_with_a_sentence(
    capsys: pytest.CaptureFixture[str], hub: HubServer, tiny_models: dict[str, Path]
) -> None:
    code, err = run(capsys, "download", "org/model", "--endpoint", "http://127.0.0.1:9")
    assert code == 1 and "Could not get the file list of org/model: cannot connect" in err

    hub.add_repo(
        "org/hostile",
        tiny_models["qwen2"],
        tamper=lambda siblings: [*siblings, {"rfilename": "../../escape.txt", "size": 1}],
    )
    code, err = run(capsys, "download", "org/hostile", "--endpoint", hub.url)
    assert code == 1 and "'../../escape.txt'" in err and hub.url in err
    assert hub.requests("GET", "/resolve/") == []


def test_an_unwritable_models_folder_exits_1(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("LOCALLLM_MODELS_DIR", str(blocker / "models"))
    code, err = run(capsys, "download", "qwen2.5-0.5b", "--endpoint", "http://127.0.0.1:9")
    assert code == 1 and "is not writable" in err


@pytest.mark.sqlite_only
def test_a_damaged_database_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    path = Path(os.environ["LOCALLLM_DB_URL"].removeprefix("sqlite:///"))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"this is not a database" * 100)
    code, err = run(capsys, "models")
    assert code == 1 and "Cannot open the database" in err


@pytest.mark.parametrize(
    ("url", "sentence"),
    [
        ("not a url", "The database URL (LOCALLLM_DB_URL) is not one SQLAlchemy can read; one looks like"),
        (  # no MySQL driver is installed: what a user who has not installed one sees
            "mysql://me:s3cret-pw@127.0.0.1:1/chats",
            "Cannot open the database mysql://me:***@127.0.0.1:1/chats: its driver (MySQLdb) is not "
            "installed in this app's environment; install it there with pip",
        ),
        (  # Heroku's and old SQLAlchemy's spelling: "Can't load plugin: sqlalchemy.dialects:postgres" before
            "postgres://me:s3cret-pw@127.0.0.1:1/chats",
            "SQLAlchemy knows no database called 'postgres' (sqlite, postgresql, mysql, mariadb, ...; "
            "PostgreSQL's is written postgresql://, not postgres://).",
        ),
    ],
)
def test_a_database_url_that_cannot_be_used_exits_1(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, url: str, sentence: str
) -> None:
    monkeypatch.setenv("LOCALLLM_DB_URL", url)
    code, err = run(capsys, "models")
    assert code == 1 and sentence in err and "s3cret" not in err, err


@pytest.mark.parametrize(
    ("variable", "value", "said"),
    [
        ("LOCALLLM_PARALLEL", "abc", "(LOCALLLM_PARALLEL) is not valid: 'abc' is not a number of replies."),
        (
            "HF_ENDPOINT",
            "mirror.example",
            "(HF_ENDPOINT, LOCALLLM_MIRRORS) is not valid: 'mirror.example' is",
        ),
    ],
)
def test_a_setting_the_environment_gives_wrong_is_named(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, variable: str, value: str, said: str
) -> None:
    monkeypatch.setenv(variable, value)
    code, err = run(capsys, "settings", "list")
    assert code == 2 and said in err and "Fix or unset it" in err, err


def test_serve_where_it_cannot_listen_says_why_before_it_starts(capsys: pytest.CaptureFixture[str]) -> None:
    # uvicorn printed "ERROR: [Errno 98] error while attempting to bind …" after our "API at" line, exit 3.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        code, err = run(capsys, "serve", "--port", port)
        assert code == 1 and f"error: port {port} is in use" in err and "choose another with --port" in err
    # 198.51.100.0/24 is for documentation: never an address of this machine (no name to look up either)
    code, err = run(capsys, "serve", "--host", "198.51.100.77", "--port", port)
    assert code == 1 and "cannot listen on 198.51.100.77" in err and "--host takes an address of this" in err


def test_one_address_of_a_name_that_binds_is_enough(monkeypatch: pytest.MonkeyPatch) -> None:
    # Where IPv6 is off, "localhost" may still resolve to ::1 as well: a documentation IPv6 address stands
    # for it (the resolver is replaced: this machine's localhost binds either way).
    unbindable = (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("2001:db8::1", 8999, 0, 0))
    bindable = (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", 0))
    monkeypatch.setattr(socket, "getaddrinfo", lambda *_args, **_kwargs: [unbindable, bindable])
    assert cannot_listen("localhost", 8999) is None
    monkeypatch.setattr(socket, "getaddrinfo", lambda *_args, **_kwargs: [unbindable])
    assert cannot_listen("localhost", 8999) is not None


def test_a_chat_message_longer_than_the_context_gets_the_numbers(
    capsys: pytest.CaptureFixture[str], tiny_models: dict[str, Path]
) -> None:
    install_ready(Path(os.environ["LOCALLLM_MODELS_DIR"]), "qwen2.5-0.5b", tiny_models["qwen2"])
    code, err = run(capsys, "chat", "qwen2.5-0.5b", "--prompt", "word " * 20_000, "--max-new-tokens", "8")
    assert code == 2
    assert "too long for this model's context" in err and "504 available" in err
