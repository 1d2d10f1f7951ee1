"""The test Hub server speaks huggingface_hub's protocol and injects the faults later tests rely on."""

from __future__ import annotations

import hashlib
import http.client
from pathlib import Path

import pytest
from huggingface_hub import HfApi, snapshot_download
from huggingface_hub.errors import GatedRepoError, RemoteEntryNotFoundError, RepositoryNotFoundError

from tests.fixtures.hub_server import Fault, HubServer


def _get(hub: HubServer, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict, bytes]:
    host, port = hub.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request("GET", path, headers=headers or {})
    response = conn.getresponse()
    try:
        body = response.read()
    except http.client.IncompleteRead as exc:
        body = exc.partial
    conn.close()
    return response.status, dict(response.getheaders()), body


def test_snapshot_download_accepts_the_server(hub: HubServer, tiny_models: dict[str, Path], tmp_path: Path):
    repo = hub.add_repo("tiny/qwen2", tiny_models["qwen2"])
    out = Path(snapshot_download("tiny/qwen2", endpoint=hub.url, local_dir=tmp_path / "dl", token=False))
    for path, file in repo.files.items():
        assert (out / path).read_bytes() == file.data
    assert hub.bytes_served("model.safetensors") == len(repo.files["model.safetensors"].data)


def test_repo_info_and_tree_report_sizes_and_lfs_sha256(hub: HubServer, tiny_models: dict[str, Path]):
    repo = hub.add_repo("tiny/llama", tiny_models["llama"])
    api = HfApi(endpoint=hub.url)
    info = api.model_info("tiny/llama", files_metadata=True)
    assert info.sha == repo.commit
    weights = next(s for s in info.siblings if s.rfilename == "model.safetensors")
    assert weights.lfs.sha256 == hashlib.sha256(repo.files["model.safetensors"].data).hexdigest()
    tree = {f.path: f for f in api.list_repo_tree("tiny/llama", recursive=True)}
    assert set(tree) == set(repo.files)
    assert tree["config.json"].lfs is None and tree["config.json"].size == len(repo.files["config.json"].data)
    assert tree["model.safetensors"].lfs.sha256 == repo.files["model.safetensors"].sha256


def test_range_requests_get_206_with_content_range(hub: HubServer):
    data = bytes(range(256)) * 100
    hub.add_repo("org/blob", {"model.safetensors": data})
    status, headers, body = _get(hub, "/org/blob/resolve/main/model.safetensors", {"Range": "bytes=1000-"})
    assert status == 206
    assert headers["Content-Range"] == f"bytes 1000-{len(data) - 1}/{len(data)}"
    assert body == data[1000:]
    assert headers["X-Linked-Etag"] == f'"{hashlib.sha256(data).hexdigest()}"'
    assert headers["X-Linked-Size"] == str(len(data))
    status, _, _ = _get(hub, "/org/blob/resolve/main/model.safetensors", {"Range": f"bytes={len(data)}-"})
    assert status == 416


def test_errors_carry_hub_error_codes(hub: HubServer, tiny_models: dict[str, Path], tmp_path: Path):
    hub.add_repo("tiny/gated", tiny_models["qwen2"], gated=True)
    hub.add_repo("tiny/open", tiny_models["qwen2"])
    with pytest.raises(RepositoryNotFoundError):
        HfApi(endpoint=hub.url).model_info("nobody/nothing")
    with pytest.raises(GatedRepoError):
        snapshot_download("tiny/gated", endpoint=hub.url, local_dir=tmp_path / "g", token=False)
    with pytest.raises(RemoteEntryNotFoundError):
        HfApi(endpoint=hub.url).get_hf_file_metadata(
            url=f"{hub.url}/tiny/open/resolve/main/missing.json", token=False
        )
    status, headers, _ = _get(hub, "/tiny/open/resolve/main/missing.json")
    assert (status, headers["X-Error-Code"]) == (404, "EntryNotFound")


def test_faults_cut_reset_and_status_then_recover(hub: HubServer):
    data = b"x" * 300_000
    hub.add_repo("org/faulty", {"model.safetensors": data})
    path = "/org/faulty/resolve/main/model.safetensors"
    hub.add_fault(Fault(path="model.safetensors", cut_after=1000, times=1))
    hub.add_fault(Fault(path="model.safetensors", cut_after=2000, reset=True, times=1))
    hub.add_fault(Fault(path="model.safetensors", status=503, times=1))

    assert len(_get(hub, path)[2]) == 1000
    try:  # the RST may land before or after the client has read the bytes that were sent
        cut = _get(hub, path)[2]
    except ConnectionResetError:
        cut = b""
    assert len(cut) <= 2000
    assert _get(hub, path)[0] == 503
    assert _get(hub, path)[2] == data
    log = hub.requests("GET", "model.safetensors")
    assert [r.status for r in log] == [200, 200, 503, 200]
    assert [r.bytes_sent for r in log if r.status == 200] == [1000, 2000, len(data)]
