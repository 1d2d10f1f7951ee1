"""Models on disk: one folder per model key, a manifest of verified files, status, verify and delete."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from core.errors import UnsafeListingError, UnsupportedModelError
from core.hub.listing import OWN_FILE_PREFIX, PARTIAL_SUFFIX, RemoteFile, unsafe_path_reason

MANIFEST = f"{OWN_FILE_PREFIX}manifest.json"
HASH_BLOCK = 4 * 1024 * 1024


@dataclass(frozen=True)
class Manifest:
    repo_id: str
    commit: str
    endpoint: str
    files: tuple[RemoteFile, ...]

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


@dataclass(frozen=True)
class FileCheck:
    path: str
    ok: bool
    problem: str = ""  # "missing", "size", "checksum"


class FileHasher:
    """sha256 for LFS files, git's blob sha1 for the rest: both fed incrementally while bytes arrive."""

    def __init__(self, file: RemoteFile) -> None:
        self.file = file
        self.reset()

    def reset(self) -> None:
        if self.file.sha256:
            self._hash = hashlib.sha256()
        else:
            self._hash = hashlib.sha1(usedforsecurity=False)
            self._hash.update(b"blob %d\0" % self.file.size)

    def update(self, data: bytes) -> None:
        self._hash.update(data)

    def update_from(self, path: Path, length: int) -> None:
        with path.open("rb") as handle:
            remaining = length
            while remaining and (block := handle.read(min(HASH_BLOCK, remaining))):
                self._hash.update(block)
                remaining -= len(block)

    def matches(self) -> bool:
        expected = self.file.sha256 or self.file.git_oid
        return not expected or self._hash.hexdigest() == expected


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def model_dir(models_dir: Path, key: str) -> Path:
    return models_dir / key


def partial_path(target: Path) -> Path:
    return target.with_name(target.name + PARTIAL_SUFFIX)


def file_target(directory: Path, path: str) -> Path:
    """Where a listed file goes: inside `directory`, whatever symlinks the folder holds.

    The name was checked when the listing arrived; this checks it again where it is written, and
    refuses a folder on the way that is a link leading out of the model folder.
    """
    if reason := unsafe_path_reason(path):
        raise UnsafeListingError(f"Refusing to write {path[:120]!r}: it has {reason}.", path=path[:120])
    target = directory / path
    root = directory.resolve()
    parent = target.parent.resolve()
    if parent != root and root not in parent.parents:
        raise UnsafeListingError(
            f"Refusing to write {path!r}: a folder on its way leads out of {directory}.", path=path
        )
    return target


def read_manifest(directory: Path) -> Manifest | None:
    """The verified-files manifest, or None when there is none or it cannot be trusted (a name in it
    that is not a safe relative path, as an older version could have stored)."""
    try:
        data = json.loads((directory / MANIFEST).read_text())
        files = tuple(RemoteFile(**f) for f in data["files"])
        manifest = Manifest(data["repo_id"], data["commit"], data["endpoint"], files)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if any(unsafe_path_reason(f.path) for f in files):
        return None
    return manifest


def write_manifest(directory: Path, manifest: Manifest) -> None:
    data = asdict(manifest)
    tmp = directory / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, directory / MANIFEST)


def bytes_on_disk(directory: Path, files: tuple[RemoteFile, ...]) -> int:
    """Bytes already here for these files: complete files of the right size plus partials."""
    total = 0
    for file in files:
        target = directory / file.path
        if target.is_file() and target.stat().st_size == file.size:
            total += file.size
        elif partial_path(target).is_file():
            total += min(partial_path(target).stat().st_size, file.size)
    return total


def quick_check(directory: Path, manifest: Manifest) -> list[FileCheck]:
    """Presence and size of every manifest file (no hashing)."""
    checks = []
    for file in manifest.files:
        target = directory / file.path
        if not target.is_file():
            checks.append(FileCheck(file.path, False, "missing"))
        elif target.stat().st_size != file.size:
            checks.append(FileCheck(file.path, False, "size"))
        else:
            checks.append(FileCheck(file.path, True))
    return checks


def verify(
    directory: Path, manifest: Manifest, on_file: Callable[[str], None] | None = None
) -> list[FileCheck]:
    """Presence, size and hash of every manifest file."""
    checks = []
    for check, file in zip(quick_check(directory, manifest), manifest.files, strict=True):
        if check.ok:
            if on_file:
                on_file(file.path)
            hasher = FileHasher(file)
            hasher.update_from(directory / file.path, file.size)
            check = check if hasher.matches() else FileCheck(file.path, False, "checksum")
        checks.append(check)
    return checks


def delete_model(directory: Path) -> int:
    """Remove a model folder; return the bytes freed."""
    if not directory.exists():
        return 0
    freed = sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())
    shutil.rmtree(directory)
    return freed


def find_in_hf_cache(repo_id: str) -> Path | None:
    """A complete snapshot of `repo_id` in the user's Hugging Face cache, if one has safetensors."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        cache = scan_cache_dir()
    except (CacheNotFound, OSError):
        return None
    for repo in cache.repos:
        if repo.repo_type != "model" or repo.repo_id != repo_id:
            continue
        for revision in sorted(repo.revisions, key=lambda r: r.last_modified, reverse=True):
            names = {f.file_name for f in revision.files}
            if "config.json" in names and any(n.endswith(".safetensors") for n in names):
                return revision.snapshot_path
    return None


MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024  # the safetensors format's own limit


def read_safetensors_header(path: Path) -> tuple[dict[str, Any], int]:
    """A safetensors file's header (name → dtype, shape, data_offsets) and where its data starts."""
    with path.open("rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8).ljust(8, b"\0"))
        try:
            header = json.loads(handle.read(length)) if 0 < length <= MAX_SAFETENSORS_HEADER else None
        except ValueError:
            header = None
    if not isinstance(header, dict):
        raise UnsupportedModelError(f"{path.name} is not a valid safetensors file.", path=path.name)
    header.pop("__metadata__", None)
    for tensor in header.values():
        shape = tensor.get("shape") if isinstance(tensor, dict) else None
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise UnsupportedModelError(f"{path.name} is not a valid safetensors file.", path=path.name)
    return header, 8 + length


MAX_CONFIG_COUNT = 2**40  # no layer count, width or vocabulary of a real model comes near this


def config_count(config: dict, name: str, default: int = 0) -> int:
    """A count from a model's config.json (a file a server chose): a non-negative integer, or the
    default when absent; anything else is refused with a sentence."""
    value = config.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_CONFIG_COUNT:
        raise UnsupportedModelError(
            f"config.json gives {name} as {str(value)[:40]!r}, which is not a count this app can use.",
            field=name,
        )
    return value


def read_config(model_dir: Path) -> dict:
    """A downloaded model's config.json as a dict, or a sentence when it is not a JSON object."""
    import json

    try:
        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except OSError as exc:
        raise UnsupportedModelError(
            f"{model_dir.name} has no readable config.json ({exc.strerror})."
        ) from exc
    except ValueError:
        config = None
    if not isinstance(config, dict):
        raise UnsupportedModelError(f"The config.json of {model_dir.name} is not a valid JSON object.")
    return config
