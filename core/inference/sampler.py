"""Choosing the next token: penalties on the tokens seen, then temperature, top-k, top-p and min-p on
the best candidates only, and a seeded draw.

transformers' logits processors sort the whole vocabulary for top-p at every step: 8–12 ms of a 25 ms
step for Qwen's 151,936 words on 2 cores. llama.cpp's sampler chain cuts to the top k first; so does
this one: with a top-k (the default: the model's, else 40) the best scores are read once and the rest of
the choice is made on those few numbers (~0.5 ms a token right after a pass, against ~0.8 on tensors).
The replies of a batch read theirs in one top-k over their rows (three replies of Qwen: 0.49 against
0.79 ms right after a pass). The distribution is exactly transformers' (RepetitionPenalty →
Temperature → TopK → TopP → MinP, tested against them): the cut is exact for top-k; with no top-k (0),
the best 256 are taken and their probabilities computed against the whole vocabulary's normaliser;
only when top-p or min-p would keep a token beyond them are more looked at (4096, then the whole
vocabulary: a flat distribution).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from core.inference import native

if TYPE_CHECKING:
    from core.inference.formats import FormatGuide
    from core.inference.params import LogitBias

CANDIDATES = (256, 4096)  # with no top-k: the best tokens looked at, then more, before the whole vocabulary
# With a top-k (or greedy: 1), the best 2k + SHORTLIST_EXTRA scores are read as Python numbers and the
# choice is made on them: right after a decoding pass (cold caches) each tensor operation costs tens of
# µs here, and the dozen that penalties, top-p and the draw took on tensors cost 0.2-0.3 ms a token.
SHORTLIST_EXTRA = 8
# Beyond this top-k the Python work outgrows the tensor operations it saves (top-k 256: 0.39 against 0.29
# ms; 1000, the most a request may ask: 2.4 against 0.6 ms), so a larger top-k keeps the tensor path.
SHORTLIST_MAX_K = 128


@dataclass(frozen=True)
class Sampling:
    """How the next token is chosen: greedy when temperature is 0."""

    temperature: float = 0.0
    top_k: int = 0  # 0: no limit
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0  # transformers' (CTRL's): divides a seen token's positive logit
    presence_penalty: float = 0.0  # OpenAI's: subtracted once from a seen token's logit
    frequency_penalty: float = 0.0  # OpenAI's: subtracted once for each time the reply chose the token
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def lifts(self) -> bool:
        """Whether a penalty raises seen tokens' scores (below 1, negative): one from far down may rise."""
        return self.repetition_penalty < 1.0 or self.presence_penalty < 0.0 or self.frequency_penalty < 0.0

    @property
    def penalises_seen(self) -> bool:
        """Whether the repetition or presence penalty changes the scores of the tokens seen."""
        return self.repetition_penalty != 1.0 or self.presence_penalty != 0.0


Best = tuple[list[float], list[int]]  # the best scores of a row of logits and their ids, best first
# A token, its log-probability, and the likeliest tokens with theirs (OpenAI's top_logprobs)
LogprobEntry = tuple[int, float, tuple[tuple[int, float], ...]]


def best_scores(logits: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`torch.topk(logits, count)` along the last dimension, equal scores by id. On a CPU through the
    engine's own kernel where it runs (core.inference.native): one read of each row against the worst
    of the best so far, 16 scores an instruction, where torch's copies and partly sorts the whole row
    (Qwen's 151,936 logits: 20-37 µs against 250-270 µs a row here)."""
    if logits.device.type == "cpu" and logits.dtype == torch.float32 and native.ready():
        rows = logits.reshape(-1, logits.shape[-1]).contiguous()
        values, ids = native.best_scores(rows, count)
        return values.view(*logits.shape[:-1], count), ids.view(*logits.shape[:-1], count)
    return torch.topk(logits, count)


def best_of_each(choosers: list[TokenChooser], logits: torch.Tensor) -> list[Best | None]:
    """Each row's best scores as its chooser reads them first (`shortlist`), all rows in one top-k (one
    call for a batch's replies instead of one each); None for a chooser that reads none."""
    count = max((chooser.shortlist for chooser in choosers), default=0)
    if len(choosers) < 2 or not count:
        return [None] * len(choosers)
    values, ids = best_scores(logits, count)
    return [
        (row_values, row_ids) if chooser.shortlist else None
        for chooser, row_values, row_ids in zip(choosers, values.tolist(), ids.tolist(), strict=True)
    ]


def logprob_entry(logits: torch.Tensor, token: int, alternatives: int) -> LogprobEntry:
    """The token's log-probability under the model (its raw logits, before temperature and penalties,
    as vLLM gives them) and the likeliest `alternatives` tokens' with theirs."""
    return logprob_entries(logits.unsqueeze(0), [token], alternatives)[0]


def logprob_entries(logits: torch.Tensor, tokens: Sequence[int], alternatives: int) -> list[LogprobEntry]:
    """`logprob_entry` of each row of `logits` (tokens × vocabulary) and its token."""
    logs = torch.log_softmax(logits.float(), -1)
    chosen = logs.gather(-1, torch.tensor(tokens, device=logs.device).unsqueeze(-1))[:, 0].tolist()
    top = torch.topk(logs, min(alternatives, logs.shape[-1]))
    return [
        (token, logprob, tuple(zip(ids, values, strict=True)))
        for token, logprob, ids, values in zip(tokens, chosen, top.indices.tolist(), top.values.tolist(),
                                               strict=True)
    ]  # fmt: skip


class TokenChooser:
    """Chooses tokens for one reply; remembers what it has seen (the prompt, then each token chosen) and
    how often it chose each (the frequency penalty counts the reply's own tokens, as OpenAI and vLLM do:
    a prompt's common words would weigh on every reply)."""

    def __init__(
        self, sampling: Sampling, vocabulary: int, device: torch.device | str, seen: Iterable[int] = (),
        never: Iterable[int] = (), guide: FormatGuide | None = None, logprobs: int | None = None,
        bias: LogitBias = (),
    ) -> None:  # fmt: skip
        """`never` are tokens that may not be chosen (the end tokens while a fixed length is asked for);
        `guide`: the format the reply is held to (only the tokens it allows are chosen); `logprobs`: each
        chosen token's log-probability is kept in `logged`, with this many likeliest alternatives (the
        model's, before `bias`); `bias`: added to those tokens' logits before anything else (OpenAI's
        logit_bias)."""
        self.sampling = sampling
        self.guide = guide
        self.logprobs = logprobs
        # (token, its log-probability, the likeliest (token, log-probability) pairs) of each choice
        self.logged: list[LogprobEntry] = []
        self.vocabulary = vocabulary
        self.device = torch.device(device)
        self._seen_set = set(seen)
        self._seen = torch.tensor(sorted(self._seen_set), dtype=torch.long, device=self.device)
        self._seen_pending: list[int] = []  # seen, not yet in `_seen` (extended when `_penalised` needs it)
        self._chosen: dict[int, int] = {}  # how often the reply chose each token (with a frequency penalty)
        self._never_set = set(never)
        self._never = torch.tensor(sorted(self._never_set), dtype=torch.long, device=self.device)
        self._bias_ids = torch.tensor([token for token, _ in bias], dtype=torch.long, device=self.device)
        self._bias = torch.tensor([added for _, added in bias], dtype=torch.float32, device=self.device)
        self._generator = torch.Generator(device=self.device)
        if sampling.seed is None:
            self._generator.seed()
        else:
            self._generator.manual_seed(sampling.seed)
        self._random = random.Random(sampling.seed)  # draws from a shortlist (None: from the system)

    def observe(self, token: int) -> None:
        if self.guide is not None:
            self.guide.advance(token)
        if self.sampling.frequency_penalty:
            self._chosen[token] = self._chosen.get(token, 0) + 1
        if token not in self._seen_set:
            self._seen_set.add(token)
            self._seen_pending.append(token)

    @property
    def shortlist(self) -> int:
        """How many of the best scores `choose` reads first (0: none, it works on tensors). None where a
        penalty raises a seen token's score (`Sampling.lifts`): a token from beyond the best read could
        then rise among them."""
        sampling = self.sampling
        held = self.guide is not None and self.guide.holding  # the format's mask may leave out the best
        if sampling.lifts or held or self._bias.numel():  # a bias may lift a token from beyond the best
            return 0
        k = 1 if sampling.greedy else sampling.top_k
        return min(self.vocabulary, 2 * k + SHORTLIST_EXTRA) if 0 < k <= SHORTLIST_MAX_K else 0

    def choose(self, logits: torch.Tensor, best: Best | None = None) -> int:
        """The next token for these logits (1-D, the whole vocabulary); it is observed. `best`: the best
        scores of these logits and their ids, best first, at least `shortlist` of them, if read already."""
        listed = self._shortlisted(logits, best)
        if listed is not None:
            ids, probs = listed
            token = ids[0] if len(ids) == 1 else self._random.choices(ids, probs)[0]
        else:
            scores = self._penalised(logits)
            if self.sampling.greedy:
                token = int(scores.argmax())
            else:
                ids, probs = self._candidates(scores)
                token = int(ids[torch.multinomial(probs, 1, generator=self._generator)])
        if self.logprobs is not None:
            self.logged.append(logprob_entry(logits, token, self.logprobs))
        self.observe(token)
        return token

    def distribution(self, logits: torch.Tensor) -> torch.Tensor:
        """The probability of every token (what `choose` draws from), for tests and scoring."""
        full = torch.zeros(logits.shape[-1], dtype=torch.float32, device=logits.device)
        listed = self._shortlisted(logits)
        if listed is not None:
            ids, probs = listed
            return full.index_put_((torch.tensor(ids, device=full.device),), torch.tensor(probs))
        scores = self._penalised(logits)
        if self.sampling.greedy:
            full[scores.argmax()] = 1.0
            return full
        ids, probs = self._candidates(scores)
        return full.index_put_((ids,), probs)

    def _shortlisted(
        self, logits: torch.Tensor, best: Best | None = None
    ) -> tuple[list[int], list[float]] | None:
        """With a top-k of at most SHORTLIST_MAX_K or greedy: the tokens that may be drawn and their
        probabilities, best first, from the best 2k + SHORTLIST_EXTRA scores; None when a token beyond
        them might be among the k best (penalties and forbidden tokens pushed too many of them down)."""
        sampling, vocabulary, count = self.sampling, logits.shape[-1], self.shortlist
        if not count:
            return None
        k = 1 if sampling.greedy else min(sampling.top_k, vocabulary)
        if best is None:
            values, ids = best_scores(logits, count)
            best = values.tolist(), ids.tolist()
        raw, scored = best[0][:count], []
        for value, token in zip(raw, best[1][:count], strict=True):
            if token in self._never_set:
                continue
            if token in self._seen_set:  # penalties only ever lower a score
                value = (
                    value / sampling.repetition_penalty if value > 0 else value * sampling.repetition_penalty
                )
                value -= sampling.presence_penalty + sampling.frequency_penalty * self._chosen.get(token, 0)
            scored.append((value, token))
        scored.sort(key=lambda pair: (-pair[0], pair[1]))  # best first; equal ones by id, as argmax
        if len(scored) < k or (len(raw) < vocabulary and not scored[k - 1][0] > raw[-1]):
            return None  # a score not looked at may tie or beat the k-th
        if sampling.greedy:
            return [scored[0][1]], [1.0]
        return self._kept_of(scored[:k])

    def _kept_of(self, best: list[tuple[float, int]]) -> tuple[list[int], list[float]]:
        """The top-k's (score, token) pairs, best first, after temperature, transformers' TopP and then
        MinP on what is left (as `_kept`): the tokens kept and their probabilities."""
        sampling = self.sampling
        weights = [math.exp((value - best[0][0]) / sampling.temperature) for value, _ in best]
        total = sum(weights)
        probs = [weight / total for weight in weights]
        kept, before = 0, 0.0
        for prob in probs:
            if kept and (before >= sampling.top_p or prob < sampling.min_p * probs[0]):
                break
            kept, before = kept + 1, before + prob
        return [token for _, token in best[:kept]], [prob / before for prob in probs[:kept]]

    def _penalised(self, logits: torch.Tensor) -> torch.Tensor:
        """The logits biased, then with the seen tokens penalised: only those are touched, not the
        vocabulary."""
        scores = logits.float()
        if self._bias.numel():
            scores = scores.index_put((self._bias_ids,), self._bias, accumulate=True)
        sampling = self.sampling
        if self._seen_pending:
            self._seen = torch.cat((self._seen, self._seen.new_tensor(self._seen_pending)))
            self._seen_pending.clear()
        if sampling.penalises_seen and self._seen.numel():
            seen = scores[self._seen]
            penalty = sampling.repetition_penalty
            penalised = torch.where(seen > 0, seen / penalty, seen * penalty) - sampling.presence_penalty
            scores = scores.index_put((self._seen,), penalised)
        if sampling.frequency_penalty and self._chosen:
            chosen = torch.tensor(list(self._chosen), dtype=torch.long, device=scores.device)
            counts = torch.tensor(list(self._chosen.values()), dtype=scores.dtype, device=scores.device)
            scores = scores.index_put((chosen,), -sampling.frequency_penalty * counts, accumulate=True)
        if self._never.numel():
            scores = scores.index_fill(0, self._never, float("-inf"))
        if self.guide is not None and (allowed := self.guide.allowed(scores.device)) is not None:
            scores = scores.masked_fill(~allowed, float("-inf"))
        return scores

    def _candidates(self, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The tokens that may be drawn and their probabilities (summing to 1), best first."""
        sampling = self.sampling
        vocabulary = scores.shape[-1]
        if sampling.top_k:  # transformers' TopK: the rest are gone, the k renormalised among themselves
            values, ids = torch.topk(scores, min(sampling.top_k, vocabulary))  # sorted, best first
            return self._cut(ids, (values / sampling.temperature).softmax(-1))
        normaliser = torch.logsumexp(scores / sampling.temperature, -1)
        for limit in (*CANDIDATES, vocabulary):
            values, ids = torch.topk(scores, min(limit, vocabulary))
            probs = (values / sampling.temperature - normaliser).exp()  # true probabilities, of the whole
            keep = self._kept(probs)
            if limit >= vocabulary or not bool(keep[-1]):  # nothing beyond the candidates is kept
                return self._cut(ids, probs, keep)
        raise AssertionError("unreachable: the last round looks at the whole vocabulary")

    def _cut(
        self, ids: torch.Tensor, probs: torch.Tensor, keep: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        keep = self._kept(probs) if keep is None else keep
        ids, probs = ids[keep], probs[keep]
        return ids, probs / probs.sum()

    def _kept(self, probs: torch.Tensor) -> torch.Tensor:
        """transformers' TopP (a token stays while the mass before it is below top_p; the best always
        stays), then MinP on what is left (probability at least min_p × the best's)."""
        before = probs.cumsum(-1) - probs  # the mass of the better tokens (probs are of the whole)
        keep = before < self.sampling.top_p
        keep[0] = True
        if self.sampling.min_p > 0:  # renormalising the kept ones would divide both sides alike
            keep &= probs >= self.sampling.min_p * probs[0]
        return keep
