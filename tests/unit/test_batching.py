"""Continuous batching: replies generated together are the replies generated alone, whoever joins or
stops when; the engine runs concurrent replies together up to its setting and what memory holds."""

from __future__ import annotations

import contextlib
import threading
import time
import weakref
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from core.inference import attention
from core.inference.batching import PREFILL_BESIDE, Batch, Batcher, Request, generate
from core.inference.decoder import Decoder, KvCache, Segment, _Graph
from core.inference.engine import LocalEngine
from core.inference.events import Finished, Reading, TextDelta
from core.inference.params import GenerationParams
from core.inference.sampler import Sampling, TokenChooser
from core.inference.sizing import MemoryEstimate, replies_that_fit
from tests.fixtures.tiny_models import build_tiny_model, install_ready
from tests.unit.test_quantize import load, prepare_for_decoder

NEW_TOKENS = 24
SAMPLINGS = (  # greedy with a penalty, and seeded sampling: each request keeps its own
    Sampling(repetition_penalty=1.3),
    Sampling(temperature=0.9, top_k=20, top_p=0.9, seed=7),
    Sampling(temperature=1.1, min_p=0.05, seed=11),
)


@pytest.fixture(scope="module")
def model(tiny_models: dict[str, Path]) -> Any:
    # float32, projections fused as the engine fuses them: batched and alone agree to the last bit
    # that can change a choice.
    model = load(tiny_models["llama"], attention.NAME, dtype=torch.float32)
    prepare_for_decoder(model, torch.float32, "fused")
    return model


@pytest.fixture(scope="module")
def decoder(model: Any) -> Decoder:
    return Decoder(model)


def prompts(vocabulary: int) -> list[list[int]]:
    """Three prompts of different lengths; the last is longer than a step's prefill beside others."""
    generator = torch.Generator().manual_seed(0)
    lengths = (5, 12, PREFILL_BESIDE * 2 + 17)
    return [torch.randint(3, vocabulary, (n,), generator=generator).tolist() for n in lengths]


def request(
    decoder: Decoder, prompt: list[int], sampling: Sampling, stop_after: int | None = None, *,
    owner: str = "", new_tokens: int = NEW_TOKENS,
) -> Request:  # fmt: skip
    chooser = TokenChooser(sampling, decoder.vocabulary, "cpu", seen=prompt)
    seen: list[int] = []

    def on_token(token: int) -> bool:
        seen.append(token)
        return stop_after is not None and len(seen) >= stop_after

    return Request(prompt, new_tokens, chooser, frozenset(), on_token, owner=owner)


def alone(decoder: Decoder, prompt: list[int], sampling: Sampling) -> list[int]:
    chooser = TokenChooser(sampling, decoder.vocabulary, "cpu", seen=prompt)
    with torch.inference_mode():
        return generate(decoder, prompt, NEW_TOKENS, chooser, (), lambda _token: False)


def run(batch: Batch, joins: dict[int, list[Request]]) -> None:
    """Step the batch to the end; `joins[n]`: requests added before step n."""
    steps = 0
    with torch.inference_mode():
        while batch.active or any(n >= steps for n in joins):
            for joining in joins.get(steps, []):
                batch.add(joining)
            batch.step()
            steps += 1


def test_replies_generated_together_are_the_replies_generated_alone(decoder: Decoder) -> None:
    texts = prompts(decoder.vocabulary)
    expected = [alone(decoder, prompt, sampling) for prompt, sampling in zip(texts, SAMPLINGS, strict=True)]
    assert len({tuple(reply) for reply in expected}) == 3
    together = [request(decoder, prompt, sampling) for prompt, sampling in zip(texts, SAMPLINGS, strict=True)]
    run(Batch(decoder), {0: together})
    assert [r.done.result() for r in together] == expected


def test_a_request_that_joins_mid_run_gets_the_tokens_it_gets_alone(decoder: Decoder) -> None:
    texts = prompts(decoder.vocabulary)
    expected = [alone(decoder, prompt, sampling) for prompt, sampling in zip(texts, SAMPLINGS, strict=True)]
    first, second, third = (request(decoder, p, s) for p, s in zip(texts, SAMPLINGS, strict=True))
    # The long prompt joins while two replies decode: it is prefilled in parts beside their tokens.
    run(Batch(decoder), {0: [first], 5: [second], 9: [third]})
    assert [r.done.result() for r in (first, second, third)] == expected


def test_a_prompt_read_for_its_logprobs_beside_other_replies_leaves_each_as_alone(
    model: Any, decoder: Decoder
) -> None:
    """An echoed completion's prompt (lm-eval's loglikelihood) is read in passes of its own, every row's
    logits kept: its tokens' log-probabilities are the model's, its reply and the others' as alone."""
    texts = prompts(decoder.vocabulary)
    expected = [alone(decoder, prompt, sampling) for prompt, sampling in zip(texts, SAMPLINGS, strict=True)]
    first, second = request(decoder, texts[0], SAMPLINGS[0]), request(decoder, texts[1], SAMPLINGS[1])
    scored = request(decoder, texts[2], SAMPLINGS[2])  # longer than a part: read over three steps
    scored.prompt_logprobs = 2
    prompt_only = request(decoder, texts[1], Sampling(), new_tokens=0)
    prompt_only.prompt_logprobs = 0
    run(Batch(decoder), {0: [first], 2: [scored, prompt_only], 4: [second]})
    assert [r.done.result() for r in (first, second, scored)] == expected
    assert prompt_only.done.result() == []
    for asked in (scored, prompt_only):
        with torch.inference_mode():
            reference = model(torch.tensor([asked.prompt])).logits[0, :-1].log_softmax(-1)
        logged = asked.prompt_logged.result()
        assert [token for token, _, _ in logged] == asked.prompt[1:]
        assert [logprob for _, logprob, _ in logged] == pytest.approx(
            reference.gather(-1, torch.tensor(asked.prompt[1:]).unsqueeze(-1))[:, 0].tolist(), abs=1e-4
        )
        assert [[token for token, _ in top] for _, _, top in logged] == (
            reference.topk(asked.prompt_logprobs).indices.tolist()
            if asked.prompt_logprobs
            else [[]] * len(logged)
        )


class StandInGraphs:
    """CUDA graphs need a GPU, which the tests do not have: a stand-in "recording" runs `Decoder.step` on
    the recorded inputs at each replay. What surrounds the recording on CUDA is real: which caches,
    tokens and positions each replay gets, when a recording is made, the caches' pools."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.recorded: list[int] = []  # each recording's count of replies
        self.attended: list[weakref.ref[KvCache]] = []  # the replies' caches recordings attended
        self.pools: list[Any] = []  # the pools that replayed steps attended (one for each set of replies)
        monkeypatch.setattr(
            _Graph, "record", classmethod(lambda cls, graphed, caches: self.record(graphed, caches))
        )

    def record(self, graphed: Decoder, caches: tuple[KvCache, ...]) -> _Graph:
        self.recorded.append(len(caches))
        self.attended.extend(weakref.ref(cache) for cache in caches if cache is not graphed.cache)
        inputs = torch.tensor([0] * len(caches) + [cache.length for cache in caches])
        tokens, positions = inputs.split(len(caches))
        logits = torch.empty(len(caches), graphed.vocabulary)

        def replay() -> None:
            logits.copy_(graphed.step(tokens, positions, caches))
            if len(caches) > 1:  # one tensor for their keys, each reply's cache its slot, in order
                pool = caches[0].pool
                assert pool is not None and len(pool.keys) == len(caches)
                assert all(
                    c.pool is pool and c.keys.data_ptr() == pool.keys[i].data_ptr()
                    for i, c in enumerate(caches)
                )
                if not any(seen is pool for seen in self.pools):
                    self.pools.append(pool)

        return _Graph(SimpleNamespace(replay=replay), caches, inputs, logits)  # type: ignore[arg-type]


def graphed_decoder(model: Any) -> Decoder:
    """A decoder that replays recorded steps, as on CUDA (with `StandInGraphs` for the recording)."""
    graphed = Decoder(model)
    graphed.use_graphs = True
    return graphed


def test_replies_replayed_from_cuda_graphs_are_the_replies_generated_alone(
    model: Any, decoder: Decoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A recording is made once for each set of replies decoding together (again when one joins or
    # leaves, not every token), and the replies are the replies generated alone.
    graphs = StandInGraphs(monkeypatch)
    recorded, attended, pools = graphs.recorded, graphs.attended, graphs.pools
    record = graphs.record
    texts = prompts(decoder.vocabulary)
    expected = [alone(decoder, prompt, sampling) for prompt, sampling in zip(texts, SAMPLINGS, strict=True)]
    graphed = graphed_decoder(model)
    first, second, third = (request(graphed, p, s) for p, s in zip(texts, SAMPLINGS, strict=True))
    batch = Batch(graphed, lambda: 4)  # memory for four caches: the ended replies' are kept
    run(batch, {0: [first], 5: [second], 9: [third]})
    assert [r.done.result() for r in (first, second, third)] == expected
    assert recorded == [1, 2, 3, 2, 1]  # the first alone, two, three, then as they end
    assert len(pools) == 3  # two, three, two
    # Once their recording is gone the caches hold memory of their own: a kept one holds no pool.
    kept = [each.cache for each in batch.kept._kept]
    assert kept and all(cache.pool is None and cache.keys._base is None for cache in kept)
    assert all(cache.capacity == cache.made_for for cache in kept)  # as long as before the pool
    assert graphed.use_graphs
    del first, second, third, batch, kept
    assert attended and not any(ref() for ref in attended)  # no recording holds an ended reply's cache

    def cannot_record_together(cls: type[_Graph], graphed: Decoder, caches: tuple[KvCache, ...]) -> _Graph:
        if len(caches) > 1:  # the pooled step's operations: a lone reply's step records as before
            raise RuntimeError("operation not permitted when stream is capturing")
        return record(graphed, caches)

    recorded.clear()
    monkeypatch.setattr(_Graph, "record", classmethod(cannot_record_together))
    staggered = [request(graphed, p, s) for p, s in zip(texts, SAMPLINGS, strict=True)]
    run(Batch(graphed), {0: staggered[:1], 5: staggered[1:2], 9: staggered[2:]})
    assert [r.done.result() for r in staggered] == expected  # together eagerly, the last alone replayed
    assert (graphed.use_graphs, graphed.graphs_together) == (True, False)
    assert recorded == [1, 1]  # the first reply alone, then the last one alone; none together

    def cannot_record(cls: type[_Graph], graphed: Decoder, caches: tuple[KvCache, ...]) -> _Graph:
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(_Graph, "record", classmethod(cannot_record))
    staggered = [request(graphed, p, s) for p, s in zip(texts, SAMPLINGS, strict=True)]
    run(Batch(graphed), {0: staggered[:1], 5: staggered[1:2], 9: staggered[2:]})
    assert [r.done.result() for r in staggered] == expected  # eagerly from then on
    assert not graphed.use_graphs


def test_prompts_that_arrive_together_go_in_one_pass(decoder: Decoder) -> None:
    texts = prompts(decoder.vocabulary)
    together = [request(decoder, prompt, sampling) for prompt, sampling in zip(texts, SAMPLINGS, strict=True)]
    batch = Batch(decoder)
    for each in together:
        batch.add(each)
    with torch.inference_mode():
        batch.step()
    # All three prompts are in after one pass and each reply has its first token: the last does not also
    # wait for the first one's tokens between the prompts.
    assert [len(r.generated) for r in together] == [1, 1, 1]


def test_requests_sent_close_together_start_in_the_same_pass_gathered_off_the_torch_thread(
    decoder: Decoder,
) -> None:
    """Each request comes from its reader's thread; the first one's wait for others is spent there, so
    the torch thread meanwhile steps another model's batch (here: a task waiting for it)."""
    texts = prompts(decoder.vocabulary)
    expected = [alone(decoder, texts[index], SAMPLINGS[index]) for index in (0, 1)]
    passes: list[int] = []
    real_run = decoder.run

    def counted(segments: list[Segment]) -> torch.Tensor:  # the real pass, its segments counted
        passes.append(len(segments))
        return real_run(segments)

    torch_thread = ThreadPoolExecutor(max_workers=1)
    # A gap far above a thread switch, so that the test does not depend on this machine's load.
    batcher = Batcher(decoder, torch_thread.submit, gather=(2.0, 10.0))
    try:
        decoder.run = counted  # type: ignore[method-assign]
        firsts: list[Future[list[int]]] = []
        reader = threading.Thread(
            target=lambda: firsts.append(batcher.submit(request(decoder, texts[0], SAMPLINGS[0])))
        )
        reader.start()
        time.sleep(0.2)  # the second request comes a moment later, as over a network
        torch_thread.submit(lambda: None).result(timeout=1.5)  # not held by the gathering (2 s gaps)
        second = batcher.submit(request(decoder, texts[1], SAMPLINGS[1]))
        reader.join()
        assert [firsts[0].result(60), second.result(60)] == expected
    finally:
        del decoder.run
        torch_thread.shutdown()
    assert passes[0] == 2  # both prompts in the first pass


@contextlib.contextmanager
def passes(decoder: Decoder) -> Iterator[list[list[int]]]:
    """The real passes, each recorded as the token counts of its segments."""
    recorded: list[list[int]] = []
    real_run = decoder.run

    def counted(segments: list[Segment]) -> torch.Tensor:
        recorded.append([segment.ids.shape[0] for segment in segments])
        return real_run(segments)

    decoder.run = counted  # type: ignore[method-assign]
    try:
        yield recorded
    finally:
        del decoder.run


def test_a_long_prompt_is_read_in_parts_while_another_models_batch_decodes(decoder: Decoder) -> None:
    """Two models' batches step in turn on the torch thread: while the other one decodes, a long prompt
    goes in PREFILL_BESIDE tokens a pass (the other's tokens come between them), as beside this batch's
    own decoding replies; with nobody decoding, in one pass. The tokens are the same either way."""
    long = prompts(decoder.vocabulary)[2]  # PREFILL_BESIDE * 2 + 17 tokens
    read: dict[bool, tuple[list[list[int]], list[int]]] = {}
    for others in (True, False):
        batch = Batch(decoder, others_decoding=lambda others=others: others)
        reply = request(decoder, long, SAMPLINGS[0], new_tokens=4)
        batch.add(reply)
        with passes(decoder) as recorded, torch.inference_mode():
            while batch.active:
                batch.step()
        read[others] = (recorded, reply.done.result())
    beside, alone_ = read[True], read[False]
    assert beside[0][:3] == [[PREFILL_BESIDE], [PREFILL_BESIDE], [17]] and alone_[0][0] == [len(long)]
    assert beside[1] == alone_[1] == alone(decoder, long, SAMPLINGS[0])[:4]


def test_the_next_turn_prefills_only_what_its_conversation_has_not_seen(decoder: Decoder) -> None:
    first_prompt, sampling = prompts(decoder.vocabulary)[1], SAMPLINGS[0]
    first_reply = alone(decoder, first_prompt, sampling)
    question = [5, 6, 7]
    next_prompt = first_prompt + first_reply + question  # the conversation so far, then a new question
    expected = alone(decoder, next_prompt, sampling)
    batch = Batch(decoder, caches_at_most=lambda: 4)
    first = request(decoder, first_prompt, sampling, owner="ann")
    run(batch, {0: [first]})
    assert first.done.result() == first_reply

    by_someone_else = request(decoder, next_prompt, sampling, owner="bob")
    with passes(decoder) as recorded:
        run(batch, {0: [by_someone_else]})
    assert recorded[0] == [len(next_prompt)]  # never from another owner's cache: prefilled whole
    assert by_someone_else.done.result() == expected

    follow_up = request(decoder, next_prompt, sampling, owner="ann")
    with passes(decoder) as recorded:
        run(batch, {0: [follow_up]})
    # The cache held the first prompt and the reply but its last token: that token and the question go in.
    assert recorded[0] == [1 + len(question)]
    assert follow_up.done.result() == expected


@pytest.mark.parametrize("graphs", [False, True], ids=["eager", "cuda-graphs"])
def test_a_turn_that_joins_running_replies_starts_from_its_kept_cache(
    model: Any, decoder: Decoder, graphs: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    texts = prompts(decoder.vocabulary)
    first_prompt, sampling = texts[1], SAMPLINGS[0]
    first_reply = alone(decoder, first_prompt, sampling)
    next_prompt = first_prompt + first_reply + [9, 8]
    expected = alone(decoder, next_prompt, sampling)
    if graphs:  # as on CUDA: kept caches come out of the pools of the replies they decoded beside
        StandInGraphs(monkeypatch)
        decoder = graphed_decoder(model)
    batch = Batch(decoder, caches_at_most=lambda: 4)
    other = request(decoder, texts[0], SAMPLINGS[2], owner="bob", new_tokens=100)  # runs all along
    first = request(decoder, first_prompt, sampling, owner="ann")
    follow_up = request(decoder, next_prompt, sampling, owner="ann")  # outgrows the kept cache: copied
    again = request(decoder, first_prompt, sampling, owner="ann")  # "regenerate": the kept cache itself
    with passes(decoder) as recorded:
        run(batch, {0: [other], 1: [first], 40: [follow_up], 70: [again]})
    assert recorded[1] == [1, len(first_prompt)]
    assert recorded[40] == [1, 1 + 2]
    assert recorded[70] == [1, 1]  # all but the prompt's last token, whose logits the reply needs
    assert [first.done.result(), follow_up.done.result(), again.done.result()] == [
        first_reply,
        expected,
        first_reply,
    ]


def test_kept_and_running_caches_stay_within_the_replies_planned_for(decoder: Decoder) -> None:
    texts = prompts(decoder.vocabulary)
    batch = Batch(decoder, caches_at_most=lambda: 2)
    finished = [request(decoder, text, SAMPLINGS[0], owner=f"user {n}") for n, text in enumerate(texts)]
    run(batch, {0: finished})  # all three end in the same step, the first one first
    assert len(batch.kept) == 2
    assert batch.kept.best("user 0", texts[0]) == (None, 0)  # the oldest went
    assert all(batch.kept.best(f"user {n}", texts[n])[1] == len(texts[n]) - 1 for n in (1, 2))
    with torch.inference_mode():
        batch.add(request(decoder, texts[0], SAMPLINGS[0], owner="someone"))
        assert len(batch.kept) == 1
        batch.add(request(decoder, texts[1], SAMPLINGS[0], owner="someone else"))
        assert len(batch.kept) == 0  # two running: nothing more is kept


def test_a_conversations_turns_keep_one_cache_and_leave_room_for_others(decoder: Decoder) -> None:
    texts, sampling = prompts(decoder.vocabulary), SAMPLINGS[0]
    batch = Batch(decoder, caches_at_most=lambda: 2)
    bob = request(decoder, texts[0], sampling, owner="bob")
    run(batch, {0: [bob]})
    conversation = texts[1]
    for question in ([5, 6], [7], [8, 9, 10]):  # each turn: the conversation so far, then a question
        turn = request(decoder, conversation, sampling, owner="ann")
        run(batch, {0: [turn]})
        conversation = conversation + turn.done.result() + question
    # Each turn copied ann's kept cache into a larger one: the copied one went at once, so that her
    # running turn and her kept caches never pushed bob's out.
    assert len(batch.kept) == 2
    assert batch.kept.best("bob", texts[0])[1] == len(texts[0]) - 1
    assert batch.kept.best("ann", conversation)[1] == len(conversation) - 4  # all but the last question


def test_stopping_one_reply_leaves_the_others_untouched(decoder: Decoder) -> None:
    texts = prompts(decoder.vocabulary)
    expected = [alone(decoder, prompt, sampling) for prompt, sampling in zip(texts, SAMPLINGS, strict=True)]
    stopped_by_reader = request(decoder, texts[0], SAMPLINGS[0])
    stopped_by_callback = request(decoder, texts[1], SAMPLINGS[1], stop_after=3)
    going_on = request(decoder, texts[2], SAMPLINGS[2])
    batch = Batch(decoder)
    with torch.inference_mode():
        for each in (stopped_by_reader, stopped_by_callback, going_on):
            batch.add(each)
        while len(stopped_by_reader.generated) < 4:
            batch.step()
        stopped_by_reader.stop.set()  # Stop pressed, or the client went away
        run(batch, {})
    assert stopped_by_reader.done.result() == expected[0][:4]
    assert stopped_by_callback.done.result() == expected[1][:3]
    assert going_on.done.result() == expected[2]


@pytest.mark.parametrize("overlap", [False, True])
def test_each_token_reaches_its_reader_before_or_while_the_next_pass_runs(
    decoder: Decoder, monkeypatch: pytest.MonkeyPatch, overlap: bool
) -> None:
    # On a GPU (overlap) a token goes to its reader once the next pass is under way, so that readers
    # work while the GPU does; on a CPU before it. Either way every reader gets every token, in order,
    # the last one before its reply ends, and a stop still ends a reply where it was asked.
    texts = prompts(decoder.vocabulary)
    expected = [alone(decoder, prompt, sampling) for prompt, sampling in zip(texts, SAMPLINGS, strict=True)]
    readers: list[list[int]] = [[], [], []]
    ended_with: list[int] = []

    def reading(index: int, stop_after: int | None) -> Request:
        chooser = TokenChooser(SAMPLINGS[index], decoder.vocabulary, "cpu", seen=texts[index])

        def on_token(token: int) -> bool:
            readers[index].append(token)
            return stop_after is not None and len(readers[index]) >= stop_after

        made = Request(texts[index], NEW_TOKENS, chooser, frozenset(), on_token)
        made.done.add_done_callback(lambda _done: ended_with.append(len(readers[index])))
        return made

    requests = [reading(0, None), reading(1, 5), reading(2, None)]
    behind: list[int] = []  # at each pass: tokens chosen and not yet read, over the decoding replies
    decoder_run = decoder.run

    def run_pass(segments: list[Segment]) -> torch.Tensor:
        behind.append(sum(len(r.generated) - len(seen) for r, seen in zip(requests, readers, strict=True)))
        return decoder_run(segments)

    monkeypatch.setattr(decoder, "run", run_pass)
    run(Batch(decoder, overlap=overlap), {0: requests[:2], 3: requests[2:]})
    results = [r.done.result() for r in requests]
    assert results == [expected[0], expected[1][:5], expected[2]]
    assert readers == results  # every token read, in order, none after the end
    assert sorted(ended_with) == sorted(len(r) for r in results)  # each reader had all before the end
    assert max(behind) == (2 if overlap else 0)  # two replies decoding: their last tokens are in flight


def test_a_failed_pass_fails_the_replies_in_it_and_the_batch_goes_on(
    decoder: Decoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Simulates a failure inside the forward pass (out of memory, say), which a test cannot produce.
    texts = prompts(decoder.vocabulary)
    batch = Batch(decoder)
    first = request(decoder, texts[0], SAMPLINGS[0])
    batch.add(first)

    def failing(*_args: object) -> None:
        raise RuntimeError("out of memory")

    with monkeypatch.context() as patched:
        patched.setattr(decoder, "run", failing)
        batch.step()
    with pytest.raises(RuntimeError, match="out of memory"):
        first.done.result()
    later = request(decoder, texts[1], SAMPLINGS[1])
    run(batch, {0: [later]})
    assert later.done.result() == alone(decoder, texts[1], SAMPLINGS[1])


def test_replies_that_fit_count_a_cache_each_within_the_free_memory() -> None:
    gib = 1024**3
    estimate = MemoryEstimate(
        weights_bytes=gib, kv_cache_bytes=gib // 4, runtime_bytes=0, read_per_token_bytes=0
    )
    assert replies_that_fit(estimate, available_bytes=10 * gib, limit=64) == 28  # (8 - 1) GiB / 0.25 GiB
    assert replies_that_fit(estimate, available_bytes=10 * gib, limit=4) == 4  # the setting
    assert replies_that_fit(estimate, available_bytes=gib, limit=4) == 1  # one reply is checked on its own


@pytest.fixture(scope="module")
def endless_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(
        tmp_path_factory.mktemp("batched") / "m", "llama", hidden_size=64, context=4096, endless=True
    )


def test_the_engine_runs_concurrent_replies_together_up_to_its_setting(
    tmp_path: Path, endless_model: Path
) -> None:
    install_ready(tmp_path / "models", "tiny", endless_model)
    engine = LocalEngine(tmp_path / "models", idle_unload_s=0, parallel=2)
    engine.load("tiny")
    messages = [{"role": "user", "content": "Hello"}]
    lengths = (3000, 300, 300)  # the first runs longest: the second joins it, the third waits
    events: dict[int, list[tuple[float, object]]] = {0: [], 1: [], 2: []}
    started = [threading.Event() for _ in events]

    def consume(index: int) -> None:
        params = GenerationParams(temperature=0, max_new_tokens=lengths[index])
        for event in engine.stream("tiny", messages, params, ignore_eos=True):
            events[index].append((time.monotonic(), event))
            started[index].set()

    threads = [threading.Thread(target=consume, args=(index,)) for index in events]
    for thread, previous in zip(threads, [None, *started[:-1]], strict=True):
        if previous is not None:
            assert previous.wait(30)  # in order: the third asks while the first two run
        thread.start()
    for thread in threads:
        thread.join(60)
    assert all(isinstance(received[-1][1], Finished) for received in events.values())
    first_text = {
        i: next(t for t, e in received if isinstance(e, TextDelta)) for i, received in events.items()
    }
    finished = {i: received[-1][0] for i, received in events.items()}
    assert first_text[1] < finished[0]  # the second ran beside the first
    assert first_text[2] >= min(finished[0], finished[1])  # the third waited for a place
    texts = ["".join(e.text for _, e in received if isinstance(e, TextDelta)) for received in events.values()]
    assert texts[1] == texts[2]  # the same greedy request, the same reply, batched or not
    assert texts[0].startswith(texts[1][: len(texts[1]) // 2])
    assert engine.running == 0
    engine.unload()


def test_a_long_prompt_says_how_far_it_was_read_before_its_first_token(
    tmp_path: Path, endless_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the Chat page's progress bar shows while a long prompt (an attached file) is read."""
    from core.inference import batching

    monkeypatch.setattr(batching, "PREFILL_ALONE", 16)  # a part of 16 tokens a pass: this prompt is long
    install_ready(tmp_path / "models", "tiny", endless_model)
    engine = LocalEngine(tmp_path / "models", idle_unload_s=0)
    messages = [{"role": "user", "content": "hello world " * 30}]
    params = GenerationParams(temperature=0, max_new_tokens=4)
    events = list(engine.stream("tiny", messages, params, ignore_eos=True))
    prompt_tokens = events[-1].stats.prompt_tokens
    first_text = next(i for i, event in enumerate(events) if isinstance(event, TextDelta))
    reads = [event for event in events if isinstance(event, Reading)]
    assert reads
    assert all(events.index(event) < first_text for event in reads)  # before the reply's text
    assert [event.done for event in reads] == list(range(16, prompt_tokens, 16))  # after each part
    assert {event.total for event in reads} == {prompt_tokens}

    short = list(engine.stream("tiny", [{"role": "user", "content": "Hi"}], params, ignore_eos=True))
    assert not any(isinstance(event, Reading) for event in short)  # read in one pass: nothing to say
    engine.unload()
