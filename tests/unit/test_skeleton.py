"""core.inference.skeleton: transformers' module tree without its model code, for quantized models."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    GenerationConfig,
    LlamaConfig,
    MistralConfig,
    Qwen2Config,
    Qwen3Config,
)
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

from core.inference import skeleton
from core.inference.engine import LocalEngine
from core.inference.quantize import _all_tensors, quantize_model
from core.settings import PROJECT_ROOT
from tests.fixtures.tiny_models import install_ready

SMALL = {"vocab_size": 96, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2}  # fmt: skip
CONFIGS = {
    "qwen2 (tied, q/k/v biases)": Qwen2Config(**SMALL, tie_word_embeddings=True),
    "llama (all biases)": LlamaConfig(**SMALL, attention_bias=True, mlp_bias=True),
    "mistral (head_dim of its own)": MistralConfig(**SMALL, head_dim=32, sliding_window=None),
    "qwen3 (q/k norms, head_dim of its own)": Qwen3Config(**SMALL, head_dim=32),
}


LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 1024}  # fmt: skip


def layout(model: torch.nn.Module) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    return {name: (tuple(t.shape), t.dtype) for name, t in _all_tensors(model).items()}


@pytest.mark.parametrize("scheme", ["int4", "int8"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_the_tree_holds_the_tensors_of_transformers_model(name: str, scheme: str) -> None:
    # A quantized copy kept beside a model loads only into a tree with exactly these names and shapes.
    config = CONFIGS[name]
    assert skeleton.builds(config)
    defaults = skeleton.GenerationDefaults.of(GenerationConfig())
    lean = skeleton.CausalLM(skeleton.Architecture.of(config), defaults, torch.bfloat16)
    with torch.device("meta"):
        theirs = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    assert layout(lean) == layout(theirs)
    for model in (lean, theirs):
        quantize_model(model, torch.bfloat16, scheme)
    assert layout(lean) == layout(theirs)


@pytest.mark.parametrize(
    "rope",
    [
        {"rope_type": "default", "rope_theta": 1e6},
        {"rope_type": "linear", "rope_theta": 1e4, "factor": 2.0},
        LLAMA3_ROPE,
        {"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0, "original_max_position_embeddings": 512},
    ],
    ids=lambda rope: rope["rope_type"],
)
def test_rotary_tables_are_transformers_own(rope: dict) -> None:
    config = LlamaConfig(**SMALL, max_position_embeddings=2048, rope_parameters=rope)
    assert skeleton.builds(config)
    architecture = skeleton.Architecture.from_dict(skeleton.Architecture.of(config).as_dict())  # as kept
    ours, theirs = skeleton.Rotary(architecture), LlamaRotaryEmbedding(config)
    positions = torch.arange(0, 2048, 7).unsqueeze(0)
    x = torch.zeros(1, dtype=torch.bfloat16)
    for got, expected in zip(ours(x, positions), theirs(x, positions), strict=True):
        assert torch.equal(got, expected)
    assert ours.attention_scaling == theirs.attention_scaling


def test_what_it_does_not_build_is_left_to_transformers() -> None:
    dynamic = LlamaConfig(**SMALL, rope_parameters={"rope_type": "dynamic", "rope_theta": 1e4, "factor": 2.0})
    assert skeleton.decoder_architecture(dynamic) and not skeleton.builds(
        dynamic
    )  # tables change with length
    assert not skeleton.builds(MistralConfig(**SMALL, sliding_window=64))
    assert not skeleton.builds(LlamaConfig(**SMALL, hidden_act="gelu"))


LOAD_AND_REPLY = """
import json, sys
from pathlib import Path
from core.inference.engine import LocalEngine
from core.inference.events import TextDelta
from core.inference.params import GenerationParams
engine = LocalEngine(Path(sys.argv[1]), device="cpu", idle_unload_s=0)
loaded = engine.load("tiny")
params = GenerationParams(temperature=0, max_new_tokens=8)
text = "".join(e.text for e in engine.stream("tiny", [{"role": "user", "content": "Hi"}], params)
               if isinstance(e, TextDelta))
heavy = ["transformers.models.llama.modeling_llama", "transformers.models.qwen2.modeling_qwen2",
         "transformers.models.qwen3.modeling_qwen3", "transformers.modeling_utils", "torch._dynamo"]
print(json.dumps({"runner": loaded.runner, "text": text, "imported": [m for m in heavy if m in sys.modules],
                  "transformers": "transformers" in sys.modules}))
"""


@pytest.mark.parametrize("arch", ["qwen2", "qwen3"])
def test_a_quantized_model_loads_and_replies_without_transformers_model_code_then_without_transformers(
    tmp_path: Path, tiny_models: dict[str, Path], arch: str
) -> None:
    # Those modules cost a one-question `core chat` ~2 s of imports on 2 cores (first load, which
    # quantizes, and the next one, which maps the kept copy).
    install_ready(tmp_path, "tiny", tiny_models[arch])
    replies, imported_transformers = [], []
    for _load in ("quantizing", "mapped"):
        done = subprocess.run(
            [sys.executable, "-c", LOAD_AND_REPLY, str(tmp_path)],
            cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-1000:]
        result = json.loads(done.stdout.strip().splitlines()[-1])
        assert result["runner"] == "decoder" and result["imported"] == []
        replies.append(result["text"])
        imported_transformers.append(result["transformers"])
    assert replies[0] and replies[0] == replies[1]
    # The copy keeps the architecture and the tokenizer is kept too: transformers is not even imported.
    assert imported_transformers == [True, False]


AFTER_PREPARE = """
import json, sys
from pathlib import Path
from core.inference.engine import LocalEngine
engine = LocalEngine(Path(sys.argv[1]), device="cpu", idle_unload_s=0)
engine.prepare().result()
before = set(sys.modules)
engine.load("tiny")
heavy = ("configuration_", "modeling_", "torch._dynamo", "torch.distributed")
print(json.dumps(sorted(m for m in set(sys.modules) - before if any(part in m for part in heavy))))
"""


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_after_the_apps_preparation_a_load_imports_no_config_or_model_code(
    tmp_path: Path, tiny_models: dict[str, Path], arch: str
) -> None:
    # The app prepares while the user looks at the page; LlamaConfig's imports alone took 0.75 s of a
    # first TinyLlama load when they were left to it.
    install_ready(tmp_path, "tiny", tiny_models[arch])
    first = LocalEngine(tmp_path, device="cpu", idle_unload_s=0)
    first.load("tiny")  # quantizes and keeps the copy (here: this process has imported it all already)
    first.unload()
    done = subprocess.run(
        [sys.executable, "-c", AFTER_PREPARE, str(tmp_path)],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-1000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
