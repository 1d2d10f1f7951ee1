"""Fill in the middle (code completion: the text before the cursor and the text after it): the prompt
written in the form of the special tokens the model's tokenizer has (those it was trained to fill in
with), as Ollama's templates and llama.cpp's /infill write it: prefix, suffix, then the middle the
model writes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from core.inference.chat_tokenizer import ChatTokenizer


@dataclass(frozen=True)
class InfillStyle:
    """A family's three tokens: before the prefix, before the suffix, and where the middle begins."""

    family: str
    prefix: str
    suffix: str
    middle: str

    def prompt(self, before: str, after: str) -> str:
        return f"{self.prefix}{before}{self.suffix}{after}{self.middle}"


STYLES = (
    InfillStyle(
        "Qwen2.5-Coder", "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"
    ),  # Qwen2.5's vocabulary
    InfillStyle("StarCoder", "<fim_prefix>", "<fim_suffix>", "<fim_middle>"),  # StarCoder2, Granite Code
    InfillStyle("DeepSeek-Coder", "<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"),
)


def infill_style(tokenizer: ChatTokenizer) -> InfillStyle | None:
    """The style whose three tokens the tokenizer has, each as one token; None: none (the model was not
    made to fill in the middle)."""
    known = tokenizer.backend.token_to_id
    return next(
        (s for s in STYLES if all(known(t) is not None for t in (s.prefix, s.suffix, s.middle))), None
    )
