"""Downloads against real Hub-compatible servers on 127.0.0.1, with injected network faults."""

from __future__ import annotations

import errno
import hashlib
import os
import threading
from dataclasses import replace
from pathlib import Path

import httpx2
import pytest

from core.hub import listing as hub_module
from core.hub.manager import DownloadManager
from core.hub.store import MANIFEST, read_manifest, verify
from core.hub.transfer import REASONS, DownloadTarget, ModelDownload, Progress, TransferPolicy
from core.storage.db import Database
from tests.fixtures.hub_server import Fault, HubServer, unanswering_endpoint
from tests.fixtures.markdown import visible_text
from ui.i18n import failure_text

FAST = TransferPolicy(backoff_s=0.01, stall_timeout_s=1.0, disk_margin_bytes=0)
WEIGHTS = os.urandom(1_000_000)
REPO = {
    "config.json": b'{"model_type": "qwen2"}',
    "tokenizer.json": b"{}",
    "README.md": b"# test model",
    "model.safetensors": WEIGHTS,
    "model.onnx": b"never downloaded",
    "consolidated.safetensors": b"the same weights in Mistral's own format: never downloaded",
    "checkpoint-500/model.safetensors": b"a fine-tune's intermediate checkpoint: never downloaded",
}
# Other runtimes' weights, a second copy in Mistral's format, a fine-tune's intermediate checkpoint.
SKIPPED = ("model.onnx", "consolidated.safetensors", "checkpoint-500/model.safetensors")
FETCHED_BYTES = sum(len(data) for path, data in REPO.items() if path not in SKIPPED)


def download(hub_urls: list[str], models: Path, **kwargs) -> tuple[ModelDownload, Progress]:
    job = ModelDownload(DownloadTarget("test-model", "org/model"), models, hub_urls, policy=FAST, **kwargs)
    return job, job.run()


@pytest.fixture
def models(tmp_path: Path) -> Path:
    return tmp_path / "models"


def test_download_verifies_every_file_and_writes_a_manifest(hub: HubServer, models: Path) -> None:
    repo = hub.add_repo("org/model", REPO)
    seen: list[Progress] = []
    _, progress = download([hub.url], models, report=seen.append)

    assert progress.state == "completed", progress.error
    directory = models / "test-model"
    for path in ("config.json", "tokenizer.json", "README.md", "model.safetensors"):
        assert (directory / path).read_bytes() == REPO[path]
    assert not any((directory / path).exists() for path in SKIPPED)
    assert not list(directory.rglob("*.incomplete"))
    manifest = read_manifest(directory)
    assert manifest.commit == repo.commit
    assert all(check.ok for check in verify(directory, manifest))
    assert progress.bytes_done == progress.bytes_total == FETCHED_BYTES
    assert seen[-1].state == "completed"
    assert any(p.current_file == "model.safetensors" for p in seen)


def test_first_endpoint_resets_midway_second_continues_the_same_file(models: Path) -> None:
    with HubServer() as flaky, HubServer() as mirror:
        flaky.add_repo("org/model", REPO)
        mirror.add_repo("org/model", REPO)
        flaky.add_fault(Fault(path="model.safetensors", cut_after=300_000, reset=True))
        _, progress = download([flaky.url, mirror.url], models)

        assert progress.state == "completed", progress.error
        assert (models / "test-model" / "model.safetensors").read_bytes() == WEIGHTS
        resumed = mirror.requests("GET", "model.safetensors")
        assert len(resumed) == 1
        start = int(resumed[0].range.removeprefix("bytes=").rstrip("-"))
        assert start > 0  # continued, not restarted
        assert mirror.bytes_served("model.safetensors") == len(WEIGHTS) - start
        assert len(flaky.requests("GET", "model.safetensors")) == FAST.tries_per_endpoint
        assert any("switching to" in note for note in progress.notes)


@pytest.mark.parametrize("drops_connections", [False, True], ids=["silent", "dropping"])
def test_an_endpoint_that_never_answers_is_left_for_the_next(
    hub: HubServer, models: Path, monkeypatch: pytest.MonkeyPatch, drops_connections: bool
) -> None:
    """huggingface.co from mainland China can take a connection and never answer, or never take it:
    the download stayed at its file list for good (huggingface_hub's calls wait as long as they are
    told, and were told nothing), never switching to the mirror."""
    monkeypatch.setattr(
        hub_module, "HUB_TIMEOUT", httpx2.Timeout(1.0, connect=0.3)
    )  # 30 s / 10 s (as FAST stalls)
    hub.add_repo("org/model", REPO)
    with unanswering_endpoint(drops_connections) as unanswering:
        _, progress = download([unanswering, hub.url], models)

    assert progress.state == "completed", progress.error
    reason = REASONS["connect_timeout" if drops_connections else "timeout"]
    assert progress.notes[:4] == (
        *(f"listing: {reason} (try {n} of 3, {unanswering})" for n in (1, 2, 3)),
        f"switching to {hub.url}",
    )


def test_a_stall_is_detected_and_retried(hub: HubServer, models: Path) -> None:
    hub.add_repo("org/model", REPO)
    hub.add_fault(Fault(path="model.safetensors", cut_after=200_000, stall_s=5, times=1))
    _, progress = download([hub.url], models)
    assert progress.state == "completed", progress.error
    assert progress.attempts == 1
    assert any("timed out" in note for note in progress.notes)


def test_5xx_is_retried_with_backoff(hub: HubServer, models: Path) -> None:
    hub.add_repo("org/model", REPO)
    hub.add_fault(Fault(path="model.safetensors", status=503, times=2))
    _, progress = download([hub.url], models)
    assert progress.state == "completed"
    assert progress.attempts == 2


def test_repository_not_found_fails_at_once(hub: HubServer, models: Path) -> None:
    _, progress = download([hub.url], models)
    assert progress.state == "failed"
    assert progress.error_code == "error.repo_not_found"
    assert "org/model" in progress.error
    assert progress.attempts == 0


def test_gated_repository_gives_a_clear_message(
    hub: HubServer, models: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub.add_repo("org/model", REPO, gated=True)
    _, progress = download([hub.url], models)  # the test Hub stands in for a mirror: it gets no token
    assert progress.state == "failed"
    assert progress.error_code == "error.gated"
    assert progress.error == (
        "org/model is gated: accept its license on huggingface.co, log in with an HF token, and download "
        f"it from huggingface.co itself: your token is never sent to a mirror ({hub.url})."
    )
    monkeypatch.setattr("ui.state.language", lambda: "zh")
    assert failure_text(progress.error_code, progress.error_params, progress.error).endswith(
        f"你的 token 从不发送给镜像（`{hub.url}`）。"
    )
    monkeypatch.setattr(hub_module, "OFFICIAL_HOST", "127.0.0.1")  # now it stands in for huggingface.co
    _, progress = download([hub.url], models)
    assert (
        progress.error
        == "org/model is gated: accept its license on huggingface.co and log in with an HF token."
    )


def test_missing_optional_file_does_not_fail(hub: HubServer, models: Path) -> None:
    hub.add_repo("org/model", REPO)
    hub.add_fault(Fault(path="README.md", status=404))
    _, progress = download([hub.url], models)
    assert progress.state == "completed"
    assert not (models / "test-model" / "README.md").exists()
    assert any("README.md" in note and "optional" in note for note in progress.notes)


def test_missing_required_file_fails_with_its_name(
    hub: HubServer, models: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub.add_repo("org/model", REPO)
    hub.add_fault(Fault(path="config.json", status=404))
    _, progress = download([hub.url], models)
    assert progress.state == "failed"
    assert "config.json" in progress.error
    monkeypatch.setattr("ui.state.language", lambda: "zh")  # the Models page, from the stored job
    shown = visible_text(failure_text(progress.error_code, progress.error_params, progress.error))
    assert shown == "下载失败：服务器上没有 config.json（HTTP 404）。"


def test_offline_mode_left_in_the_environment_is_said_before_any_request(
    hub: HubServer, models: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HF_HUB_OFFLINE=1 (or TRANSFORMERS_OFFLINE), set once to run models offline: a download stopped "on an
    unexpected error (OfflineModeIsEnabled: …)". huggingface_hub reads the variables once, at import: the
    value it read is set here."""
    hub.add_repo("org/model", REPO)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    _, progress = download([hub.url], models)
    assert progress.state == "failed"
    assert progress.error.startswith("Downloads are off: the environment sets HF_HUB_OFFLINE")
    assert hub.requests() == []
    monkeypatch.setattr("ui.state.language", lambda: "zh")
    shown = visible_text(failure_text(progress.error_code, progress.error_params, progress.error))
    assert shown.startswith(
        "下载失败：环境变量设置了 HF_HUB_OFFLINE 或 TRANSFORMERS_OFFLINE（离线模式），下载已关闭"
    )


def test_checksum_mismatch_is_reported_and_the_file_fetched_again(hub: HubServer, models: Path) -> None:
    hub.add_repo("org/model", REPO)
    hub.add_fault(Fault(path="model.safetensors", corrupt=True, times=1))
    _, progress = download([hub.url], models)
    assert progress.state == "completed"
    assert any("checksum mismatch" in note for note in progress.notes)
    weights = (models / "test-model" / "model.safetensors").read_bytes()
    assert hashlib.sha256(weights).hexdigest() == hashlib.sha256(WEIGHTS).hexdigest()


def test_disk_too_small_is_refused_before_the_first_byte(
    hub: HubServer, models: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The free-space figure is simulated: filling this machine's disk is not an option in a test.
    hub.add_repo("org/model", REPO)
    _, progress = download([hub.url], models, disk_free=lambda _path: 500_000)
    assert progress.state == "failed"
    assert progress.error_code == "error.disk_space"
    assert "0.00 GB is free" in progress.error
    assert hub.requests("GET", "/resolve/") == []
    # The Models page says it from the job's stored parameters, in the page's language.
    monkeypatch.setattr("ui.state.language", lambda: "zh")
    shown = visible_text(failure_text(progress.error_code, progress.error_params, progress.error))
    assert shown.startswith("磁盘空间不足：此次下载还需要 ") and "仅剩 500.0 KB" in shown
    assert f"而 {models} 所在磁盘" in shown and "free" not in shown


def test_unwritable_models_directory_is_refused(hub: HubServer, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    hub.add_repo("org/model", REPO)
    _, progress = download([hub.url], blocker / "models")
    assert progress.state == "failed"
    assert progress.error_code == "error.not_writable"
    assert hub.requests() == []


def test_cancel_takes_effect_at_once_on_a_stalled_server(
    hub: HubServer, models: Path, database: Database
) -> None:
    """A mirror that stops sending (the file held after its first chunk): the cancel shuts the
    connection down instead of waiting for the stall timeout (here 10 minutes) to end the read."""
    hub.add_repo("org/model", REPO)
    hub.hold("model.safetensors")
    patient = replace(FAST, stall_timeout_s=600.0)
    manager = DownloadManager(database, models, lambda: [hub.url], policy=patient)
    assert manager.start(DownloadTarget("test-model", "org/model"))
    _wait_for(
        lambda: (p := manager.progress("test-model")) is not None and p.current_file == "model.safetensors"
    )
    _wait_for(lambda: hub.requests("GET", "model.safetensors") == [] and hub.state.in_flight > 0)
    manager.cancel("test-model")
    final = manager.wait("test-model", timeout=20)
    assert final.state == "cancelled", final
    assert not any("try 1" in note for note in final.notes)  # a pause, not a failure retried
    hub.release()


def test_cancel_keeps_the_partial_and_resume_fetches_only_the_rest(
    hub: HubServer, models: Path, database: Database
) -> None:
    hub.add_repo("org/model", REPO)
    hub.throttle(400_000)
    manager = DownloadManager(database, models, lambda: [hub.url], policy=FAST)
    target = DownloadTarget("test-model", "org/model")
    assert manager.start(target)
    assert not manager.start(target)  # a second request joins the same job
    partial = models / "test-model" / "model.safetensors.incomplete"
    _wait_for(lambda: partial.exists() and partial.stat().st_size > 200_000)
    manager.cancel("test-model")
    assert manager.wait("test-model", timeout=10).state == "cancelled"
    kept = partial.stat().st_size
    assert kept > 200_000
    assert manager.interrupted() == ["test-model"]

    hub.throttle(None)
    assert manager.start(target)
    final = manager.wait("test-model", timeout=30)
    assert final.state == "completed"
    gets = hub.requests("GET", "model.safetensors")
    assert [r.range for r in gets if r.range] == [f"bytes={kept}-"]  # one resume, from what was kept
    assert hub.bytes_served("model.safetensors") <= len(WEIGHTS) + 64 * 1024
    assert (models / "test-model" / MANIFEST).exists()


class _DiskFillsAt:
    """An unbuffered file whose writes fail as on a full disk once it holds `limit` bytes."""

    def __init__(self, handle, limit: int, code: int) -> None:
        self._handle, self._limit, self._code = handle, limit, code

    def write(self, data: bytes) -> int:
        if self._handle.tell() + len(data) > self._limit:
            raise OSError(self._code, os.strerror(self._code))
        return self._handle.write(data)

    def __enter__(self) -> _DiskFillsAt:
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.close()


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT], ids=["disk full", "quota full"])
def test_a_disk_that_fills_up_midway_keeps_the_partial_and_the_retry_fetches_only_the_rest(
    hub: HubServer, models: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    """Another program fills the disk (or the user's quota) while the weights arrive. Filling this
    machine's disk is not an option in a test: the partial weights file's writes fail with the OS's
    error past 300 kB instead."""
    hub.add_repo("org/model", REPO)
    real_open = Path.open

    def open_on_a_filling_disk(path: Path, mode: str = "r", *args, **kwargs):
        handle = real_open(path, mode, *args, **kwargs)
        return (
            _DiskFillsAt(handle, 300_000, code)
            if path.name.startswith("model.safetensors.") and "b" in mode and mode != "rb"
            else handle
        )

    with monkeypatch.context() as full:
        full.setattr(Path, "open", open_on_a_filling_disk)
        _, progress = download([hub.url], models)
    assert progress.state == "failed"
    assert progress.error == "The disk filled up while writing model.safetensors; free some space and resume."
    monkeypatch.setattr("ui.state.language", lambda: "zh")
    assert "写入 model.safetensors 时磁盘已满" in failure_text(
        progress.error_code, progress.error_params, progress.error
    )
    kept = (models / "test-model" / "model.safetensors.incomplete").stat().st_size
    assert 0 < kept <= 300_000

    _, progress = download([hub.url], models)  # space freed: the retry
    assert progress.state == "completed"
    resumed = [r.range for r in hub.requests("GET", "model.safetensors") if r.range]
    assert resumed == [f"bytes={kept}-"]
    assert (models / "test-model" / "model.safetensors").read_bytes() == WEIGHTS


def test_a_disk_full_when_the_files_list_is_written_last_says_so_and_the_retry_fetches_nothing(
    hub: HubServer, models: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every file is in and verified; the disk fills up as the model's list of files is written (it
    stopped 'on an unexpected error'). The OS's error is raised by that write (as in the test above)."""
    hub.add_repo("org/model", REPO)
    real_write_text = Path.write_text

    def write_text_on_a_full_disk(path: Path, *args, **kwargs):
        if path.name.startswith(".localllm-manifest"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write_text(path, *args, **kwargs)

    with monkeypatch.context() as full:
        full.setattr(Path, "write_text", write_text_on_a_full_disk)
        _, progress = download([hub.url], models)
    assert progress.state == "failed"
    assert progress.error == (
        "The disk filled up while writing .localllm-manifest.json; free some space and resume."
    )
    fetched = len(hub.requests("GET", "model.safetensors"))
    _, progress = download([hub.url], models)  # space freed: the retry
    assert progress.state == "completed" and len(hub.requests("GET", "model.safetensors")) == fetched


def test_progress_is_visible_to_another_manager_and_staleness_means_interrupted(
    hub: HubServer, models: Path, db_url: str
) -> None:
    hub.add_repo("org/model", REPO)
    hub.throttle(300_000)
    first = DownloadManager(Database(db_url), models, lambda: [hub.url], policy=FAST)
    observer = DownloadManager(
        Database(db_url), models, lambda: [hub.url], policy=TransferPolicy(interrupted_after_s=0.5)
    )
    first.start(DownloadTarget("test-model", "org/model"))
    _wait_for(lambda: (p := observer.progress("test-model")) is not None and p.bytes_done > 100_000)
    seen = observer.progress("test-model")
    assert seen.state == "running"
    assert seen.bytes_total == FETCHED_BYTES
    assert not observer.start(DownloadTarget("test-model", "org/model"))  # file lock: one downloader
    first.cancel("test-model")
    first.wait("test-model")


def _wait_for(condition, timeout: float = 20) -> None:
    done = threading.Event()
    deadline = 0.0
    while not condition():
        done.wait(0.02)
        deadline += 0.02
        if deadline > timeout:
            raise TimeoutError("condition not met")


def test_hf_token_goes_to_huggingface_co_only(
    hub: HubServer, models: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_secret_token_1234")
    assert hub_module.token_for("https://huggingface.co") == "hf_secret_token_1234"
    assert hub_module.token_for("https://hf-mirror.com") is False
    hub.add_repo("org/model", REPO)
    _, progress = download([hub.url], models)  # the test Hub stands in for a mirror
    assert progress.state == "completed"
    assert hub.requests()
    assert all(r.authorization is None for r in hub.requests())


def test_weights_from_the_hubs_cdn_resume_there_and_never_get_the_token(
    hub: HubServer, models: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """huggingface.co answers a weights file's address with a redirect to its CDN (another host, a signed
    address): the bytes come from there, a cut transfer resumes there from the byte it reached, and the
    user's token, which huggingface.co gets, never goes to the CDN."""
    monkeypatch.setattr(hub_module, "OFFICIAL_HOST", "127.0.0.1")  # the test Hub stands in for huggingface.co
    monkeypatch.setenv("HF_TOKEN", "hf_secret_token_1234")
    hub.add_repo("org/model", REPO)
    hub.state.known_tokens = frozenset({"hf_secret_token_1234"})
    with HubServer() as cdn:
        hub.redirect_lfs_to(cdn)
        cdn.add_fault(Fault(path="model.safetensors", cut_after=300_000, times=1))
        _, progress = download([hub.url], models)

        assert progress.state == "completed", progress.error
        assert (models / "test-model" / "model.safetensors").read_bytes() == WEIGHTS
        assert [r.status for r in hub.requests("GET", "model.safetensors")] == [302, 302]
        fetched = cdn.requests("GET")
        assert [r.range for r in fetched] == [None, "bytes=300000-"]
        assert cdn.bytes_served() == len(WEIGHTS)  # not a byte fetched twice
    assert all(r.authorization == "Bearer hf_secret_token_1234" for r in hub.requests())
    assert all(r.authorization is None for r in fetched)


def test_a_revoked_hf_token_is_said_to_be_the_cause(
    hub: HubServer, models: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """huggingface.co answers a request with an unknown token 401, even for a public model: "The server
    refused the listing (HTTP 401)" did not say that the token was the cause. The test Hub stands in for
    huggingface.co (the only host the token goes to)."""
    hub.add_repo("org/model", REPO)
    hub.state.known_tokens = frozenset({"hf_valid"})
    monkeypatch.setattr(hub_module, "OFFICIAL_HOST", "127.0.0.1")
    monkeypatch.setenv("HF_TOKEN", "hf_revoked")
    _, progress = download([hub.url], models)
    assert progress.state == "failed"
    assert progress.error.startswith("huggingface.co refused your Hugging Face token (HTTP 401)")
    assert all(r.status == 401 for r in hub.requests())
    monkeypatch.setenv("HF_TOKEN", "hf_valid")
    assert download([hub.url], models)[1].state == "completed"
