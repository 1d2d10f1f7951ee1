"""The log-probabilities of a reply's tokens (OpenAI's `logprobs`): the model's own, read from its raw
logits whatever the sampling, through both runners (the engine's decoder, int4; transformers' generate,
16-bit), checked against the same weights in float32 through transformers; and through `core serve` as
the official openai client reads them. Then what lm-evaluation-harness asks of a server (its
`local-completions` model with the server's own tokenizer): vLLM's tokenizer routes, and a completion
that echoes its prompt, sent as token ids, with each token's log-probability. lm-eval is not a
dependency: its requests and its reading of the answer (`parse_logprobs`: the continuation's tokens
are `token_logprobs[ctxlen:-1]`) are written out here."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import torch

from core.inference.engine import LocalEngine
from core.inference.events import Event, Finished, Logprobs, TextDelta
from core.inference.params import GenerationParams
from core.inference.prompts import RawPrompt, prompt_ids
from tests.fixtures.serving import serving
from tests.fixtures.tiny_models import build_tiny_model, install_ready

PROMPT = RawPrompt("Hello 你好")
CONTEXT, CONTINUATION = "Question: 你好 is Chinese for", " hello"


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("logprobs") / "m", "llama", hidden_size=128, context=4096,
                            endless=True)  # fmt: skip


def reference_logprobs(source: Path, ids: list[int]) -> torch.Tensor:
    """log-softmax after each token (float32, transformers): row i is the distribution of token i + 1."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].log_softmax(-1)


@pytest.fixture(params=[("int4", "decoder"), ("none", "generate")], ids=lambda asked: asked[1])
def each_runner(request: pytest.FixtureRequest, tmp_path: Path, source: Path) -> tuple[LocalEngine, str]:
    """An engine of the model that runs on the engine's decoder (int4), then on transformers' generate
    (16-bit), and the runner it is to use."""
    quantization, runner = request.param
    install_ready(tmp_path / "models", "tiny", source)
    return LocalEngine(tmp_path / "models", idle_unload_s=0, quantization=quantization), runner


def test_each_tokens_logprob_is_the_models_whatever_the_sampling(
    each_runner: tuple[LocalEngine, str], source: Path
) -> None:
    engine, runner = each_runner
    # Sampled, tempered and penalised: the tokens are not always the likeliest, their logprobs are raw.
    params = GenerationParams(temperature=1.3, repetition_penalty=1.5, top_k=0, max_new_tokens=10, seed=4)
    events = list(engine.stream("tiny", PROMPT, params, logprobs=3))
    assert engine.loaded is not None and engine.loaded.runner == runner
    tokens = [token for event in events if isinstance(event, Logprobs) for token in event.tokens]
    text = "".join(event.text for event in events if isinstance(event, TextDelta))
    assert isinstance(events[-1], Finished) and len(tokens) == events[-1].stats.completion_tokens == 10
    assert b"".join(token.raw for token in tokens).decode("utf-8", "replace") == text
    ids = prompt_ids(engine.tokenizer("tiny"), PROMPT)
    expected = reference_logprobs(source, ids + [token.id for token in tokens])[len(ids) - 1 : -1]
    for place, token in enumerate(tokens):
        assert token.logprob == pytest.approx(float(expected[place, token.id]), abs=0.03)
        # The likeliest three, as likely as the reference has them (int4 may swap two near-ties).
        assert [other.logprob for other in token.top] == pytest.approx(
            [float(expected[place, other.id]) for other in token.top], abs=0.03
        )
        assert [other.logprob for other in token.top] == pytest.approx(
            expected[place].topk(3).values, abs=0.03
        )
    assert any(token.id != token.top[0].id for token in tokens)  # sampled: not only the likeliest


def test_logprobs_through_the_api_as_the_openai_client_reads_them(tmp_path: Path, source: Path) -> None:
    install_ready(tmp_path / "models", "tiny", source)
    engine = LocalEngine(tmp_path / "models", idle_unload_s=0)
    asked = {"model": "tiny", "max_tokens": 8, "temperature": 0, "extra_body": {"repetition_penalty": 1.0}}
    messages = [{"role": "user", "content": "Hello 你好"}]
    with serving(engine, ["tiny"]) as url:
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
        whole = client.chat.completions.create(messages=messages, logprobs=True, top_logprobs=2, **asked)
        chunks = list(client.chat.completions.create(messages=messages, logprobs=True, top_logprobs=2,
                                                     stream=True, **asked))  # fmt: skip
        plain = client.chat.completions.create(messages=messages, **asked)
        text = client.completions.create(prompt=PROMPT.text, logprobs=2, **asked)
        with pytest.raises(openai.BadRequestError, match="top_logprobs goes with logprobs true"):
            client.chat.completions.create(messages=messages, top_logprobs=2, **asked)
    content = whole.choices[0].logprobs.content
    assert len(content) == whole.usage.completion_tokens == 8 and plain.choices[0].logprobs is None
    joined = bytes(b for token in content for b in token.bytes)
    assert joined.decode("utf-8", "replace") == whole.choices[0].message.content
    for token in content:  # greedy, no penalty: the token chosen is the likeliest (or tied with it)
        assert token.logprob == token.top_logprobs[0].logprob
        assert len(token.top_logprobs) == 2 and token.top_logprobs[1].logprob <= token.logprob < 0
    streamed = [token for chunk in chunks if chunk.choices and chunk.choices[0].logprobs
                for token in chunk.choices[0].logprobs.content]  # fmt: skip
    assert [(t.token, t.logprob) for t in streamed] == [(t.token, t.logprob) for t in content]
    # A text completion's legacy shape: the same tokens as the engine gives for the same request.
    greedy = GenerationParams(temperature=0, repetition_penalty=1.0, max_new_tokens=8)
    events = engine.stream("tiny", PROMPT, greedy, logprobs=2)
    direct = [token for event in events if isinstance(event, Logprobs) for token in event.tokens]
    legacy = text.choices[0].logprobs
    assert legacy.tokens == [token.token for token in direct] and len(direct) == 8
    assert legacy.token_logprobs == pytest.approx([token.logprob for token in direct])
    assert [list(top) for top in legacy.top_logprobs] == [[o.token for o in t.top] for t in direct]
    assert legacy.text_offset[0] == 0 and legacy.text_offset == sorted(legacy.text_offset)


def test_a_response_gives_its_texts_logprobs_where_include_asks(tmp_path: Path, source: Path) -> None:
    """The Responses API's way: `include: ["message.output_text.logprobs"]` and `top_logprobs`; the
    same tokens as a chat completion of the same input, in each delta, the text's done event and part."""
    install_ready(tmp_path / "models", "tiny", source)
    engine = LocalEngine(tmp_path / "models", idle_unload_s=0)
    asked = {"model": "tiny", "temperature": 0, "extra_body": {"repetition_penalty": 1.0}}
    with serving(engine, ["tiny"]) as url:
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
        said = [{"role": "user", "content": "Hello 你好"}]
        chat = client.chat.completions.create(
            messages=said, max_tokens=6, logprobs=True, top_logprobs=2, **asked
        )
        options = {"input": "Hello 你好", "max_output_tokens": 6, "top_logprobs": 2,
                   "include": ["message.output_text.logprobs"], **asked}  # fmt: skip
        whole = client.responses.create(**options)
        with client.responses.stream(**options) as stream:
            events = list(stream)
        plain = client.responses.create(input="Hello 你好", max_output_tokens=6, **asked)
    expected = [
        (token.token, token.logprob, len(token.top_logprobs)) for token in chat.choices[0].logprobs.content
    ]
    given = whole.output[0].content[0].logprobs
    assert [(token.token, token.logprob, len(token.top_logprobs)) for token in given] == expected
    deltas = [
        token for event in events if event.type == "response.output_text.delta" for token in event.logprobs
    ]
    assert [(token.token, token.logprob) for token in deltas] == [entry[:2] for entry in expected]
    done = next(event for event in events if event.type == "response.output_text.done")
    assert [token.token for token in done.logprobs] == [entry[0] for entry in expected]
    assert plain.output[0].content[0].logprobs == []  # not asked: none


def test_no_logprobs_come_for_tokens_past_a_stop_sequence() -> None:
    import threading

    from core.api.stops import until_stop_sequence
    from core.inference.events import ReplyStats, TokenLogprob

    def chance(text: str) -> Logprobs:
        return Logprobs((TokenLogprob(0, text, text.encode(), -1.0),))

    def reply() -> Iterator[Event]:  # as the engine streams it (a generator: it is closed at the end)
        yield from (
            chance("It"),
            TextDelta("It"),
            chance(" ends"),
            TextDelta(" ends\n\nUser:"),
            chance(" more"),
        )
        yield from (TextDelta(" more"), Finished(ReplyStats(3, 3, None, None, "length", "tiny")))

    stop = threading.Event()
    kept = list(until_stop_sequence(reply(), ("\n\nUser:",), stop))
    assert [event.tokens[0].token for event in kept if isinstance(event, Logprobs)] == ["It", " ends"]
    assert (
        "".join(event.text for event in kept if isinstance(event, TextDelta)) == "It ends" and stop.is_set()
    )


def test_lm_evals_loglikelihood_is_the_models(each_runner: tuple[LocalEngine, str], source: Path) -> None:
    engine, runner = each_runner
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
    # Both loaded: which one is meant must still be said; one loaded: that one's.
    both = LocalEngine(tmp_path / "models", idle_unload_s=0)
    both.load("tiny")
    both.load("other")
    with serving(both, ["tiny", "other"]) as url:
        root = url.removesuffix("/v1")
        unnamed_of_two = httpx.get(f"{root}/tokenizer_info")
        both.unload("tiny")
        of_one = httpx.get(f"{root}/tokenizer_info")
    assert unnamed_of_two.status_code == 400 and of_one.status_code == 200


def test_a_completion_refuses_what_it_cannot_read_in_one_sentence(tmp_path: Path, source: Path) -> None:
    install_ready(tmp_path / "models", "tiny", source)
    engine = LocalEngine(tmp_path / "models", idle_unload_s=0)
    with serving(engine, ["tiny"]) as url:
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
        refused = {}
        for name, asked in {
            "unknown id": {"prompt": [[5, 400]]},
            "too many replies": {"prompt": [[5], [6]] * 5, "n": 2},
            "n too large": {"prompt": "a", "n": 17},
            "nothing to do": {"prompt": "a", "max_tokens": 0},
            "negative id": {"prompt": [5, -1]},
            "no prompt": {"prompt": []},
        }.items():
            with pytest.raises(openai.BadRequestError) as caught:
                client.completions.create(model="tiny", **asked)
            refused[name] = caught.value.body["message"]
    assert engine.loaded is None  # refused before the model was touched
    assert refused == {
        "unknown id": "Token id 400 in 'prompt' is not in this model's vocabulary (0 to 399).",
        "too many replies": "A request asks for at most 16 replies (n × prompts), not 20: send the rest in "
        "another request.",
        "n too large": "Invalid value for 'n': Input should be less than or equal to 16.",
        "nothing to do": "max_tokens 0 goes with echo true (the prompt back, with its tokens' "
        "log-probabilities where logprobs asks them).",
        "negative id": "Invalid value for 'prompt[1]': Input should be greater than or equal to 0.",
        "no prompt": "The prompt list is empty: send one prompt, as text or token ids.",
    }
