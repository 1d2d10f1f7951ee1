"""The provider interface the chat service talks to, and the local-engine provider."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from typing import Protocol

from core.engine import Event, LocalEngine
from core.errors import ConfigError
from core.generation import GenerationParams
from core.storage.records import ProviderConfig


class ChatProvider(Protocol):
    model: str
    context_length: int

    def count_tokens(self, messages: Sequence[dict[str, str]]) -> int: ...

    def stream(
        self,
        messages: Sequence[dict[str, str]],
        params: GenerationParams,
        stop: threading.Event,
        *,
        ignore_eos: bool = False,
    ) -> Iterator[Event]: ...


class LocalProvider:
    """A downloaded model run by the process-wide LocalEngine (`local_model`)."""

    def __init__(self, engine: LocalEngine, key: str) -> None:
        self.engine = engine
        self.model = key

    @property
    def context_length(self) -> int:
        return self.engine.load(self.model).context_length

    def count_tokens(self, messages: Sequence[dict[str, str]]) -> int:
        return self.engine.count_tokens(self.model, messages)

    def stream(
        self,
        messages: Sequence[dict[str, str]],
        params: GenerationParams,
        stop: threading.Event,
        *,
        ignore_eos: bool = False,
    ) -> Iterator[Event]:
        return self.engine.stream(self.model, messages, params, stop, ignore_eos=ignore_eos)


def provider_for_config(config: ProviderConfig | None, engine: LocalEngine) -> ChatProvider:
    """The provider for the current config (`None`: nothing chosen yet)."""
    if config is None:
        raise ConfigError("No model is selected: download one on the Models page and choose it for chat.")
    if config.provider == "local_model":
        return LocalProvider(engine, config.model)
    raise ConfigError(
        f"{config.name}: OpenAI-compatible servers cannot be used for chat in this version yet.",
        provider=config.provider,
    )
