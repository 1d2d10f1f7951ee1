"""A hostile or careless download server: names that climb out, sizes that lie, listings without
metadata. Nothing may be written outside the model folder, nothing past a declared size, and every
failure ends as a sentence, never a traceback or a job stuck "running"."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from core.errors import InvalidRepoIdError, UnsupportedModelError
from core.hub.library import ModelLibrary
from core.hub.manager import DownloadManager
from core.hub.store import read_manifest, verify
from core.hub.transfer import DownloadTarget, ModelDownload, Progress, TransferPolicy
from core.storage import jobs
from core.storage.db import Database
from tests.fixtures.hub_server import Fault, HubServer, Sibling
from tests.fixtures.markdown import RENDERER, visible_text
from ui.i18n import failure_text

FAST = TransferPolicy(backoff_s=0.01, stall_timeout_s=2.0, disk_margin_bytes=0)
REPO = {
    "config.json": b'{"model_type": "qwen2"}',
    "tokenizer.json": b"{}",
    "model.safetensors": os.urandom(200_000),
}


def download(urls: list[str], models: Path) -> Progress:
    return ModelDownload(DownloadTarget("m", "org/model"), models, urls, policy=FAST).run()


def with_entry(name: object, **fields: object) -> object:
    """A listing with one more entry, as a hostile server would add it."""

    def tamper(siblings: list[Sibling]) -> list[Sibling]:
        return [*siblings, {"rfilename": name, "size": 4, "blobId": "0" * 40, **fields}]

    return tamper


def files_under(path: Path) -> list[Path]:
    return [p for p in path.rglob("*") if p.is_file()] if path.exists() else []


@pytest.mark.parametrize(
    "name",
    [
        "../../../x.txt",
        "sub/../../x.txt",
        "a\\..\\..\\x.txt",
        "C:/x.txt",
        "sub//x.txt",
        "./x.txt",
        "bell\x07.txt",
        ".localllm-manifest.json",
        "model.safetensors.incomplete",
        "aux.json",
        "",
        7,
    ],
)
def test_one_unsafe_name_refuses_the_whole_listing_and_nothing_is_written(
    hub: HubServer, tmp_path: Path, name: object
) -> None:
    hub.add_repo("org/model", REPO, tamper=with_entry(name))
    progress = download([hub.url], tmp_path / "models")

    assert progress.state == "failed"
    assert progress.error_code == "error.unsafe_listing"
    assert repr(name)[:30].strip("'") in progress.error or name == ""  # names the file
    assert hub.url in progress.error  # and the server
    assert hub.requests("GET", "/resolve/") == []  # not a byte fetched
    assert files_under(tmp_path / "models") == []
    assert not (tmp_path / "x.txt").exists()


def test_an_absolute_name_never_touches_the_file_it_names(hub: HubServer, tmp_path: Path) -> None:
    victim = tmp_path / "home" / ".bashrc"
    victim.parent.mkdir()
    victim.write_text("mine")
    hub.add_repo("org/model", REPO, tamper=with_entry(str(victim)))
    progress = download([hub.url], tmp_path / "models")

    assert progress.state == "failed"
    assert str(victim) in progress.error
    assert victim.read_text() == "mine"
    assert files_under(tmp_path / "models") == []


@pytest.mark.parametrize(
    ("fields", "said"),
    [
        ({"size": -5}, "impossible size"),
        ({"size": "100"}, "impossible size"),
        ({"size": 10**30}, "impossible size"),
        ({"blobId": "../../etc"}, "malformed checksum"),
    ],
)
def test_impossible_sizes_and_malformed_hashes_refuse_the_listing(
    hub: HubServer, tmp_path: Path, fields: dict, said: str
) -> None:
    hub.add_repo("org/model", REPO, tamper=with_entry("extra.json", **fields))
    progress = download([hub.url], tmp_path / "models")
    assert progress.state == "failed"
    assert said in progress.error and "extra.json" in progress.error
    assert files_under(tmp_path / "models") == []


def test_a_symlinked_folder_in_the_model_folder_is_not_followed_out(hub: HubServer, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    models = tmp_path / "models"
    (models / "m").mkdir(parents=True)
    (models / "m" / "sub").symlink_to(outside)
    hub.add_repo("org/model", {**REPO, "sub/extra.json": b"{}"})
    progress = download([hub.url], models)

    assert progress.state == "failed"
    assert progress.error_code == "error.unsafe_listing"
    assert "sub/extra.json" in progress.error
    assert list(outside.iterdir()) == []


def declared_small(siblings: list[Sibling]) -> list[Sibling]:
    """tokenizer.json listed as 100 bytes without a hash; the server then sends all of it."""
    return [
        {"rfilename": s["rfilename"], "size": 100} if s["rfilename"] == "tokenizer.json" else s
        for s in siblings
    ]


@pytest.mark.parametrize("no_length", [False, True], ids=["announced", "unannounced"])
def test_a_file_served_longer_than_listed_never_grows_past_its_size(
    hub: HubServer, tmp_path: Path, no_length: bool
) -> None:
    big = os.urandom(3_000_000)
    hub.add_repo("org/model", {**REPO, "tokenizer.json": big}, tamper=declared_small)
    if no_length:
        hub.add_fault(Fault(path="tokenizer.json", no_length=True))
    models = tmp_path / "models"
    progress = download([hub.url], models)

    assert progress.state == "failed"
    assert "tokenizer.json" in progress.error
    assert progress.bytes_total == sum(len(v) for k, v in REPO.items() if k != "tokenizer.json") + 100
    assert all(p.stat().st_size <= 100 for p in files_under(models) if p.name.startswith("tokenizer"))
    assert read_manifest(models / "m") is None  # never called ready


@pytest.mark.parametrize("redirected", [False, True], ids=["served", "from-a-cdn"])
def test_a_listing_without_sizes_or_hashes_is_completed_by_head_requests(
    hub: HubServer, tmp_path: Path, redirected: bool
) -> None:
    """What `?blobs=true` returns when a mirror ignores it: names only. Where the weights' address
    redirects to a CDN, as on huggingface.co, the redirect carries their size and hash."""
    hub.add_repo("org/model", REPO, tamper=lambda siblings: [{"rfilename": s["rfilename"]} for s in siblings])
    models = tmp_path / "models"
    with HubServer() as cdn:
        if redirected:
            hub.redirect_lfs_to(cdn)
        progress = download([hub.url], models)
        assert cdn.bytes_served() == (len(REPO["model.safetensors"]) if redirected else 0)

    assert progress.state == "completed", progress.error
    assert len(hub.requests("HEAD", "/resolve/")) == len(REPO)
    manifest = read_manifest(models / "m")
    assert {f.path: f.size for f in manifest.files} == {k: len(v) for k, v in REPO.items()}
    assert next(f for f in manifest.files if f.path == "model.safetensors").sha256
    assert all(check.ok for check in verify(models / "m", manifest))


def test_a_listing_without_sizes_and_a_bare_head_ends_with_a_sentence(hub: HubServer, tmp_path: Path) -> None:
    hub.add_repo("org/model", REPO, tamper=lambda siblings: [{"rfilename": s["rfilename"]} for s in siblings])
    hub.add_fault(Fault(bare_head=True))
    progress = download([hub.url], tmp_path / "models")

    assert progress.state == "failed"
    assert progress.error and "no size" in progress.error and hub.url in progress.error
    assert hub.requests("GET", "/resolve/") == []


def test_an_unforeseen_error_in_the_worker_ends_the_job_as_failed_with_a_sentence(
    hub: HubServer, tmp_path: Path, database: Database
) -> None:
    """The disk-space probe stands for any bug in the worker (the only injected fault here)."""

    def broken_probe(_path: Path) -> int:
        raise RuntimeError("a bug nobody foresaw")

    hub.add_repo("org/model", REPO)
    manager = DownloadManager(database, tmp_path / "models", lambda: [hub.url], policy=FAST,
                              disk_free=broken_probe)  # fmt: skip
    assert manager.start(DownloadTarget("m", "org/model"))
    progress = manager.wait("m", timeout=30)

    assert progress.state == "failed"
    assert "unexpected error" in progress.error and "a bug nobody foresaw" in progress.error
    with database.begin() as session:
        job = jobs.latest_job(session, "m")
    assert job.state == "failed" and job.last_error == progress.error
    assert not manager.is_running("m")


def test_a_read_only_models_folder_is_a_sentence_not_a_traceback(database: Database, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("a file where the models folder should be")
    manager = DownloadManager(database, blocker / "models", lambda: ["http://127.0.0.1:9"], policy=FAST)
    with pytest.raises(Exception, match="is not writable") as caught:
        manager.start(DownloadTarget("m", "org/model"))
    assert caught.value.code == "error.not_writable"


@pytest.mark.parametrize(
    ("config", "said"),
    [
        (b"{not json", "not a valid JSON object"),
        (b"[1, 2]", "not a valid JSON object"),
        (b'{"model_type": "qwen2", "max_position_embeddings": "lots"}', "max_position_embeddings"),
    ],
)
def test_a_config_that_is_not_a_model_config_is_refused_with_a_sentence(
    hub: HubServer, database: Database, config: bytes, said: str
) -> None:
    hub.add_repo("org/odd", {**REPO, "config.json": config, "chat_template.jinja": b"{{ messages }}"})
    library = ModelLibrary(database, endpoints_override=[hub.url])
    with pytest.raises(UnsupportedModelError, match=said):
        library.add_custom("org/odd")
    assert [spec.repo_id for spec in library.models() if spec.custom] == []


@pytest.mark.parametrize("repo_id", ["org/name.", "org/-name", "org--x/name", "org/na..me", "org/name-"])
def test_repo_ids_the_hub_would_refuse_are_refused_before_any_request(
    hub: HubServer, database: Database, repo_id: str
) -> None:
    library = ModelLibrary(database, endpoints_override=[hub.url])
    with pytest.raises(InvalidRepoIdError, match="is not a Hugging Face repository id"):
        library.add_custom(repo_id)
    assert hub.requests() == []


@pytest.mark.parametrize(
    "name", ["[Click here to repair](//198.51.100.7/fix)", "![x](//198.51.100.7/pixel)", "<img src=//x/a>//b"]
)
def test_a_hostile_name_in_the_refusal_shows_as_text_never_a_link_or_an_image(
    hub: HubServer, tmp_path: Path, name: str
) -> None:
    """The page shows the refusal, which names the file: a mirror's link there ('Click here to
    repair') would be one to click, and an image one that the browser fetches from anywhere."""
    hub.add_repo("org/model", REPO, tamper=with_entry(name))
    progress = download([hub.url], tmp_path / "models")
    assert progress.error_code == "error.unsafe_listing"
    shown = failure_text(progress.error_code, progress.error_params, progress.error)
    rendered = RENDERER.render(shown)
    assert "<a " not in rendered and "<img" not in rendered
    assert name in visible_text(shown)
