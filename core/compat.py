"""The Python API of the product description this dashboard grew from (its README's example), kept
working: the same names, each a thin layer over the real API (ConfigStore, ChatService, LocalEngine).

    from src.utils.ChatUtils import AIRequestHandlerWithHistory
    from src.db.llm_config_db import LLMConfigDB
    from src.utils.LocalLLMEngine import local_llm_engine

`src/` holds only those three modules, each importing from here.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

from core.chat.configs import ConfigStore
from core.chat.providers import provider_for_config
from core.chat.service import ChatService
from core.inference.engine import LocalEngine
from core.inference.loading import LoadedModel
from core.preferences import Preferences
from core.settings import load_settings
from core.storage.db import Database


class LLMConfigDB(ConfigStore):
    """Provider configs: save_config, set_current_config, get_current_config, list_configs,
    update_config, delete_config (core.chat.configs.ConfigStore)."""

    def __init__(self, db_url: str | None = None) -> None:
        super().__init__(Database(db_url or load_settings().db_url))


class LocalLLMEngine:
    """The process's local model: loaded on first use (or load_model), freed with unload_model."""

    def __init__(self) -> None:
        self._engine: LocalEngine | None = None
        self._lock = threading.Lock()

    @property
    def engine(self) -> LocalEngine:
        with self._lock:
            if self._engine is None:
                self._engine = LocalEngine.from_preferences(Preferences(Database(load_settings().db_url)))
            return self._engine

    def load_model(self, model: str) -> LoadedModel:
        return self.engine.load(model)

    def unload_model(self) -> None:
        """Free the model's memory."""
        if self._engine is not None:
            self._engine.unload()

    @property
    def is_loaded(self) -> bool:
        return self._engine is not None and self._engine.loaded is not None


local_llm_engine = LocalLLMEngine()


class AIRequestHandlerWithHistory:
    """Replies with the history of each chat id, from the current provider config."""

    def __init__(self, owner: str = "local") -> None:
        db = Database(load_settings().db_url)
        store = ConfigStore(db)
        self._service = ChatService(
            db, lambda: provider_for_config(store.get_current_config(), local_llm_engine.engine), owner=owner
        )

    def refresh_config(self) -> None:
        """The current config is read for every reply: nothing to refresh, kept for the seed's code."""

    def get_single_response(self, chat_id: int | str, message: str) -> str:
        return self._service.get_single_response(chat_id, message)

    def stream_response(self, chat_id: int | str, message: str) -> Iterator[str]:
        return self._service.stream_response(chat_id, message)
