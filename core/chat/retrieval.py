"""Attached files in the context: whole when they fit; otherwise the passages most relevant to the
question, ranked with BM25+ (rank-bm25; its idf stays positive in a file of few passages) and given in
their order in the file, and the reply says which.

Text is cut into passages of about PASSAGE_CHARS characters at paragraph, then sentence, boundaries.
Terms are words for alphabetic scripts and single characters plus character pairs for Chinese and
Japanese (no word segmenter needed: pairs catch most two-character words).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

PASSAGE_CHARS = 1_200
DOCUMENT_SHARE = 0.75  # of the prompt's room that attached files may take when they do not all fit
_CJK = r"\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af"
_TERM = re.compile(rf"[{_CJK}]+|[^\W_{_CJK}]+", re.UNICODE)
_SENTENCE_END = re.compile(r"(?<=[.!?。！？；;])\s*")


@dataclass(frozen=True)
class FileText:
    name: str
    text: str


@dataclass(frozen=True)
class Passage:
    file: str
    index: int  # 1-based, in the file's order
    total: int
    text: str


@dataclass(frozen=True)
class FileUse:
    """What of one file went into the context: all of it, or these passages (1-based) of `total`."""

    file: str
    passages: tuple[int, ...] | None
    total: int

    def to_dict(self) -> dict[str, object]:
        passages = None if self.passages is None else list(self.passages)
        return {"file": self.file, "passages": passages, "of": self.total}

    @classmethod
    def from_dict(cls, stored: dict[str, Any]) -> FileUse:
        passages = stored.get("passages")
        return cls(
            str(stored.get("file", "")),
            None if passages is None else tuple(passages),
            int(stored.get("of", 1)),
        )


def _pieces(paragraph: str) -> list[str]:
    """A paragraph in pieces of at most PASSAGE_CHARS: whole sentences where they fit."""
    if len(paragraph) <= PASSAGE_CHARS:
        return [paragraph]
    pieces, current = [], ""
    for sentence in _SENTENCE_END.split(paragraph):
        while len(sentence) > PASSAGE_CHARS:  # one endless sentence: cut it
            pieces, current = [*pieces, current] if current else pieces, ""
            pieces.append(sentence[:PASSAGE_CHARS])
            sentence = sentence[PASSAGE_CHARS:]
        if current and len(current) + len(sentence) + 1 > PASSAGE_CHARS:
            pieces.append(current)
            current = ""
        current = f"{current} {sentence}".strip()
    return [*pieces, current] if current else pieces


def passages(name: str, text: str) -> list[Passage]:
    """The file's text in passages: paragraphs joined up to about PASSAGE_CHARS characters."""
    chunks, current = [], ""
    for paragraph in re.split(r"\n\s*\n", text):
        for piece in _pieces(paragraph.strip()):
            if current and len(current) + len(piece) + 2 > PASSAGE_CHARS:
                chunks.append(current)
                current = ""
            current = f"{current}\n\n{piece}".strip()
    if current:
        chunks.append(current)
    return [Passage(name, number, len(chunks), chunk) for number, chunk in enumerate(chunks, 1)]


def terms(text: str) -> list[str]:
    """Search terms: lower-case words, and CJK characters with their neighbouring pairs."""
    found: list[str] = []
    for run in _TERM.findall(text.lower()):
        if re.match(rf"[{_CJK}]", run):
            found += list(run) + [run[i : i + 2] for i in range(len(run) - 1)]
        else:
            found.append(run)
    return found


def ranked(candidates: Sequence[Passage], query: str) -> list[Passage]:
    """The passages, most relevant to `query` first (BM25); in the files' order when nothing matches."""
    from rank_bm25 import BM25Plus

    query_terms = terms(query)
    if not candidates or not query_terms:
        return list(candidates)
    scores = BM25Plus([terms(p.text) or [""] for p in candidates]).get_scores(query_terms)
    order = sorted(range(len(candidates)), key=lambda i: (-scores[i], i))
    return [candidates[i] for i in order]


def block(files: Sequence[FileText], chosen: Sequence[Passage] | None = None) -> str:
    """The files as the model reads them before the question: whole, or only the `chosen` passages."""
    parts = []
    for file in files:
        if chosen is None:
            parts.append(f"<file name={file.name!r}>\n{file.text}\n</file>")
            continue
        mine = sorted((p for p in chosen if p.file == file.name), key=lambda p: p.index)
        if mine:
            body = "\n\n".join(f"[passage {p.index} of {p.total}]\n{p.text}" for p in mine)
            parts.append(f"<file name={file.name!r} excerpts=true>\n{body}\n</file>")
    return "\n\n".join(parts)


def fit_files(
    files: Sequence[FileText], query: str, room_tokens: int, count_text: Callable[[str, int], int]
) -> tuple[str, list[FileUse]]:
    """The files' block for a prompt with `room_tokens` left for it, and what of each file it holds.

    `count_text(text, limit)` counts a text's tokens, and may stop counting above `limit`."""
    whole = block(files)
    if count_text(whole, room_tokens) <= room_tokens:
        return whole, [FileUse(f.name, None, 1) for f in files]
    chosen: list[Passage] = []
    used = 0
    for passage in ranked([p for f in files for p in passages(f.name, f.text)], query):
        cost = count_text(passage.text, room_tokens) + 12  # the passage's label
        if used + cost <= room_tokens:
            chosen.append(passage)
            used += cost
        if room_tokens - used < 64:
            break
    while chosen and count_text(block(files, chosen), room_tokens) > room_tokens:
        chosen.pop()  # the labels and tags took more than estimated: the least relevant goes
    uses = [
        FileUse(
            f.name, tuple(sorted(p.index for p in chosen if p.file == f.name)), len(passages(f.name, f.text))
        )
        for f in files
    ]
    return block(files, chosen), uses


def with_files(
    system: list[dict[str, str]],
    history: list[dict[str, str]],
    files: Sequence[FileText],
    query: str,
    budget_tokens: int,
    count: Callable[[list[dict[str, str]], int], int],
) -> tuple[list[dict[str, str]], list[FileUse]]:
    """`history` with the files before its newest message, and what of each file went in.

    The files are whole when they fit beside the whole history, or beside the newest message within
    DOCUMENT_SHARE of the budget (older messages then make room); otherwise the most relevant passages
    fill that share. `count(messages, limit)` counts a prompt's tokens and may stop above `limit`."""
    *earlier, newest = history
    empty = count([{"role": "user", "content": ""}], budget_tokens)

    def count_text(text: str, limit: int) -> int:
        return count([{"role": "user", "content": text}], limit + empty) - empty

    room_beside_all = budget_tokens - count(system + history, budget_tokens)
    room_beside_newest = int(budget_tokens * DOCUMENT_SHARE) - count([*system, newest], budget_tokens)
    files_text, uses = fit_files(files, query, max(room_beside_all, room_beside_newest), count_text)
    if files_text:
        newest = {**newest, "content": f"{files_text}\n\n{newest['content']}"}
    return [*earlier, newest], uses
