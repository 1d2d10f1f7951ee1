"""Loading a downloaded model: transformers imported once, the tokenizer, and the weights as the engine
runs them (int4/int8 quantized on the CPU into core.inference.skeleton's modules, mapped from the copy
kept beside the model after the first load; 16-bit through transformers' classes, with fused
projections on CUDA)."""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from core.errors import ConfigError, NoChatTemplateError, UnsupportedModelError
from core.hardware import return_freed_memory_to_os
from core.hub.store import config_count, read_config, read_manifest
from core.inference.chat_tokenizer import KEPT_NAME, ChatTokenizer
from core.inference.device import prepare_attention
from core.inference.params import GenerationParams
from core.inference.sizing import Precision


@dataclass(frozen=True)
class LoadedModel:
    key: str
    device: str
    dtype: str  # what activations and the KV cache are computed in
    weights: str  # how weights are stored: "int4" on the CPU by default, else the same as dtype
    memory_bytes: int
    context_length: int
    load_id: int
    load_s: float
    runner: str = "generate"  # "decoder": the engine's lean forward pass; "generate": transformers'


@dataclass(frozen=True)
class LoadedParts:
    """What a reply needs: the model, its tokenizer and the lean decoder (None: `model.generate` runs)."""

    model: Any
    tokenizer: ChatTokenizer
    decoder: Any
    info: LoadedModel
    packing: threading.Thread | None = None  # the output head being packed for oneDNN (quantize.py)


WEIGHT_SUFFIXES = (".safetensors", ".bin")
_IMPORT_LOCK = threading.Lock()
_imported: set[str] = set()
logger = logging.getLogger(__name__)


def import_runtime(model_types: Iterable[str] = ()) -> None:
    """Import transformers' tokenizers and configs, the lean decoder and every transformers name the
    engine uses, once; and the configuration classes of `model_types` (config.json's model_type).

    transformers resolves its names lazily, and two threads resolving them at once can fail ("cannot
    import name AutoTokenizer"): a page counting tokens while the engine's thread still imports. So
    all of it happens here, under a lock; afterwards `from transformers import X` is a plain lookup.
    transformers' model classes are left to `import_model_code`: the lean decoder does not need them.
    A configuration class is imported when its model is first used: LlamaConfig's imports alone
    (transformers' activation checks, torch.distributed) take ~0.75 s on 2 cores.
    """
    with _IMPORT_LOCK:
        _import_runtime_locked()
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING

        for model_type in model_types:
            if model_type in CONFIG_MAPPING:  # an unknown type is left to AutoConfig's own error
                CONFIG_MAPPING[model_type]


def import_ahead() -> None:
    """Ahead of a first load (the app, `serve`): the runtime and the configuration classes of the
    architectures the lean decoder runs."""
    from core.inference import native
    from core.inference.skeleton import ARCHITECTURES

    import_runtime(ARCHITECTURES)
    native.ready()  # loads the engine's own int4 kernel, or starts building it (once a machine, ~10 s)


def _import_runtime_locked() -> None:
    if "runtime" not in _imported:
        import transformers
        import transformers.modeling_rope_utils  # core.inference.skeleton's rotary tables

        transformers.utils.logging.disable_progress_bar()  # "Loading weights: 100%|███" on stderr

        for name in (
            "AutoConfig", "AutoModelForCausalLM", "AutoTokenizer", "DynamicCache", "GenerationConfig",
            "LlamaTokenizer", "LlamaTokenizerFast", "LogitsProcessorList", "PreTrainedTokenizerFast",
            "Qwen2Tokenizer", "Qwen2TokenizerFast", "StoppingCriteriaList", "TextIteratorStreamer",
        ):  # fmt: skip
            getattr(transformers, name)
        from core.inference import decoder, quantize, skeleton  # noqa: F401

        _imported.add("runtime")


def import_model_code() -> None:
    """Import transformers' model classes of the catalog architectures, once (~1.5 s of imports): for
    16-bit weights, a GPU and architectures the lean decoder does not run."""
    import_runtime()
    with _IMPORT_LOCK:
        if "models" in _imported:
            return
        import transformers.models.llama.modeling_llama
        import transformers.models.qwen2.modeling_qwen2  # noqa: F401

        from core.inference import attention  # noqa: F401

        _imported.add("models")


def kernel_available(scheme: str) -> bool:
    from core.inference.quantize import kernel_supported

    return kernel_supported(scheme)


def _import_tokenizers() -> None:
    """The tokenizers library, imported by one thread at a time: a page reading a kept tokenizer while
    the engine's thread imported transformers (which imports it) left it half-initialized ("cannot
    import name 'Decoder' from partially initialized module 'tokenizers.decoders'")."""
    with _IMPORT_LOCK:
        import tokenizers  # noqa: F401


def load_tokenizer(key: str, directory: Path) -> ChatTokenizer:
    """The model's tokenizer: the one kept beside it by an earlier load, else transformers' (which
    imports transformers), then kept."""
    _import_tokenizers()
    kept, source = directory / KEPT_NAME, _tokenizer_files_id(directory)
    tokenizer = ChatTokenizer.load(kept, source) if source else None
    if tokenizer is None:
        import_runtime(declared_model_types(directory))  # AutoTokenizer reads the config too
        from transformers import AutoTokenizer

        built = AutoTokenizer.from_pretrained(directory, local_files_only=True, trust_remote_code=False)
        if not built.chat_template:
            raise NoChatTemplateError(f"{key} has no chat template, so it cannot be used for chat.", key=key)
        if getattr(built, "backend_tokenizer", None) is None:
            raise UnsupportedModelError(
                f"{key}'s tokenizer cannot be read by the tokenizers library.", key=key
            )
        tokenizer = ChatTokenizer.from_transformers(built)
        if source:
            with contextlib.suppress(OSError):  # a read-only folder: built again next time
                tokenizer.save(kept, source)
    _check_vocabulary(key, tokenizer.backend.get_vocab_size(), read_config(directory))  # kept ones too
    return tokenizer


def _check_vocabulary(key: str, tokens: int, config: dict[str, Any]) -> None:
    """Refuse a tokenizer far smaller than the model's vocabulary: transformers builds an empty one where
    the repo has no tokenizer.json it can read (a sentencepiece tokenizer.model without its library), and
    every prompt was then read as a token or two. A vocabulary rounded up past the tokenizer (Qwen's
    151,936 for 151,665 tokens) is the model's own."""
    text = config.get("text_config")
    size = config.get("vocab_size", text.get("vocab_size") if isinstance(text, dict) else None)
    if isinstance(size, int) and not isinstance(size, bool) and tokens < size // 2:
        raise UnsupportedModelError(
            f"{key}'s tokenizer knows {tokens} tokens where its model has {size}: its tokenizer.json is "
            "missing or of a kind this app cannot read.", key=key, tokens=tokens, size=size,
            reason="tokenizer_mismatch",
        )  # fmt: skip


def _tokenizer_files_id(directory: Path) -> str:
    """Names the exact files a tokenizer is built from (every verified file but the weights); "" for a
    folder without a manifest."""
    manifest = read_manifest(directory)
    if manifest is None:
        return ""
    return ",".join(
        sorted(f"{f.path}:{f.sha256}" for f in manifest.files if not f.path.endswith(WEIGHT_SUFFIXES))
    )


def declared_model_types(directory: Path) -> tuple[str, ...]:
    """config.json's model_type, if it names one (a missing or broken config is AutoConfig's to report)."""
    try:
        model_type = read_config(directory).get("model_type")
    except UnsupportedModelError:
        return ()
    return (model_type,) if isinstance(model_type, str) else ()


def context_length(directory: Path, tokenizer: Callable[[], ChatTokenizer]) -> int:
    """The model's context window: its config's max_position_embeddings, else the tokenizer's limit (the
    tokenizer is loaded only then)."""
    own = config_count(read_config(directory), "max_position_embeddings")
    return own or int(tokenizer().model_max_length)


def publisher_params(directory: Path) -> GenerationParams:
    """The sampling in the model's generation_config.json (temperature, top_p, top_k, repetition penalty;
    do_sample false means greedy), over the product's defaults; a value out of range is left out."""
    try:
        config = json.loads((directory / "generation_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        config = None
    if not isinstance(config, dict):
        return GenerationParams()
    given = {
        name: config[name]
        for name in ("temperature", "top_p", "top_k", "repetition_penalty")
        if name in config
    }
    if config.get("do_sample") is False:
        given["temperature"] = 0.0
    params = GenerationParams()
    for name, value in given.items():
        try:
            params = replace(params, **{name: value})
        except (ConfigError, TypeError):
            continue  # a value this product does not accept: its default stays
    return params


def _weights_id(directory: Path) -> str:
    """Names the exact weights a quantized copy was made from (their verified sha256s)."""
    manifest = read_manifest(directory)
    hashes = sorted(f.sha256 for f in manifest.files if f.path.endswith(".safetensors")) if manifest else []
    return ",".join(hashes)


def _weights(directory: Path, device: str, dtype: Any, scheme: str | None) -> tuple[Any, bool]:
    """The model with its weights as the engine runs them, and whether they were mapped from the
    quantized copy (nothing 16-bit was read)."""
    from core.inference import decoder, native, quantize

    if scheme:  # quantized once, then mapped from disk: no 16-bit copy at load
        cache, source = quantize.cache_path(directory, scheme, dtype), _weights_id(directory)
        model = quantize.load_quantized(directory, cache, dtype, scheme, source)
        if model is not None:
            return model, True
        native.ready()  # the engine's group fit, where built (quantize.fitted_pairs: ~3 × as fast)
        model = quantize.quantize_checkpoint(directory, dtype, scheme)  # matrix by matrix
        if model is None:
            model = _transformers_model(directory, device, dtype)
            quantize.quantize_model(model, dtype, scheme)
        with contextlib.suppress(OSError):  # a read-only folder: quantize again next time
            quantize.save_quantized(model, cache, source)
        return model, False
    model = _transformers_model(directory, device, dtype)
    if device == "cuda" and decoder.runs_architecture(model):
        quantize.fuse_projections(model)  # for the decoder: fewer kernel launches a token
    elif device == "cpu" and str(dtype) == "torch.bfloat16":
        quantize.pad_gemm_rows(model)  # a prompt's GEMMs in a few shapes, as quantized layers run them
    return model, False


def _transformers_model(directory: Path, device: str, dtype: Any) -> Any:
    """The whole model in `dtype` through transformers' own classes (the CPU's attention for one
    token: core.inference.attention)."""
    import_model_code()
    from transformers import AutoConfig, AutoModelForCausalLM

    from core.inference import attention

    config = AutoConfig.from_pretrained(directory, local_files_only=True, trust_remote_code=False)
    model, loading = AutoModelForCausalLM.from_pretrained(
        directory, config=config, dtype=dtype, local_files_only=True, trust_remote_code=False,
        attn_implementation=attention.implementation(config, device), output_loading_info=True,
    )  # fmt: skip
    head = "lm_head.weight"
    if set(loading["missing_keys"]) == {head}:
        # An embedding model's checkpoint (Qwen3-Embedding-8B's: untied in its config, no head in its files):
        # its hidden states are what it is for; the input table stands in for the head it does not have.
        logger.warning("%s has no output head: its replies mean nothing, its embeddings are what it is for",
                       directory.name)  # fmt: skip
        model.get_output_embeddings().weight = model.get_input_embeddings().weight
    elif missing := sorted(loading["missing_keys"]):  # transformers made them up (random): the replies too
        named = ", ".join(missing[:3]) + (", …" if len(missing) > 3 else "")
        raise UnsupportedModelError(
            f"The weights of {directory.name} do not fit its config.json: {len(missing)} of its matrices are "
            f"missing ({named}). Its files may hold another format (quantized as AWQ, GPTQ or MLX): add the "
            "model's original weights instead.",
            key=directory.name, missing=len(missing), names=named, reason="weights_missing",
        )  # fmt: skip
    return model.to(device).eval()


def load_model(
    key: str,
    directory: Path,
    device: str,
    dtype: Any,
    precision: Precision,
    tokenizer: ChatTokenizer,
    load_id: int,
) -> LoadedParts:
    """Load `key` for `device` (run on the engine's torch thread); transformers is imported only where
    its classes or configs are needed (not for a quantized copy kept by an earlier load)."""
    from core.inference import calibration, decoder, native, quantize

    started = time.perf_counter()
    prepare_attention(device)
    scheme = precision.label if precision.label in quantize.SCHEMES else None
    model, mapped = _weights(directory, device, dtype, scheme)
    if scheme == "int4" and device == "cpu" and str(dtype) == "torch.bfloat16":
        # Prompts unpack the weights where that outruns torch's int4 kernel, never beside the engine's own.
        rows = quantize.UNPACK_NEVER if native.ready() else calibration.int4_prompt_rows(directory.parent)
        quantize.set_int4_prompt_rows(model, rows)
    if not mapped:
        gc.collect()  # 16-bit weights that were replaced or read (a full collection: ~0.2 s)
        return_freed_memory_to_os()
    lean = decoder.Decoder(model) if decoder.supports(model) else None
    packing = quantize.pack_in_background(model.get_output_embeddings()) if scheme else None
    info = LoadedModel(
        key=key,
        device=device,
        dtype=str(dtype).removeprefix("torch."),
        weights=precision.label,
        memory_bytes=quantize.stored_bytes(model),
        context_length=context_length(directory, lambda: tokenizer),
        load_id=load_id,
        load_s=time.perf_counter() - started,
        runner="decoder" if lean is not None else "generate",
    )
    return LoadedParts(model, tokenizer, lean, info, packing)
