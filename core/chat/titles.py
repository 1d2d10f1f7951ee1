"""A conversation's title made from its first message."""

from __future__ import annotations

TITLE_CHARS = 40  # a title made from a message is at most this long, its ellipsis included


def title_from(text: str) -> str:
    """The first non-blank line of `text`, whitespace collapsed, cut to TITLE_CHARS at a word's end
    where a word ends late enough (Latin text), with an ellipsis where anything was cut; "" if blank."""
    line = next((" ".join(line.split()) for line in text.splitlines() if line.strip()), "")
    if len(line) <= TITLE_CHARS:
        return line
    kept = line[: TITLE_CHARS - 1]
    space = kept.rfind(" ")
    if line[TITLE_CHARS - 1] != " " and space >= TITLE_CHARS // 2:  # a word would be cut: drop it
        kept = kept[:space]
    return kept.rstrip(" ,.;:-") + "…"
