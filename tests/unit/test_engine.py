"""The local engine with real tiny transformers models (no mocks): stream, stop, queue, load, unload."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from torch.utils._python_dispatch import TorchDispatchMode

from core.api.errors import from_core
from core.errors import (
    ChatTemplateError,
    GenerationError,
    InsufficientMemoryError,
    ModelNotReadyError,
    QueueFullError,
    UnsupportedModelError,
)
from core.inference.batching import PREFILL_BESIDE
from core.inference.chat_tokenizer import ChatTokenizer
from core.inference.engine import LocalEngine
from core.inference.events import Finished, Queued, TextDelta
from core.inference.params import GenerationParams
from core.inference.prompts import count_prompt_tokens
from core.settings import PROJECT_ROOT
from tests.fixtures.tiny_models import build_tiny_model, install_ready
from tests.unit.test_batching import passes

GREEDY = GenerationParams(temperature=0, max_new_tokens=24)
LONG = GenerationParams(temperature=0, max_new_tokens=3000)
HELLO = [{"role": "user", "content": "Hello 你好"}]


@pytest.fixture(scope="module")
def long_context_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model with a 4096-token context, so a long generation takes seconds to finish."""
    return build_tiny_model(
        tmp_path_factory.mktemp("long") / "m", "llama", hidden_size=128, context=4096, endless=True
    )


@pytest.fixture(scope="module")
def heavy_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """~40 M parameters (~80 MB in bf16): big enough for its memory to show in the process's RSS."""
    return build_tiny_model(tmp_path_factory.mktemp("heavy") / "m", "qwen2", hidden_size=1024, layers=4)


@pytest.fixture
def engine(tmp_path: Path, tiny_models: dict[str, Path], long_context_model: Path) -> LocalEngine:
    models = tmp_path / "models"
    install_ready(models, "tiny-qwen", tiny_models["qwen2"])
    install_ready(models, "tiny-llama", tiny_models["llama"])
    install_ready(models, "long", long_context_model)
    engine = LocalEngine(models, idle_unload_s=0, max_waiting=2)
    yield engine
    engine.unload()


def test_stream_yields_text_in_pieces_then_stats(engine: LocalEngine) -> None:
    events = list(engine.stream("tiny-llama", HELLO, GREEDY, ignore_eos=True))
    pieces = [e.text for e in events if isinstance(e, TextDelta)]
    assert len(pieces) > 1
    stats = events[-1].stats
    assert isinstance(events[-1], Finished)
    assert stats.completion_tokens == GREEDY.max_new_tokens
    assert stats.finish_reason == "length"
    assert stats.prompt_tokens > 3
    assert stats.ttft_s is not None
    assert stats.tokens_per_s > 0
    loaded = engine.loaded
    assert (loaded.key, loaded.device) == ("tiny-llama", "cpu")
    assert loaded.dtype in ("bfloat16", "float32")


def test_chat_template_is_used(engine: LocalEngine) -> None:
    # The llama template adds <|user|> and </s>: the prompt is longer than the raw text's tokens.
    engine.load("tiny-llama")
    tokenizer = engine.tokenizer("tiny-llama")
    assert engine.count_tokens("tiny-llama", HELLO) > len(tokenizer.encode("Hello 你好"))


def test_stop_ends_generation_within_a_second(engine: LocalEngine) -> None:
    stop = threading.Event()
    stream = engine.stream("long", HELLO, LONG, stop, ignore_eos=True)
    received = 0
    for event in stream:
        if isinstance(event, TextDelta):
            received += 1
            if received == 5:
                stopped_at = time.monotonic()
                stop.set()
        if isinstance(event, Finished):
            finished = event
    assert time.monotonic() - stopped_at < 1.0
    assert finished.stats.finish_reason == "stopped"
    assert finished.stats.completion_tokens < LONG.max_new_tokens
    assert not engine.busy  # the engine is free again


def test_a_reader_that_goes_away_stops_generation(engine: LocalEngine) -> None:
    stream = engine.stream("long", HELLO, LONG, ignore_eos=True)
    for event in stream:
        if isinstance(event, TextDelta):
            break
    started = time.monotonic()
    stream.close()  # the browser went away
    assert time.monotonic() - started < 1.0
    assert not engine.busy  # the engine is free again
    # and the engine is free for the next request
    assert isinstance(list(engine.stream("tiny-llama", HELLO, GREEDY))[-1], Finished)


def test_beyond_the_parallel_replies_requests_wait_and_are_told_their_place(engine: LocalEngine) -> None:
    engine.parallel = 1  # one reply at a time: the second waits for the first (batching: test_batching.py)
    engine.load("long")
    results: dict[str, list] = {"first": [], "second": []}
    first_started = threading.Event()

    def consume(name: str, params: GenerationParams) -> None:
        for event in engine.stream("long", HELLO, params, ignore_eos=True):
            results[name].append((time.monotonic(), event))
            if name == "first" and isinstance(event, TextDelta):
                first_started.set()

    first = threading.Thread(
        target=consume, args=("first", GenerationParams(temperature=0, max_new_tokens=300))
    )
    first.start()
    assert first_started.wait(10)
    second = threading.Thread(target=consume, args=("second", GREEDY))
    second.start()
    first.join(30)
    second.join(30)

    assert isinstance(results["first"][-1][1], Finished)
    assert isinstance(results["second"][-1][1], Finished)
    places = [e.ahead for _, e in results["second"] if isinstance(e, Queued)]
    assert places[0] == 1
    first_done = results["first"][-1][0]
    second_first_text = next(t for t, e in results["second"] if isinstance(e, TextDelta))
    assert second_first_text >= first_done


def test_the_queue_has_a_cap(engine: LocalEngine) -> None:
    engine.parallel = 1
    engine.load("long")
    stop = threading.Event()
    running = engine.stream("long", HELLO, LONG, stop, ignore_eos=True)
    next(e for e in running if isinstance(e, TextDelta))
    waiting = [engine.stream("long", HELLO, GREEDY) for _ in range(2)]
    for stream in waiting:
        assert isinstance(next(stream), Queued)
    with pytest.raises(QueueFullError, match="already waiting"):
        next(engine.stream("long", HELLO, GREEDY))
    for stream in waiting:
        stream.close()
    stop.set()
    list(running)
    assert engine.waiting == 0


def test_concurrent_loads_make_one_model(engine: LocalEngine) -> None:
    loads = []
    threads = [threading.Thread(target=lambda: loads.append(engine.load("tiny-qwen"))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({loaded.load_id for loaded in loads}) == 1


def test_a_switch_back_finds_the_model_loaded_and_the_least_recently_used_makes_room(
    engine: LocalEngine,
) -> None:
    """An embedding model beside a chat model, two chats with two models: each switch used to reload."""
    engine.max_loaded = 2
    first = engine.load("tiny-qwen")
    second = engine.load("tiny-llama")
    assert [m.key for m in engine.loaded_models] == ["tiny-llama", "tiny-qwen"]
    alone = "".join(e.text for e in engine.stream("tiny-qwen", HELLO, GREEDY) if isinstance(e, TextDelta))
    assert engine.load("tiny-qwen").load_id == first.load_id  # not loaded again
    assert [m.key for m in engine.loaded_models] == ["tiny-qwen", "tiny-llama"]  # used last first
    engine.load("long")  # a third: tiny-llama, used least recently, makes room
    assert [m.key for m in engine.loaded_models] == ["long", "tiny-qwen"]
    assert engine.parts_of("tiny-llama") is None and engine.at_once("tiny-llama") is None
    # Replies of one model after another's: the same words as alone (each model its own batch and caches).
    again = "".join(e.text for e in engine.stream("tiny-qwen", HELLO, GREEDY) if isinstance(e, TextDelta))
    assert again == alone and engine.load("tiny-qwen").load_id == first.load_id
    assert engine.load("tiny-llama").load_id != second.load_id  # loaded again, over "long"
    assert [m.key for m in engine.loaded_models] == ["tiny-llama", "tiny-qwen"]
    engine.max_loaded = 1  # lowered: the models beyond it go at once
    assert [m.key for m in engine.loaded_models] == ["tiny-llama"]
    engine.load("tiny-qwen")
    assert [m.key for m in engine.loaded_models] == ["tiny-qwen"]


def _text(events: Iterable[Any]) -> str:
    return "".join(event.text for event in events if isinstance(event, TextDelta))


def test_replies_of_two_loaded_models_run_at_once_a_quick_load_joins_them_a_first_load_waits(
    engine: LocalEngine, tiny_models: dict[str, Path]
) -> None:
    """Two LAN users of two models: the second's reply starts beside the first's long one (their
    batches step in turn) rather than after it; so does one of a model not loaded whose quantized copy
    an earlier load kept (its load takes ~0.2 s of their steps); a model to quantize first waits (its
    load would freeze them for seconds), and so does Ollama's load request for it."""
    install_ready(engine.models_dir, "fresh", tiny_models["qwen2"])  # never loaded: no quantized copy
    llama_alone = _text(engine.stream("tiny-llama", HELLO, GREEDY))
    engine.unload("tiny-llama")  # its quantized copy stays on disk, as after any first load
    alone = _text(engine.stream("tiny-qwen", HELLO, GREEDY))
    engine.load("long")
    stop = threading.Event()
    long_reply = engine.stream("long", HELLO, LONG, stop)
    next(event for event in long_reply if isinstance(event, TextDelta))  # the long reply runs
    running_beside, beside = 0, []
    for event in engine.stream("tiny-qwen", HELLO, GREEDY):
        if isinstance(event, TextDelta):
            running_beside = max(running_beside, engine.running)
            beside.append(event.text)
    quick = list(engine.stream("tiny-llama", HELLO, GREEDY))
    quick_beside = engine.running  # the long reply still runs
    to_load = engine.stream("fresh", HELLO, GREEDY)
    waited = next(to_load)
    preloads: list[Any] = []  # Ollama's load request: in its turn too
    preload = threading.Thread(target=lambda: preloads.append(engine.load_in_turn("fresh")))
    preload.start()
    deadline = time.monotonic() + 30
    while engine.waiting < 2:
        assert time.monotonic() < deadline, "the load request did not take its place in line"
        time.sleep(0.01)
    still_running, not_loaded = engine.running, engine.parts_of("fresh") is None
    stop.set()
    ended = [event for event in long_reply if isinstance(event, Finished)]
    loaded_after = [event for event in to_load if isinstance(event, Finished)]
    preload.join(60)
    assert running_beside == 2 and "".join(beside) == alone  # the same words as alone
    assert not any(isinstance(event, Queued) for event in quick) and _text(quick) == llama_alone
    assert quick_beside == 1 and ended[0].stats.finish_reason == "stopped"
    assert isinstance(waited, Queued) and waited.ahead == 1 and still_running == 1 and not_loaded
    assert preloads[0].key == "fresh" and loaded_after[0].stats.finish_reason in ("length", "stop")


def test_a_reply_through_transformers_generate_runs_alone(
    engine: LocalEngine, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A model the lean decoder does not run (Gemma 2's soft cap) answers through transformers'
    generate, which holds the torch thread to the reply's end: its reply waits for another model's
    running one (it would freeze it), and another model's waits for its, each told its place."""
    soft_cap = build_tiny_model(tmp_path_factory.mktemp("gen") / "m", "gemma2", endless=True, context=4096)
    install_ready(engine.models_dir, "gen", soft_cap)
    assert engine.load("gen").runner == "generate"
    waits = []
    for first, second in (("long", "gen"), ("gen", "long")):
        stop = threading.Event()
        running = engine.stream(first, HELLO, LONG, stop)
        next(event for event in running if isinstance(event, TextDelta))
        waiting = engine.stream(second, HELLO, GREEDY)
        waits.append(next(waiting))
        stop.set()
        list(running)
        ended = [event for event in waiting if isinstance(event, Finished)]  # read to its end: its turn ends
        assert ended[0].stats.finish_reason == "length"
    assert all(isinstance(wait, Queued) and wait.ahead == 1 for wait in waits)


def test_a_long_prompt_of_one_model_is_read_in_parts_while_another_models_reply_decodes(
    engine: LocalEngine,
) -> None:
    """The other model's reader gets its tokens between the parts: no pass of the whole prompt."""
    engine.load("tiny-qwen")
    stop = threading.Event()
    long_reply = engine.stream("long", HELLO, LONG, stop)
    next(event for event in long_reply if isinstance(event, TextDelta))
    asked = [{"role": "user", "content": "Hello 你好 " * 30}]
    with passes(engine.parts_of("tiny-qwen").decoder) as recorded:
        finished = [e for e in engine.stream("tiny-qwen", asked, GREEDY) if isinstance(e, Finished)]
    stop.set()
    list(long_reply)
    prompt = finished[0].stats.prompt_tokens
    read = [sum(tokens) for tokens in recorded if sum(tokens) > 1]  # the prompt's passes
    assert prompt > 2 * PREFILL_BESIDE and sum(read) == prompt and max(read) == PREFILL_BESIDE


def test_a_quick_load_that_does_not_fit_beside_the_running_replies_waits_for_them(
    engine: LocalEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine.load("tiny-llama")
    engine.unload()  # its quantized copy kept: a quick load, where memory holds it beside the long reply
    stop = threading.Event()
    long_reply = engine.stream("long", HELLO, LONG, stop)
    next(event for event in long_reply if isinstance(event, TextDelta))
    planned = engine.memory_estimate("tiny-llama").with_caches(engine.parallel)
    monkeypatch.setattr("core.inference.engine.available_memory", lambda _device: int(planned / 0.8) - 1)
    to_load = engine.stream("tiny-llama", HELLO, GREEDY)
    waited, not_loaded = next(to_load), engine.parts_of("tiny-llama") is None
    monkeypatch.undo()
    stop.set()
    list(long_reply)
    after = [event for event in to_load if isinstance(event, Finished)]
    assert isinstance(waited, Queued) and waited.ahead == 1 and not_loaded
    assert after[0].stats.finish_reason in ("length", "stop")


def test_a_model_that_would_not_fit_beside_the_loaded_ones_unloads_them(
    engine: LocalEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine.load("tiny-qwen")
    planned = engine.memory_estimate("tiny-llama").with_caches(engine.parallel)
    monkeypatch.setattr("core.inference.engine.available_memory", lambda _device: int(planned / 0.8) - 1)
    engine.load("tiny-llama")
    assert [m.key for m in engine.loaded_models] == ["tiny-llama"]
    # Too big even alone: refused, and what is loaded stays loaded.
    monkeypatch.setattr("core.inference.engine.available_memory", lambda _device: 1024**2)
    with pytest.raises(InsufficientMemoryError):
        engine.load("tiny-qwen")
    assert [m.key for m in engine.loaded_models] == ["tiny-llama"]


def test_each_loaded_model_unloads_after_its_own_idle_time(
    tmp_path: Path, tiny_models: dict[str, Path]
) -> None:
    install_ready(tmp_path / "models", "chat", tiny_models["qwen2"])
    install_ready(tmp_path / "models", "embed", tiny_models["llama"])
    engine = LocalEngine(tmp_path / "models", idle_unload_s=0.5)
    engine.load("chat")
    engine.keep_alive("embed", math.inf)  # a client's keep-alive for this one
    engine.load("embed")
    deadline = time.monotonic() + 10
    while engine.parts_of("chat") is not None:
        assert time.monotonic() < deadline, "the idle unload did not fire"
        time.sleep(0.05)
    assert [m.key for m in engine.loaded_models] == ["embed"] and engine.idle_seconds_left("embed") is None
    engine.unload()
    assert engine.loaded_models == ()


UNLOAD_IN_A_FRESH_PROCESS = """
import json, sys
from pathlib import Path
import psutil
from core.inference.engine import LocalEngine
engine = LocalEngine(Path(sys.argv[1]), idle_unload_s=0)
engine.prepare().result()  # the imports are not the model
process = psutil.Process()
before = process.memory_info().rss
loaded = engine.load("heavy")
with_model = process.memory_info().rss
engine.unload()
print(json.dumps({"before": before, "with_model": with_model, "after": process.memory_info().rss,
                  "model": loaded.memory_bytes, "unloaded": engine.loaded is None}))
"""


def test_unload_frees_memory(tmp_path: Path, heavy_model: Path) -> None:
    """In a fresh process: memory freed by earlier tests in this one would hide the model's growth."""
    install_ready(tmp_path / "models", "heavy", heavy_model)
    result = subprocess.run([sys.executable, "-c", UNLOAD_IN_A_FRESH_PROCESS, str(tmp_path / "models")],
                            cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr
    rss = json.loads(result.stdout)
    assert rss["unloaded"]
    assert rss["with_model"] - rss["before"] > rss["model"] * 0.5
    assert rss["with_model"] - rss["after"] > rss["model"] * 0.5  # resident memory really dropped


def test_idle_unload_fires_and_the_next_request_reloads(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    install_ready(tmp_path / "models", "tiny", tiny_models["qwen2"])
    engine = LocalEngine(tmp_path / "models", idle_unload_s=0.3)
    engine.load("tiny")
    assert 0 < engine.idle_seconds_left("tiny") <= 0.3
    deadline = time.monotonic() + 5
    while engine.loaded is not None:
        assert time.monotonic() < deadline, "idle unload did not fire"
        time.sleep(0.05)
    assert isinstance(list(engine.stream("tiny", HELLO, GREEDY))[-1], Finished)
    assert engine.loaded is not None


def _int4_layers(engine: LocalEngine, key: str = "long") -> list:
    from core.inference.quantize import Int4Linear

    parts = engine.parts_of(key)
    return [m for m in parts.model.modules() if isinstance(m, Int4Linear)] if parts else []


def test_between_replies_the_int4_weights_are_kept_unpacked_for_prompts_where_memory_allows(
    engine: LocalEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    from core.inference import engine as engine_module
    from core.inference.quantize import INT4_PROMPT_ROWS, KEPT_PROMPT_ROWS, KEPT_PROMPT_ROWS_NATIVE

    monkeypatch.setattr(engine_module, "KEEP_UNPACKED_MIN_BYTES", 0)  # a real model's copy is ≥ 0.5 GB
    trims = []  # at each hand-back of freed memory: whether a loaded model's matrices were all kept
    # This engine's (an earlier test's engine, unloading when idle, would hand back memory too).
    own_thread = engine.on_torch_thread(threading.get_ident)

    def trim() -> None:
        if threading.get_ident() == own_thread:
            trims.append(bool(layers := _int4_layers(engine)) and all(layer.kept for layer in layers))

    monkeypatch.setattr(engine_module, "return_freed_memory_to_os", trim)
    long_prompt = [{"role": "user", "content": "tell me " * INT4_PROMPT_ROWS}]
    engine.load("long")  # with nothing waiting for it: kept in the quiet moment that follows
    engine.settle()
    assert (layers := _int4_layers(engine)) and all(layer.kept for layer in layers)
    # The unpacking's temporaries go back to the OS once all is kept (TinyLlama: ~190 MB of heap).
    assert trims == [True]

    engine.unload()  # loaded by a reply: the reply does not wait for the copy
    before = []
    for event in engine.stream("long", long_prompt, GREEDY):
        if isinstance(event, TextDelta):
            layers = _int4_layers(engine)
            assert not any(layer.kept for layer in layers)
            before.append(event.text)
    assert before
    engine.settle()  # kept while nothing runs, after the reply
    # From fewer rows beside torch's int4 kernel than beside the engine's own (core.inference.native).
    assert all(layer.kept for layer in layers) and {layer.prompt_rows for layer in layers} == {
        KEPT_PROMPT_ROWS_NATIVE if layer.native_runs() else KEPT_PROMPT_ROWS for layer in layers
    }
    assert engine.prompt_copies["long"] == sum(layer.unpacked_bytes() for layer in layers) > 0  # planned with
    after = [e.text for e in engine.stream("long", long_prompt, GREEDY) if isinstance(e, TextDelta)]
    # A long prompt: the same reply from the kept weights (int8: products within ~1 %), in any pieces.
    assert "".join(after) == "".join(before)

    engine.unload()  # memory for the weights and one reply's cache, none for a copy: nothing is kept
    estimate = engine.memory_estimate("long")
    monkeypatch.setattr(engine_module, "available_memory", lambda _device: int(estimate.with_caches(1) / 0.8))
    engine.load("long")
    list(engine.stream("long", HELLO, GREEDY))
    engine.settle()
    assert not any(layer.kept for layer in _int4_layers(engine))
    assert {layer.prompt_rows for layer in _int4_layers(engine)}.isdisjoint(
        {KEPT_PROMPT_ROWS, KEPT_PROMPT_ROWS_NATIVE}
    )
    assert engine.prompt_copies == {}

    engine.unload()  # plenty of memory, but a process that ends after its replies (`localllm chat -p`)
    monkeypatch.undo()
    monkeypatch.setattr(engine_module, "KEEP_UNPACKED_MIN_BYTES", 0)
    engine.keep_prompt_weights = False
    list(engine.stream("long", HELLO, GREEDY))
    engine.settle()
    assert not any(layer.kept for layer in _int4_layers(engine))


def test_warm_loads_each_chosen_model_once_in_the_background_beside_others_never_over_them(
    engine: LocalEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    from core.inference import engine as engine_module

    assert engine.warm("not-downloaded") is None
    busy = threading.Event()
    engine._torch.submit(busy.wait, 120)  # the load waits behind this: it is seen under way
    try:
        asked: list[Any] = []  # the Chat page opened: `warm` is asked in Streamlit's script thread, a daemon
        asker = threading.Thread(target=lambda: asked.append(engine.warm("tiny-llama")), daemon=True)
        asker.start()
        asker.join()
        [warming] = asked
        [loader] = [thread for thread in threading.enumerate() if thread.name == "engine-warm"]
        assert not loader.daemon  # an exit waits for the load rather than aborting inside torch
        deadline = time.monotonic() + 60
        while engine.loading is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert engine.loading == "tiny-llama" and engine.loaded is None  # what the sidebar says meanwhile
    finally:
        busy.set()
    assert warming.result(timeout=120).key == "tiny-llama"
    assert engine.loaded.key == "tiny-llama" and engine.loading is None
    engine.unload()  # the user's unload (or the idle one) stays: no second load ahead of a message
    assert engine.warm("tiny-llama") is None and engine.loaded is None
    # Another model chosen on the page: loaded ahead of its first message too, once.
    assert engine.warm("tiny-qwen").result(timeout=120).key == "tiny-qwen"
    assert engine.warm("tiny-qwen") is None and engine.loaded.key == "tiny-qwen"
    engine.unload()

    beside = LocalEngine(engine.models_dir, idle_unload_s=0)
    beside.load("tiny-qwen")  # someone's model is loaded: the page's loads beside it, where it fits
    assert beside.warm("tiny-llama").result(timeout=120).key == "tiny-llama"
    assert [model.key for model in beside.loaded_models] == ["tiny-llama", "tiny-qwen"]
    beside.unload()
    chosen = LocalEngine(engine.models_dir, idle_unload_s=0, max_loaded=1)
    chosen.load("tiny-qwen")  # one model kept loaded: the page does not swap someone's
    assert chosen.warm("tiny-llama").result(timeout=120) is None
    assert chosen.loaded.key == "tiny-qwen"
    chosen.unload()

    estimate = engine.memory_estimate("tiny-llama")  # short of memory: nothing, and no error
    monkeypatch.setattr(engine_module, "available_memory", lambda _device: estimate.total_bytes - 1)
    short = LocalEngine(engine.models_dir, idle_unload_s=0)
    assert short.warm("tiny-llama").result(timeout=120) is None
    assert short.loaded is None


class _OpsOnThisThread(TorchDispatchMode):
    """The torch operations that run on the thread that entered it (modes are per thread)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.seen.add(str(func))
        return func(*args, **(kwargs or {}))


def test_no_torch_work_runs_on_the_callers_thread(
    engine: LocalEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Torch work on a second thread starts a second OpenMP team beside the engine's: every decode step
    after it ran ~25 % slower (a check of the int4 layout run from `load`'s caller did it once)."""
    from core.inference import calibration, quantize
    from core.inference import engine as engine_module

    monkeypatch.setattr(engine_module, "KEEP_UNPACKED_MIN_BYTES", 0)
    monkeypatch.setattr(calibration, "measure_int4_prompt_rows", lambda: 64)  # kept from an earlier start
    quantize.unpacking_works.cache_clear()  # as in a fresh process
    with _OpsOnThisThread() as ops:
        engine.load("long")
        list(engine.stream("long", [{"role": "user", "content": "tell me " * 40}], GREEDY))
        engine.settle()
    assert _int4_layers(engine)[0].kept  # the copy was planned and made, on the torch thread
    assert ops.seen <= {"aten.lift_fresh.default", "aten.ones_like.default", "aten.select.int"}, ops.seen


def test_a_model_that_is_not_downloaded_is_refused(engine: LocalEngine) -> None:
    with pytest.raises(ModelNotReadyError, match="not downloaded"):
        engine.load("qwen2.5-0.5b")


def test_memory_check_refuses_unless_forced(engine: LocalEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    # Simulates a machine with 100 MB free: this one has far more than the tiny model needs.
    monkeypatch.setattr("core.inference.engine.available_memory", lambda _device: 100 * 1024**2)
    with pytest.raises(InsufficientMemoryError, match=r"needs 0\.\d GiB, 0\.1 GiB available"):
        engine.load("tiny-qwen")
    assert engine.load("tiny-qwen", force=True).key == "tiny-qwen"


@pytest.mark.parametrize("quantization", ["int4", "none"])  # core.inference.decoder, transformers' generate
def test_an_error_in_the_generation_thread_reaches_the_caller(
    engine: LocalEngine, monkeypatch: pytest.MonkeyPatch, quantization: str
) -> None:
    # Simulates a failure inside the forward pass (out of memory, say), which a test cannot produce
    # on demand.
    engine.quantization = quantization
    engine.load("tiny-llama")
    assert engine.loaded.runner == ("generate" if quantization == "none" else "decoder")
    parts = engine.parts_of("tiny-llama")  # the model's own forward pass is the only way in for this fault

    def failing(*_args, **_kwargs):
        raise RuntimeError("CUDA out of memory")

    if parts.decoder is not None:
        monkeypatch.setattr(parts.decoder, "run", failing)  # the batch's one pass
    else:
        monkeypatch.setattr(parts.model, "forward", failing)
    with pytest.raises(GenerationError, match="Generation failed: CUDA out of memory"):
        list(engine.stream("tiny-llama", HELLO, GREEDY))
    assert not engine.busy  # the engine is free again
    assert engine.waiting == 0


def test_a_conversation_the_template_rejects_gives_a_clear_error(engine: LocalEngine) -> None:
    """The client's conversation, not the server: the API answers 400 (it said 503, a server error that
    clients retry)."""
    with pytest.raises(ChatTemplateError, match="chat template rejected") as refused:
        list(engine.stream("tiny-llama", [], GREEDY))
    answer = from_core(refused.value)
    assert (answer.status, answer.code) == (400, "chat_template")


def test_a_template_that_refuses_is_said_so_when_the_prompt_is_measured(engine: LocalEngine) -> None:
    """The API and the chat measure a prompt before anything runs, rendering the template too: a refusal
    there was jinja's own error (the API's 500, the chat's traceback)."""
    own = engine.tokenizer("tiny-llama")
    refusing = "{{ raise_exception('Conversation roles must alternate user/assistant') }}"
    strict = ChatTokenizer(own.backend, refusing, own.special_tokens, own.eos_token_id, own.pad_token_id,
                           own.model_max_length, own.clean_up)  # fmt: skip
    for limit in (None, 100):
        with pytest.raises(ChatTemplateError, match="roles must alternate"):
            count_prompt_tokens(strict, HELLO, limit)


def test_the_bandwidth_is_read_again_while_idle_and_the_best_reading_kept(
    engine: LocalEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Simulated readings: a real one taken while the app starts reads low only when something else
    # competes for the memory then, which a test cannot stage reliably.
    readings = iter([7e9, 11e9, 15e9, 30e9])
    monkeypatch.setattr("core.inference.engine.measure_bandwidth", lambda: next(readings))
    monkeypatch.setattr("core.inference.engine.BANDWIDTH_READING_GAP_S", 0.0)
    assert engine.memory_bandwidth() == 7e9  # the reading taken at the start
    stop = threading.Event()
    replying = engine.stream("long", HELLO, LONG, stop=stop, ignore_eos=True)
    next(replying)  # a reply is being generated: no reading competes with it
    assert engine.memory_bandwidth() == 7e9
    stop.set()
    list(replying)

    def best_after_the_reading() -> float:
        engine.memory_bandwidth()  # asks for another reading where one is due; pages never wait for it
        engine.on_torch_thread(lambda: None)  # the reading is taken on the torch thread: done after this
        return engine.memory_bandwidth()

    assert best_after_the_reading() == 11e9  # idle: read again (none was taken beside the reply)
    assert best_after_the_reading() == 15e9  # the best reading is kept
    assert best_after_the_reading() == 15e9  # three readings at most


def test_attention_on_cuda_keeps_off_cudnn_which_plans_each_new_shape() -> None:
    """On CUDA the engine keeps attention off cuDNN's SDPA (it builds a plan for every new shape, ~0.4 s
    each: device.prepare_attention); a CPU's settings stay as they are. No GPU here: the flag is torch's
    process-wide setting, which a CPU build keeps too."""
    import torch

    from core.inference.device import prepare_attention

    try:
        torch.backends.cuda.enable_cudnn_sdp(True)
        prepare_attention("cpu")
        assert torch.backends.cuda.cudnn_sdp_enabled()
        prepare_attention("cuda")
        assert not torch.backends.cuda.cudnn_sdp_enabled()
    finally:
        torch.backends.cuda.enable_cudnn_sdp(True)


@pytest.mark.parametrize("quantization", ["int4", "int8", "none"])
def test_weights_that_do_not_fit_the_config_are_refused_not_made_up(
    tmp_path: Path, tiny_models: dict[str, Path], quantization: str
) -> None:
    """An AWQ checkpoint stores a matrix as `qweight`, `qzeros` and `scales`: transformers filled the
    `weight` it did not find with random numbers, and the model replied with noise."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    source = Path(shutil.copytree(tiny_models["qwen2"], tmp_path / "awq"))
    tensors = load_file(source / "model.safetensors")
    matrix = tensors.pop("model.layers.0.self_attn.q_proj.weight")
    tensors["model.layers.0.self_attn.q_proj.qweight"] = torch.zeros(matrix.shape[1], 4, dtype=torch.int32)
    save_file(tensors, source / "model.safetensors", metadata={"format": "pt"})
    install_ready(tmp_path / "models", "awq", source)
    engine = LocalEngine(tmp_path / "models", idle_unload_s=0, quantization=quantization)
    with pytest.raises(UnsupportedModelError) as refused:
        engine.load("awq")
    assert refused.value.message == (
        "The weights of awq do not fit its config.json: 1 of its matrices are missing "
        "(model.layers.0.self_attn.q_proj.weight). Its files may hold another format (quantized as AWQ, "
        "GPTQ or MLX): add the model's original weights instead."
    )
    assert engine.loaded is None and not list((tmp_path / "models" / "awq").glob(".localllm-*.pt"))


@pytest.mark.parametrize("quantization", ["int4", "none"])
def test_a_reply_ends_at_the_templates_end_of_turn_even_where_the_generation_config_names_another(
    tmp_path: Path, tiny_models: dict[str, Path], quantization: str
) -> None:
    """A chat fine-tune of a base model keeps the base's generation_config (its end: <|endoftext|>) while
    its ChatML template ends a turn with <|im_end|>: the reply went on past it, into the user's next turn.
    llama.cpp ends at any end-of-turn token; so does this engine now (ChatTokenizer.turn_end_ids)."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM

    from core.inference.loading import load_tokenizer

    model = Path(shutil.copytree(tiny_models["qwen2"], tmp_path / "finetune"))
    vocabulary = json.loads((model / "tokenizer.json").read_text())["added_tokens"]
    ids = {token["content"]: token["id"] for token in vocabulary}
    generation = json.loads((model / "generation_config.json").read_text())
    generation["eos_token_id"] = ids["<|endoftext|>"]
    (model / "generation_config.json").write_text(json.dumps(generation))
    tokenizer = json.loads((model / "tokenizer_config.json").read_text())
    (model / "tokenizer_config.json").write_text(json.dumps({**tokenizer, "eos_token": "<|endoftext|>"}))
    # A head of its own that prefers <|im_end|> to every other token after this prompt: zero rows, and
    # <|im_end|>'s along the prompt's last hidden state (the head does not change that state).
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": False}))
    tensors = load_file(model / "model.safetensors")
    tensors["lm_head.weight"] = torch.zeros_like(tensors["model.embed_tokens.weight"])
    save_file(tensors, model / "model.safetensors", metadata={"format": "pt"})
    with torch.inference_mode():
        prompt = torch.tensor([load_tokenizer("finetune", model).chat_ids(HELLO)])
        states = AutoModelForCausalLM.from_pretrained(model).model(prompt).last_hidden_state
    tensors["lm_head.weight"][ids["<|im_end|>"]] = states[0, -1] / states[0, -1].norm() * 50
    save_file(tensors, model / "model.safetensors", metadata={"format": "pt"})
    install_ready(tmp_path / "models", "finetune", model)
    engine = LocalEngine(tmp_path / "models", idle_unload_s=0, quantization=quantization)
    try:
        *_, finished = engine.stream("finetune", HELLO, GREEDY)
    finally:
        engine.unload()
    assert (finished.stats.finish_reason, finished.stats.completion_tokens) == ("stop", 1)


def test_a_tokenizer_that_does_not_fit_the_model_is_refused_not_used(
    tmp_path: Path, tiny_models: dict[str, Path]
) -> None:
    """Without a tokenizer.json it can read (a sentencepiece tokenizer.model without its library),
    transformers builds an empty tokenizer: a ChatML prompt was read as one token, and the reply was noise."""
    import shutil

    source = Path(shutil.copytree(tiny_models["qwen2"], tmp_path / "no-tokenizer"))
    (source / "tokenizer.json").unlink()
    install_ready(tmp_path / "models", "no-tokenizer", source)
    engine = LocalEngine(tmp_path / "models", idle_unload_s=0)
    with pytest.raises(UnsupportedModelError) as refused:
        list(engine.stream("no-tokenizer", HELLO, GREEDY))
    assert refused.value.message == (
        "no-tokenizer's tokenizer knows 2 tokens where its model has 400: its tokenizer.json is missing or "
        "of a kind this app cannot read."
    )
