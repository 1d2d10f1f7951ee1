"""The token chooser draws from exactly the distribution transformers' processors give (repetition
penalty, temperature, top-k, top-p, min-p), cuts to the candidates first, and repeats with a seed."""

from __future__ import annotations

import itertools

import pytest
import torch
from transformers import (
    GenerationConfig,
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from core.inference.generation import _Biased, _OpenAIPenalties, sampling_for
from core.inference.params import DEFAULT_TOP_K, GenerationParams
from core.inference.sampler import CANDIDATES, Sampling, TokenChooser, best_of_each


def reference(logits: torch.Tensor, seen: list[int], sampling: Sampling) -> torch.Tensor:
    """transformers' processors, in generate's order, then softmax."""
    ids = torch.tensor([seen or [0]])
    scores = logits.clone().unsqueeze(0)
    if sampling.repetition_penalty != 1.0:
        scores = RepetitionPenaltyLogitsProcessor(sampling.repetition_penalty)(ids, scores)
    scores = TemperatureLogitsWarper(sampling.temperature)(ids, scores)
    if sampling.top_k:
        scores = TopKLogitsWarper(sampling.top_k)(ids, scores)
    if sampling.top_p < 1.0:
        scores = TopPLogitsWarper(sampling.top_p)(ids, scores)
    if sampling.min_p:
        scores = MinPLogitsWarper(sampling.min_p)(ids, scores)
    return scores.softmax(-1)[0]


SETTINGS = [
    Sampling(temperature=t, top_k=k, top_p=p, min_p=m, repetition_penalty=r)
    for t, k, p, m, r in itertools.product((0.7, 1.3), (0, 5, 40), (1.0, 0.8), (0.0, 0.1), (1.0, 1.3))
]


def settings_id(s: Sampling) -> str:
    return f"t{s.temperature}-k{s.top_k}-p{s.top_p}-m{s.min_p}-r{s.repetition_penalty}"


CASES = [(s, 64) for s in SETTINGS] + [  # larger vocabularies: the candidates' rounds (no top-k) matter
    (s, vocabulary) for s in SETTINGS if not s.top_k for vocabulary in (3 * CANDIDATES[0], 2 * CANDIDATES[1])
]


def case_id(value: object) -> str:
    return settings_id(value) if isinstance(value, Sampling) else f"v{value}"


@pytest.mark.parametrize(("sampling", "vocabulary"), CASES, ids=case_id)
def test_the_distribution_is_transformers_on_a_small_vocabulary(sampling: Sampling, vocabulary: int) -> None:
    generator = torch.Generator().manual_seed(vocabulary)
    seen = [3, 7, 11, 20, 21]
    for spread in (0.5, 4.0):  # flat logits (top-p reaches past the candidates) and peaked ones
        logits = torch.randn(vocabulary, generator=generator) * spread
        ours = TokenChooser(sampling, vocabulary, "cpu", seen=seen).distribution(logits)
        torch.testing.assert_close(ours, reference(logits, seen, sampling), atol=2e-6, rtol=1e-4)


def test_the_presence_penalty_is_subtracted_once_from_each_seen_token() -> None:
    logits = torch.randn(50, generator=torch.Generator().manual_seed(2))
    sampling = Sampling(temperature=0.8, presence_penalty=1.5)
    expected = logits.clone()
    expected[[1, 2, 3]] -= 1.5
    ours = TokenChooser(sampling, 50, "cpu", seen=[1, 2, 3, 3]).distribution(logits)
    torch.testing.assert_close(ours, (expected / 0.8).softmax(-1))


@pytest.mark.parametrize(
    "sampling",
    [Sampling(temperature=0.8, top_k=10, top_p=0.9, frequency_penalty=0.7),
     Sampling(temperature=0.8, top_p=0.9, frequency_penalty=0.7),
     Sampling(temperature=0.8, top_k=10, frequency_penalty=-0.7, presence_penalty=0.5),
     Sampling(frequency_penalty=0.7)],
    ids=["top-k", "no top-k", "negative, with presence", "greedy"],
)  # fmt: skip
def test_the_frequency_penalty_counts_each_time_the_reply_chose_a_token(sampling: Sampling) -> None:
    """OpenAI's and vLLM's: subtracted once for each time the reply chose the token; the prompt's tokens
    (seen) are not counted, however often they occur there."""
    logits = torch.randn(50, generator=torch.Generator().manual_seed(3))
    logits[4], logits[5], logits[1] = logits.max() + 1.0, logits.max() + 0.5, logits.max() + 0.2
    chooser = TokenChooser(sampling, 50, "cpu", seen=[1, 1, 1, 2])
    for token in (4, 4, 4, 5):
        chooser.observe(token)
    expected = logits.clone()
    expected[[1, 2, 4, 5]] -= sampling.presence_penalty
    expected[4] -= 3 * sampling.frequency_penalty
    expected[5] -= sampling.frequency_penalty
    if sampling.greedy:
        assert chooser.choose(logits) == int(expected.argmax())
        return
    without = Sampling(temperature=sampling.temperature, top_k=sampling.top_k, top_p=sampling.top_p)
    torch.testing.assert_close(
        chooser.distribution(logits), reference(expected, [], without), atol=2e-6, rtol=1e-4
    )


def test_the_generate_fallback_applies_the_penalties_as_the_sampler_does() -> None:
    """Architectures the engine's decoder does not run reply through transformers' generate, with the
    presence and frequency penalties as a logits processor: the same scores as the sampler's."""
    logits = torch.randn(50, generator=torch.Generator().manual_seed(4))
    chooser = TokenChooser(Sampling(temperature=1.0, presence_penalty=0.5, frequency_penalty=0.7), 50, "cpu",
                           seen=[1, 1, 2])  # fmt: skip
    for token in (4, 4, 4, 5):
        chooser.observe(token)
    processor = _OpenAIPenalties(0.5, 0.7, prompt_tokens=3)
    processed = processor(torch.tensor([[1, 1, 2, 4, 4, 4, 5]]), logits.clone().unsqueeze(0))[0]
    torch.testing.assert_close(chooser.distribution(logits), processed.softmax(-1))


@pytest.mark.parametrize(
    "sampling",
    [Sampling(temperature=0.8, top_k=10, top_p=0.9), Sampling(temperature=1.2, repetition_penalty=1.3),
     Sampling()],
    ids=["top-k", "penalty, no top-k", "greedy"],
)  # fmt: skip
def test_a_logit_bias_is_added_to_the_logits_before_anything_else(sampling: Sampling) -> None:
    """OpenAI's logit_bias: +100 lifts a token from the bottom into the top-k (the shortlist of the best
    scores is not read then), -100 all but bans the best; in the generate fallback, the same scores."""
    logits = torch.randn(50, generator=torch.Generator().manual_seed(5))
    bottom, best = int(logits.argmin()), int(logits.argmax())
    bias = ((bottom, 100.0), (best, -100.0), (7, 0.5))
    chooser = TokenChooser(sampling, 50, "cpu", seen=[1, 7], bias=bias)
    expected = logits.clone()
    for token, added in bias:
        expected[token] += added
    if sampling.greedy:
        assert chooser.choose(logits) == bottom
        return
    torch.testing.assert_close(
        chooser.distribution(logits), reference(expected, [1, 7], sampling), atol=2e-6, rtol=1e-4
    )
    processed = _Biased(bias)(torch.tensor([[1, 7]]), logits.clone().unsqueeze(0))[0]
    torch.testing.assert_close(processed, expected)


def test_draws_follow_the_distribution() -> None:
    logits = torch.randn(30, generator=torch.Generator().manual_seed(5)) * 2
    sampling = Sampling(temperature=0.9, top_k=12, top_p=0.9, seed=7)
    chooser = TokenChooser(sampling, 30, "cpu")
    expected = chooser.distribution(logits)
    draws = 8_000
    counts = torch.bincount(torch.tensor([chooser.choose(logits) for _ in range(draws)]), minlength=30)
    observed = counts / draws
    sigma = (expected * (1 - expected) / draws).sqrt()
    assert bool(((observed - expected).abs() <= 4.5 * sigma + 1e-9).all()), (observed, expected)
    assert counts[expected == 0].sum() == 0  # nothing outside top-k / top-p is ever drawn


def test_a_seed_repeats_the_reply_and_another_seed_does_not() -> None:
    logits = [torch.randn(200, generator=torch.Generator().manual_seed(i)) for i in range(40)]

    def reply(seed: int) -> list[int]:
        chooser = TokenChooser(
            Sampling(temperature=1.0, top_p=0.95, repetition_penalty=1.1, seed=seed), 200, "cpu"
        )
        return [chooser.choose(step) for step in logits]

    assert reply(1) == reply(1)
    assert reply(1) != reply(2)


def test_replies_choosing_together_choose_what_they_choose_alone() -> None:
    # One top-k over the batch's rows (best_of_each) stands in for each reply's own: same tokens, same draws.
    samplings = (
        Sampling(repetition_penalty=50.0),  # greedy; its seen best tokens fall beyond the shortlist
        Sampling(temperature=0.9, top_k=5, top_p=0.9, seed=3),
        Sampling(temperature=1.0, top_k=0, min_p=0.05, seed=4),  # no top-k: reads no shortlist
        Sampling(temperature=0.7, top_k=40, presence_penalty=1.5, seed=5),
    )
    steps = torch.randn(30, len(samplings), 300, generator=torch.Generator().manual_seed(6))
    seen = torch.topk(steps[0, 0], 30).indices.tolist()

    def choosers() -> list[TokenChooser]:
        return [TokenChooser(sampling, 300, "cpu", seen=seen) for sampling in samplings]

    alone, together = choosers(), choosers()
    assert [chooser.shortlist for chooser in together] == [10, 18, 0, 88]
    expected = [[chooser.choose(step[i]) for step in steps] for i, chooser in enumerate(alone)]
    got: list[list[int]] = [[] for _ in samplings]
    for step in steps:
        best = best_of_each(together, step)
        assert best[2] is None and all(len(best[i][0]) == 88 for i in (0, 1, 3))
        for i, chooser in enumerate(together):
            got[i].append(chooser.choose(step[i], best[i]))
    assert got == expected
    assert best_of_each(together[:1], steps[0, :1]) == [None]  # one reply: its own top-k, as before


def test_greedy_and_forbidden_tokens() -> None:
    logits = torch.tensor([0.0, 5.0, 1.0, 4.0])
    assert TokenChooser(Sampling(), 4, "cpu").choose(logits) == 1
    tied = torch.zeros(1000).index_fill_(0, torch.tensor([700, 30, 512]), 2.0)
    assert TokenChooser(Sampling(), 1000, "cpu").choose(tied) == 30  # the first of equal best, as argmax
    assert TokenChooser(Sampling(), 4, "cpu", never=[1]).choose(logits) == 3
    penalised = TokenChooser(Sampling(repetition_penalty=2.0), 4, "cpu", seen=[1]).choose(logits)
    assert penalised == 3  # 5 / 2 < 4
    sampled = TokenChooser(Sampling(temperature=1.0, seed=0), 4, "cpu", never=[1, 3])
    assert {sampled.choose(logits) for _ in range(200)} <= {0, 2}


def test_top_k_is_the_requests_else_the_models_else_llama_cpps_default() -> None:
    publisher, silent = GenerationConfig(top_k=20), GenerationConfig()
    assert sampling_for(GenerationParams(top_k=5), publisher).top_k == 5
    assert sampling_for(GenerationParams(top_k=0), publisher).top_k == 0  # no limit, when asked for
    assert sampling_for(GenerationParams(), publisher).top_k == 20
    assert sampling_for(GenerationParams(), silent).top_k == DEFAULT_TOP_K == 40  # as llama.cpp and Ollama


def test_penalties_that_push_the_best_scores_down_still_give_transformers_choice() -> None:
    # The best 30 tokens were all seen and fall far: the k best now lie beyond the shortlist read first.
    logits = torch.randn(500, generator=torch.Generator().manual_seed(3)).abs() + 1
    seen = torch.topk(logits, 30).indices.tolist()
    sampling = Sampling(temperature=0.8, top_k=3, repetition_penalty=50.0, presence_penalty=2.0)
    chooser = TokenChooser(sampling, 500, "cpu", seen=seen)
    torch.testing.assert_close(
        chooser.distribution(logits), reference(logits, seen, sampling), atol=2e-6, rtol=1e-4
    )
    assert chooser.choose(logits) not in seen
    penalised = RepetitionPenaltyLogitsProcessor(50.0)(torch.tensor([seen]), logits.clone().unsqueeze(0))
    greedy = TokenChooser(Sampling(repetition_penalty=50.0), 500, "cpu", seen=seen)
    assert greedy.choose(logits) == int(penalised.argmax())


@pytest.mark.parametrize(
    "sampling",
    [Sampling(top_k=5, temperature=1.0, repetition_penalty=0.5), Sampling(repetition_penalty=0.5),
     Sampling(top_k=5, temperature=1.0, presence_penalty=-2.0), Sampling(presence_penalty=-2.0)],
    ids=["sampled, repetition 0.5", "greedy, repetition 0.5", "sampled, presence -2", "greedy, presence -2"],
)  # fmt: skip
def test_penalties_that_raise_a_seen_token_from_far_down_still_give_transformers_choice(
    sampling: Sampling,
) -> None:
    """A repetition penalty below 1 or a negative presence penalty lift the seen token 50 above the best
    (it was missed: only the best 18 were looked at)."""
    logits = torch.linspace(10, 0, 1000)  # token 0 is the best, then 1, ...
    shifted = logits.clone()
    shifted[50] -= sampling.presence_penalty
    chooser = TokenChooser(sampling, 1000, "cpu", seen=[50])
    if sampling.greedy:
        assert chooser.choose(logits) == 50
    else:
        expected = reference(shifted, [50], sampling)
        torch.testing.assert_close(chooser.distribution(logits), expected, atol=2e-6, rtol=1e-4)
        assert expected[50] == expected.max()


def test_forbidden_tokens_beyond_the_shortlist() -> None:
    logits = torch.arange(100, dtype=torch.float32)  # 99 is the best, then 98, ...
    never = list(range(80, 100))  # the 20 best may not be chosen
    assert TokenChooser(Sampling(), 100, "cpu", never=never).choose(logits) == 79
    sampled = TokenChooser(Sampling(temperature=1.0, top_k=2, seed=0), 100, "cpu", never=never)
    assert {sampled.choose(logits) for _ in range(100)} == {78, 79}
