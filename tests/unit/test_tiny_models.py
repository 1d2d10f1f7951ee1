"""The tiny model factory makes real, loadable chat repos for both shipped architectures."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer


@pytest.mark.parametrize(("arch", "model_type"), [("qwen2", "qwen2"), ("llama", "llama")])
def test_tiny_model_loads_and_chats(tiny_models: dict[str, Path], arch: str, model_type: str) -> None:
    directory = tiny_models[arch]
    names = {p.name for p in directory.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json"} <= names
    assert AutoConfig.from_pretrained(directory).model_type == model_type
    tokenizer = AutoTokenizer.from_pretrained(directory)
    model = AutoModelForCausalLM.from_pretrained(directory)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "你好, hello 😀"}],
        add_generation_prompt=True,
        return_dict=True,
        return_tensors="pt",
    )
    output = model.generate(**prompt, max_new_tokens=5, min_new_tokens=5, do_sample=False)
    assert output.shape[1] == prompt["input_ids"].shape[1] + 5
    text = tokenizer.decode(prompt["input_ids"][0])
    assert "你好, hello 😀" in text  # byte-level BPE round-trips Chinese and emoji
