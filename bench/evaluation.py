"""lm-evaluation-harness's requests against `localllm serve`, as its `local-completions` model sends them.

A multiple-choice task (loglikelihood) sends each choice as token ids with `echo`, `logprobs: 1` and
`max_tokens: 1`, and reads the prompt's tokens' log-probabilities: the server then reads the prompt in
passes of its own, every token's logits kept (a 151,936-word row each for Qwen). For each catalog model
(exact config numbers, random weights, a small tokenizer: nothing is downloaded) it starts
`python -m core serve --model KEY` with the saved settings' defaults (int4 on the CPU), then times, for
prompts of --prompt-tokens random ids (each its own, so none starts from a kept cache):

- plain: the same prompt with `max_tokens: 1` and no echo (what the prompt costs in the shared pass);
- loglikelihood: lm-eval's request, one at a time (lm-eval's default, num_concurrent=1);
- loglikelihood with --concurrent requests at once (lm-eval's num_concurrent), which the engine's batch
  runs together;
- loglikelihood with --concurrent prompts in each request (lm-eval's batch_size), one request at a time:
  the server runs a request's prompts together in the same batch;

and prints the seconds a request, loglikelihood's ratio to plain, and prompts/s at once and in one
request against one at a time. A warm-up request comes first (not counted).

Usage: .venv/bin/python -m bench.evaluation [--requests 12] [--prompt-tokens 120] [--concurrent 4]
       [--models qwen2.5-0.5b tinyllama-1.1b]
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx2 as httpx

from bench.many_users import serve, settle
from bench.readiness import CATALOG_MODELS, CONFIGS, build
from tests.fixtures.serving import free_port
from tests.fixtures.tiny_models import install_ready

VOCABULARY = 400  # the built models' tokenizer's words (their logits are the catalog's full width)


def timed(url: str, bodies: list[dict], at_once: int) -> float:
    """Seconds from the first request to the last answer, `at_once` requests in flight."""

    def send(body: dict) -> None:
        answer = httpx.post(f"{url}/completions", json=body, timeout=600)
        answer.raise_for_status()

    started = time.perf_counter()
    with ThreadPoolExecutor(at_once) as pool:
        list(pool.map(send, bodies))
    return time.perf_counter() - started


def in_batches(bodies: list[dict], size: int) -> list[dict]:
    """The bodies' prompts `size` to a request, as lm-eval's batch_size sends them."""
    return [
        bodies[start] | {"prompt": [body["prompt"][0] for body in bodies[start : start + size]]}
        for start in range(0, len(bodies), size)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=12, help="requests of each kind")
    parser.add_argument("--prompt-tokens", type=int, default=120)
    parser.add_argument("--concurrent", type=int, default=4, help="lm-eval's num_concurrent")
    parser.add_argument("--models", nargs="+", default=CATALOG_MODELS, choices=list(CONFIGS))
    args = parser.parse_args()
    draw = random.Random(0)

    def bodies(key: str, **asked: object) -> list[dict]:
        prompts = [
            [draw.randrange(3, VOCABULARY) for _ in range(args.prompt_tokens)] for _ in range(args.requests)
        ]
        return [
            {"model": key, "prompt": [ids], "max_tokens": 1, "temperature": 0, **asked} for ids in prompts
        ]

    print(f"{args.requests} requests of {args.prompt_tokens} prompt tokens each; int4 on the CPU\n")
    n = args.concurrent
    print(f"  {'model':<15} {'plain s':>8} {'loglik s':>9} {'ratio':>6} {'req/s 1':>8} "
          f"{f'req/s {n}':>8} {'ratio':>6} {f'batch {n}':>8} {'ratio':>6}")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="localllm-eval-") as tmp:
        work = Path(tmp)
        for key in args.models:
            install_ready(work / "models", key, build(key, work / f"src-{key}", speaking=True))
            port = free_port()
            server = serve(work / "models", work / f"data-{key}", key, port, None)
            url = f"http://127.0.0.1:{port}/v1"
            try:
                settle(server)
                lm_eval = {"echo": True, "logprobs": 1, "seed": 1234}
                timed(url, bodies(key, **lm_eval)[:1], 1)  # warm-up
                plain = timed(url, bodies(key), 1) / args.requests
                one = timed(url, bodies(key, **lm_eval), 1) / args.requests
                together = timed(url, bodies(key, **lm_eval), args.concurrent) / args.requests
                batched = timed(url, in_batches(bodies(key, **lm_eval), args.concurrent), 1) / args.requests
                print(f"  {key:<15} {plain:8.3f} {one:9.3f} {one / plain:6.2f} {1 / one:8.2f} "
                      f"{1 / together:8.2f} {one / together:6.2f} "
                      f"{1 / batched:8.2f} {one / batched:6.2f}")  # fmt: skip
            finally:
                server.terminate()
                server.wait(30)


if __name__ == "__main__":
    main()
