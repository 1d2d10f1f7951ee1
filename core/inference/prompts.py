"""A prompt measured against the model's context window, before anything is allocated for it.

Counting a long text stops once it is past the limit: refusing a 200k-token prompt costs what counting
the context's worth of tokens costs, not what tokenizing the whole text would.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from core.errors import ChatTemplateError, ContextLengthError
from core.inference.events import PromptFit

if TYPE_CHECKING:
    from core.inference.chat_tokenizer import ChatTokenizer

COUNT_PIECE_CHARS = 16_384  # a long text is counted piece by piece, and only as far as the limit needs
COUNT_SLACK_PER_PIECE = 8  # tokens a cut between pieces may add (cut at whitespace: usually 0 or 1)


@dataclass(frozen=True)
class RawPrompt:
    """Text the model continues as it is, without the chat template (OpenAI's /v1/completions)."""

    text: str


@dataclass(frozen=True)
class TokenPrompt:
    """Token ids the model continues as they are (a completion's prompt sent as ids, as lm-eval sends
    it): nothing added around them."""

    ids: tuple[int, ...]


@dataclass(frozen=True)
class Continuation:
    """A conversation whose last message is the model's own reply, cut short: the model goes on with it
    where it ended (transformers' and vLLM's `continue_final_message`)."""

    messages: tuple[dict[str, str], ...]


@dataclass(frozen=True)
class ToolUse:
    """A conversation with the tools its reply may call (OpenAI's `tools`, listed by the chat template);
    its messages may hold calls made and their results."""

    messages: tuple[dict[str, Any], ...]
    tools: tuple[dict[str, Any], ...]


# A conversation (with the chat template), raw text or ids, a conversation whose last reply goes on, or
# one with tools.
Prompt = Sequence[dict[str, str]] | RawPrompt | TokenPrompt | Continuation | ToolUse


def prompt_ids(tokenizer: ChatTokenizer, prompt: Prompt, thinking: bool = True) -> list[int]:
    """The ids the model reads: a conversation under the chat template, raw text with the tokens the
    tokenizer adds around a text (Llama's BOS), as vLLM's and llama.cpp's completions read it; a
    continuation as its reply was asked (the template up to the reply's start) with the reply's text as
    written after it: what the model read as it wrote it (templates that rewrite a reply, as
    DeepSeek-R1's drops its reasoning, have no say)."""
    if isinstance(prompt, RawPrompt):
        return tokenizer.encode(prompt.text, special=True)
    if isinstance(prompt, TokenPrompt):
        return list(prompt.ids)
    tools = prompt.tools if isinstance(prompt, ToolUse) else None
    asked, written = (
        (prompt.messages[:-1], prompt.messages[-1]["content"])
        if isinstance(prompt, Continuation)
        else (prompt.messages if isinstance(prompt, ToolUse) else prompt, "")
    )
    try:
        text = tokenizer.chat_text(asked, thinking=thinking, tools=tools)
    except Exception as exc:  # jinja's TemplateError and ValueError: the template refused these turns
        detail = " ".join(str(exc).split())[:300]
        raise ChatTemplateError(f"The model's chat template rejected this conversation: {detail}",
                                detail=detail) from exc  # fmt: skip
    return tokenizer.encode(text + written.rstrip())


def _pieces(text: str) -> Iterator[str]:
    """`text` in pieces of about COUNT_PIECE_CHARS, cut at whitespace where there is some."""
    start = 0
    while start < len(text):
        end = min(len(text), start + COUNT_PIECE_CHARS)
        if end < len(text):
            space = max(text.rfind(" ", start + COUNT_PIECE_CHARS // 2, end), text.rfind("\n", start, end))
            end = space if space > start else end
        yield text[start:end]
        start = end


def count_prompt_tokens(tokenizer: ChatTokenizer, prompt: Prompt, limit: int | None = None) -> int:
    """Tokens of the prompt (`prompt_ids`). Past `limit` the count may stop early and return a number
    that is still above the limit: the work is bounded by the limit, not by the text's length."""
    if isinstance(prompt, TokenPrompt):
        return len(prompt.ids)
    if limit is not None:
        rough = pieces = 0
        for text in _texts(prompt):
            for piece in _pieces(text):
                rough += len(tokenizer.encode(piece))
                pieces += 1
                if rough - COUNT_SLACK_PER_PIECE * pieces > limit * 1.1:
                    return rough - COUNT_SLACK_PER_PIECE * pieces
    return len(prompt_ids(tokenizer, prompt))


def _texts(prompt: Prompt) -> list[str]:
    """What a prompt's tokens are mostly made of: its messages' texts, and a tool use's tools and calls."""
    if isinstance(prompt, RawPrompt):
        return [prompt.text]
    turns = prompt.messages if isinstance(prompt, Continuation | ToolUse) else prompt
    texts = [message["content"] for message in turns]
    if isinstance(prompt, ToolUse):
        texts += [json.dumps(tool, ensure_ascii=False) for tool in prompt.tools]
        texts += [json.dumps(message["tool_calls"], ensure_ascii=False) for message in turns
                  if message.get("tool_calls")]  # fmt: skip
    return texts


def fit(tokens: int, context: int, max_new_tokens: int) -> PromptFit:
    """The reply's room: `max_new_tokens` capped to what the context leaves; ContextLengthError when
    the prompt leaves none."""
    if tokens >= context:
        at_least = "at least " if ContextLengthError.counting_stopped(tokens, context) else ""
        raise ContextLengthError(
            f"This model's maximum context length is {context} tokens, and the messages are "
            f"{at_least}{tokens} tokens, leaving no room for a reply. Shorten the messages.",
            tokens=tokens,
            budget=context - 1,
            context=context,
        )
    return PromptFit(tokens, min(max_new_tokens, context - tokens), context)
