"""The OpenAI-compatible provider against `core serve` and against servers that fail on purpose."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from core.chat import providers
from core.chat.configs import ConfigStore
from core.chat.providers import MAX_LISTED_MODELS, OpenAICompatibleProvider, provider_for_config
from core.chat.service import ChatService, Trimmed
from core.errors import ConfigError, LocalLLMError, MessageError, ProviderError
from core.inference.engine import LocalEngine
from core.inference.events import Finished, TextDelta
from core.inference.formats import checked_format
from core.inference.params import GenerationParams
from core.storage.db import Database
from tests.fixtures.openai_faults import REASONED_ANSWER, FaultyOpenAIServer
from tests.fixtures.tiny_models import install_ready
from tests.unit.test_server import engine, long_model, serving  # noqa: F401 - fixtures reused
from ui.i18n import error_text

MESSAGES = [{"role": "user", "content": "Hello"}]
SHORT = GenerationParams(temperature=0, max_new_tokens=8)


def _stream(provider: OpenAICompatibleProvider, stop: threading.Event | None = None) -> list:
    return list(provider.stream(MESSAGES, SHORT, stop or threading.Event()))


@pytest.fixture
def in_chinese(monkeypatch: pytest.MonkeyPatch) -> Callable[[LocalLLMError], str]:
    """An error as a page in Chinese shows it."""
    monkeypatch.setattr("ui.state.language", lambda: "zh")
    return error_text


def test_a_whole_conversation_through_core_serve(engine: LocalEngine, database: Database) -> None:  # noqa: F811
    with serving(engine, api_key="k-1234") as url:
        store = ConfigStore(database)
        config_id = store.save_config("openai_compatible", "tiny", url, "k-1234", name="My server")
        store.update_config(config_id, params=SHORT)
        store.set_current_config(config_id)
        chat = ChatService(database, lambda: provider_for_config(store.get_current_config(), engine))
        listing = OpenAICompatibleProvider(url, "k-1234", "tiny")
        assert listing.list_models() == ["tiny"]
        # The server lists the context its requests may fill (vLLM's max_model_len): the chat fits to it.
        assert provider_for_config(
            store.get_current_config(), engine
        ).context_length == engine.context_tokens("tiny")
        conversation = chat.new_conversation("remote")
        for question in ("first question", "second question"):
            events = list(chat.send(conversation.id, question))
            assert any(isinstance(e, TextDelta) for e in events)
            assert events[-1].stats.completion_tokens == 8
        messages = chat.messages(conversation.id)
        assert [m.role for m in messages] == ["user", "assistant", "user", "assistant"]
        assert messages[-1].model == "tiny"
        assert messages[-1].prompt_tokens > messages[1].prompt_tokens  # the history was sent along


def test_stop_works_across_the_wire(engine: LocalEngine) -> None:  # noqa: F811
    with serving(engine) as url:
        provider = OpenAICompatibleProvider(url, None, "tiny")
        stop = threading.Event()
        received = []
        for event in provider.stream(MESSAGES, GenerationParams(temperature=0, max_new_tokens=3000), stop):
            if isinstance(event, TextDelta):
                received.append(event)
                if len(received) == 3:
                    stop.set()
            elif isinstance(event, Finished):
                assert event.stats.finish_reason == "stopped"
        deadline = time.monotonic() + 5
        while any(t.name.startswith("generate-") for t in threading.enumerate()):
            assert time.monotonic() < deadline, "the server kept generating after Stop"
            time.sleep(0.05)


def test_failures_become_clear_messages(engine: LocalEngine, in_chinese) -> None:  # noqa: F811
    with pytest.raises(ProviderError, match=r"Cannot connect to http://127\.0\.0\.1:9/v1") as refused:
        _stream(OpenAICompatibleProvider("http://127.0.0.1:9/v1", None, "m"))
    assert (
        in_chinese(refused.value)
        == "远程服务出错：无法连接到 `http://127.0.0.1:9/v1`：服务器未运行、地址有误或网络不通。"
    )
    with serving(engine, api_key="right") as url:
        with pytest.raises(ProviderError, match="refused the API key") as wrong_key:
            _stream(OpenAICompatibleProvider(url, "wrong", "tiny"))
        assert (
            in_chinese(wrong_key.value)
            == "远程服务出错：服务器拒绝了 API 密钥（401），请在“模型服务”页面检查密钥。"
        )
        with pytest.raises(ProviderError, match="does not know this model") as unknown:
            _stream(OpenAICompatibleProvider(url, "right", "nope"))
        assert "服务器上没有这个模型（404）" in in_chinese(unknown.value)


@pytest.mark.parametrize(
    ("mode", "message", "tries"),
    [("status:429", "rate limit", 4), ("status:503", "HTTP 503", 4), ("status:500", "HTTP 500", 4)],
)
def test_rate_limits_and_server_errors_are_retried_then_explained(
    mode: str, message: str, tries: int
) -> None:
    with FaultyOpenAIServer(mode) as server:
        with pytest.raises(ProviderError, match=message):
            _stream(OpenAICompatibleProvider(server.url, None, "m"))
        assert server.requests == tries  # the first try and 3 retries with backoff


def test_a_key_refused_the_list_of_models_is_told_so(in_chinese) -> None:
    with FaultyOpenAIServer("status:403") as server, pytest.raises(ProviderError) as refused:
        OpenAICompatibleProvider(server.url, None, "").list_models()  # Test connection: no model yet
    assert refused.value.message == "The server does not let this key list its models (403). Check the key."
    assert in_chinese(refused.value) == "远程服务出错：服务器不允许此密钥列出模型（403），请检查密钥。"


def test_testing_a_connection_answers_from_the_first_try() -> None:
    with FaultyOpenAIServer("status:503") as server:  # someone waits at the page: no retries
        with pytest.raises(ProviderError, match="HTTP 503"):
            OpenAICompatibleProvider(server.url, None, "").list_models()
        assert server.requests == 1


@pytest.mark.parametrize(
    "mode", ["page", "listing:[]", 'listing:{"models": []}', 'listing:{"data": [{"name": "m"}]}']
)
def test_an_answer_that_is_not_a_list_of_models_is_explained(mode: str) -> None:
    """A web server at the address (a dashboard, a router's page) answers 200 with something else."""
    said = "answered, but not as an OpenAI-compatible server"
    with FaultyOpenAIServer(mode) as server, pytest.raises(ProviderError, match=said):
        OpenAICompatibleProvider(server.url, None, "").list_models()


def test_an_address_without_its_v1_is_named_with_it(engine: LocalEngine) -> None:  # noqa: F811
    """Ollama's and LM Studio's address as users type it (http://localhost:11434) lists nothing: it said
    "The server does not know this model (404). Pick one with 'Refresh models'", with no model asked for."""
    with serving(engine) as url:
        root = url.removesuffix("/v1")
        with pytest.raises(ProviderError) as missing_v1:
            OpenAICompatibleProvider(root, None, "").list_models()
        with pytest.raises(ProviderError) as pasted:  # the endpoint's whole address, from a client's docs
            OpenAICompatibleProvider(f"{url}/chat/completions", None, "").list_models()
        with pytest.raises(ProviderError) as elsewhere:
            OpenAICompatibleProvider(f"{root}/api", None, "").list_models()
    assert missing_v1.value.message == (
        f"Nothing lists models at {root} (404), but {root}/v1 does: use that address."
    )
    assert pasted.value.message.endswith(f"(404), but {url} does: use that address.")
    assert elsewhere.value.message.startswith(f"Nothing lists models at {root}/api (404): check the address")


def test_the_models_offered_are_a_bounded_sorted_list() -> None:
    models = [{"id": f"model-{n:04}", "object": "model"} for n in reversed(range(1_500))]
    with FaultyOpenAIServer("listing:" + json.dumps({"object": "list", "data": models})) as server:
        offered = OpenAICompatibleProvider(server.url, None, "").list_models()
    assert offered == [f"model-{n:04}" for n in range(MAX_LISTED_MODELS)]


@pytest.mark.parametrize(
    "url", ["http://[::1", "http://exa mple.com/v1", "http://localhost:99999/v1", "http:///v1"]
)
def test_an_address_that_is_no_address_is_refused_before_any_request(url: str) -> None:
    with pytest.raises(ConfigError, match="is not a server address"):
        OpenAICompatibleProvider(url, None, "")


@pytest.mark.parametrize(
    "event",
    ["not json", "[1, 2]", '{"choices": "x"}', '{"choices": [{"index": 0, "delta": null}]}'],
)
def test_a_stream_of_another_shape_is_explained(event: str) -> None:
    """The client checks no event's shape: each of these stopped the chat page with a traceback."""
    said = "could not be read: it is not what an OpenAI-compatible server sends"
    with FaultyOpenAIServer(f"stream:{event}") as server, pytest.raises(ProviderError, match=said):
        _stream(OpenAICompatibleProvider(server.url, None, "m"))


def _finishing(delta: dict, usage: object) -> str:
    return json.dumps({"choices": [{"index": 0, "delta": delta, "finish_reason": "stop"}], "usage": usage})


@pytest.mark.parametrize(
    ("event", "texts"),
    [(_finishing({"content": "hi"}, "many"), ["hi"]), (_finishing({"content": 5}, None), [])],
)
def test_a_reply_keeps_only_text_and_counts_what_the_usage_does_not(event: str, texts: list[str]) -> None:
    with FaultyOpenAIServer(f"stream:{event}") as server:
        events = _stream(OpenAICompatibleProvider(server.url, None, "m"))
    assert [e.text for e in events if isinstance(e, TextDelta)] == texts
    assert events[-1].stats.completion_tokens == len(texts)  # its own count: the usage gave none


def test_a_timeout_is_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    with FaultyOpenAIServer("silent") as server:
        provider = OpenAICompatibleProvider(server.url, None, "m", timeout_s=0.3)
        with pytest.raises(ProviderError, match="did not answer in time"):
            _stream(provider)
        # Whether a reply may go on is asked while the Chat page draws it: a server that takes the
        # request and never answers is given up on within OWNER_TIMEOUT_S, not the reply's minute.
        monkeypatch.setattr(providers, "OWNER_TIMEOUT_S", 0.3)
        patient = OpenAICompatibleProvider(server.url, None, "m")
        started = time.perf_counter()
        assert not patient.continues("Once upon")
        assert time.perf_counter() - started < 3


def test_a_server_that_takes_no_connection_is_given_up_on_after_the_connect_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A listening socket whose one-place queue is taken: later connections hang, as to a host that
    # drops them. They waited for the reply's timeout (60 s a try, 4 tries: 4 minutes of a spinner).
    monkeypatch.setattr(providers, "CONNECT_TIMEOUT_S", 0.3)
    with socket.socket() as full:
        full.bind(("127.0.0.1", 0))
        full.listen(0)
        with socket.create_connection(full.getsockname()):
            provider = OpenAICompatibleProvider(f"http://127.0.0.1:{full.getsockname()[1]}/v1", None, "m")
            start = time.monotonic()
            with pytest.raises(ProviderError, match=r"Cannot connect to .*: the server is not running"):
                _stream(provider)
    assert time.monotonic() - start < 30  # 4 tries of 0.3 s and the client's backoff between them


def test_a_stream_that_breaks_midway_keeps_the_partial_reply(database: Database, in_chinese) -> None:
    with FaultyOpenAIServer("broken") as server:
        chat = ChatService(database, lambda: OpenAICompatibleProvider(server.url, None, "m"))
        conversation = chat.new_conversation()
        received: list[str] = []

        def consume() -> None:
            received.extend(e.text for e in chat.send(conversation.id, "hi") if isinstance(e, TextDelta))

        with pytest.raises(ProviderError, match="broke off midway") as broken:
            consume()
        assert in_chinese(broken.value).startswith("回复中途中断：") and "The" not in in_chinese(broken.value)
        reply = chat.messages(conversation.id)[-1]
        assert reply.content == "Hello wor" == "".join(received)
        assert reply.finish_reason == "error"


def test_the_api_key_never_appears_in_errors(engine: LocalEngine) -> None:  # noqa: F811
    secret = "sk-never-show-this-9999"
    with serving(engine, api_key="other") as url, pytest.raises(ProviderError) as raised:
        _stream(OpenAICompatibleProvider(url, secret, "tiny"))
    assert secret not in str(raised.value)
    assert secret not in repr(raised.value.params)


@pytest.mark.parametrize(
    "field", ["reasoning_content", "reasoning"]
)  # DeepSeek's, older vLLM's; vLLM's, Ollama's
def test_a_servers_reasoning_is_folded_like_a_local_models_and_not_sent_back(
    database: Database, field: str
) -> None:
    with FaultyOpenAIServer(f"reasoning:{field}") as server:
        chat = ChatService(database, lambda: OpenAICompatibleProvider(server.url, None, "m"))
        conversation = chat.new_conversation()
        text = "".join(
            e.text for e in chat.send(conversation.id, "six times seven?") if isinstance(e, TextDelta)
        )
        assert text == f"<think>\nSix sevens make 42.\n</think>\n\n{REASONED_ANSWER}"
        assert chat.messages(conversation.id)[-1].content == text  # kept whole, shown folded
        list(chat.send(conversation.id, "and six times eight?"))
        sent = server.bodies[-1]["messages"]
        assert sent[1] == {
            "role": "assistant",
            "content": REASONED_ANSWER,
        }  # the answer without its reasoning


def test_a_reasoning_model_that_takes_only_its_own_settings_is_answered_and_remembered() -> None:
    """OpenAI's o-series and gpt-5 refuse max_tokens and any temperature or top_p but 1 (every chat
    with them said 'The server answered with an error (HTTP 400).')."""
    with FaultyOpenAIServer("reasoning-model") as server:
        provider = OpenAICompatibleProvider(server.url, None, "gpt-5-mini")
        texts = [e.text for e in _stream(provider) if isinstance(e, TextDelta)]
        assert "".join(texts) == REASONED_ANSWER
        adjustable = ("max_tokens", "max_completion_tokens", "temperature", "top_p")
        sent = [sorted(name for name in body if name in adjustable) for body in server.bodies]
        assert sent == [
            ["max_tokens", "temperature", "top_p"],
            ["max_completion_tokens", "temperature", "top_p"],
            ["max_completion_tokens", "top_p"],
            ["max_completion_tokens"],
        ]
        assert server.bodies[-1]["max_completion_tokens"] == SHORT.max_new_tokens
        _stream(OpenAICompatibleProvider(server.url, None, "gpt-5-mini"))  # the next chat: at once
        assert len(server.bodies) == 5 and "temperature" not in server.bodies[-1]


CHANGED = GenerationParams(temperature=0.5, max_new_tokens=8, top_k=20, min_p=0.05, repetition_penalty=1.3,
                           presence_penalty=0.4, frequency_penalty=0.6, seed=7)  # fmt: skip


def test_the_settings_a_user_changed_reach_the_server_by_the_names_it_knows(engine: LocalEngine) -> None:  # noqa: F811
    """Only temperature, top_p and the length were sent: a seed, top-k, min-p and the penalties set in
    the chat's settings were dropped silently. Now OpenAI's fields, and vLLM's and llama.cpp's
    extensions beside them; what was left at its default stays the server's own."""
    with FaultyOpenAIServer("strict") as server:
        _stream_with(OpenAICompatibleProvider(server.url, None, "vllm-model"), SHORT)
        _stream_with(OpenAICompatibleProvider(server.url, None, "vllm-model"), CHANGED)
    plain, changed = server.bodies[:2]  # each as first sent
    sent = plain.keys() - {"model", "messages", "stream", "stream_options"}
    assert sent == {"temperature", "top_p", "max_tokens"}
    assert changed | {"messages": None} == {
        "model": "vllm-model", "messages": None, "stream": True, "stream_options": {"include_usage": True},
        "temperature": 0.5, "top_p": 0.9, "max_tokens": 8, "seed": 7, "presence_penalty": 0.4,
        "frequency_penalty": 0.6, "top_k": 20, "min_p": 0.05, "repetition_penalty": 1.3,
        "repeat_penalty": 1.3,
    }  # fmt: skip
    with serving(engine) as url:  # this project's own server takes them all
        texts = [e.text for e in _stream_with(OpenAICompatibleProvider(url, None, "tiny"), CHANGED)]
    assert texts and "".join(texts)


def _stream_with(provider: OpenAICompatibleProvider, params: GenerationParams) -> list[TextDelta]:
    return [e for e in provider.stream(MESSAGES, params, threading.Event()) if isinstance(e, TextDelta)]


def test_a_server_that_knows_no_extension_is_asked_again_without_them_and_remembered() -> None:
    """OpenAI refuses vLLM's top_k ("Unrecognized request argument supplied: top_k", no param, no code):
    the request goes again without top_k, min_p and the repetition penalties, OpenAI's own fields kept."""
    with FaultyOpenAIServer("strict") as server:
        texts = _stream_with(OpenAICompatibleProvider(server.url, None, "gpt-4o"), CHANGED)
        assert "".join(e.text for e in texts) == REASONED_ANSWER
        assert ["top_k" in body for body in server.bodies] == [True, False]
        assert server.bodies[-1]["seed"] == 7 and server.bodies[-1]["frequency_penalty"] == 0.6
        _stream_with(OpenAICompatibleProvider(server.url, None, "gpt-4o"), CHANGED)  # the next chat: at once
        assert len(server.bodies) == 3 and "min_p" not in server.bodies[-1]


def test_thinking_turned_off_is_asked_as_each_server_knows_it_and_a_refusal_drops_only_that(
    tmp_path: Path, tiny_models: dict[str, Path]
) -> None:
    """The chat's *Think before answering* switch was for models run here only: a Qwen3 on a vLLM or
    Ollama box always reasoned first. Now a server is asked both ways: the chat template's switch (vLLM,
    llama.cpp, this project's `serve`) and `reasoning_effort` "none" (Ollama, OpenAI); a server that
    refuses one by name gets the request again without it, remembered for that model."""
    quick = replace(SHORT, max_new_tokens=1, thinking=False)
    install_ready(tmp_path / "models", "tiny", tiny_models["qwen3"])
    with serving(LocalEngine(tmp_path / "models", idle_unload_s=0)) as url:  # Qwen3's template switches
        provider = OpenAICompatibleProvider(url, None, "tiny")
        [on, off] = [
            next(e for e in provider.stream(MESSAGES, params, threading.Event()) if isinstance(e, Finished))
            for params in (replace(quick, thinking=True), quick)
        ]
    assert off.stats.prompt_tokens > on.stats.prompt_tokens  # the empty reasoning block, closed
    with FaultyOpenAIServer("strict") as server:  # OpenAI and gpt-4o: neither
        assert (
            "".join(e.text for e in _stream_with(OpenAICompatibleProvider(server.url, None, "gpt-4o"), quick))
            == REASONED_ANSWER
        )
        _stream_with(OpenAICompatibleProvider(server.url, None, "gpt-4o"), quick)  # the next chat: at once
    assert [("reasoning_effort" in body, "chat_template_kwargs" in body) for body in server.bodies] == [
        (True, True),
        (True, False),
        (False, False),
        (False, False),
    ]
    with FaultyOpenAIServer("litellm") as server:  # LiteLLM's proxy: "does not support parameters: [...]"
        assert (
            "".join(e.text for e in _stream_with(OpenAICompatibleProvider(server.url, None, "qwen3"), quick))
            == REASONED_ANSWER
        )
    assert [body.get("reasoning_effort") for body in server.bodies] == ["none", None]
    assert server.bodies[-1]["chat_template_kwargs"] == {"enable_thinking": False}


def test_a_server_that_does_not_know_stream_options_is_asked_again_without_them() -> None:
    """Azure's older API versions refuse `stream_options` ("Unrecognized request argument supplied:
    stream_options"): every chat with them said HTTP 400. Asked again without, the usage counted here."""
    with FaultyOpenAIServer("strict:stream_options") as server:
        events = list(
            OpenAICompatibleProvider(server.url, None, "gpt-4o").stream(MESSAGES, SHORT, threading.Event())
        )
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == REASONED_ANSWER
    assert ["stream_options" in body for body in server.bodies] == [True, False]
    assert events[-1].stats.completion_tokens >= 1


@pytest.mark.parametrize("style", ["openai", "llama.cpp", "lmstudio", "tgi", "anthropic"])
def test_a_conversation_longer_than_the_servers_context_is_sent_again_fitted_to_it(
    style: str, database: Database
) -> None:
    """A server's conversations were cut at an assumed 8192 tokens, GPT-4o's (128k) too. Now they go whole
    until the server refuses one and says its context (OpenAI and vLLM in words, llama.cpp's server its
    n_ctx, LM Studio and TGI in a string, Anthropic's compatible API in its words): then it is asked again at
    once without the earliest messages, and so from then on."""
    with FaultyOpenAIServer(f"context:{style}:3000") as server:
        provider = OpenAICompatibleProvider(server.url, None, "m")
        chat = ChatService(database, lambda: provider)
        conversation = chat.new_conversation("long")
        sent: list[list[int]] = []
        for number in range(4):  # each ~1,000 tokens to the server; the third passes its 3,000
            before = len(server.bodies)
            events = list(chat.send(conversation.id, f"{number} " + "x" * 4000))
            assert "".join(e.text for e in events if isinstance(e, TextDelta)) == REASONED_ANSWER
            sent.append([len(body["messages"]) for body in server.bodies[before:]])
            trimmed = [e.dropped for e in events if isinstance(e, Trimmed)]
            assert trimmed == ([] if number < 2 else [2 * number]), (number, trimmed)
    assert sent == [[1], [3], [5, 1], [1]]  # whole, whole, refused then fitted, fitted at once
    assert provider.context_length == 3000
    assert [m.content for m in chat.messages(conversation.id)][-1] == REASONED_ANSWER


def test_a_listing_that_says_each_models_context_is_learned() -> None:
    """vLLM lists `max_model_len`, OpenRouter `context_length`; a server that says nothing, or nothing
    that can be a chat model's window, gets the whole conversation up to UNKNOWN_CONTEXT_TOKENS. Listing
    the models again (Refresh models) forgets what a refusal said."""
    models = [{"id": "vllm-model", "max_model_len": 32768}, {"id": "router/x", "context_length": 200000}]
    odd = [{"id": "tiny", "max_model_len": 16}, {"id": "text", "max_model_len": "4096"}, {"id": "plain"}]
    with FaultyOpenAIServer(f"listing:{json.dumps({'data': [*models, *odd]})}") as server:
        providers._CONTEXT[(server.url, "plain")] = 4096  # said by a refusal: the model may be reloaded since
        assert len(OpenAICompatibleProvider(server.url, None, "plain").list_models()) == 5
        ids = ("vllm-model", "router/x", "tiny", "text", "plain")
        contexts = [OpenAICompatibleProvider(server.url, None, model).context_length for model in ids]
    unknown = providers.UNKNOWN_CONTEXT_TOKENS
    assert contexts == [32768, 200000, unknown, unknown, unknown]
    # A refusal's limit is read from its words, never from a number too long to be one.
    assert providers._context_said({"message": f"maximum context length is {'9' * 5000} tokens"}) is None


def test_a_servers_own_words_for_an_error_are_in_the_sentence_without_the_key(in_chinese) -> None:
    secret = "sk-never-show-this-9999"
    with FaultyOpenAIServer("status:400") as server, pytest.raises(ProviderError) as refused:
        _stream(OpenAICompatibleProvider(server.url, secret, "m"))
    assert refused.value.message == "The server answered with an error (HTTP 400): injected"
    assert in_chinese(refused.value) == "远程服务出错：服务器返回了错误（HTTP 400）：injected"


def test_a_server_that_cannot_continue_a_reply_is_not_asked_to(in_chinese) -> None:
    stop, hello = (
        threading.Event(),
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hel"}],
    )
    with FaultyOpenAIServer("strict", listing={"data": [{"id": "gpt-4o", "owned_by": "system"}]}) as server:
        openai = OpenAICompatibleProvider(server.url, None, "gpt-4o")  # OpenAI's API has no way to ask
        assert not openai.continues("Hel")
        with pytest.raises(ProviderError, match="cannot let a reply go on") as refused:
            list(openai.stream(hello, GenerationParams(), stop, go_on=True))
        assert not server.bodies and "接着生成" in error_text(refused.value)
    # A server that says it is vLLM but refuses the field (an older one behind a strict proxy) is not
    # asked again without it, which would start a new reply in its place.
    with FaultyOpenAIServer("strict", listing={"data": [{"id": "qwen", "owned_by": "vllm"}]}) as server:
        vllm = OpenAICompatibleProvider(server.url, None, "qwen")
        assert vllm.continues("Hel")
        with pytest.raises(ProviderError, match="cannot let a reply go on"):
            list(vllm.stream(hello, GenerationParams(), stop, go_on=True))
        assert len(server.bodies) == 1 and server.bodies[0]["continue_final_message"] is True
        assert not vllm.continues("Hel")


def test_a_reply_near_the_servers_context_goes_on_with_the_room_it_leaves(database: Database) -> None:
    """vLLM refuses a request whose prompt and max_tokens pass its context: a long reply that went on
    asked for all of Max new tokens again. It asks for what the context leaves; where the server's
    tokens outnumber the estimate, two refusals say the reply cannot go on (not "shorten the message")."""
    listing = {"data": [{"id": "m", "owned_by": "vllm", "max_model_len": 3000}]}
    with FaultyOpenAIServer("context:openai:3000", listing=listing) as server:
        provider = OpenAICompatibleProvider(server.url, None, "m")
        chat = ChatService(database, lambda: provider)
        conversation = chat.new_conversation()
        list(chat.send(conversation.id, "Write on"))
        cut = chat.edit_reply(conversation.id, chat.messages(conversation.id)[-1].id, "y " * 4200)
        list(chat.continue_reply(conversation.id))
    asked = server.bodies[-1]
    assert len(server.bodies) == 2 and asked["continue_final_message"] is True
    assert asked["messages"][-1] == {"role": "assistant", "content": cut.content.rstrip()}
    assert 1 <= asked["max_tokens"] <= 3000 - provider.count_tokens(asked["messages"])
    assert chat.messages(conversation.id)[-1].content == cut.content.rstrip() + REASONED_ANSWER
    with FaultyOpenAIServer(
        "context:openai:3000:2", listing={"data": [{"id": "m", "owned_by": "vllm"}]}
    ) as server:
        provider = OpenAICompatibleProvider(server.url, None, "m")  # 2 characters a token, not 3 or 4
        chat = ChatService(database, lambda: provider)
        conversation = chat.new_conversation()
        list(chat.send(conversation.id, "Write on"))
        cut = chat.edit_reply(conversation.id, chat.messages(conversation.id)[-1].id, "y " * 2500)
        with pytest.raises(MessageError, match="fills what the model's context leaves"):
            list(chat.continue_reply(conversation.id))
        assert len(server.bodies) == 3  # the question, then the continuation refused twice
    kept = chat.messages(conversation.id)[-1]
    assert (kept.content, kept.finish_reason) == (cut.content, cut.finish_reason)  # as it was


def test_a_reply_held_to_json_is_asked_of_a_server_as_openai_asks_it() -> None:
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}}
    with FaultyOpenAIServer("reasoning:reasoning_content") as server:
        provider = OpenAICompatibleProvider(server.url, None, "m")
        for reply_format in (checked_format(schema), checked_format(None)):
            list(provider.stream(MESSAGES, SHORT, threading.Event(), reply_format=reply_format))
    assert [body["response_format"] for body in server.bodies] == [
        {"type": "json_schema", "json_schema": {"name": "reply", "schema": schema}},
        {"type": "json_object"},
    ]
