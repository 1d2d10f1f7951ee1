"""Finished replies' KV caches, kept for a later prompt that starts with the same tokens.

A chat sends the whole conversation every turn: without this each message prefills all the turns
before it again (seconds on a CPU once a conversation is long). Like llama.cpp's server (cache_prompt)
and vLLM's prefix caching, a new prompt starts from the longest common prefix of a kept cache and
prefills only the rest. Caches are kept per owner (a conversation, an API client): a prompt never
starts from another owner's cache, so nobody can time a reply to learn what someone else wrote. The
batch bounds how many are kept: kept and running caches together stay within the replies at once that
memory was planned for.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.inference.decoder import KvCache


@dataclass(frozen=True)
class Kept:
    """A finished reply's cache and the tokens in it (its prompt, then the reply but its last token)."""

    owner: str
    tokens: tuple[int, ...]
    cache: KvCache


def common_prefix(first: tuple[int, ...], second: list[int]) -> int:
    """How many tokens the two sequences share from the start."""
    count = 0
    for a, b in zip(first, second, strict=False):
        if a != b:
            break
        count += 1
    return count


class KeptCaches:
    """Kept caches, oldest first; the batch's torch thread is the only one that touches them."""

    def __init__(self) -> None:
        self._kept: list[Kept] = []

    def __len__(self) -> int:
        return len(self._kept)

    def best(self, owner: str, prompt: list[int]) -> tuple[Kept | None, int]:
        """The owner's kept cache sharing the most leading tokens with `prompt`, and how many it can give:
        at most all but the prompt's last token, whose logits the reply needs."""
        found, shared = None, 0
        for kept in self._kept:
            if kept.owner == owner:
                count = min(common_prefix(kept.tokens, prompt), len(prompt) - 1)
                if count > shared:
                    found, shared = kept, count
        return found, shared

    def keep(self, owner: str, tokens: list[int], cache: KvCache) -> None:
        """Keep a cache holding `tokens` (the newest kept last)."""
        self.discard(cache)
        if tokens:
            self._kept.append(Kept(owner, tuple(tokens), cache))

    def holds(self, cache: KvCache) -> bool:
        return any(kept.cache is cache for kept in self._kept)

    def discard(self, cache: KvCache) -> None:
        """Forget `cache`: it is about to hold something else."""
        self._kept = [kept for kept in self._kept if kept.cache is not cache]

    def trim(self, most: int) -> None:
        """Drop the oldest until at most `most` are kept."""
        del self._kept[: max(0, len(self._kept) - max(0, most))]
