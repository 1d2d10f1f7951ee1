"""Finding chat models on the Hub by name: one bounded request to an endpoint's `/api/models`.

What comes back is a server's say (any mirror the user lists), so every entry is checked before it is
shown: a repo id the Hub's rules accept, counts that are whole numbers in range; an entry that fails is
left out, a body that is not a list of models or larger than MAX_SEARCH_BYTES is refused. Quantized
copies (-AWQ, -GPTQ, -bnb-4bit: refused when added, as the engine quantizes the original itself) are
left out and counted.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx2
from huggingface_hub import errors as hf_errors
from huggingface_hub.utils import get_session

from core.errors import InvalidRepoIdError, InvalidSearchError, SearchFailedError
from core.hub.listing import HUB_TIMEOUT, quantized_copy_of, request_headers, validate_repo_id
from core.hub.reachability import RecentFailures
from core.hub.transfer import REASONS, reason_of

SEARCH_RESULTS = 20
WIDER_ASKED = 100  # asked for one word of several, the others required here
MAX_ENTRIES_READ = 2 * WIDER_ASKED
MAX_QUERY_CHARS = 100
MAX_SEARCH_BYTES = 4 * 1024 * 1024  # 20 entries with their safetensors counts take ~10 KB
MAX_PARAMETERS = 10**13  # a larger count is no model's but a hostile answer's
MAX_COUNT = 10**12  # downloads, likes
# No connection, or no answer: the endpoint cannot be reached (an error status is an answer).
UNREACHABLE = (httpx2.ConnectError, httpx2.TimeoutException, httpx2.ProxyError)
DTYPE_BYTES = {"F64": 8, "I64": 8, "F32": 4, "I32": 4, "F16": 2, "BF16": 2, "I16": 2, "F8_E4M3": 1,
               "F8_E5M2": 1, "I8": 1, "U8": 1, "BOOL": 1}  # fmt: skip
# What the Hub is asked for: chat models transformers runs (no GGUF-only repos), the most downloaded first.
_ASKED = (
    ("pipeline_tag", "text-generation"), ("filter", "transformers"), ("sort", "downloads"),
    *(("expand", name) for name in ("downloads", "likes", "gated", "safetensors")),
)  # fmt: skip


@dataclass(frozen=True)
class FoundModel:
    """A repository the Hub listed for a search; `parameters` and `download_bytes` are 0 where its
    safetensors metadata was not given (weights in .bin files, or a mirror that leaves it out)."""

    repo_id: str
    downloads: int
    likes: int
    parameters: int
    download_bytes: int  # the weights' bytes as stored: their dtype's size × their count
    gated: bool


@dataclass(frozen=True)
class SearchResults:
    query: str
    endpoint: str  # the endpoint that answered
    models: tuple[FoundModel, ...]
    copies_left_out: int = 0  # quantized copies among the answer's entries


def search_query(text: str) -> str:
    """The query as it is sent: trimmed, at least 2 and at most MAX_QUERY_CHARS characters."""
    query = " ".join(text.split())
    if len(query) < 2:
        raise InvalidSearchError("Type at least two letters of a model's name to search for.")
    if len(query) > MAX_QUERY_CHARS:
        raise InvalidSearchError(
            f"The search is {len(query)} characters long; at most {MAX_QUERY_CHARS} are sent."
        )
    return query


def search_models(
    text: str, endpoints: Sequence[str], limit: int = SEARCH_RESULTS, failures: RecentFailures | None = None
) -> SearchResults:
    """The Hub's chat models whose name holds `text`, from the first endpoint that answers with a list
    of models (a mirror that fails, refuses or answers otherwise: the next one). `failures` is told of
    those that could not be reached (not of those that answered otherwise: a mirror may download without
    searching) and of the one that answered."""
    query = search_query(text)
    words = query.split()
    last: BaseException | None = None
    for endpoint in endpoints:
        try:
            # Twice as many asked: the most downloaded include many quantized copies, left out.
            models, copies = found_models(_fetch(query, endpoint, 2 * limit), limit)
            if not models and len(words) > 1:
                # The Hub matches `search` as one substring of a name ("qwen2.5 instruct" is in none):
                # asked again for the longest word, the others then required here.
                longest = max(words, key=len)
                models, copies = found_models(_fetch(longest, endpoint, WIDER_ASKED), limit, words)
        except (httpx2.TransportError, hf_errors.OfflineModeIsEnabled, OSError, ValueError) as exc:
            last = exc
            if failures is not None and isinstance(exc, UNREACHABLE):
                failures.failed(endpoint)
        else:
            if failures is not None:
                failures.answered(endpoint)
            return SearchResults(query, endpoint, models, copies)
    reason = reason_of(last)
    tried = ", ".join(endpoints)
    raise SearchFailedError(
        f"Could not search for {query!r}: {REASONS[reason]} ({tried}). Check the network, or add a mirror "
        "in the download settings, then try again.",
        query=query, endpoints=tried, reason=reason,
    )  # fmt: skip


def _fetch(query: str, endpoint: str, limit: int) -> bytes:
    """The answer's body, at most MAX_SEARCH_BYTES (ValueError past it); an error status raised as a
    failure worth the next endpoint (a mirror may not know the search's parameters)."""
    params = [("search", query), ("limit", str(limit)), *_ASKED]
    with get_session().stream(
        "GET", f"{endpoint.rstrip('/')}/api/models", params=params, headers=request_headers(endpoint),
        follow_redirects=True, timeout=HUB_TIMEOUT,
    ) as response:  # fmt: skip
        if response.status_code != 200:
            raise httpx2.TransportError(f"HTTP {response.status_code}")
        body = bytearray()
        for chunk in response.iter_bytes():
            body += chunk
            if len(body) > MAX_SEARCH_BYTES:
                raise ValueError(f"a search's answer over {MAX_SEARCH_BYTES} bytes")
    return bytes(body)


def found_models(
    body: bytes, limit: int = SEARCH_RESULTS, words: Sequence[str] = ()
) -> tuple[tuple[FoundModel, ...], int]:
    """The entries of a search's answer that check out (and hold each of `words`, any case), at most
    `limit`, each repo once, and how many quantized copies were left out; ValueError for a body that
    is no JSON list."""
    try:
        entries = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        entries = None
    if not isinstance(entries, list):
        raise ValueError("a search's answer that is not a list of models")
    found: dict[str, FoundModel] = {}
    copies = 0
    wanted = [word.lower() for word in words]
    for entry in entries[:MAX_ENTRIES_READ]:  # the rest is not read
        model = _found(entry)
        if model is None or model.repo_id.lower() in found:
            continue
        if not all(word in model.repo_id.lower() for word in wanted):
            continue
        if quantized_copy_of(model.repo_id):
            copies += 1
        else:
            found[model.repo_id.lower()] = model
    return tuple(found.values())[:limit], copies


def _found(entry: object) -> FoundModel | None:
    if not isinstance(entry, dict):
        return None
    try:
        repo_id = validate_repo_id(str(entry.get("id") or entry.get("modelId") or "")[:200])
    except InvalidRepoIdError:
        return None
    parameters, download_bytes = _weights(entry.get("safetensors"))
    gated = entry.get("gated")
    return FoundModel(
        repo_id, _count(entry.get("downloads"), MAX_COUNT), _count(entry.get("likes"), MAX_COUNT),
        parameters, download_bytes, gated not in (None, False, "false"),
    )  # fmt: skip


def _count(value: Any, most: int) -> int:
    """A whole number from 0 to `most`, else 0."""
    return value if type(value) is int and 0 <= value <= most else 0


def _weights(metadata: Any) -> tuple[int, int]:
    """Parameters and their stored bytes from the Hub's safetensors summary, (0, 0) where it is not
    one: {"parameters": {"BF16": n, ...}, "total": n}."""
    by_dtype = metadata.get("parameters") if isinstance(metadata, dict) else None
    if not isinstance(by_dtype, dict) or len(by_dtype) > len(DTYPE_BYTES):
        return 0, 0
    counts = {dtype: _count(count, MAX_PARAMETERS) for dtype, count in by_dtype.items()}
    total = sum(counts.values())
    if total == 0 or total > MAX_PARAMETERS:
        return 0, 0
    return total, sum(count * DTYPE_BYTES.get(dtype, 2) for dtype, count in counts.items())
