"""One exception hierarchy; every error carries a message key and parameters a UI can translate."""

from __future__ import annotations

from typing import Any


class LocalLLMError(Exception):
    """Base of every error the product reports to a user.

    `bad_input`: the user asked for something that cannot be (a wrong key, id, value): the CLI exits
    with 2. Otherwise something failed on the way (network, disk, server, model): exit code 1.
    `params`: what a translation needs; a name ending in `_bytes` is a byte count (shown in MB, GB),
    `reason` names a `reason.*` text that the message's translation includes.
    """

    code = "error.generic"
    bad_input = False

    def __init__(self, message: str, **params: Any) -> None:
        super().__init__(message)
        self.message = message
        self.params = params


class ConfigError(LocalLLMError):
    """A provider config or setting is invalid."""

    code = "error.config"
    bad_input = True


class NotFoundError(LocalLLMError):
    """A record the caller named does not exist."""

    code = "error.not_found"
    bad_input = True


class StorageError(LocalLLMError):
    """The database cannot be opened or used."""

    code = "error.storage"


class SchemaTooNewError(StorageError):
    """The database was written by a newer version of the app."""

    code = "error.schema_too_new"


class DownloadError(LocalLLMError):
    """A download failed for a reason a retry will not fix."""

    code = "error.download"


class RepoNotFoundError(DownloadError):
    code = "error.repo_not_found"
    bad_input = True


class GatedRepoError(DownloadError):
    code = "error.gated"


class DiskSpaceError(DownloadError):
    code = "error.disk_space"


class NotWritableError(DownloadError):
    code = "error.not_writable"


class EndpointsFailedError(DownloadError):
    """Every download endpoint failed for one step (network errors, 5xx, bytes that do not check);
    `reason` (connect, timeout, reset, server, checksum, length, other) says how."""

    code = "error.endpoints_failed"


class ListingFailedError(EndpointsFailedError):
    """Every endpoint failed to give a repository's file list: nothing of it was downloaded yet."""

    code = "error.listing_failed"


class SearchFailedError(EndpointsFailedError):
    """Every endpoint failed to answer a search of the Hub's models."""

    code = "error.search_failed"


class UnsafeListingError(DownloadError):
    """A server listed a file name, size or hash that cannot be trusted; nothing was written."""

    code = "error.unsafe_listing"


class InvalidRepoIdError(LocalLLMError):
    code = "error.invalid_repo_id"
    bad_input = True


class InvalidSearchError(LocalLLMError):
    """A search of the Hub's models that cannot be sent: empty, or too long."""

    code = "error.invalid_search"
    bad_input = True


class UnsupportedModelError(LocalLLMError):
    """The repository exists but the app cannot run it (no safetensors, no chat template, remote code)."""

    code = "error.unsupported_model"
    bad_input = True


class EngineError(LocalLLMError):
    """The local model cannot be loaded or run."""

    code = "error.engine"


class ModelNotReadyError(EngineError):
    code = "error.model_not_ready"


class InsufficientMemoryError(EngineError):
    code = "error.memory"


class NoChatTemplateError(EngineError):
    code = "error.no_chat_template"


class QueueFullError(EngineError):
    code = "error.queue_full"


class GenerationError(EngineError):
    """Generation failed in the worker thread; the message says why."""

    code = "error.generation"


class MessageError(LocalLLMError):
    """A chat message cannot be sent as it is (empty, or longer than the model's context)."""

    code = "error.message"
    bad_input = True


class ContextLengthError(MessageError):
    """The prompt does not fit in the model's context window: `tokens` against the `budget` it may
    take. Counting a long text stops early, so `reason` says whether `tokens` is the whole count
    (context_counted) or where counting stopped, well past the budget (context_at_least)."""

    code = "error.context_length"

    def __init__(self, message: str, *, tokens: int, budget: int, **params: Any) -> None:
        reason = "context_at_least" if self.counting_stopped(tokens, budget) else "context_counted"
        super().__init__(message, tokens=tokens, budget=budget, reason=reason, **params)

    @staticmethod
    def counting_stopped(tokens: int, budget: int) -> bool:
        """Whether a count this far past the budget may have stopped early (a lower bound)."""
        return tokens > budget * 1.1


class ChatTemplateError(MessageError):
    """The model's chat template refused the conversation (Mistral's: roles must alternate; Gemma 2's: no
    system role); `detail` is the template's own words."""

    code = "error.chat_template"


class ArchiveError(LocalLLMError):
    """A chat export cannot be imported; `reason` (archive_too_large, archive_not_json, archive_unknown,
    archive_too_new, archive_zip) says why."""

    code = "error.archive"
    bad_input = True


class AttachmentError(LocalLLMError):
    """A file given with a message cannot be read; `reason` (attachment_too_large, attachment_unsupported,
    attachment_no_text, attachment_not_text, attachment_encrypted, attachment_damaged,
    attachment_too_many) and `file` say why and which."""

    code = "error.attachment"
    bad_input = True


class ProviderError(LocalLLMError):
    """A remote OpenAI-compatible server could not answer; the message says why in plain words."""

    code = "error.provider"


class ServerContextError(ProviderError):
    """A server refused the conversation as longer than its model's context, which it said (`limit`)."""

    code = "error.server_context"


class ReplyBrokeOffError(ProviderError):
    """A remote server's reply stopped midway; `reason` says why, as for the error that ended it."""

    code = "error.reply_broke_off"


class SignInError(LocalLLMError):
    """A LAN sign-in was refused; `reason` is no_password, rate_limited, bad_name, mixed_scripts or
    bad_password (and, while a name is claimed, claim, weak_password, mismatch)."""

    code = "error.sign_in"


def is_bad_input(code: str | None) -> bool:
    """Whether a stored error code (a failed job keeps the code, not the exception) is the user's input."""

    def classes(base: type[LocalLLMError]) -> list[type[LocalLLMError]]:
        return [base, *(c for sub in base.__subclasses__() for c in classes(sub))]

    return any(cls.code == code and cls.bad_input for cls in classes(LocalLLMError))
