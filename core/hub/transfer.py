"""One model's download: resumable, verified, cancellable, with retries and endpoint failover.

Bytes go to `<file>.incomplete` beside the target and resume with HTTP Range from what is on disk;
each file is hashed while it arrives (sha256 for LFS files, git's blob sha1 otherwise) and renamed
into place only when size and hash match. core.hub.manager runs these in worker threads.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar

import httpx2
from huggingface_hub import errors as hf_errors
from huggingface_hub.utils import get_session

from core.errors import (
    DiskSpaceError,
    DownloadError,
    EndpointsFailedError,
    ListingFailedError,
    LocalLLMError,
    NotWritableError,
    RepoNotFoundError,
)
from core.hub import listing as hub
from core.hub.listing import RemoteFile, RepoListing
from core.hub.reachability import RecentFailures
from core.hub.store import (
    MANIFEST,
    FileHasher,
    Manifest,
    bytes_on_disk,
    file_target,
    model_dir,
    partial_path,
    write_manifest,
)
from core.outbound import ProxyUnreachableError, is_certificate_error

T = TypeVar("T")
# A full disk, or a full quota on a shared machine's disk: the same for the user (Windows has no EDQUOT).
DISK_FULL_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
CANCEL_POLL_S = 0.2  # how soon a cancel shuts a file's connection down (_cancel_closes)
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TransferPolicy:
    tries_per_endpoint: int = 3
    backoff_s: float = 1.0  # doubled after each failed try
    stall_timeout_s: float = 30.0  # no byte for this long is a stall
    connect_timeout_s: float = 10.0
    disk_margin_bytes: int = 256 * 1024 * 1024
    heartbeat_s: float = 0.5
    interrupted_after_s: float = 10.0  # a running job without a heartbeat this long was interrupted


DEFAULT_POLICY = TransferPolicy()


@dataclass(frozen=True)
class DownloadTarget:
    key: str
    repo_id: str
    revision: str = "main"


@dataclass(frozen=True)
class Progress:
    key: str
    state: str
    bytes_done: int = 0
    bytes_total: int = 0
    current_file: str | None = None
    endpoint: str | None = None
    speed_bps: float = 0.0
    attempts: int = 0
    error: str | None = None
    error_code: str | None = None
    error_params: dict[str, object] = field(default_factory=dict)
    commit: str | None = None
    notes: tuple[str, ...] = ()
    last_failure: str | None = None  # why the last try failed (a REASONS key); this process's jobs only

    @property
    def fraction(self) -> float:
        return min(1.0, self.bytes_done / self.bytes_total) if self.bytes_total else 0.0

    @property
    def eta_s(self) -> float | None:
        if self.speed_bps <= 0 or not self.bytes_total:
            return None
        return max(0.0, (self.bytes_total - self.bytes_done) / self.speed_bps)


class TransientError(Exception):
    """Worth retrying: connection reset, timeout, stall, 5xx, 429, a hash mismatch."""


class CancelRequestedError(Exception):
    pass


@dataclass
class _Speed:
    """Bytes per second over a sliding window of a few seconds."""

    window_s: float = 3.0
    samples: deque[tuple[float, int]] = field(default_factory=deque)

    def add(self, now: float, total: int) -> float:
        self.samples.append((now, total))
        while len(self.samples) > 2 and now - self.samples[0][0] > self.window_s:
            self.samples.popleft()
        (t0, b0), (t1, b1) = self.samples[0], self.samples[-1]
        return (b1 - b0) / (t1 - t0) if t1 > t0 else 0.0


def disk_free_bytes(path: Path) -> int:
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


class ModelDownload:
    """Downloads one model into `models_dir/<key>`; reports Progress through `report`."""

    def __init__(
        self,
        target: DownloadTarget,
        models_dir: Path,
        endpoints: Sequence[str],
        *,
        policy: TransferPolicy = DEFAULT_POLICY,
        cancel: threading.Event | None = None,
        report: Callable[[Progress], None] = lambda _p: None,
        disk_free: Callable[[Path], int] = disk_free_bytes,
        failures: RecentFailures | None = None,
    ) -> None:
        """`endpoints`: tried in order, each `policy.tries_per_endpoint` times; `failures`: told which
        failed every try and which answered."""
        if not endpoints:
            raise DownloadError("No download endpoint is configured.", reason="endpoint_required")
        self.target = target
        self.directory = model_dir(models_dir, target.key)
        self.endpoints = list(endpoints)
        self.policy = policy
        self.cancel = cancel or threading.Event()
        self._report = report
        self._disk_free = disk_free
        self._failures = failures or RecentFailures()
        self._endpoint_index = 0
        self._speed = _Speed()
        self._last_report = 0.0
        self.progress = Progress(target.key, "running")

    # -- progress -------------------------------------------------------------------------------
    def _update(self, force: bool = False, **changes: object) -> None:
        self.progress = replace(self.progress, **changes)  # type: ignore[arg-type]
        now = time.monotonic()
        if force or now - self._last_report >= self.policy.heartbeat_s:
            self._last_report = now
            self._report(self.progress)

    def _note(self, text: str) -> None:
        logger.info("%s: %s", self.target.key, text)
        self._update(force=True, notes=(*self.progress.notes, text)[-20:])

    @property
    def endpoint(self) -> str:
        return self.endpoints[self._endpoint_index]

    def _sleep(self, seconds: float) -> None:
        if self.cancel.wait(seconds):
            raise CancelRequestedError

    # -- the whole model ------------------------------------------------------------------------
    def run(self, commit: str | None = None) -> Progress:
        """Download every file; return the final Progress (state completed, cancelled or failed)."""
        try:
            self._ensure_writable()
            listing = self._with_failover(
                "listing",
                lambda endpoint: hub.fetch_listing(
                    self.target.repo_id, commit or self.target.revision, endpoint
                ),
            )
            logger.info("downloading %s (%s at %s): %d files, %d bytes", self.target.key, listing.repo_id,
                        listing.commit, len(listing.files), listing.total_bytes)  # fmt: skip
            self._update(force=True, commit=listing.commit)
            self._check_disk(listing)
            done = bytes_on_disk(self.directory, listing.files)
            self._update(force=True, bytes_total=listing.total_bytes, bytes_done=done)
            base = 0
            for file in listing.files:
                self._with_failover(
                    file.path, lambda endpoint, f=file, b=base: self._fetch_file(listing, f, b, endpoint)
                )
                base += file.size
            try:
                write_manifest(
                    self.directory, Manifest(listing.repo_id, listing.commit, self.endpoint, listing.files)
                )
            except OSError as exc:
                raise self._write_failed(exc, MANIFEST, self.directory / MANIFEST) from exc
            logger.info("%s: every file verified", self.target.key)
            self._update(
                force=True,
                state="completed",
                bytes_done=listing.total_bytes,
                current_file=None,
                speed_bps=0.0,
            )
        except CancelRequestedError:
            logger.info("%s: download paused", self.target.key)
            self._update(force=True, state="cancelled", speed_bps=0.0)
        except LocalLLMError as exc:
            logger.warning("download of %s failed: %s", self.target.key, exc.message)
            self._update(force=True, state="failed", error=exc.message, error_code=exc.code,
                         error_params=_plain(exc.params), speed_bps=0.0)  # fmt: skip
        except Exception as exc:  # never a job stuck "running" or an error of None: a sentence, and the log
            logger.exception("download of %s stopped on an unexpected error", self.target.key)
            message = (
                f"The download of {self.target.key} stopped on an unexpected error "
                f"({exc.__class__.__name__}: {str(exc)[:200]}). Resume to try again; the log has the details."
            )
            self._update(
                force=True, state="failed", error=message, error_code="error.download", speed_bps=0.0
            )
        return self.progress

    def _ensure_writable(self) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            probe = self.directory / ".localllm-write-test"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise not_writable(self.directory.parent, exc) from exc

    def _check_disk(self, listing: RepoListing) -> None:
        needed = listing.total_bytes - bytes_on_disk(self.directory, listing.files)
        free = self._disk_free(self.directory)
        if needed + self.policy.disk_margin_bytes > free:
            gb = 1000**3
            raise DiskSpaceError(
                f"Not enough disk space: this download needs {needed / gb:.2f} GB more (plus a "
                f"{self.policy.disk_margin_bytes / gb:.2f} GB margin), and {free / gb:.2f} GB is free on "
                f"{self.directory.parent}.",
                reason="disk_short",
                needed_bytes=needed,
                free_bytes=free,
                margin_bytes=self.policy.disk_margin_bytes,
                folder=str(self.directory.parent),
            )

    def _with_failover(self, what: str, action: Callable[[str], T]) -> T:
        """Run `action(endpoint)`: transient errors are retried with backoff, then the next endpoint (the
        one that failed every try is asked last by this process's next checks and downloads)."""
        last: Exception | None = None
        while self._endpoint_index < len(self.endpoints):
            endpoint = self.endpoint
            self._update(force=True, endpoint=endpoint)
            for attempt in range(self.policy.tries_per_endpoint):
                if self.cancel.is_set():
                    raise CancelRequestedError
                try:
                    answer = action(endpoint)
                except (TransientError, httpx2.TransportError) as exc:
                    last, reason = exc, reason_of(exc)
                    self._update(force=True, attempts=self.progress.attempts + 1, last_failure=reason)
                    tries = self.policy.tries_per_endpoint
                    self._note(f"{what}: {REASONS[reason]} (try {attempt + 1} of {tries}, {endpoint})")
                    if attempt + 1 < self.policy.tries_per_endpoint:
                        self._sleep(self.policy.backoff_s * 2**attempt)
                else:
                    self._failures.answered(endpoint)
                    return answer
            self._failures.failed(endpoint)
            self._endpoint_index += 1
            if self._endpoint_index < len(self.endpoints):
                self._note(f"switching to {self.endpoint}")
        logger.warning("%s: every endpoint failed for %s: %s", self.target.key, what, last)
        raise endpoints_failed(self.target.repo_id, "" if what == "listing" else what, self.endpoints, last)

    # -- one file -------------------------------------------------------------------------------
    def _fetch_file(self, listing: RepoListing, file: RemoteFile, base: int, endpoint: str) -> None:
        target = file_target(self.directory, file.path)
        self._update(
            force=True, current_file=file.path, bytes_done=base + min(self._have(target, file), file.size)
        )
        if target.is_file() and target.stat().st_size == file.size:
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        part = partial_path(target)
        if part.is_symlink():  # never written through a link: bytes go to a file of our own
            part.unlink()
        have = self._have(target, file)
        if have > file.size:
            part.unlink()
            have = 0
        hasher = FileHasher(file)
        if have:
            hasher.update_from(part, have)
        if have < file.size:
            have = self._transfer(listing, file, part, have, hasher, base, endpoint)
            if have is None:  # optional file absent on the server
                return
        if not hasher.matches():
            self._note(f"{file.path}: checksum mismatch, fetching it again")
            part.unlink()
            raise ChecksumMismatchError(f"checksum mismatch for {file.path}")
        with part.open("rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(part, target)

    @staticmethod
    def _have(target: Path, file: RemoteFile) -> int:
        if target.is_file() and target.stat().st_size == file.size:
            return file.size
        part = partial_path(target)
        return part.stat().st_size if part.is_file() else 0

    def _transfer(
        self,
        listing: RepoListing,
        file: RemoteFile,
        part: Path,
        have: int,
        hasher: FileHasher,
        base: int,
        endpoint: str,
    ) -> int | None:
        headers = hub.request_headers(endpoint)
        if have:
            headers["Range"] = f"bytes={have}-"
        timeout = httpx2.Timeout(self.policy.stall_timeout_s, connect=self.policy.connect_timeout_s)
        url = hub.file_url(endpoint, listing.repo_id, listing.commit, file.path)
        with get_session().stream(
            "GET", url, headers=headers, timeout=timeout, follow_redirects=True
        ) as response:
            status = response.status_code
            if status == 404 and file.optional:
                self._note(f"{file.path}: not on the server, skipped (optional)")
                return None
            self._raise_for_status(response, file)
            if status == 200 and have:
                self._note(f"{file.path}: server ignored the resume request, starting the file over")
                have = 0
                hasher.reset()
            elif status == 206 and not response.headers.get("Content-Range", "").startswith(f"bytes {have}-"):
                raise TransientError(f"unexpected Content-Range {response.headers.get('Content-Range')!r}")
            self._check_length(response, file, have)
            try:
                with part.open("ab" if have else "wb", buffering=0) as handle, self._cancel_closes(response):
                    # Written as it arrives, unbuffered: a kill loses only the bytes still in flight.
                    for chunk in response.iter_bytes():
                        if self.cancel.is_set():
                            raise CancelRequestedError
                        if have + len(chunk) > file.size:  # never a byte past the declared size
                            handle.write(chunk[: file.size - have])
                            hasher.update(chunk[: file.size - have])
                            raise SizeMismatchError(
                                f"the server sent more than the {file.size} bytes it listed for {file.path}"
                            )
                        handle.write(chunk)
                        hasher.update(chunk)
                        have += len(chunk)
                        now = time.monotonic()
                        self._update(bytes_done=base + have, speed_bps=self._speed.add(now, base + have))
            except httpx2.TransportError:
                if self.cancel.is_set():  # the connection closed by a cancel (_cancel_closes)
                    raise CancelRequestedError from None
                raise
            except OSError as exc:
                raise self._write_failed(exc, file.path, part) from exc
        if have < file.size:
            raise TransientError(f"connection closed after {have} of {file.size} bytes")
        return have

    @contextmanager
    def _cancel_closes(self, response: httpx2.Response) -> Iterator[None]:
        """While a file's bytes arrive, a cancel shuts its connection down at once: a read that waits on a
        stalled server would see the cancel only when the stall timeout (30 s) ends it."""
        stream = response.extensions.get("network_stream")
        sock = stream.get_extra_info("socket") if stream is not None else None
        received = threading.Event()

        def watch() -> None:
            while not received.wait(CANCEL_POLL_S):
                if self.cancel.is_set():
                    with contextlib.suppress(OSError):  # the plain socket's shutdown, under TLS too
                        socket.socket.shutdown(sock, socket.SHUT_RDWR)
                    return

        if isinstance(sock, socket.socket):
            threading.Thread(target=watch, name=f"cancel-{self.target.key}", daemon=True).start()
        try:
            yield
        finally:
            received.set()

    def _write_failed(self, exc: OSError, name: str, path: Path) -> LocalLLMError:
        """A write that failed: the disk (or the user's quota) filled up, or the folder is not writable."""
        if exc.errno in DISK_FULL_ERRNOS:
            return DiskSpaceError(
                f"The disk filled up while writing {name}; free some space and resume.",
                reason="disk_full", file=name, path=str(path),
            )  # fmt: skip
        return not_writable(self.directory, exc)

    @staticmethod
    def _check_length(response: httpx2.Response, file: RemoteFile, have: int) -> None:
        """An answer that announces more (or fewer) bytes than the listing declared is refused before
        a byte of it is written."""
        announced = response.headers.get("Content-Length")
        if announced is None or response.headers.get("Content-Encoding", "identity") != "identity":
            return  # checked while the bytes arrive instead
        expected = file.size - have
        if not announced.isdigit() or int(announced) != expected:
            raise SizeMismatchError(
                f"the server announced {announced[:20]} bytes for {file.path}, whose listing leaves "
                f"{expected} to fetch"
            )

    def _raise_for_status(self, response: httpx2.Response, file: RemoteFile) -> None:
        status = response.status_code
        if status in (200, 206):
            return
        code = response.headers.get("X-Error-Code", "")
        if status in (401, 403) or code == "GatedRepo":
            raise hub.gated(self.target.repo_id, self.endpoint)
        if status == 404 and code in ("RepoNotFound", "RevisionNotFound"):
            raise RepoNotFoundError(
                f"Repository {self.target.repo_id} was not found.", repo_id=self.target.repo_id
            )
        if status == 404:
            raise DownloadError(
                f"{file.path} is missing on the server (HTTP 404).", path=file.path, reason="file_missing"
            )
        if status == 416:
            raise TransientError("the server refused the resume range")
        raise TransientError(f"HTTP {status}")


def not_writable(directory: Path, exc: OSError) -> NotWritableError:
    return NotWritableError(
        f"The models directory {directory} is not writable ({exc.strerror or exc}). "
        "Choose another directory in Settings or fix its permissions.",
        path=str(directory),
    )


def _plain(params: dict[str, object]) -> dict[str, object]:
    """An error's parameters as they can be stored (JSON) and shown."""
    return {
        k: v if isinstance(v, (str, int, float, bool)) or v is None else str(v) for k, v in params.items()
    }


class SizeMismatchError(TransientError):
    """The server's answer is longer (or announced longer) than the listing said: nothing past the
    declared size is written."""


class ChecksumMismatchError(TransientError):
    """A file's hash differs from the listing: reported, then fetched again."""


REASONS = {
    "connect": "cannot connect (no network, a wrong address, or the server is down)",
    "proxy": "the proxy that the environment sets (http_proxy, https_proxy or all_proxy) takes no "
    "connection: start it, or unset those variables",
    "offline": "downloads are off: the environment sets HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE",
    "certificate": "the server's certificate could not be verified (a clock far off, or a network that "
    "inspects HTTPS: add its certificate to the system's, or set SSL_CERT_FILE)",
    "connect_timeout": "no answer to the connection (a network that drops it, or a host out of reach)",
    "timeout": "timed out (no data)",
    "reset": "the connection was reset or closed early",
    "server": "the server answered with an error",
    "checksum": "the bytes did not match their checksum",
    "length": "the server sent another size than it listed",
    "other": "an unexpected answer",
}


def reason_of(exc: BaseException | None) -> str:
    """Why a transfer failed, as one of REASONS' keys (the pages translate it)."""
    if isinstance(exc, httpx2.ConnectTimeout):
        return "connect_timeout"
    if isinstance(exc, httpx2.TimeoutException):
        return "timeout"
    if is_certificate_error(exc):
        return "certificate"
    if isinstance(exc, httpx2.ConnectError):
        return "connect"
    if isinstance(exc, ProxyUnreachableError):
        return "proxy"
    if isinstance(exc, hf_errors.OfflineModeIsEnabled):
        return "offline"
    if isinstance(exc, (httpx2.ReadError, httpx2.RemoteProtocolError)):
        return "reset"
    if isinstance(exc, ChecksumMismatchError):
        return "checksum"
    if isinstance(exc, SizeMismatchError):
        return "length"
    if isinstance(exc, TransientError):
        return "server"
    if isinstance(exc, httpx2.TransportError):
        return "server" if str(exc).startswith("HTTP") else "reset"
    return "other"


def describe(exc: BaseException | None) -> str:
    """A short, user-readable reason for a transfer failure."""
    return REASONS[reason_of(exc)]


def endpoints_failed(
    repo_id: str, file: str, endpoints: Sequence[str], last: BaseException | None
) -> EndpointsFailedError:
    """The one sentence for every endpoint failing (at `file`, or "" for the file list), from the
    pages and the CLI alike."""
    reason = reason_of(last)
    tried = ", ".join(endpoints)
    if not file:  # from the Models page's checks and forms as well as a download: "try again" fits all
        return ListingFailedError(
            f"Could not get the file list of {repo_id}: {REASONS[reason]} ({tried}). Check the network, or "
            "add a mirror in the download settings, then try again.",
            repo_id=repo_id,
            endpoints=tried,
            reason=reason,
        )
    return EndpointsFailedError(
        f"Could not download {file} of {repo_id}: {REASONS[reason]} ({tried}). Check the network, or add a "
        "mirror in the download settings, then retry: the download continues where it stopped.",
        repo_id=repo_id,
        file=file,
        endpoints=tried,
        reason=reason,
    )
