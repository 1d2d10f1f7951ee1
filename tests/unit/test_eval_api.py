"""What lm-evaluation-harness asks of a server (its `local-completions` model with the server's own
tokenizer): vLLM's tokenizer routes, and a completion that echoes its prompt, sent as token ids, with
each token's log-probability. lm-eval is not a dependency: its requests and its reading of the answer
(`parse_logprobs`: the continuation's tokens are `token_logprobs[ctxlen:-1]`) are written out here, and
checked against the same weights in float32 through transformers, through both runners."""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
import pytest
import torch

from core.inference.engine import LocalEngine
from tests.fixtures.serving import serving
from tests.fixtures.tiny_models import build_tiny_model, install_ready

CONTEXT, CONTINUATION = "Question: 你好 is Chinese for", " hello"


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("eval") / "m", "llama", hidden_size=128, context=4096,
                            endless=True)  # fmt: skip


def reference_logprobs(source: Path, ids: list[int]) -> torch.Tensor:
    """log-softmax after each token (float32, transformers): row i is the distribution of token i + 1."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].log_softmax(-1)


@pytest.mark.parametrize(("quantization", "runner"), [("int4", "decoder"), ("none", "generate")])
def test_lm_evals_loglikelihood_is_the_models(
    tmp_path: Path, source: Path, quantization: str, runner: str
) -> None:
    install_ready(tmp_path / "models", "tiny", source)
    engine = LocalEngine(tmp_path / "models", idle_unload_s=0, quantization=quantization)
    with serving(engine, ["tiny"]) as url:
        root = url.removesuffix("/v1")
        # lm-eval's remote tokenizer: it looks for both routes, then encodes each part without specials.
        assert httpx.get(f"{root}/tokenizer_info").json()["eos_token"] == "</s>"
        context, continuation = (
            httpx.post(f"{root}/tokenize", json={"prompt": text, "add_special_tokens": False}).json()[
                "tokens"
            ]
            for text in (CONTEXT, CONTINUATION)
        )
        ids = context + continuation
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
        asked = {"model": "tiny", "echo": True, "logprobs": 1, "temperature": 0, "seed": 1234}
        answer = client.completions.create(prompt=[ids], max_tokens=1, **asked)  # lm-eval's request
        prompt_only = client.completions.create(prompt=[ids], max_tokens=0, **asked)
        streamed = list(client.completions.create(prompt=ids, max_tokens=3, stream=True, **asked))
        words = client.completions.create(
            prompt=CONTEXT, max_tokens=3, model="tiny", echo=True, temperature=0
        )
    assert engine.loaded is not None and engine.loaded.runner == runner
    choice = answer.choices[0]
    logprobs = choice.logprobs
    assert len(logprobs.token_logprobs) == len(ids) + 1 == answer.usage.total_tokens
    assert logprobs.token_logprobs[0] is None and logprobs.top_logprobs[0] is None  # nothing before it
    # lm-eval's parse_logprobs: the continuation's log-likelihood, and whether it is the greedy one.
    ctxlen = len(context)
    given = logprobs.token_logprobs[ctxlen:-1]
    reference = reference_logprobs(source, ids)
    expected = [float(reference[place - 1, ids[place]]) for place in range(ctxlen, len(ids))]
    assert given == pytest.approx(expected, abs=0.03)
    tops = logprobs.top_logprobs[ctxlen:-1]
    assert [max(top.values()) for top in tops] == pytest.approx(
        [float(reference[place - 1].max()) for place in range(ctxlen, len(ids))], abs=0.03
    )
    # Every prompt token's, and the reply's one token after them; the text is the prompt's, then the reply's.
    assert logprobs.token_logprobs[1 : len(ids)] == pytest.approx(
        [float(reference[place - 1, ids[place]]) for place in range(1, len(ids))], abs=0.03
    )
    assert choice.text.startswith(CONTEXT + CONTINUATION) and choice.finish_reason == "length"
    # max_tokens 0: the prompt alone, the same numbers.
    assert prompt_only.choices[0].text == CONTEXT + CONTINUATION
    assert prompt_only.choices[0].logprobs.token_logprobs == logprobs.token_logprobs[:-1]
    assert prompt_only.usage.completion_tokens == 0 and prompt_only.choices[0].finish_reason == "length"
    # Streamed: the prompt's text with its tokens first, then the reply's, joining to the whole.
    first = streamed[0].choices[0]
    assert (
        first.text == CONTEXT + CONTINUATION and first.logprobs.token_logprobs == logprobs.token_logprobs[:-1]
    )
    streamed_tokens = [t for chunk in streamed if chunk.choices and chunk.choices[0].logprobs
                       for t in chunk.choices[0].logprobs.tokens]  # fmt: skip
    assert len(streamed_tokens) == len(ids) + 3
    assert words.choices[0].text.startswith(CONTEXT) and len(words.choices[0].text) > len(CONTEXT)


def test_the_tokenizer_routes_answer_as_vllms(tmp_path: Path, source: Path) -> None:
    install_ready(tmp_path / "models", "tiny", source)
    install_ready(tmp_path / "models", "other", source)
    engine = LocalEngine(tmp_path / "models", idle_unload_s=0)
    chat = [{"role": "user", "content": "你好"}]
    with serving(engine, ["tiny"]) as url:
        root = url.removesuffix("/v1")
        text = httpx.post(f"{root}/tokenize", json={"prompt": CONTEXT, "return_token_strs": True}).json()
        conversation = httpx.post(f"{root}/tokenize", json={"model": "tiny", "messages": chat}).json()
        back = httpx.post(f"{root}/detokenize", json={"tokens": text["tokens"]}).json()
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
        replied = client.chat.completions.create(model="tiny", messages=chat, max_tokens=1)
        unknown = httpx.post(f"{root}/detokenize", json={"tokens": [1, 10**6]})
        not_served = httpx.post(f"{root}/tokenize", json={"model": "nope", "prompt": "a"})
        no_json = httpx.post(f"{root}/tokenize", content=b"[1,")
        info = httpx.get(f"{root}/tokenizer_info").json()
    tokenizer = engine.tokenizer("tiny")
    assert text["tokens"] == tokenizer.encode(CONTEXT, special=True) and text["count"] == len(text["tokens"])
    assert text["max_model_len"] == engine.context_tokens("tiny") and len(text["token_strs"]) == text["count"]
    assert back == {"prompt": CONTEXT}
    # A conversation's count is what a chat completion of it reads.
    assert conversation["count"] == replied.usage.prompt_tokens
    assert info["chat_template"] == tokenizer.chat_template and info["model_max_length"] == 4096
    assert unknown.status_code == 400
    assert (
        unknown.json()["error"]["message"]
        == "Token id 1000000 in 'tokens' is not in this model's vocabulary (0 to 399)."
    )
    assert not_served.status_code == 404 and no_json.status_code == 400
    # Two models ready and none loaded: which tokenizer is meant must be said.
    with serving(LocalEngine(tmp_path / "models", idle_unload_s=0), ["tiny", "other"]) as url:
        root = url.removesuffix("/v1")
        unnamed = httpx.post(f"{root}/tokenize", json={"prompt": "a"})
        named = httpx.get(f"{root}/tokenizer_info", params={"model": "other"})
    assert unnamed.status_code == 400 and "'model'): tiny, other" in unnamed.json()["error"]["message"]
    assert named.status_code == 200


def test_a_completion_refuses_what_it_cannot_read_in_one_sentence(tmp_path: Path, source: Path) -> None:
    install_ready(tmp_path / "models", "tiny", source)
    engine = LocalEngine(tmp_path / "models", idle_unload_s=0)
    with serving(engine, ["tiny"]) as url:
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
        refused = {}
        for name, asked in {
            "unknown id": {"prompt": [[5, 400]]},
            "two prompts": {"prompt": ["a", "b"]},
            "two id lists": {"prompt": [[5], [6]]},
            "nothing to do": {"prompt": "a", "max_tokens": 0},
            "negative id": {"prompt": [5, -1]},
        }.items():
            with pytest.raises(openai.BadRequestError) as caught:
                client.completions.create(model="tiny", **asked)
            refused[name] = caught.value.body["message"]
    assert engine.loaded is None  # refused before the model was touched
    one_prompt = ("This server takes one prompt a request, not 2: send each in a request of its own (sent at "
                  "once, they run together).")  # fmt: skip
    assert refused == {
        "unknown id": "Token id 400 in 'prompt' is not in this model's vocabulary (0 to 399).",
        "two prompts": one_prompt,
        "two id lists": one_prompt,
        "nothing to do": "max_tokens 0 goes with echo true (the prompt back, with its tokens' "
        "log-probabilities where logprobs asks them).",
        "negative id": "Invalid value for 'prompt[1]': Input should be greater than or equal to 0.",
    }
