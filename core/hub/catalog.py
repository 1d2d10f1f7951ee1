"""The built-in model catalog: each small chat model's repository, size, languages and shape (what it
is good for, in both languages, is in ui/locales)."""

from __future__ import annotations

from dataclasses import dataclass

from core.inference.sizing import KvLayout, Vocabulary

GB = 1000**3


@dataclass(frozen=True)
class ModelSpec:
    key: str
    repo_id: str
    revision: str
    download_bytes: int
    parameters: int
    languages: tuple[str, ...]
    context_length: int
    license: str
    kv_layout: KvLayout | None = None  # from the model's config.json; None when unknown
    vocabulary: Vocabulary | None = None  # likewise
    custom: bool = False


BUILTIN_MODELS: tuple[ModelSpec, ...] = (
    ModelSpec(
        key="qwen2.5-0.5b",
        repo_id="Qwen/Qwen2.5-0.5B-Instruct",
        revision="main",
        download_bytes=int(0.99 * GB),
        parameters=494_032_768,
        languages=("zh", "en"),
        context_length=32768,
        license="Apache-2.0",
        kv_layout=KvLayout(
            layers=24, kv_heads=2, head_dim=64, hidden_size=896, heads=14, intermediate_size=4864
        ),
        vocabulary=Vocabulary(151_936 * 896, tied=True),
    ),
    ModelSpec(
        key="tinyllama-1.1b",
        repo_id="TinyLlama/TinyLlama-1.1B-Chat-v1.0",
        revision="main",
        download_bytes=int(2.2 * GB),
        parameters=1_100_048_384,
        languages=("en",),
        context_length=2048,
        license="Apache-2.0",
        kv_layout=KvLayout(
            layers=22, kv_heads=4, head_dim=64, hidden_size=2048, heads=32, intermediate_size=5632
        ),
        vocabulary=Vocabulary(32_000 * 2048, tied=False),
    ),
)


def builtin_spec(key: str) -> ModelSpec | None:
    return next((spec for spec in BUILTIN_MODELS if spec.key == key), None)


def key_for_repo(repo_id: str, taken: set[str]) -> str:
    """A short catalog key for a repo id: its name in lower case, or org--name when that is taken."""
    org, name = repo_id.split("/", 1)
    key = name.lower()
    return key if key not in taken else f"{org.lower()}--{key}"


def custom_spec(key: str, repo_id: str, revision: str, details: dict) -> ModelSpec:
    return ModelSpec(
        key=key,
        repo_id=repo_id,
        revision=revision,
        download_bytes=int(details.get("download_bytes", 0)),
        parameters=int(details.get("parameters", 0)),
        languages=tuple(details.get("languages", ())),
        context_length=int(details.get("context_length", 0)),
        license=str(details.get("license", "")),
        kv_layout=KvLayout(**details["kv_layout"]) if "kv_layout" in details else None,
        vocabulary=Vocabulary(**details["vocabulary"]) if "vocabulary" in details else None,
        custom=True,
    )
