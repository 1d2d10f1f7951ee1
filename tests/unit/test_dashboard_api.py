"""The API the dashboard serves itself, with its own engine (the Settings page's switch): the official
openai client against it on loopback, then on every address with the kept key, moved and stopped; a
taken port said in one sentence, the server before going on."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import openai
import pytest

from core.api import server_status
from core.api.keys import KEY_FILE
from core.api.served import DashboardApi
from core.errors import ConfigError
from core.inference.engine import LocalEngine
from core.storage.db import Database
from tests.fixtures.serving import free_port
from tests.fixtures.tiny_models import install_ready

ASKED = {"model": "tiny", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 3}


def client(port: int, key: str = "none") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0, timeout=30)


def test_the_dashboard_serves_its_own_engine_moves_and_stops(
    tmp_path: Path, tiny_models: dict[str, Path], database: Database
) -> None:
    install_ready(tmp_path / "models", "tiny", tiny_models["llama"])
    engine = LocalEngine(tmp_path / "models", idle_unload_s=0)
    api = DashboardApi(engine, lambda: ["tiny"], database, tmp_path / "data")
    local, lan = free_port(), free_port()
    try:
        api.serve_as("local", local)
        replied = client(local).chat.completions.create(**ASKED)
        # The dashboard's own engine answered (one model in memory for the browser and the programs).
        assert replied.usage.completion_tokens == 3 and engine.loaded is not None
        assert (api.listening.host, api.listening.port, api.listening.api_key) == ("127.0.0.1", local, None)
        assert server_status(database) == {"pid": os.getpid(), "host": "127.0.0.1", "port": local,
                                           "token_required": False}  # fmt: skip
        # A port another program holds: said, and the API goes on where it was.
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            held = taken.getsockname()[1]
            with pytest.raises(ConfigError) as refused:
                api.serve_as("local", held)
        assert str(refused.value) == (
            f"Port {held} is in use (another localllm serve, or another program): choose another."
        )
        assert api.problem is refused.value and client(local).models.list().data[0].id == "tiny"
        # For the LAN: every address, with the key kept in the data folder (the same after a restart).
        api.serve_as("lan", lan)
        key = (tmp_path / "data" / KEY_FILE).read_text().strip()
        assert api.listening.api_key == key and api.problem is None
        with pytest.raises(openai.AuthenticationError):
            client(lan).models.list()
        assert client(lan, key).chat.completions.create(**ASKED).usage.completion_tokens == 3
        with pytest.raises(openai.APIConnectionError):
            client(local).models.list()  # moved: the loopback port is free again
        assert server_status(database)["token_required"] is True
    finally:
        api.serve_as("off", 0)
    with pytest.raises(openai.APIConnectionError):
        client(lan, key).models.list()
    assert api.listening is None and server_status(database) is None
    engine.unload()
