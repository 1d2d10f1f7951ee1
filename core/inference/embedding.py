"""Embeddings: a text as one vector, the model's final hidden state after its last token (what vLLM
pools a decoder-only model to, and what Qwen3-Embedding and gte-Qwen2 are trained for), L2-normalised,
so that a dot product is the cosine similarity. The text is read a chunk at a time, as a prompt is."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from core.inference.loading import LoadedParts

CHUNK_TOKENS = 512  # read a chunk at a time: a long text's activations stay bounded


def embed_ids(parts: LoadedParts, inputs: list[list[int]]) -> list[list[float]]:
    """Each input's (token ids, at least one) vector (run on the engine's torch thread)."""
    import torch

    vectors = []
    with torch.inference_mode():
        for ids in inputs:
            state_after = _state_reader(parts, len(ids))
            sequence = torch.tensor(ids, device=parts.info.device)
            for start in range(0, len(ids), CHUNK_TOKENS):
                state = state_after(sequence[start : start + CHUNK_TOKENS])
            vectors.append(torch.nn.functional.normalize(state.float(), dim=-1).tolist())
    return vectors


def _state_reader(parts: LoadedParts, tokens: int) -> Callable[[Any], Any]:
    """A function that appends a chunk of ids (1-D) to one sequence and gives the final hidden state
    after its last: the lean decoder's, else transformers' (its last hidden state is after the norm)."""
    if parts.decoder is not None:
        from core.inference.decoder import KvCache

        cache = KvCache(parts.decoder, tokens)
        return lambda chunk: parts.decoder.state_after(cache, chunk)
    from transformers import DynamicCache

    cache = DynamicCache()
    return lambda chunk: parts.model(
        chunk.unsqueeze(0), cache=cache, use_cache=True, output_hidden_states=True
    ).hidden_states[-1][0, -1]
