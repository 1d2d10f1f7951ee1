"""Download jobs of this process: one worker thread per model, a file lock per model across processes,
progress in memory and in the database (download_jobs), interrupted jobs found and resumed."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import filelock

from core.hub.reachability import RecentFailures
from core.hub.transfer import (
    DEFAULT_POLICY,
    DownloadTarget,
    ModelDownload,
    Progress,
    TransferPolicy,
    disk_free_bytes,
    not_writable,
)
from core.storage import jobs
from core.storage.db import Database
from core.storage.jobs import JobRecord

ACTIVE_STATES = ("queued", "running")
logger = logging.getLogger(__name__)


class DownloadManager:
    """Process-wide owner of download jobs: one worker thread per model, state in the database."""

    def __init__(
        self,
        db: Database,
        models_dir: Path,
        endpoints: Callable[[], Sequence[str]],
        *,
        policy: TransferPolicy = DEFAULT_POLICY,
        disk_free: Callable[[Path], int] = disk_free_bytes,
    ) -> None:
        self.db = db
        self.models_dir = models_dir
        self.endpoints = endpoints
        self.policy = policy
        self.disk_free = disk_free
        self.failures = RecentFailures()  # endpoints that failed lately: asked last by jobs and checks
        self._lock = threading.Lock()
        self._workers: dict[str, tuple[threading.Thread, threading.Event, ModelDownload]] = {}

    def start(self, target: DownloadTarget) -> bool:
        """Start (or resume) a download; False when this model is already downloading."""
        with self._lock:
            running = self._workers.get(target.key)
            if running and running[0].is_alive():
                return False
            lock = self._file_lock(target.key)
            try:
                self.models_dir.mkdir(parents=True, exist_ok=True)
                lock.acquire()
            except filelock.Timeout:
                return False  # another process is downloading it; its progress is in the database
            except OSError as exc:  # a read-only or missing mount: a sentence, not a traceback
                raise not_writable(self.models_dir, exc) from exc
            cancel = threading.Event()
            with self.db.begin() as session:
                job = jobs.open_job(session, target.key, target.repo_id)
            download = ModelDownload(
                target,
                self.models_dir,
                self.failures.ordered(self.endpoints()),
                policy=self.policy,
                cancel=cancel,
                report=lambda p: self._save(job.id, p),
                disk_free=self.disk_free,
                failures=self.failures,
            )
            thread = threading.Thread(
                target=self._run, args=(download, job, lock), name=f"download-{target.key}", daemon=True
            )
            self._workers[target.key] = (thread, cancel, download)
            thread.start()
            return True

    def _file_lock(self, key: str) -> filelock.FileLock:
        """Held by whichever process downloads `key`; the OS frees it when that process dies."""
        # thread_local=False: acquired by start(), released by the worker thread when it ends.
        return filelock.FileLock(str(self.models_dir / f".{key}.lock"), timeout=0, thread_local=False)

    def _downloading_elsewhere(self, key: str) -> bool:
        """Whether a live process (this one included) holds the model's download lock."""
        lock = self._file_lock(key)
        try:
            lock.acquire()
        except filelock.Timeout:
            return True
        except OSError:
            return True  # cannot tell (e.g. a read-only folder): trust the heartbeat instead
        lock.release()
        return False

    def _run(self, download: ModelDownload, job: JobRecord, lock: filelock.FileLock) -> None:
        try:
            progress = download.run(commit=job.commit)
            logger.info("download job %d of %s ended: %s", job.id, job.model_key, progress.state)
        finally:
            lock.release()

    def _save(self, job_id: int, progress: Progress) -> None:
        with self.db.begin() as session:
            jobs.save_progress(
                session, job_id, state=progress.state, bytes_done=progress.bytes_done,
                bytes_total=progress.bytes_total, current_file=progress.current_file,
                endpoint=progress.endpoint, attempts=progress.attempts, last_error=progress.error,
                last_error_code=progress.error_code, last_error_params=progress.error_params,
                commit=progress.commit,
            )  # fmt: skip

    def cancel(self, key: str) -> None:
        with self._lock:
            worker = self._workers.get(key)
        if worker:
            worker[1].set()

    def wait(self, key: str, timeout: float | None = None) -> Progress | None:
        with self._lock:
            worker = self._workers.get(key)
        if worker:
            worker[0].join(timeout)
        return self.progress(key)

    def is_running(self, key: str) -> bool:
        with self._lock:
            worker = self._workers.get(key)
        return bool(worker and worker[0].is_alive())

    def progress(self, key: str) -> Progress | None:
        """Progress of this process's job for `key` (live or finished), else the latest job row."""
        with self._lock:
            worker = self._workers.get(key)
        if worker:
            return worker[2].progress
        with self.db.begin() as session:
            job = jobs.latest_job(session, key)
        if job is None:
            return None
        state = job.state
        stale = datetime.now(UTC) - _aware(job.updated_at) > timedelta(
            seconds=self.policy.interrupted_after_s
        )
        if state in ACTIVE_STATES and (stale or not self._downloading_elsewhere(key)):
            state = "interrupted"  # its process died: at once when its lock is free, else by the heartbeat
        return Progress(
            key,
            state,
            bytes_done=job.bytes_done,
            bytes_total=job.bytes_total,
            current_file=job.current_file,
            endpoint=job.endpoint,
            attempts=job.attempts,
            error=job.last_error,
            error_code=job.last_error_code,
            error_params=dict(job.last_error_params or {}),
            commit=job.commit,
        )

    def interrupted(self) -> list[str]:
        """Keys whose last job did not finish (killed, closed, cancelled or failed on a transient error)."""
        with self.db.begin() as session:
            keys = jobs.unfinished_keys(session)
        return [k for k in keys if (p := self.progress(k)) and p.state in ("interrupted", "cancelled")]


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
