"""One exception hierarchy; every error carries a message key and parameters a UI can translate."""

from __future__ import annotations

from typing import Any


class LocalLLMError(Exception):
    """Base of every error the product reports to a user."""

    code = "error.generic"

    def __init__(self, message: str, **params: Any) -> None:
        super().__init__(message)
        self.message = message
        self.params = params


class ConfigError(LocalLLMError):
    """A provider config or setting is invalid."""

    code = "error.config"


class NotFoundError(LocalLLMError):
    """A record the caller named does not exist."""

    code = "error.not_found"


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


class GatedRepoError(DownloadError):
    code = "error.gated"


class DiskSpaceError(DownloadError):
    code = "error.disk_space"


class NotWritableError(DownloadError):
    code = "error.not_writable"


class InvalidRepoIdError(LocalLLMError):
    code = "error.invalid_repo_id"


class UnsupportedModelError(LocalLLMError):
    """The repository exists but the app cannot run it (no safetensors, no chat template, remote code)."""

    code = "error.unsupported_model"


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


class ProviderError(LocalLLMError):
    """A remote OpenAI-compatible server could not answer; the message says why in plain words."""

    code = "error.provider"


class SignInError(LocalLLMError):
    """A LAN sign-in was refused; `reason` is no_password, rate_limited, bad_name or bad_password."""

    code = "error.sign_in"
