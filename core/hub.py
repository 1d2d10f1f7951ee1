"""Repository info and file listing through huggingface_hub, always with an explicit endpoint."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from fnmatch import fnmatch
from urllib.parse import urlsplit

from huggingface_hub import HfApi, hf_hub_url
from huggingface_hub import errors as hf_errors
from huggingface_hub.utils import build_hf_headers, get_session, get_token

from core.errors import GatedRepoError, InvalidRepoIdError, RepoNotFoundError, UnsupportedModelError

OFFICIAL_HOST = "huggingface.co"
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")
# Files the app never uses: other runtimes' weights and the original checkpoints.
_SKIPPED = (
    "*.onnx", "*.onnx_data", "*.gguf", "*.h5", "*.msgpack", "*.tflite", "*.ot", "*.mlmodel", "*.pth",
    "*.pt", "*.ckpt", "original/*", "onnx/*", "openvino/*", "coreml/*", "gguf/*", ".gitattributes",
)  # fmt: skip
_REQUIRED = ("config.json", "*.safetensors", "*.bin", "tokenizer.json", "tokenizer.model")


@dataclass(frozen=True)
class RemoteFile:
    path: str
    size: int
    git_oid: str
    sha256: str | None  # LFS files only

    @property
    def optional(self) -> bool:
        """A 404 on an optional file (README, LICENSE, extra configs) does not fail a download."""
        name = self.path.rsplit("/", 1)[-1]
        return not any(fnmatch(name, pattern) for pattern in _REQUIRED)


@dataclass(frozen=True)
class RepoListing:
    repo_id: str
    commit: str
    files: tuple[RemoteFile, ...]
    gated: bool

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


def validate_repo_id(repo_id: str) -> str:
    """`org/name` with letters, digits, '-', '_', '.'; no '..', no extra slashes, no spaces."""
    repo_id = repo_id.strip()
    if len(repo_id) > 96 * 2 + 1 or ".." in repo_id or not _REPO_ID.match(repo_id):
        raise InvalidRepoIdError(
            f"{repo_id[:80]!r} is not a Hugging Face repository id. Use the form org/name, "
            "for example Qwen/Qwen2.5-0.5B-Instruct.",
            repo_id=repo_id[:80],
        )
    return repo_id


def token_for(endpoint: str) -> str | bool:
    """The user's HF token for huggingface.co only; never sent to a mirror."""
    host = urlsplit(endpoint).hostname or ""
    if host == OFFICIAL_HOST or host.endswith("." + OFFICIAL_HOST):
        return get_token() or False
    return False


def select_files(files: list[RemoteFile]) -> tuple[RemoteFile, ...]:
    """Files the app needs: safetensors over .bin, no other runtimes' weights or original checkpoints."""
    kept = [f for f in files if not any(fnmatch(f.path, pattern) for pattern in _SKIPPED)]
    if any(f.path.endswith(".safetensors") for f in kept):
        kept = [f for f in kept if not f.path.endswith(".bin") and f.path != "pytorch_model.bin.index.json"]
    return tuple(sorted(kept, key=lambda f: f.path))


def fetch_listing(repo_id: str, revision: str, endpoint: str) -> RepoListing:
    """Commit and file list with sizes and hashes; typed errors for a missing or gated repo."""
    api = HfApi(endpoint=endpoint, token=token_for(endpoint))
    try:
        info = api.model_info(repo_id, revision=revision, files_metadata=True)
    except hf_errors.GatedRepoError as exc:
        raise GatedRepoError(
            f"{repo_id} is gated: accept its license on huggingface.co and log in with an HF token.",
            repo_id=repo_id,
        ) from exc
    except (hf_errors.RepositoryNotFoundError, hf_errors.RevisionNotFoundError) as exc:
        raise RepoNotFoundError(f"Repository {repo_id} ({revision}) was not found.", repo_id=repo_id) from exc
    files = [
        RemoteFile(s.rfilename, s.size or 0, s.blob_id or "", s.lfs.sha256 if s.lfs else None)
        for s in info.siblings or []
    ]
    return RepoListing(repo_id, info.sha or revision, select_files(files), bool(info.gated))


def file_url(endpoint: str, repo_id: str, commit: str, path: str) -> str:
    return hf_hub_url(repo_id, path, revision=commit, endpoint=endpoint)


def request_headers(endpoint: str) -> dict[str, str]:
    return build_hf_headers(token=token_for(endpoint), library_name="localllm-dashboard")


def fetch_json(endpoint: str, repo_id: str, commit: str, path: str) -> dict:
    response = get_session().get(
        file_url(endpoint, repo_id, commit, path), headers=request_headers(endpoint), follow_redirects=True
    )
    if response.status_code in (401, 403):
        raise GatedRepoError(
            f"{repo_id} is gated: accept its license on huggingface.co and log in with an HF token.",
            repo_id=repo_id,
        )
    if response.status_code == 404:
        raise UnsupportedModelError(f"{repo_id} has no {path}.", repo_id=repo_id)
    response.raise_for_status()
    return json.loads(response.content)


def check_runnable(listing: RepoListing, endpoint: str) -> None:
    """Refuse repos the engine cannot run: no safetensors, no chat template, or remote code needed."""
    paths = {f.path for f in listing.files}
    if not any(p.endswith(".safetensors") for p in paths):
        raise UnsupportedModelError(f"{listing.repo_id} has no safetensors weights.", repo_id=listing.repo_id)
    if "config.json" not in paths:
        raise UnsupportedModelError(f"{listing.repo_id} has no config.json.", repo_id=listing.repo_id)
    config = fetch_json(endpoint, listing.repo_id, listing.commit, "config.json")
    if "auto_map" in config:
        raise UnsupportedModelError(
            f"{listing.repo_id} needs trust_remote_code, which this app keeps off for safety.",
            repo_id=listing.repo_id,
        )
    has_template = "chat_template.jinja" in paths
    if not has_template and "tokenizer_config.json" in paths:
        tokenizer_config = fetch_json(endpoint, listing.repo_id, listing.commit, "tokenizer_config.json")
        has_template = bool(tokenizer_config.get("chat_template"))
    if not has_template:
        raise UnsupportedModelError(
            f"{listing.repo_id} has no chat template, so it is not a chat model.", repo_id=listing.repo_id
        )
