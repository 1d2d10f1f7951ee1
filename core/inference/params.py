"""Generation parameters shared by every provider."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from core.errors import ConfigError

# top_k where neither the request nor the model's generation_config sets one: llama.cpp's, Ollama's and
# LM Studio's default. Without a cut, top-p over a flat distribution looks at the whole vocabulary.
DEFAULT_TOP_K = 40
# OpenAI's logit_bias: (token id, what is added to its logit before sampling: -100 bans it, 100 all but
# forces it), a request's own (not a setting: never kept with a conversation or a preset).
LogitBias = tuple[tuple[int, float], ...]


@dataclass(frozen=True)
class GenerationParams:
    """How a reply is generated. temperature 0 is greedy; top_k None is the model's own (its
    generation_config, else DEFAULT_TOP_K), 0 no limit; min_p and the presence and frequency penalties 0
    are off; a seed
    makes sampling repeat; `thinking` False asks a thinking model to answer without reasoning first: a
    local one whose chat template takes `enable_thinking` (Qwen3; others ignore it), or a server's
    (`providers.NO_THINKING`)."""

    temperature: float = 0.7
    top_p: float = 0.9
    max_new_tokens: int = 512
    repetition_penalty: float = 1.1
    top_k: int | None = None
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    thinking: bool = True

    def __post_init__(self) -> None:
        for name in _DECIMALS:  # JSON's 0 and 1 (an import, a config, a request) are 0.0 and 1.0 here
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"{name} must be a number")
            object.__setattr__(self, name, float(value))
        for name in _COUNTS:  # and 512.0 is 512
            value = getattr(self, name)
            if isinstance(value, float) and value.is_integer():
                object.__setattr__(self, name, int(value))
            elif value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise ConfigError(f"{name} must be a whole number")
        checks = (
            (0.0 <= self.temperature <= 2.0, "temperature must be between 0 and 2"),
            (0.0 < self.top_p <= 1.0, "top_p must be above 0 and at most 1"),
            (1 <= self.max_new_tokens <= 32768, "max_new_tokens must be between 1 and 32768"),
            (0.5 <= self.repetition_penalty <= 2.0, "repetition_penalty must be between 0.5 and 2"),
            (self.top_k is None or 0 <= self.top_k <= 1000, "top_k must be between 0 (no limit) and 1000"),
            (0.0 <= self.min_p < 1.0, "min_p must be at least 0 and below 1"),
            (-2.0 <= self.presence_penalty <= 2.0, "presence_penalty must be between -2 and 2"),
            (-2.0 <= self.frequency_penalty <= 2.0, "frequency_penalty must be between -2 and 2"),
            (self.seed is None or 0 <= self.seed < 2**63, "seed must be a non-negative integer"),
        )
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None) -> GenerationParams:
        """Known keys from `data`, defaults for the rest; unknown keys are ignored."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in (data or {}).items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# The settings that are decimals (the page's sliders take no whole number for one), and those that are
# counts (its number boxes take no decimal).
_DECIMALS = ("temperature", "top_p", "repetition_penalty", "min_p", "presence_penalty", "frequency_penalty")
_COUNTS = ("max_new_tokens", "top_k", "seed")
