"""Embeddings as OpenAI's `/v1/embeddings` and Ollama's `/api/embed` (and its older `/api/embeddings`)
answer them: the inputs measured against the model's context (cut to it where the request allows, as
Ollama's `truncate`, else refused in a sentence), embedded by the engine (core.inference.embedding),
written as floats or base64 (OpenAI's client asks for base64 unless told otherwise)."""

from __future__ import annotations

import base64
import math
import struct
from collections.abc import Sequence
from typing import Any

from core.api.asked import known_ids
from core.api.errors import APIError

INPUTS_A_TURN = 8  # embedded in one turn of the engine's (which runs alone): a long list waits its turns


def token_inputs(
    tokenizer: Any, inputs: Sequence[str | list[int]], context: int, truncate: bool
) -> list[list[int]]:
    """Each input's ids (a text with the tokens the tokenizer adds around one), within the context."""
    read = []
    for index, asked in enumerate(inputs):
        ids = tokenizer.encode(asked, special=True) if isinstance(asked, str) else known_ids(
            asked, tokenizer.vocabulary_size, "input"
        )  # fmt: skip
        if not ids:
            raise APIError(400, f"Input {index} is empty: there is nothing to embed.", param="input")
        if len(ids) > context and not truncate:
            raise APIError(400, f"Input {index} has {len(ids)} tokens, more than the model's context of "
                           f"{context}: shorten it.", code="context_length_exceeded",
                           param="input")  # fmt: skip
        read.append(ids[:context])
    return read


def shortened(vectors: list[list[float]], dimensions: int | None) -> list[list[float]]:
    """The vectors cut to their first `dimensions`, normalised again (what models trained for it, as
    Qwen3-Embedding, mean by fewer dimensions); 400 beyond their size."""
    size = len(vectors[0])
    if dimensions is None or dimensions == size:
        return vectors
    if dimensions > size:
        raise APIError(400, f"This model's embeddings have {size} dimensions, not {dimensions}.",
                       param="dimensions")  # fmt: skip
    cut = [vector[:dimensions] for vector in vectors]
    return [[value / (math.sqrt(sum(v * v for v in vector)) or 1.0) for value in vector] for vector in cut]


def openai_list(model: str, vectors: list[list[float]], tokens: int, encoding: str) -> dict[str, Any]:
    """OpenAI's answer: a list of embeddings, as floats or as base64 of little-endian float32."""

    def written(vector: list[float]) -> list[float] | str:
        if encoding == "float":
            return vector
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")

    data = [{"object": "embedding", "index": index, "embedding": written(vector)}
            for index, vector in enumerate(vectors)]  # fmt: skip
    return {"object": "list", "data": data, "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}  # fmt: skip
