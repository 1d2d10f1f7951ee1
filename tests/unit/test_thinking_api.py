"""A thinking model's reasoning sent apart from its answer by `core serve`: a chat completion's
`reasoning_content`, a response's reasoning item, Ollama's `message.thinking`; through the official
clients, with a real tiny model whose template opens the reasoning (as DeepSeek-R1's distills' do)."""

from __future__ import annotations

from pathlib import Path

import ollama
import openai

from core.inference.engine import LocalEngine
from tests.fixtures.serving import serving
from tests.fixtures.tiny_models import build_tiny_model, install_ready

ASKED = [{"role": "user", "content": "What is the weather in Paris?"}]


# DeepSeek-R1's distills' way: the generation prompt opens the reasoning, the reply closes it.
R1_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'].split("
    "'</think>')[-1] + '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n<think>\n' }}{% endif %}"
)


def test_a_thinking_models_reasoning_comes_apart_from_its_answer(tmp_path: Path) -> None:
    """A chat completion's `reasoning_content` (llama.cpp's server's default, vLLM's reasoning parser),
    a response's reasoning item (before its message) and Ollama's `message.thinking`: the tiny model
    never closes the reasoning its template opened, so all it writes is reasoning and the answer is
    empty, whole or streamed; asked not to think, all of it is the answer, as written."""
    # The tiny Llama writes no blank lines here (the tiny Qwen would: a blank reasoning, dropped as blank).
    thinking = build_tiny_model(tmp_path / "r1", "llama", endless=True, chat_template=R1_TEMPLATE)
    install_ready(tmp_path / "models", "r1", thinking)
    engine = LocalEngine(tmp_path / "models", idle_unload_s=0)
    same = {"model": "r1", "messages": ASKED, "max_tokens": 8, "temperature": 0}
    with serving(engine, ["r1"]) as url:
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
        whole = client.chat.completions.create(**same)
        chunks = list(client.chat.completions.create(**same, stream=True))
        no_thinking = {"chat_template_kwargs": {"enable_thinking": False}}
        plain = client.chat.completions.create(**same, extra_body=no_thinking)
        options = {"num_predict": 8, "temperature": 0}
        thought = ollama.Client(host=url.removesuffix("/v1")).chat(
            model="r1", messages=ASKED, options=options
        )
        response = client.responses.create(model="r1", input=ASKED, max_output_tokens=8, temperature=0)
        with client.responses.stream(model="r1", input=ASKED, max_output_tokens=8, temperature=0) as stream:
            events = list(stream)  # the helper raises on events out of order
        # The next turn with every output item sent back, as the Agents SDK sends them: reasoning left out.
        then = [*ASKED, *(item.model_dump(exclude_none=True) for item in response.output),
                {"role": "user", "content": "And tomorrow?"}]  # fmt: skip
        follow = client.responses.create(model="r1", input=then, max_output_tokens=2)
        history = [*ASKED, {"role": "assistant", "content": ""}, {"role": "user", "content": "And tomorrow?"}]
        as_chat = client.chat.completions.create(model="r1", max_tokens=2, messages=history)
    kinds, streamed = [event.type for event in events], events[-1].response  # incomplete: cut at 8 tokens
    reasoning = whole.choices[0].message.reasoning_content
    assert reasoning and reasoning == plain.choices[0].message.content.strip()
    assert whole.choices[0].message.content == "" and plain.choices[0].message.reasoning_content is None
    # The reasoning's tokens, counted from its text, in OpenAI's usage fields.
    counted = min(len(engine.tokenizer("r1").encode(reasoning)), 8)
    assert counted > 0 and whole.usage.completion_tokens_details.reasoning_tokens == counted
    assert plain.usage.completion_tokens_details.reasoning_tokens == 0
    assert response.usage.output_tokens_details.reasoning_tokens == counted
    deltas = [chunk.choices[0].delta for chunk in chunks if chunk.choices]
    assert "".join(getattr(delta, "reasoning_content", None) or "" for delta in deltas) == reasoning
    assert not "".join(delta.content or "" for delta in deltas)
    assert (thought.message.thinking, thought.message.content) == (reasoning, "")
    # A response: the reasoning item first, then the (empty) answer's message.
    assert [item.type for item in response.output] == ["reasoning", "message"]
    assert response.output[0].content[0].text == reasoning and response.output_text == ""
    assert streamed.output[0].content[0].text == reasoning and streamed.output[0].id.startswith("rs_")
    done = kinds.index("response.reasoning_text.done")
    assert kinds[:3] == ["response.created", "response.in_progress", "response.output_item.added"]
    assert set(kinds[3:done]) == {"response.reasoning_text.delta"}
    assert kinds[done + 1 :] == [
        "response.output_item.done", "response.output_item.added", "response.content_part.added",
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.incomplete",
    ]  # fmt: skip
    assert follow.usage.input_tokens == as_chat.usage.prompt_tokens
