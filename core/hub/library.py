"""The user's model library: catalog plus custom models, their state on disk, plans and downloads."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TypeVar

import httpx2
from huggingface_hub import HfApi
from huggingface_hub import errors as hf_errors

from core.errors import ConfigError, InvalidRepoIdError, LocalLLMError, NotFoundError
from core.hardware import HardwareInfo
from core.hub import listing as hub
from core.hub.catalog import BUILTIN_MODELS, ModelSpec, custom_spec, key_for_repo
from core.hub.listing import RemoteFile, RepoListing
from core.hub.manager import DownloadManager
from core.hub.search import SearchResults, search_models
from core.hub.store import (
    FileCheck,
    Manifest,
    bytes_on_disk,
    config_count,
    delete_model,
    find_in_hf_cache,
    model_dir,
    partial_path,
    quick_check,
    read_manifest,
    sha256_file,
    verify,
    write_manifest,
)
from core.hub.transfer import DownloadTarget, Progress, disk_free_bytes, endpoints_failed, reason_of
from core.inference.sizing import (
    KvLayout,
    MemoryEstimate,
    Precision,
    Vocabulary,
    estimate_memory,
    memory_verdict,
    model_memory,
)
from core.preferences import PREFERENCES, Preferences
from core.storage import jobs, repo
from core.storage.db import Database

MODELS_NAMED = 10  # a catalog key not found: the message names this many of the keys there are

T = TypeVar("T")


@dataclass(frozen=True)
class ModelStatus:
    kind: str  # "not_downloaded", "partial", "downloading", "ready", "damaged"
    fraction: float = 0.0
    problems: tuple[FileCheck, ...] = ()


@dataclass(frozen=True)
class DownloadPlan:
    spec: ModelSpec
    listing: RepoListing
    endpoint: str
    bytes_on_disk: int
    disk_free_bytes: int

    @property
    def bytes_to_fetch(self) -> int:
        return self.listing.total_bytes - self.bytes_on_disk


@dataclass(frozen=True)
class EndpointProbe:
    endpoint: str
    ok: bool
    latency_ms: float
    reason: str = ""  # why not: a key of core.hub.transfer.REASONS (the pages translate it)


class ModelLibrary:
    """Catalog, custom models, status on disk and downloads, backed by the database and a manager."""

    def __init__(
        self,
        db: Database,
        preferences: Preferences | None = None,
        manager: DownloadManager | None = None,
        *,
        endpoints_override: list[str] | None = None,
    ) -> None:
        """The models folder is the saved preference's at construction; `endpoints_override` (the CLI's
        --endpoint) replaces the saved endpoint order for this library only."""
        self.db = db
        self.preferences = preferences or Preferences(db)
        self.models_dir: Path = self.preferences.get("models_dir")
        check = PREFERENCES["endpoints"].check
        self._endpoints_override = check(endpoints_override) if endpoints_override else []
        self.manager = manager or DownloadManager(db, self.models_dir, self.endpoints)

    # -- endpoints ------------------------------------------------------------------------------
    def endpoints(self) -> list[str]:
        """Override (CLI --endpoint), else the saved order, else the environment's, else the default."""
        return list(self._endpoints_override) or list(self.preferences.get("endpoints"))

    def set_endpoints(self, urls: list[str]) -> list[str]:
        return self.preferences.set("endpoints", urls)

    def probe_endpoint(self, endpoint: str, timeout_s: float = 5.0) -> EndpointProbe:
        """Reachability and latency: ask the endpoint for the first catalog model's info (one that does not
        answer is asked last for a while, one that does in its turn: `RecentFailures`)."""
        started = time.perf_counter()
        try:
            HfApi(endpoint=endpoint, token=False).model_info(BUILTIN_MODELS[0].repo_id, timeout=timeout_s)
        except hf_errors.HfHubHTTPError:
            return EndpointProbe(endpoint, False, 0.0, "server")
        except (httpx2.TransportError, OSError) as exc:
            self.manager.failures.failed(endpoint)
            return EndpointProbe(endpoint, False, 0.0, reason_of(exc))
        self.manager.failures.answered(endpoint)
        return EndpointProbe(endpoint, True, (time.perf_counter() - started) * 1000)

    @property
    def auto_resume(self) -> bool:
        return self.preferences.get("auto_resume")

    def set_auto_resume(self, enabled: bool) -> None:
        self.preferences.set("auto_resume", enabled)

    # -- catalog --------------------------------------------------------------------------------
    def models(self) -> list[ModelSpec]:
        with self.db.begin() as session:
            custom = repo.list_custom_models(session)
        return [*BUILTIN_MODELS, *(custom_spec(*row) for row in custom)]

    def ready_keys(self) -> list[str]:
        """The models downloaded and verified, ready to load (what a server offers)."""
        return [spec.key for spec in self.models() if self.status(spec.key).kind == "ready"]

    def get(self, key_or_repo_id: str) -> ModelSpec:
        models = self.models()
        repo_id = hub.repo_id_of_model_page(key_or_repo_id.strip()).lower()  # as the Hub takes it
        for spec in models:
            if key_or_repo_id == spec.key or repo_id == spec.repo_id.lower():
                return spec
        keys = [spec.key for spec in models]
        listed = ", ".join(keys[:MODELS_NAMED]) + (", …" if len(keys) > MODELS_NAMED else "")
        asked = key_or_repo_id[:100]  # echoed: bounded whatever was sent
        raise NotFoundError(f"No model {asked!r} in the catalog (it has {listed}).", key=asked)

    def add_custom(self, repo_id: str, revision: str = "main") -> ModelSpec:
        """Validate a repo id, check on the hub that the app can run it, and store it in the catalog."""
        repo_id = hub.validate_repo_id(repo_id)
        if any(spec.repo_id.lower() == repo_id.lower() for spec in self.models()):
            raise InvalidRepoIdError(f"{repo_id} is already in the catalog.", repo_id=repo_id)
        details = self._from_first_endpoint(
            repo_id, lambda endpoint: self._details(repo_id, revision, endpoint)
        )
        with self.db.begin() as session:
            taken = {spec.key for spec in self.models()}
            key = key_for_repo(repo_id, taken)
            repo.add_custom_model(session, key, repo_id, revision, details)
        return self.get(key)

    def search(self, text: str) -> SearchResults:
        """The Hub's chat models whose name holds `text`, from the download endpoints in order (those that
        failed lately last, and one that cannot be reached now is asked last by the next check)."""
        failures = self.manager.failures
        return search_models(text, failures.ordered(self.endpoints()), failures=failures)

    def remove_custom(self, key: str) -> None:
        if not self.get(key).custom:
            raise ConfigError(
                f"{key} is built in and cannot be removed from the catalog.", reason="built_in", key=key
            )
        with self.db.begin() as session:
            repo.delete_custom_model(session, key)

    def _details(self, repo_id: str, revision: str, endpoint: str) -> dict[str, object]:
        """What the catalog keeps of a model the app can run, from one endpoint."""
        listing = hub.fetch_listing(repo_id, revision, endpoint)
        hub.check_runnable(listing, endpoint)
        config = hub.fetch_json(endpoint, repo_id, listing.commit, "config.json")
        return {
            "download_bytes": listing.total_bytes,
            "parameters": self._parameter_count(repo_id, listing, endpoint),
            "context_length": config_count(config, "max_position_embeddings"),
            "kv_layout": asdict(KvLayout.from_config(config)),
            "vocabulary": asdict(Vocabulary.from_config(config)),
            "languages": list(listing.languages),
            "license": listing.license,
        }

    @staticmethod
    def _parameter_count(repo_id: str, listing: RepoListing, endpoint: str) -> int:
        """From the weights' headers; 0 where the server does not give them (a connection that fails is
        the next endpoint's turn)."""
        try:
            metadata = HfApi(endpoint=endpoint, token=hub.token_for(endpoint)).get_safetensors_metadata(
                repo_id, revision=listing.commit
            )
        except (hf_errors.HfHubHTTPError, hf_errors.SafetensorsParsingError):
            return 0
        return sum(metadata.parameter_count.values())

    def _from_first_endpoint(self, repo_id: str, ask: Callable[[str], T]) -> T:
        """What the first endpoint answers without a network failure (a connection refused, reset or
        timed out, a server error: the next endpoint, and this one is asked last for a while); a refusal
        (LocalLLMError) is raised at once."""
        last: Exception | None = None
        endpoints = self.manager.failures.ordered(self.endpoints())
        for endpoint in endpoints:
            try:
                answer = ask(endpoint)
            except LocalLLMError:
                raise
            except (hf_errors.HfHubHTTPError, httpx2.TransportError, OSError) as exc:
                last = exc
                self.manager.failures.failed(endpoint)
            else:
                self.manager.failures.answered(endpoint)
                return answer
        raise endpoints_failed(repo_id, "", endpoints, last)

    # -- state on disk --------------------------------------------------------------------------
    def directory(self, key: str) -> Path:
        return model_dir(self.models_dir, key)

    def status(self, key: str) -> ModelStatus:
        progress = self.manager.progress(key)
        if progress and progress.state == "running":
            return ModelStatus("downloading", progress.fraction)
        directory = self.directory(key)
        manifest = read_manifest(directory)
        if manifest is not None:
            problems = tuple(c for c in quick_check(directory, manifest) if not c.ok)
            return ModelStatus("damaged", problems=problems) if problems else ModelStatus("ready", 1.0)
        if not (directory.exists() and any(p.is_file() for p in directory.rglob("*"))):
            return ModelStatus("not_downloaded")
        return ModelStatus("partial", progress.fraction if progress else 0.0)

    def context_tokens(self, key: str) -> int:
        """The context length chosen for `key` (Settings), at most the model's window when known."""
        window = self.get(key).context_length
        chosen = self.preferences.context_for(key)
        return min(chosen, window) if window else chosen

    def memory_estimate(
        self, key: str, precision: Precision, context_tokens: int | None = None
    ) -> MemoryEstimate | None:
        """What running `key` needs with `context_tokens` of KV cache (default: its chosen context):
        exact from its files once downloaded, else from the catalog."""
        tokens = context_tokens or self.context_tokens(key)
        if self.status(key).kind == "ready":
            return model_memory(self.directory(key), precision, tokens)
        spec = self.get(key)
        if not spec.parameters or spec.kv_layout is None:
            return None
        return estimate_memory(spec.parameters, spec.kv_layout, precision, spec.vocabulary, tokens)

    def first_model(self, language: str, precision: Precision, hardware: HardwareInfo) -> ModelSpec | None:
        """The model to start chatting with where none is ready: one on its way (downloading, or partly
        downloaded), else the built-in one whose main language is `language` (the catalog's advice:
        Qwen2.5-0.5B for Chinese, TinyLlama for English), else the other; one that fits this machine's
        memory and disk. None when none does."""
        models = self.models()
        if on_its_way := next(
            (spec for spec in models if self.status(spec.key).kind in ("downloading", "partial")), None
        ):
            return on_its_way
        ranked = sorted(BUILTIN_MODELS, key=lambda spec: spec.languages[:1] != (language,))
        return next((spec for spec in ranked if self.fits(spec, precision, hardware)), None)

    def fits(self, spec: ModelSpec, precision: Precision, hardware: HardwareInfo) -> bool:
        """Whether `spec`'s model with a reply's cache fits this machine's memory (GPU or RAM, 80 % of
        what is free) and its download the models disk; False where its size is not known."""
        estimate = self.memory_estimate(spec.key, precision)
        return (
            estimate is not None
            and memory_verdict(estimate.total_bytes, hardware).verdict in ("fits_gpu", "fits_ram")
            and spec.download_bytes < hardware.disk_free_bytes
        )

    def verify(self, key: str) -> list[FileCheck]:
        """Hash every file; a file that fails is kept as a partial so the next download repairs it."""
        directory = self.directory(key)
        manifest = read_manifest(directory)
        if manifest is None:
            raise NotFoundError(f"{key} is not downloaded (no verified manifest).", key=key)
        checks = verify(directory, manifest)
        for check in checks:
            if check.problem == "checksum":
                target = directory / check.path
                target.replace(partial_path(target))
        return checks

    def delete(self, key: str) -> int:
        if self.manager.is_running(key):
            raise ConfigError(
                f"{key} is downloading: cancel the download first.", reason="downloading", key=key
            )
        return delete_model(self.directory(key))

    def cached_snapshot(self, key: str) -> Path | None:
        """A complete copy of this model in the user's Hugging Face cache, if there is one."""
        return find_in_hf_cache(self.get(key).repo_id)

    def use_cached(self, key: str) -> None:
        """Link the cached snapshot's files into the models directory and record their hashes."""
        snapshot = self.cached_snapshot(key)
        if snapshot is None:
            raise NotFoundError(f"{key} is not in the Hugging Face cache.", key=key)
        directory = self.directory(key)
        files = []
        for source in sorted(p for p in snapshot.rglob("*") if p.is_file()):
            relative = source.relative_to(snapshot).as_posix()
            blob = source.resolve()
            files.append(RemoteFile(relative, blob.stat().st_size, "", sha256_file(blob)))
            target = directory / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.unlink(missing_ok=True)
            target.symlink_to(blob)
        write_manifest(directory, Manifest(self.get(key).repo_id, snapshot.name, "hf-cache", tuple(files)))

    def plan(self, key: str) -> DownloadPlan:
        """What a download would fetch, from the hub, with the free disk on the models directory."""
        spec = self.get(key)
        listing, endpoint = self._from_first_endpoint(
            spec.repo_id,
            lambda endpoint: (hub.fetch_listing(spec.repo_id, spec.revision, endpoint), endpoint),
        )
        directory = self.directory(key)
        return DownloadPlan(
            spec, listing, endpoint, bytes_on_disk(directory, listing.files), disk_free_bytes(directory)
        )

    def redownload(self, key: str) -> bool:
        """Discard the files on disk and fetch every byte again."""
        self.delete(key)
        return self.download(key)

    def download(self, key: str) -> bool:
        spec = self.get(key)
        return self.manager.start(DownloadTarget(spec.key, spec.repo_id, spec.revision))

    def progress(self, key: str) -> Progress | None:
        return self.manager.progress(key)

    def active_downloads(self) -> list[Progress]:
        """Jobs running now, in this process or another one with a live heartbeat."""
        with self.db.begin() as session:
            keys = jobs.unfinished_keys(session)
        return [p for key in keys if (p := self.manager.progress(key)) and p.state == "running"]

    def resume_interrupted(self) -> list[str]:
        """Restart every interrupted job (not those the user cancelled); return their keys."""
        resumed = []
        for key in self.manager.interrupted():
            progress = self.manager.progress(key)
            if progress and progress.state == "interrupted" and self.download(key):
                resumed.append(key)
        return resumed
