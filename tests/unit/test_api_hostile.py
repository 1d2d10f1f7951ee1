"""`core serve` under hostile requests: huge bodies and prompts, bad numbers, clients that leave, foreign
hosts and cross-site pages. Every refusal is OpenAI-shaped, comes before anything is allocated, and the
server stays bounded in memory. Real uvicorn on loopback, a real tiny model."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx2
import openai
import psutil
import pytest

from core.access.hosts import HostPolicy
from core.inference.engine import LocalEngine
from core.settings import PROJECT_ROOT
from tests.fixtures.serving import free_port, serving, wait_for_port
from tests.fixtures.tiny_models import build_tiny_model, install_ready

HELLO = [{"role": "user", "content": "Hello 你好"}]


@pytest.fixture(scope="module")
def short_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model with a 96-token context that never ends a reply by itself."""
    return build_tiny_model(tmp_path_factory.mktemp("short") / "m", "llama", context=96, endless=True)


@pytest.fixture
def engine(tmp_path: Path, short_model: Path) -> LocalEngine:
    install_ready(tmp_path / "models", "tiny", short_model)
    return LocalEngine(tmp_path / "models", idle_unload_s=0)


def post(url: str, body: object | None = None, timeout: float = 30, **kwargs: object) -> httpx2.Response:
    return httpx2.post(f"{url}/chat/completions", json=body, timeout=timeout, **kwargs)


def raw_request(url: str, head: str, body: bytes = b"") -> str:
    """Send bytes as they are (a lying Content-Length, a foreign Host) and return the status line."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(head.encode() + b"\r\n\r\n" + body)
        return sock.recv(65536).decode("latin-1").split("\r\n", 1)[0]


def test_bodies_over_the_limit_are_refused_before_they_are_read(engine: LocalEngine) -> None:
    with serving(engine, ["tiny"], max_body_bytes=1024**2) as url:
        announced = raw_request(
            url, "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 104857600"
        )
        assert " 413 " in announced  # answered with no body sent at all

        def chunks():  # no Content-Length: counted as it arrives
            for _ in range(40):
                yield b" " * 65536

        unannounced = httpx2.post(f"{url}/chat/completions", content=chunks(), timeout=30)
        assert unannounced.status_code == 413
        assert "larger than" in unannounced.json()["error"]["message"]
    assert engine.loaded is None


@pytest.mark.parametrize("characters", [100_000, 800_000], ids=["100KB", "200k-tokens"])
def test_a_prompt_longer_than_the_context_is_refused_with_the_numbers(
    engine: LocalEngine, characters: int
) -> None:
    long = [{"role": "user", "content": "word " * (characters // 5)}]
    with serving(engine, ["tiny"]) as url:
        started = time.perf_counter()
        refused = post(url, {"model": "tiny", "messages": long})
        elapsed = time.perf_counter() - started
    error = refused.json()["error"]
    assert refused.status_code == 400
    assert error["code"] == "context_length_exceeded" and error["param"] == "messages"
    assert "maximum context length is 96 tokens" in error["message"]
    assert engine.loaded is None  # nothing was allocated for it: the model was never even loaded
    print(f"refused {characters} characters in {elapsed:.3f} s")
    with serving(engine, ["tiny"]) as url:  # a text completion's prompt, likewise
        completion = httpx2.post(f"{url}/completions", json={"model": "tiny", "prompt": long[0]["content"]})
    assert completion.status_code == 400 and completion.json()["error"]["param"] == "prompt"
    assert engine.loaded is None


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_tokens", 0),
        ("max_tokens", -3),
        ("max_tokens", 5.5),
        ("max_tokens", "10"),
        ("max_tokens", True),
        ("max_completion_tokens", 0),
        ("temperature", 9),
        ("top_p", 0),
    ],
)
def test_bad_numbers_get_400_naming_the_parameter(engine: LocalEngine, field: str, value: object) -> None:
    with serving(engine, ["tiny"]) as url:
        refused = post(url, {"model": "tiny", "messages": HELLO, field: value})
    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == field


def test_infinity_is_a_400_not_a_500(engine: LocalEngine) -> None:
    with serving(engine, ["tiny"]) as url:
        body = b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": Infinity}'
        refused = httpx2.post(
            f"{url}/chat/completions", content=body, headers={"Content-Type": "application/json"}
        )
    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == "max_tokens"


def test_a_malformed_body_is_answered_with_the_place_and_what_was_expected(engine: LocalEngine) -> None:
    cases = [  # (body beside the model, the parameter OpenAI would name, what the sentence says)
        ({"messages": ["hi"]}, "messages[0]", "expected an object"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content", "a string or an array"),
        ({"messages": [{"content": "hi"}]}, "messages[0].role", "Missing required parameter"),
        ({"messages": HELLO, "stop": ["x" * 600]}, "stop[0]", "at most 500 characters"),
        ({"messages": HELLO, "stream": True, "stream_options": 5}, "stream_options", "an object"),
    ]
    with serving(engine, ["tiny"]) as url:
        for body, param, said in cases:
            refused = post(url, {"model": "tiny", **body}).json()["error"]
            assert (refused["param"], refused["code"]) == (param, "invalid_request")
            assert said in refused["message"] and param in refused["message"]
            assert not refused["param"].endswith(".str")  # no pydantic union tags (`content.str`)
    assert engine.loaded is None


def test_max_tokens_is_capped_to_what_the_context_leaves(engine: LocalEngine) -> None:
    with serving(engine, ["tiny"]) as url:
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
        reply = client.chat.completions.create(
            model="tiny", messages=HELLO, max_tokens=100_000, temperature=0
        )
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.prompt_tokens + reply.usage.completion_tokens == 96


def test_tools_are_refused_for_a_model_not_trained_to_call_them(engine: LocalEngine) -> None:
    """The tiny Llama's chat template has no place for tools: a call could not be read, never ignored."""
    tool = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}
    result = {"role": "tool", "tool_call_id": "call_1", "content": "12:00"}
    with serving(engine, ["tiny"]) as url:
        refused = post(url, {"model": "tiny", "messages": HELLO, "tools": [tool]})
        answered = post(url, {"model": "tiny", "messages": [*HELLO, result]})
        # A client that always lists its tools and asks for none called gets its text reply.
        text_only = post(url, {"model": "tiny", "messages": HELLO, "tools": [tool], "tool_choice": "none",
                               "max_tokens": 2})  # fmt: skip
    for refusal in (refused, answered):
        assert refusal.status_code == 400
        assert refusal.json()["error"]["code"] == "tools_not_supported"
        assert "'tiny' was not trained to call tools" in refusal.json()["error"]["message"]
    assert text_only.status_code == 200 and text_only.json()["choices"][0]["message"]["content"]


def test_a_non_streaming_client_that_leaves_stops_its_generation(tmp_path: Path) -> None:
    long_context = build_tiny_model(tmp_path / "long", "llama", hidden_size=128, context=8192, endless=True)
    install_ready(tmp_path / "models", "long", long_context)
    engine = LocalEngine(tmp_path / "models", idle_unload_s=0)
    engine.load("long")
    with serving(engine, ["long"]) as url:
        body = {"model": "long", "messages": HELLO, "max_tokens": 8000}
        outcome: list[object] = []

        def leave_after_a_while() -> None:
            try:
                outcome.append(post(url, body, timeout=1.5))
            except httpx2.ReadTimeout as exc:  # the client gives up and closes the connection
                outcome.append(exc)

        gone = threading.Thread(target=leave_after_a_while)
        gone.start()
        deadline = time.monotonic() + 30
        while not engine.busy:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        gone.join()
        assert isinstance(outcome[0], httpx2.ReadTimeout)
        left_at = time.monotonic()
        while engine.busy:  # the reply would take far longer than this loop's deadline
            assert time.monotonic() - left_at < 5, "generation went on after the client left"
            time.sleep(0.02)
        reply = post(url, {"model": "long", "messages": HELLO, "max_tokens": 1})
    assert reply.status_code == 200


@pytest.mark.parametrize("host", ["evil.example", "attacker.test:8000", "127.0.0.1.nip.io", "", "a b"])
def test_a_foreign_host_header_gets_400(engine: LocalEngine, host: str) -> None:
    with serving(engine, ["tiny"]) as url:
        status = raw_request(url, f"GET /v1/models HTTP/1.1\r\nHost: {host}\r\nConnection: close")
    assert " 400 " in status


def test_this_machines_names_are_served_and_a_proxys_name_needs_a_key(engine: LocalEngine) -> None:
    policy = HostPolicy(allowed_hosts=frozenset({"llm.home.arpa"}))
    with serving(engine, ["tiny"], hosts=policy) as url:
        port = urlsplit(url).port
        for host in ("127.0.0.1", "localhost", f"localhost:{port}", "[::1]", socket.gethostname()):
            status = raw_request(url, f"GET /v1/models HTTP/1.1\r\nHost: {host}\r\nConnection: close")
            assert " 200 " in status, host
        # A reverse proxy's name: its clients are not this machine's programs, and no key was set.
        refused = httpx2.get(f"{url}/models", headers={"Host": "llm.home.arpa"})
        assert refused.status_code == 401
        assert "start it with LOCALLLM_API_KEY set" in refused.json()["error"]["message"]
    with serving(engine, ["tiny"], api_key="k" * 24, hosts=policy) as url:
        headers = {"Host": "llm.home.arpa", "Authorization": f"Bearer {'k' * 24}"}
        assert httpx2.get(f"{url}/models", headers=headers).status_code == 200


def test_a_cross_site_page_cannot_make_the_model_generate(engine: LocalEngine) -> None:
    with serving(engine, ["tiny"]) as url:
        simple = httpx2.post(  # what any web page may send without a preflight
            f"{url}/chat/completions",
            content=b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}',
            headers={"Content-Type": "text/plain", "Origin": "https://evil.example"},
        )
        assert simple.status_code == 403
        assert simple.json()["error"]["type"] == "permission_error"
        local_dev = httpx2.get(f"{url}/models", headers={"Origin": "http://localhost:3000"})
        assert local_dev.status_code == 403
        own = httpx2.get(f"{url}/models", headers={"Origin": url.removesuffix("/v1")})
        assert own.status_code == 200
    assert engine.loaded is None


def test_a_configured_cors_origin_may_call_the_api(engine: LocalEngine) -> None:
    policy = HostPolicy(allowed_origins=frozenset({"http://localhost:3000"}))
    with serving(engine, ["tiny"], hosts=policy) as url:
        origin = {"Origin": "http://localhost:3000"}
        preflight = httpx2.options(
            f"{url}/chat/completions",
            headers={
                **origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type",
            },
        )
        assert preflight.status_code == 200
        listed = httpx2.get(f"{url}/models", headers=origin)
        assert listed.status_code == 200
        assert listed.headers["access-control-allow-origin"] == "http://localhost:3000"
        assert httpx2.get(f"{url}/models", headers={"Origin": "https://evil.example"}).status_code == 403


def test_memory_stays_bounded_under_hostile_requests(tmp_path: Path, short_model: Path) -> None:
    """A real `core serve` process: after a normal reply (its steady state), hostile requests may not
    leave it holding more than one request's working memory (an 8 MiB body, parsed)."""
    install_ready(Path(os.environ["LOCALLLM_MODELS_DIR"]), "qwen2.5-0.5b", short_model)
    port = free_port()
    # stderr apart: a slow load's notice goes there, never before the address on stdout
    process = subprocess.Popen(
        [sys.executable, "-m", "core", "serve", "--port", str(port), "--model", "qwen2.5-0.5b"],
        cwd=PROJECT_ROOT, env=os.environ.copy(), text=True,
        stdout=subprocess.PIPE, stderr=(tmp_path / "stderr").open("w"),
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/v1"
    try:
        assert process.stdout.readline().startswith("OpenAI-compatible API at")
        wait_for_port(port, process)
        normal = {"model": "qwen2.5-0.5b", "messages": HELLO, "max_tokens": 20}
        assert post(url, normal).status_code == 200
        steady = psutil.Process(process.pid).memory_info().rss

        raw_request(url, "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 104857600")
        junk = b'{"model": "qwen2.5-0.5b", "messages": [{"role": "user", "content": "' + b"x" * (7 * 1024**2)
        assert post(url, content=junk + b'"}]}').status_code == 400  # 7 MiB of one token-less word
        huge = {"model": "qwen2.5-0.5b", "messages": [{"role": "user", "content": "word " * 200_000}]}
        for _ in range(5):
            assert post(url, huge).status_code == 400
        assert post(url, {**normal, "max_tokens": 0}).status_code == 400
        assert post(url, normal).status_code == 200

        grown = psutil.Process(process.pid).memory_info().rss - steady
        print(f"grown {grown / 1024**2:.1f} MiB over a steady {steady / 1024**2:.0f} MiB")
        assert grown < 96 * 1024**2, f"the server kept {grown / 1024**2:.0f} MiB after hostile requests"
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(10)
