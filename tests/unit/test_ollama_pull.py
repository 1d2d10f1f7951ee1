"""Ollama's /api/pull and /api/delete through `core serve`'s app with Ollama's own client, against a
Hub-compatible server on loopback: a repo named as Ollama names Hugging Face's (hf.co/org/name) is added
to the catalog, downloaded by the download manager with its progress as Ollama's lines, verified, and
served; a catalog key pulls too; what cannot be run is refused with the reason; a delete unloads the
model and removes its files; a LAN client may do neither."""

from __future__ import annotations

from pathlib import Path

import ollama
import pytest
from starlette.testclient import TestClient

from core.api.routes import create_app
from core.hub.library import ModelLibrary
from core.hub.manager import DownloadManager
from core.hub.transfer import TransferPolicy
from core.inference.engine import LocalEngine
from core.inference.params import GenerationParams
from core.inference.prompts import RawPrompt
from core.preferences import Preferences
from core.storage.db import Database
from tests.fixtures.hub_server import HubServer
from tests.fixtures.serving import serving

POLICY = TransferPolicy(backoff_s=0.01, stall_timeout_s=2, disk_margin_bytes=0, interrupted_after_s=0.2)


@pytest.fixture
def library(database: Database, hub: HubServer) -> ModelLibrary:
    manager = DownloadManager(
        database, Preferences(database).get("models_dir"), lambda: [hub.url], policy=POLICY
    )
    pulled = ModelLibrary(database, manager=manager)
    pulled.set_endpoints([hub.url])
    return pulled


def test_a_program_of_this_machine_pulls_a_model_from_hugging_face(
    library: ModelLibrary, hub: HubServer, tiny_models: dict[str, Path]
) -> None:
    hub.add_repo("tiny/chat-model", tiny_models["qwen2"])
    engine = LocalEngine(library.manager.models_dir, idle_unload_s=0)
    served: list[str] = []  # the models the server lists (`serve` reads them from the library)
    with serving(engine, served, library=library) as url:
        client = ollama.Client(host=url.removesuffix("/v1"))
        lines = list(client.pull("hf.co/tiny/chat-model:latest", stream=True))
        again = client.pull("chat-model")  # a catalog key, already here: nothing fetched
        with pytest.raises(ollama.ResponseError) as missing:
            client.pull("tiny/no-such-model")
        after_pull = library.status("chat-model").kind
        served += library.ready_keys()
        answered = client.generate(model="chat-model", prompt="Hi", options={"num_predict": 2})
        reply = engine.stream("chat-model", RawPrompt("Hi"), GenerationParams(max_new_tokens=64))
        next(reply)  # a reply under way: the model is in use
        with pytest.raises(ollama.ResponseError) as in_use:
            client.delete("chat-model")
        reply.close()
        client.delete("chat-model")  # loaded: unloaded first, then its files go
        deleted = (library.status("chat-model").kind, engine.loaded)
    statuses = [line.status for line in lines]
    assert statuses[0] == "pulling manifest" and statuses[-2:] == ["verifying sha256 digest", "success"]
    files = [line for line in lines if line.status and line.status.startswith("pulling ") and line.total]
    assert files and files[-1].completed == files[-1].total  # the bytes as they came, to the end
    assert after_pull == "ready"  # added, downloaded, verified
    # the weights fetched once (a closed range, bytes=0-N, is their header read when the model was added)
    transfers = [
        r for r in hub.requests("GET", "model.safetensors") if r.range is None or r.range.endswith("-")
    ]
    assert again.status == "success" and len(transfers) == 1
    assert answered.done and deleted == ("not_downloaded", None)
    assert (in_use.value.status_code, in_use.value.error) == (
        409,
        "chat-model is answering now: delete it when its replies end.",
    )
    assert (missing.value.status_code, missing.value.error) == (
        400,
        "Repository tiny/no-such-model (main) was not found.",
    )
    # A client on the LAN (the ASGI app called as from 192.168.1.20: no second machine here)
    app = create_app(engine, library.ready_keys, "key", library=library)
    key = {"Authorization": "Bearer key"}
    with TestClient(app, base_url="http://127.0.0.1:8000", client=("192.168.1.20", 50000)) as lan:
        pulled = lan.post("/api/pull", json={"model": "chat-model"}, headers=key)
        deleting = lan.request("DELETE", "/api/delete", json={"model": "chat-model"}, headers=key)
    assert (pulled.status_code, deleting.status_code) == (403, 403)
    assert pulled.json()["error"] == ("Models are downloaded by this machine's programs only (the "
                                      "dashboard's Models page, `localllm`), not from the LAN.")  # fmt: skip
