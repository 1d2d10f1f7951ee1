"""Embeddings through `core serve`: OpenAI's /v1/embeddings with the official client (which asks for
base64 by default) and Ollama's /api/embed and /api/embeddings with Ollama's client, on a real tiny model:
each vector is the model's final hidden state after the text's last token, normalised, as transformers
computes it in float32 (to a cosine of 0.999 with int4 weights), the same whichever API or encoding."""

from __future__ import annotations

import json
from pathlib import Path

import ollama
import openai
import pytest
import torch

from core.inference.engine import LocalEngine
from tests.fixtures.serving import serving
from tests.fixtures.tiny_models import build_tiny_model, install_ready

TEXTS = ["Hello 你好", "The sky is blue and the grass is green. " * 4]


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("embed") / "m", "qwen2", hidden_size=64, context=256)


@pytest.fixture
def engine(tmp_path: Path, source: Path) -> LocalEngine:
    install_ready(tmp_path / "models", "tiny", source)
    return LocalEngine(tmp_path / "models", idle_unload_s=0)


def reference(source: Path, ids: list[int]) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    with torch.no_grad():
        state = model(torch.tensor([ids]), output_hidden_states=True).hidden_states[-1][0, -1]
    return torch.nn.functional.normalize(state, dim=-1)


def test_embeddings_are_the_models_last_state_through_either_api(engine: LocalEngine, source: Path) -> None:
    tokenizer = engine.tokenizer("tiny")
    ids = [tokenizer.encode(text, special=True) for text in TEXTS]
    long = "word " * 400  # beyond the 256-token context
    with serving(engine, ["tiny"]) as url:
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
        encoded = client.embeddings.create(model="tiny", input=TEXTS)  # base64, decoded by the client
        floats = client.embeddings.create(model="tiny", input=TEXTS, encoding_format="float")
        as_ids = client.embeddings.create(model="tiny", input=ids, encoding_format="float")
        short = client.embeddings.create(model="tiny", input=TEXTS[0], dimensions=16, encoding_format="float")
        many = client.embeddings.create(model="tiny", input=[*TEXTS] * 6, encoding_format="float")  # 2 turns
        with pytest.raises(openai.BadRequestError) as too_long:
            client.embeddings.create(model="tiny", input=long)
        ollamas = ollama.Client(host=url.removesuffix("/v1"))
        embedded = ollamas.embed(model="tiny", input=TEXTS)
        older = ollamas.embeddings(model="tiny", prompt=TEXTS[0])
        cut = ollamas.embed(model="tiny", input=long)  # Ollama's default: cut to the context
        cut_ids = tokenizer.encode(long, special=True)[:256]
        with pytest.raises(ollama.ResponseError) as not_cut:
            ollamas.embed(model="tiny", input=long, truncate=False)
        refused = {}
        for name, asked in {"empty": {"input": ""}, "wide": {"input": "a", "dimensions": 65},
                            "unknown id": {"input": [[5, 400]]}}.items():  # fmt: skip
            with pytest.raises(openai.BadRequestError) as caught:
                client.embeddings.create(model="tiny", **asked)
            refused[name] = caught.value.body["message"]
        reread = client.embeddings.create(model="tiny", input=cut_ids, encoding_format="float")
    vectors = [torch.tensor(item.embedding) for item in floats.data]
    for vector, read in zip(vectors, ids, strict=True):
        assert vector.shape == (64,) and float(vector.norm()) == pytest.approx(1.0, abs=1e-5)
        assert float(vector @ reference(source, read)) > 0.999
    assert [item.index for item in floats.data] == [0, 1]
    assert floats.usage.prompt_tokens == sum(len(each) for each in ids)
    expected = torch.stack(vectors)
    for other in (encoded.data, as_ids.data):
        torch.testing.assert_close(torch.tensor([item.embedding for item in other]), expected)
    torch.testing.assert_close(torch.tensor(embedded.embeddings), expected)
    torch.testing.assert_close(torch.tensor([item.embedding for item in many.data]), expected.repeat(6, 1))
    assert [item.index for item in many.data] == list(range(12))
    assert older.embedding == pytest.approx(floats.data[0].embedding, abs=1e-6)
    assert embedded.prompt_eval_count == floats.usage.prompt_tokens
    first = torch.nn.functional.normalize(vectors[0][:16], dim=-1)
    assert short.data[0].embedding == pytest.approx(first.tolist(), abs=1e-6)  # Matryoshka's shortening
    assert too_long.value.body["code"] == "context_length_exceeded"
    assert cut.embeddings[0] == pytest.approx(reread.data[0].embedding, abs=1e-6)
    assert not_cut.value.status_code == 400
    assert refused == {
        "empty": "Input 0 is empty: there is nothing to embed.",
        "wide": "This model's embeddings have 64 dimensions, not 65.",
        "unknown id": "Token id 400 in 'input' is not in this model's vocabulary (0 to 399).",
    }


@pytest.mark.parametrize("quantization", ["int4", "none"])  # the lean decoder, transformers' own model
@pytest.mark.parametrize(
    "tied", [True, False]
)  # Qwen3-Embedding-0.6B's config; its 8B's, headless all the same
def test_a_checkpoint_saved_as_the_bare_model_embeds_as_the_model_does(
    tmp_path: Path, quantization: str, tied: bool
) -> None:
    """Qwen3-Embedding's checkpoints hold the bare model (`embed_tokens`, `layers.N…`, `norm`: no
    `model.` prefix, no output head) under a config that names Qwen3ForCausalLM."""
    from safetensors.torch import load_file, save_file

    source = build_tiny_model(tmp_path / "source", "qwen3", hidden_size=64)
    install_ready(tmp_path / "models", "prefixed", source)
    tensors = load_file(source / "model.safetensors")
    bare = {
        name.removeprefix("model."): tensor for name, tensor in tensors.items() if name != "lm_head.weight"
    }
    assert "embed_tokens.weight" in bare and "lm_head.weight" not in bare
    save_file(bare, source / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((source / "config.json").read_text(encoding="utf-8"))
    (source / "config.json").write_text(json.dumps(config | {"tie_word_embeddings": tied}), encoding="utf-8")
    install_ready(tmp_path / "models", "bare", source)
    engine = LocalEngine(tmp_path / "models", idle_unload_s=0, quantization=quantization)
    ids = [engine.tokenizer("bare").encode(text, special=True) for text in TEXTS]
    bare, prefixed = torch.tensor(engine.embed("bare", ids)), torch.tensor(engine.embed("prefixed", ids))
    if tied:
        assert torch.equal(bare, prefixed)
    else:  # int4 keeps an untied input table at 16 bits, a tied one at the head's 8: a few thousandths apart
        assert torch.nn.functional.cosine_similarity(bare, prefixed).min() > 0.999
