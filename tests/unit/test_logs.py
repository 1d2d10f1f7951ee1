"""The log: what happened, in a rotating file under the data folder, and never a secret (passwords, API
keys, tokens), whichever module wrote the line. Real sign-ins, a real server refusing a key, a real
API server and a real download."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import httpx2
import pytest

from core.access.policy import AccessPolicy
from core.access.sign_in import SignInGate
from core.chat.providers import OpenAICompatibleProvider
from core.cli import main
from core.errors import ProviderError, SignInError
from core.inference.engine import LocalEngine
from core.inference.params import GenerationParams
from core.logs import close_logging, log_file, remember_secret, setup_logging, tail
from core.storage.db import Database
from tests.fixtures.hub_server import HubServer
from tests.fixtures.openai_faults import FaultyOpenAIServer
from tests.fixtures.serving import serving

SHARED, PERSONAL = "correct horse battery", "my own secret pw"
API_KEY, PROVIDER_KEY = "serve-key-9876", "sk-live-ABCDEF123456"


@pytest.fixture
def logged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LOCALLLM_PASSWORD", SHARED)
    monkeypatch.setenv("LOCALLLM_API_KEY", API_KEY)
    yield setup_logging(data_dir=tmp_path / "data")
    close_logging()


def test_no_secret_reaches_the_log(
    logged: Path, database: Database, hub: HubServer, tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    gate = SignInGate(AccessPolicy(password=SHARED), database)
    gate.sign_in("10.0.0.5", "carol", SHARED, PERSONAL, PERSONAL)
    with pytest.raises(SignInError):
        gate.sign_in("10.0.0.6", "carol", SHARED, "not " + PERSONAL)

    with FaultyOpenAIServer("status:401") as server:  # a server that refuses the key
        provider = OpenAICompatibleProvider(server.url, PROVIDER_KEY, "gpt", timeout_s=5)
        with pytest.raises(ProviderError):
            list(provider.stream([{"role": "user", "content": "hi"}], GenerationParams(), threading.Event()))

    remember_secret(API_KEY)
    engine = LocalEngine(tmp_path / "models", idle_unload_s=0)
    with serving(engine, ["tiny"], API_KEY) as url:
        refused = httpx2.get(f"{url}/models", headers={"Authorization": f"Bearer wrong-{API_KEY}"})
    assert refused.status_code == 401

    hub.add_repo("org/tiny-chat", tiny_models["qwen2"])
    assert main(["download", "org/tiny-chat", "--endpoint", hub.url]) == 0
    logging.getLogger("core.test").info("a header seen: Authorization: Bearer abc123def456 password=hunter22")

    text = log_file(tmp_path / "data").read_text(encoding="utf-8")
    for secret in (SHARED, PERSONAL, API_KEY, PROVIDER_KEY, "abc123def456", "hunter22"):
        assert secret not in text, secret
    # ... while what happened is there.
    assert "'carol' signed in from 10.0.0.5" in text and "wrong password for 'carol' from 10.0.0.6" in text
    assert "tiny-chat: every file verified" in text
    assert "answered 401 invalid_api_key" in text
    assert tail(3, tmp_path / "data")[-1].endswith("Authorization: Bearer ••• password=•••")
