"""One owner of the saved settings: the dashboard, every CLI command and `core serve` read the same values
(saved, else the environment, else the default), checked the same way wherever they are set."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx2
import pytest

from core.cli import main
from core.errors import ConfigError
from core.preferences import Preferences
from core.settings import PROJECT_ROOT
from core.storage.db import Database
from tests.fixtures.hub_server import HubServer
from tests.fixtures.serving import free_port, wait_for_port


def test_a_value_is_the_saved_one_else_the_environments_else_the_default(database: Database) -> None:
    bare = Preferences(database, env={})
    assert bare.value("quantization").value == "int4" and bare.value("quantization").source == "default"
    assert bare.get("endpoints") == ["https://huggingface.co", "https://hf-mirror.com"]

    env = {
        "LOCALLLM_QUANTIZATION": "int8",
        "HF_ENDPOINT": "http://a.test/",
        "LOCALLLM_MIRRORS": "http://b.test",
    }
    from_env = Preferences(database, env=env)
    assert (from_env.get("quantization"), from_env.value("quantization").source) == ("int8", "environment")
    assert from_env.get("endpoints") == ["http://a.test", "http://b.test"]

    from_env.set("quantization", "none")
    assert (from_env.get("quantization"), from_env.value("quantization").source) == ("none", "saved")
    from_env.reset("quantization")
    assert from_env.value("quantization").source == "environment"


@pytest.mark.parametrize(
    ("name", "value", "said"),
    [
        ("quantization", "int3", "is not one of int4, int8, none"),
        ("device", "tpu", "is not one of auto, cuda, mps, cpu"),
        ("endpoints", "ftp://mirror.test", "is not an http(s) URL"),
        ("endpoints", "http://[::1", "is not an http(s) URL"),  # the download failed midway on it
        ("endpoints", "http://mirror.test:99999", "is not an http(s) URL"),
        ("endpoints", " , ", "Keep at least one download endpoint"),
        (  # a download's job keeps the endpoint it uses: refused here, not on PostgreSQL mid-download
            "endpoints",
            "https://mirror.test/" + "a" * 490,
            "A download endpoint's address is too long: 510 characters, at most 500.",
        ),
        ("idle_unload_s", "-5", "between 0 (off) and 604800"),
        ("auto_resume", "maybe", "is not on or off"),
        ("colour", "blue", "There is no setting 'colour'"),
    ],
)
def test_bad_values_are_refused_with_a_sentence(database: Database, name: str, value: str, said: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(said)):
        Preferences(database).set(name, value)
    assert Preferences(database).value(name if name != "colour" else "device").source != "saved"


def test_the_cli_lists_and_sets_with_the_same_checks(
    database: Database, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["settings", "set", "idle_unload_s", "120"]) == 0
    assert main(["settings", "list"]) == 0
    listed = capsys.readouterr().out
    rows = {line.split()[0]: line for line in listed.splitlines() if not line.startswith(" ")}
    assert rows["idle_unload_s"].split()[1:] == ["120.0", "[saved]"]
    assert rows["device"].endswith("[default]")
    name = len(max(rows, key=len))  # the values in one column, past the longest name (parallel_replies)
    assert {len(row) - len(row[name:].lstrip()) for row in rows.values()} == {name + 2}
    assert main(["settings", "set", "quantization", "int3"]) == 2
    assert "'int3' is not one of int4, int8, none" in capsys.readouterr().err
    assert Preferences(database).get("idle_unload_s") == 120.0


def test_a_models_folder_set_once_is_where_every_command_looks(
    hub: HubServer, tiny_models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    chosen = tmp_path / "chosen-models"  # not LOCALLLM_MODELS_DIR, which the environment still points at
    assert main(["settings", "set", "models_dir", str(chosen)]) == 0
    assert main(["settings", "set", "quantization", "int8"]) == 0
    hub.add_repo("org/tiny-chat", tiny_models["qwen2"])

    assert main(["download", "org/tiny-chat", "--endpoint", hub.url]) == 0
    assert (chosen / "tiny-chat" / "model.safetensors").is_file()
    assert not Path(os.environ["LOCALLLM_MODELS_DIR"], "tiny-chat").exists()
    capsys.readouterr()

    assert main(["models"]) == 0
    assert any(
        line.startswith("tiny-chat") and line.endswith("ready")
        for line in capsys.readouterr().out.splitlines()
    )

    assert main(["chat", "tiny-chat", "--prompt", "hi", "--max-new-tokens", "4", "--stats"]) == 0
    stats = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert stats["weights"] == "int8"  # the saved weights, not the int4 default

    port = free_port()
    serve = subprocess.Popen(
        [sys.executable, "-m", "core", "serve", "--port", str(port)],
        cwd=PROJECT_ROOT, env=os.environ.copy(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        wait_for_port(port, serve)
        listed = httpx2.get(f"http://127.0.0.1:{port}/v1/models").json()
        assert [model["id"] for model in listed["data"]] == ["tiny-chat"]
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(10)
