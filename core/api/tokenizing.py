"""vLLM's tokenizer routes (POST /tokenize, POST /detokenize, GET /tokenizer_info), answered with the
served model's own tokenizer: a client counts a prompt's tokens before it sends it, and lm-eval's remote
tokenizer encodes its tasks with them (then scores them through /v1/completions' `echo` and `logprobs`)."""

from __future__ import annotations

from typing import Any

from core.api.asked import chat_prompt, known_ids
from core.api.schemas import DetokenizeRequest, TokenizeChatRequest, TokenizeTextRequest
from core.inference.chat_tokenizer import ChatTokenizer
from core.inference.prompts import ToolUse, prompt_ids

NAMED_TOKENS = ("bos_token", "eos_token", "pad_token", "unk_token")


def tokenized(
    tokenizer: ChatTokenizer, body: TokenizeTextRequest | TokenizeChatRequest, context: int
) -> dict[str, Any]:
    """A text's ids, or a conversation's under the chat template (as a chat completion reads it), as vLLM
    writes them: their count, the model's context, and each token's text where asked."""
    if isinstance(body, TokenizeTextRequest):
        ids = tokenizer.encode(body.prompt, special=body.add_special_tokens)
    else:
        prompt = chat_prompt(body)
        if body.tools and isinstance(prompt, list):
            prompt = ToolUse(tuple(prompt), body.listed_tools)
        ids = prompt_ids(tokenizer, prompt, thinking=body.thinking is not False)
    texts = [tokenizer.backend.id_to_token(token) for token in ids] if body.return_token_strs else None
    return {"count": len(ids), "max_model_len": context, "tokens": ids, "token_strs": texts}


def detokenized(tokenizer: ChatTokenizer, body: DetokenizeRequest) -> dict[str, str]:
    """The text of the ids, special tokens written out (vLLM's); 400 naming an id the tokenizer lacks."""
    ids = known_ids(body.tokens, tokenizer.vocabulary_size, "tokens")
    return {"prompt": tokenizer.decode(ids, skip_special_tokens=False)}


def tokenizer_info(tokenizer: ChatTokenizer, context: int) -> dict[str, Any]:
    """The tokenizer's named tokens, its chat template and the model's context (vLLM's keys)."""
    named = {name: tokenizer.special_tokens.get(name) for name in NAMED_TOKENS}
    return {**named, "chat_template": tokenizer.chat_template or None, "model_max_length": context}
