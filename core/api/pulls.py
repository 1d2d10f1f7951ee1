"""Ollama's POST /api/pull, for the programs of this machine (Open WebUI's model manager, `ollama pull`
with OLLAMA_HOST set here): a catalog key, or a Hugging Face repo id or page (Ollama's hf.co/org/name),
added to the catalog as the Models page adds one (checked before a byte is fetched), then downloaded by
the dashboard's download manager (resumed, mirrors, every file verified), its progress written as
Ollama's lines. A client that leaves does not stop the download: the Models page shows it going on."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from core.errors import NotFoundError
from core.hub.listing import repo_id_of_model_page
from core.hub.transfer import describe

if TYPE_CHECKING:
    from core.hub.library import ModelLibrary

POLL_S = 0.25  # how often the progress is read while a download runs
RUNNING = ("running",)


def catalog_key(library: ModelLibrary, name: str) -> str:
    """The catalog key `name` means (a key, with or without Ollama's tag, or a repo id in the catalog);
    else the repo it names, added to the catalog (the hub is asked first: LocalLLMError with the reason
    where it cannot be run here)."""
    bare = name.removesuffix(":latest")
    try:
        return library.get(bare).key
    except NotFoundError:
        return library.add_custom(repo_id_of_model_page(name)).key


def pull_lines(library: ModelLibrary, key: str) -> Iterator[dict[str, Any]]:
    """Ollama's lines for the download of `key`: the files' progress while it runs, then success, or
    the reason it failed (`{"error": ...}`)."""
    yield {"status": "pulling manifest"}
    if library.status(key).kind != "ready":
        library.download(key)  # or joins the download already under way
        last: dict[str, Any] | None = None
        while True:
            progress = library.manager.wait(key, timeout=POLL_S)
            if progress is None:
                break
            line = {"status": f"pulling {progress.current_file or key}", "digest": key,
                    "total": progress.bytes_total, "completed": progress.bytes_done}  # fmt: skip
            if line != last and progress.bytes_total:  # the last one too: a bar that ends full
                yield line
                last = line
            if progress.state not in RUNNING:
                break
        if library.status(key).kind != "ready":
            failed = progress.error if progress is not None and progress.error else describe(None)
            yield {"error": f"{key} was not downloaded: {failed}"}
            return
    yield {"status": "verifying sha256 digest"}
    yield {"status": "success"}
