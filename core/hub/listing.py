"""Repository info and file listing through huggingface_hub, always with an explicit endpoint.

A listing comes from a server the user picked (any mirror), so it is checked before anything is
fetched: every file name must be a plain relative path that stays inside the model folder, every size
a sane integer, every hash well formed. Metadata a mirror leaves out is asked for with a HEAD per file,
as huggingface_hub's own metadata call does.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from fnmatch import fnmatch
from typing import Any
from urllib.parse import urlsplit

import httpx2
from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_url, is_offline_mode
from huggingface_hub import errors as hf_errors
from huggingface_hub.utils import build_hf_headers, get_session, get_token, set_client_factory

from core import outbound
from core.errors import (
    DownloadError,
    GatedRepoError,
    InvalidRepoIdError,
    RepoNotFoundError,
    UnsafeListingError,
    UnsupportedModelError,
)

OFFICIAL_HOST = "huggingface.co"
MODEL_PAGE_HOSTS = (OFFICIAL_HOST, f"www.{OFFICIAL_HOST}", "hf.co", "hf-mirror.com")
MODELSCOPE_HOSTS = ("modelscope.cn", "www.modelscope.cn")  # China's model hub: mostly the same repo ids
_REPO_PART = r"[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,94}[A-Za-z0-9_])?"
_REPO_ID = re.compile(rf"^{_REPO_PART}/{_REPO_PART}$")
# Files the app never uses: other runtimes' weights, the original checkpoints, and a fine-tune's training
# leftovers (its intermediate checkpoints: each a whole model again; its logs).
_SKIPPED = (
    "*.onnx", "*.onnx_data", "*.gguf", "*.h5", "*.msgpack", "*.tflite", "*.ot", "*.mlmodel", "*.pth",
    "*.pt", "*.ckpt", "original/*", "onnx/*", "openvino/*", "coreml/*", "gguf/*", ".gitattributes",
    "checkpoint-*/*", "global_step*/*", "runs/*", "logs/*",
)  # fmt: skip
# The suffixes of a model's quantized copies on the Hub (-AWQ, -GPTQ-Int4, -bnb-4bit, -FP8, -GGUF, -4bit).
_QUANTIZED_SUFFIX = re.compile(r"(?:[-_](?:AWQ|GPTQ|GGUF|FP8|bnb|MLX|Int4|Int8|\d+bit))+$", re.IGNORECASE)
_MISTRAL_FORMAT = re.compile(r"consolidated(?:[.-][\w.-]*)?\.safetensors$")  # beside transformers' own
_REQUIRED = ("config.json", "*.safetensors", "*.bin", "tokenizer.json", "tokenizer.model")
MAX_LISTED_FILES = 10_000
MAX_FILE_BYTES = 2**44  # 16 TiB: a larger "size" is not a model file but a hostile listing
MAX_PATH_CHARS = 1024
MAX_JSON_BYTES = 16 * 1024 * 1024  # config.json and tokenizer_config.json are read into memory
MAX_CARD_LANGUAGES = 40
_LANGUAGE = re.compile(r"^[A-Za-z]{2,3}(?:-[A-Za-z0-9]{2,4})?$")
_LICENSE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.+-]{0,63}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_GIT_OID = re.compile(r"^[0-9a-f]{40}$")
_WINDOWS_RESERVED = re.compile(r"^(con|prn|aux|nul|com[1-9]|lpt[1-9])(\..*)?$", re.IGNORECASE)
# Names this app writes into a model folder itself: a listing may not overwrite them.
OWN_FILE_PREFIX = ".localllm-"
PARTIAL_SUFFIX = ".incomplete"


def _refuse_when_offline(request: httpx2.Request) -> None:
    """huggingface_hub's offline mode (HF_HUB_OFFLINE, TRANSFORMERS_OFFLINE) holds for every request."""
    if is_offline_mode():
        raise hf_errors.OfflineModeIsEnabled(f"Cannot reach {request.url}: offline mode is enabled.")


# A request to a Hub: no connection in 10 s or no byte for 30 s fails that try (then the next endpoint).
# huggingface_hub hands a call's timeout to httpx as it is, and none means none: a host that drops the
# connection (huggingface.co from mainland China) or takes it and never answers held a download at its
# listing for good, never switching to the mirror. Every call here passes it; it is the client's default
# for the others.
HUB_TIMEOUT = httpx2.Timeout(30.0, connect=10.0)

# huggingface_hub's requests (listings, metadata, the downloads' bytes) go out as core.outbound says.
set_client_factory(
    lambda: outbound.client(
        event_hooks={"request": [_refuse_when_offline]}, follow_redirects=True, timeout=HUB_TIMEOUT
    )
)


def unsafe_path_reason(path: object) -> str | None:
    """Why a file name from a listing must not be written under the model folder; None when it is safe.

    Safe: a relative POSIX path of plain segments (no empty, `.` or `..` segment), no backslash, drive
    letter, control or Windows-reserved character, and no name this app uses for its own files.
    """
    if not isinstance(path, str) or not path:
        return "an empty name"
    if len(path) > MAX_PATH_CHARS:
        return "a name longer than 1024 characters"
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in path):
        return "a control character"
    if "\\" in path:
        return "a backslash"
    if path.startswith("/"):
        return "an absolute path"
    if re.match(r"^[A-Za-z]:", path):
        return "a drive letter"
    if any(ch in path for ch in ':*?"<>|'):
        return "a character Windows forbids in file names"
    segments = path.split("/")
    if any(segment in ("", ".", "..") for segment in segments):
        return "an empty, '.' or '..' path segment"
    if any(segment.endswith((" ", ".")) or _WINDOWS_RESERVED.match(segment) for segment in segments):
        return "a segment Windows cannot store (reserved name, or a trailing dot or space)"
    name = segments[-1]
    if name.startswith(OWN_FILE_PREFIX) or name.endswith(PARTIAL_SUFFIX):
        return "a name this app uses for its own files"
    return None


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
    languages: tuple[str, ...] = ()  # from its model card, where it names them (ISO codes)
    license: str = ""  # likewise

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


def validate_repo_id(text: str) -> str:
    """`org/name`: letters, digits, '-', '_', '.', each part starting with a letter or digit and not
    ending with '-' or '.', at most 96 characters each; no '..' or '--' (the Hub's own rules). A model
    page's address (what users copy from the browser) stands for its repo id."""
    repo_id = repo_id_of_model_page(text.strip())
    if len(repo_id) > 96 * 2 + 1 or ".." in repo_id or "--" in repo_id or not _REPO_ID.match(repo_id):
        raise InvalidRepoIdError(
            f"{repo_id[:80]!r} is not a Hugging Face repository id. Use the form org/name, "
            "for example Qwen/Qwen2.5-0.5B-Instruct.",
            repo_id=repo_id[:80],
        )
    return repo_id


def repo_id_of_model_page(text: str) -> str:
    """`https://huggingface.co/org/name/tree/main` (or hf.co, hf-mirror.com; typed without https://) ->
    `org/name`; Ollama's `hf.co/org/name:Q4_K_M` without its tag; ModelScope's model page
    (`modelscope.cn/models/org/name`: Qwen's and most models' ids are the same on the Hub). A dataset's
    or a space's page, and any other text, as it is (then refused or checked as a repo id)."""
    bare = text.split("/", 1)[0].lower()
    try:
        address = urlsplit(f"https://{text}" if bare in (*MODEL_PAGE_HOSTS, *MODELSCOPE_HOSTS) else text)
    except ValueError:  # a broken [IPv6] address: no page of the Hub's
        return text
    parts = address.path.strip("/").split("/")
    if address.scheme not in ("http", "https"):
        return text
    if address.hostname in MODELSCOPE_HOSTS:
        return "/".join(parts[1:3]) if parts[0] == "models" else text
    if address.hostname not in MODEL_PAGE_HOSTS or parts[0] in ("datasets", "spaces"):
        return text
    return "/".join(parts[:2]).split(":", 1)[0]


def is_official(endpoint: str) -> bool:
    """Whether an endpoint is huggingface.co itself (not a mirror)."""
    host = urlsplit(endpoint).hostname or ""
    return host == OFFICIAL_HOST or host.endswith("." + OFFICIAL_HOST)


def token_for(endpoint: str) -> str | bool:
    """The user's HF token for huggingface.co only; never sent to a mirror."""
    return (get_token() or False) if is_official(endpoint) else False


def gated(repo_id: str, endpoint: str) -> GatedRepoError:
    """A gated repository: the license to accept, and from a mirror, that the token never goes there."""
    reason, how = "gated_login", "accept its license on huggingface.co and log in with an HF token."
    if not is_official(endpoint):  # a mirror gets no token: logging in does not help there
        reason = "gated_mirror"
        how = (
            "accept its license on huggingface.co, log in with an HF token, and download it from "
            f"huggingface.co itself: your token is never sent to a mirror ({endpoint})."
        )
    return GatedRepoError(f"{repo_id} is gated: {how}", repo_id=repo_id, reason=reason, endpoint=endpoint)


def select_files(files: list[RemoteFile]) -> tuple[RemoteFile, ...]:
    """Files the app needs: safetensors over .bin, no other runtimes' weights or original checkpoints
    (Mistral's repos hold their weights twice: `consolidated.safetensors` in Mistral's own format beside
    transformers' shards, 14.5 GB each for Mistral 7B)."""
    kept = [f for f in files if not any(fnmatch(f.path, pattern) for pattern in _SKIPPED)]
    if any(f.path.endswith(".safetensors") for f in kept):
        kept = [f for f in kept if not f.path.endswith(".bin") and f.path != "pytorch_model.bin.index.json"]
    if any(f.path.endswith(".safetensors") and not _MISTRAL_FORMAT.match(f.path) for f in kept):
        kept = [f for f in kept if not _MISTRAL_FORMAT.match(f.path)]
    return tuple(sorted(kept, key=lambda f: f.path))


@dataclass(frozen=True)
class _Listed:
    """One file as a listing states it: any of size and hashes may be missing (asked for by HEAD)."""

    path: str
    size: int | None
    git_oid: str | None
    sha256: str | None

    @property
    def complete(self) -> bool:
        return self.size is not None and bool(self.git_oid or self.sha256)


def _refuse(endpoint: str, repo_id: str, detail: str) -> UnsafeListingError:
    return UnsafeListingError(
        f"The server {endpoint} sent an untrustworthy listing for {repo_id}: {detail}. Nothing was "
        "downloaded; use another download endpoint.",
        endpoint=endpoint,
        repo_id=repo_id,
        detail=detail,
    )


def _checked_size(value: object) -> int | None:
    """A declared size: None when absent; ValueError when it is not a sane byte count."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_FILE_BYTES:
        raise ValueError(f"an impossible size {str(value)[:40]!r}")
    return value


def _checked_hash(value: object, pattern: re.Pattern[str]) -> str | None:
    if value in (None, ""):
        return None
    if not isinstance(value, str) or not pattern.match(value):
        raise ValueError(f"a malformed checksum {str(value)[:80]!r}")
    return value


def _listed(sibling: object, endpoint: str, repo_id: str) -> _Listed:
    path = getattr(sibling, "rfilename", None)
    if reason := unsafe_path_reason(path):
        raise _refuse(endpoint, repo_id, f"the file name {str(path)[:120]!r} has {reason}")
    lfs = getattr(sibling, "lfs", None)
    try:
        size = _checked_size(getattr(sibling, "size", None))
        lfs_size = _checked_size(getattr(lfs, "size", None))
        sha256 = _checked_hash(getattr(lfs, "sha256", None), _SHA256)
        git_oid = _checked_hash(getattr(sibling, "blob_id", None), _GIT_OID)
    except ValueError as exc:
        raise _refuse(endpoint, repo_id, f"{path} has {exc}") from exc
    if size is not None and lfs_size is not None and size != lfs_size:
        raise _refuse(endpoint, repo_id, f"{path} has two different sizes ({size} and {lfs_size})")
    return _Listed(path, size if size is not None else lfs_size, git_oid, sha256)


def _transient_or_refused(exc: hf_errors.HfHubHTTPError, what: str) -> Exception:
    """A Hub HTTP error: 429 and 5xx are worth another try (a transport error), the rest a sentence."""
    status = exc.response.status_code if exc.response is not None else 0
    if status == 429 or status >= 500:
        return httpx2.TransportError(f"HTTP {status}")
    return DownloadError(
        f"The server refused {what} (HTTP {status}).", status=status, reason="server_refused"
    )


def fetch_listing(repo_id: str, revision: str, endpoint: str) -> RepoListing:
    """Commit and file list with sizes and hashes, every entry checked; typed errors for a missing or
    gated repo, UnsafeListingError for a listing that cannot be trusted."""
    api = HfApi(endpoint=endpoint, token=token_for(endpoint))
    try:
        info = api.model_info(repo_id, revision=revision, files_metadata=True, timeout=HUB_TIMEOUT)
    except hf_errors.GatedRepoError as exc:
        raise gated(repo_id, endpoint) from exc
    except (hf_errors.RepositoryNotFoundError, hf_errors.RevisionNotFoundError) as exc:
        raise RepoNotFoundError(f"Repository {repo_id} ({revision}) was not found.", repo_id=repo_id) from exc
    except hf_errors.HfHubHTTPError as exc:
        if exc.response is not None and exc.response.status_code == 401 and token_for(endpoint):
            raise DownloadError(
                "huggingface.co refused your Hugging Face token (HTTP 401): it is invalid or was revoked. "
                "Log in again with `hf auth login` (or fix HF_TOKEN), or log out to download public models "
                "without one.",
                reason="token_refused",
            ) from exc
        raise _transient_or_refused(exc, f"the listing of {repo_id}") from exc
    except hf_errors.OfflineModeIsEnabled as exc:  # HF_HUB_OFFLINE=1, left from running models offline
        raise DownloadError(
            "Downloads are off: the environment sets HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE (offline "
            "mode). Unset the variable, then try again.",
            reason="hub_offline",
        ) from exc
    except (KeyError, TypeError, ValueError, AttributeError) as exc:  # a body huggingface_hub cannot parse
        raise _refuse(endpoint, repo_id, "an answer that is not a repository listing") from exc
    siblings = info.siblings or []
    if len(siblings) > MAX_LISTED_FILES:
        raise _refuse(endpoint, repo_id, f"{len(siblings)} files (at most {MAX_LISTED_FILES} are accepted)")
    commit = info.sha or revision
    if not isinstance(commit, str) or not re.match(r"^[A-Za-z0-9._-]{1,100}$", commit):
        raise _refuse(endpoint, repo_id, "a malformed commit id")
    listed = [_listed(sibling, endpoint, repo_id) for sibling in siblings]
    if len({entry.path for entry in listed}) != len(listed):
        raise _refuse(endpoint, repo_id, "the same file name twice")
    kept = select_files([RemoteFile(e.path, e.size or 0, e.git_oid or "", e.sha256) for e in listed])
    by_path = {entry.path: entry for entry in listed}
    files = []
    for file in kept:
        entry = by_path[file.path]
        if not entry.complete:
            entry = _head_metadata(entry, endpoint, repo_id, commit)
            if entry is None:
                continue  # an optional file the server does not have
        files.append(RemoteFile(entry.path, entry.size or 0, entry.git_oid or "", entry.sha256))
    languages, license_name = card_metadata(info.card_data)
    return RepoListing(repo_id, commit, tuple(files), bool(info.gated), languages, license_name)


def card_metadata(card: Any) -> tuple[tuple[str, ...], str]:
    """The languages and license a model card names, those that read as such (a card is the repo
    owner's say): at most MAX_CARD_LANGUAGES language codes (`en`, `zh`, `pt-BR`), a short license id."""
    named = getattr(card, "language", None)
    codes = [named] if isinstance(named, str) else named if isinstance(named, list) else []
    languages = tuple(
        dict.fromkeys(c.lower() for c in codes[:100] if isinstance(c, str) and _LANGUAGE.match(c))
    )
    license_name = getattr(card, "license", None)
    if not isinstance(license_name, str) or not _LICENSE.match(license_name):
        license_name = ""
    return languages[:MAX_CARD_LANGUAGES], license_name


def _head_metadata(entry: _Listed, endpoint: str, repo_id: str, commit: str) -> _Listed | None:
    """Fill in a file's size and hash from a HEAD request (X-Linked-Size / ETag / X-Linked-Etag)."""
    url = file_url(endpoint, repo_id, commit, entry.path)
    try:
        metadata = get_hf_file_metadata(
            url, token=token_for(endpoint), endpoint=endpoint, timeout=HUB_TIMEOUT
        )
    except hf_errors.EntryNotFoundError:
        if RemoteFile(entry.path, 0, "", None).optional:
            return None
        raise DownloadError(
            f"{entry.path} is missing on the server (HTTP 404).", path=entry.path, reason="file_missing"
        ) from None
    except hf_errors.HfHubHTTPError as exc:
        raise _transient_or_refused(exc, f"{entry.path} of {repo_id}") from exc
    etag = (metadata.etag or "").lower()
    try:
        size = entry.size if entry.size is not None else _checked_size(metadata.size)
    except ValueError as exc:
        raise _refuse(endpoint, repo_id, f"{entry.path} has {exc}") from exc
    if size is None:
        raise _refuse(endpoint, repo_id, f"no size for {entry.path}, neither in the listing nor by HEAD")
    sha256 = entry.sha256 or (etag if _SHA256.match(etag) else None)
    git_oid = entry.git_oid or (etag if _GIT_OID.match(etag) else None)
    if sha256 is None and entry.path.endswith(".safetensors"):
        raise _refuse(endpoint, repo_id, f"no sha256 for {entry.path}, so its bytes could not be verified")
    return _Listed(entry.path, size, git_oid, sha256)


def file_url(endpoint: str, repo_id: str, commit: str, path: str) -> str:
    return hf_hub_url(repo_id, path, revision=commit, endpoint=endpoint)


def request_headers(endpoint: str) -> dict[str, str]:
    return build_hf_headers(token=token_for(endpoint), library_name="localllm-dashboard")


def fetch_json(endpoint: str, repo_id: str, commit: str, path: str) -> dict:
    """A small JSON file of the repo (config.json, tokenizer_config.json), refused when it is not an
    object or larger than MAX_JSON_BYTES."""
    with get_session().stream(
        "GET", file_url(endpoint, repo_id, commit, path), headers=request_headers(endpoint),
        follow_redirects=True, timeout=HUB_TIMEOUT,
    ) as response:  # fmt: skip
        if response.status_code in (401, 403):
            raise gated(repo_id, endpoint)
        if response.status_code == 404:
            raise UnsupportedModelError(f"{repo_id} has no {path}.", repo_id=repo_id)
        if response.status_code == 429 or response.status_code >= 500:  # worth the next try, or endpoint
            raise httpx2.TransportError(f"HTTP {response.status_code}")
        if response.status_code != 200:
            raise DownloadError(
                f"The server {endpoint} refused {path} of {repo_id} (HTTP {response.status_code}).",
                repo_id=repo_id,
            )
        body = bytearray()
        for chunk in response.iter_bytes():
            body += chunk
            if len(body) > MAX_JSON_BYTES:
                raise UnsupportedModelError(f"{path} of {repo_id} is too large to be a config file.",
                                            repo_id=repo_id)  # fmt: skip
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        data = None
    if not isinstance(data, dict):
        raise UnsupportedModelError(f"{path} of {repo_id} is not a valid JSON object.", repo_id=repo_id)
    return data


def _check_architecture(repo_id: str, config: dict[str, Any]) -> None:
    """Refuse a model transformers cannot run as a text generator: an architecture newer than it, or one
    that needs images or sound beside the text (Qwen2.5-VL, LLaVA: no AutoModelForCausalLM class)."""
    from transformers import __version__
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    said = config.get("model_type")
    kind = said if isinstance(said, str) and re.fullmatch(r"[\w.-]{1,60}", said) else "unnamed"
    if kind not in CONFIG_MAPPING_NAMES:
        raise UnsupportedModelError(
            f"{repo_id} is a model of a kind ({kind}) that this app's transformers ({__version__}) does not "
            "know.", repo_id=repo_id, kind=kind, version=__version__, reason="unknown_architecture",
        )  # fmt: skip
    if kind not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise UnsupportedModelError(
            f"{repo_id} is a {kind} model, which takes images or sound beside text; this app runs text "
            "models (its family's text model may run).", repo_id=repo_id, kind=kind, reason="not_text_model",
        )  # fmt: skip


def _prequantized(config: dict[str, Any]) -> str | None:
    """The kind of quantization a repo's weights were saved in (AWQ, GPTQ, bitsandbytes, FP8: transformers'
    `quantization_config`; MLX's `quantization`), if they were."""
    if isinstance(said := config.get("quantization_config"), dict):
        method = re.sub(r"[^A-Za-z0-9_.-]", "", str(said.get("quant_method", "")))[:30]
        return method or "quantized"
    return "MLX" if isinstance(config.get("quantization"), dict) else None


def quantized_copy_of(repo_id: str) -> str | None:
    """The model a repo is a quantized copy of, by its name (-AWQ, -GPTQ-Int4, -bnb-4bit, -4bit), or None."""
    original = _QUANTIZED_SUFFIX.sub("", repo_id)
    return original if original != repo_id else None


def check_runnable(listing: RepoListing, endpoint: str) -> None:
    """Refuse repos the engine cannot run: no safetensors, no chat template, or remote code needed."""
    paths = {f.path for f in listing.files}
    copy_of = quantized_copy_of(listing.repo_id)
    original, known = copy_of or listing.repo_id, copy_of is not None
    if not any(p.endswith(".safetensors") for p in paths):
        hint = f"; add the original model, perhaps {original}" if known else ""
        raise UnsupportedModelError(
            f"{listing.repo_id} has no safetensors weights{hint}.",
            repo_id=listing.repo_id, original=original,
            reason="no_safetensors_original" if known else "no_safetensors",
        )  # fmt: skip
    if "config.json" not in paths:
        raise UnsupportedModelError(
            f"{listing.repo_id} has no config.json.", repo_id=listing.repo_id, reason="no_config"
        )
    if "tokenizer.json" not in paths:  # a sentencepiece tokenizer.model alone needs a library not here
        raise UnsupportedModelError(
            f"{listing.repo_id} has no tokenizer.json, the tokenizer this app reads.",
            repo_id=listing.repo_id, reason="no_tokenizer",
        )  # fmt: skip
    config = fetch_json(endpoint, listing.repo_id, listing.commit, "config.json")
    if "auto_map" in config:
        raise UnsupportedModelError(
            f"{listing.repo_id} needs trust_remote_code, which this app keeps off for safety.",
            repo_id=listing.repo_id, reason="remote_code",
        )  # fmt: skip
    _check_architecture(listing.repo_id, config)
    if method := _prequantized(config):
        raise UnsupportedModelError(
            f"{listing.repo_id} holds weights quantized already ({method}), which need a library this app "
            "does not use (it quantizes a model's original weights itself: Hardware & Settings → Weights on "
            "the CPU); add the original model instead" + (f", probably {original}." if known else "."),
            repo_id=listing.repo_id, method=method, original=original,
            reason="prequantized" if known else "prequantized_no_original",
        )  # fmt: skip
    has_template = "chat_template.jinja" in paths
    if not has_template and "tokenizer_config.json" in paths:
        tokenizer_config = fetch_json(endpoint, listing.repo_id, listing.commit, "tokenizer_config.json")
        has_template = bool(tokenizer_config.get("chat_template"))
    if not has_template:
        raise UnsupportedModelError(
            f"{listing.repo_id} has no chat template, so it is not a chat model.",
            repo_id=listing.repo_id, reason="not_chat_model",
        )  # fmt: skip
