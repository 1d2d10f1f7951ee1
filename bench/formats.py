"""What holding a reply to a format costs: llguidance's view of a tokenizer, a reply's guide, and the
mask at each token (with its unpacking into the sampler's boolean mask), for a JSON schema and JSON
mode, and for a reply that may call a tool (free text until it writes `<tool_call>`, then the call held
to the tool's parameters), on a byte-level BPE of Qwen's size (151,936 logits).

No real tokenizer is downloaded: one of 151,000 tokens is trained here from the Python sources of this
environment (about 10 s), as big as Qwen2.5's, whose costs grow with the vocabulary. A decode step of
Qwen2.5-0.5B takes ~25 ms on this project's 2-core machine (docs/performance.md): the per-token figures
are to be read against that.

Usage: .venv/bin/python -m bench.formats [--sources N]
"""

from __future__ import annotations

import argparse
import glob
import json
import statistics
import sysconfig
import time

REPLY = {"name": "Ada Lovelace", "age": 36, "tags": ["math", "poetry", "engines"]}
SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["name", "age", "tags"],
}
VOCABULARY = 151_936  # Qwen2.5's logits
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
    "required": ["city", "days"]}}}]  # fmt: skip
TEXT, CALL = (
    "Let me look that up for you.\n",
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}\n</tool_call>',
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sources", type=int, default=6000, help="Python files the tokenizer is trained on")
    args = parser.parse_args()

    import torch  # imported before anything is timed: its first import is no format's cost
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from core.inference.formats import FormatGuide, checked_format
    from core.inference.tool_calls import HERMES

    torch.zeros(1)
    files = sorted(glob.glob(f"{sysconfig.get_paths()['purelib']}/**/*.py", recursive=True))[: args.sources]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=151_000, special_tokens=["<|endoftext|>", "<|im_end|>"],
                                  show_progress=False)  # fmt: skip
    tokenizer.train(files, trainer)
    ends = frozenset({tokenizer.token_to_id("<|endoftext|>"), tokenizer.token_to_id("<|im_end|>")})
    print(f"tokenizer: {tokenizer.get_vocab_size():,} tokens trained from {len(files):,} files")

    started = time.perf_counter()
    FormatGuide(checked_format(None), tokenizer, VOCABULARY, ends)  # builds llguidance's view of it
    print(f"the first such reply after a load (llguidance's view of the tokenizer): "
          f"{time.perf_counter() - started:.2f} s")  # fmt: skip
    ids = tokenizer.encode(json.dumps(REPLY, separators=(",", ":"))).ids
    for name, schema in (("JSON schema", SCHEMA), ("JSON mode", None)):
        reply_format = checked_format(schema)
        started = time.perf_counter()
        guide = FormatGuide(reply_format, tokenizer, VOCABULARY, ends)
        made_ms = (time.perf_counter() - started) * 1000
        costs = []
        for token in ids:
            started = time.perf_counter()
            allowed = guide.allowed()
            costs.append((time.perf_counter() - started) * 1000)
            assert allowed[token], f"the mask refused {tokenizer.id_to_token(token)!r} of a reply that fits"
            guide.advance(token)
        print(f"{name}: guide {made_ms:.1f} ms; mask a token: median {statistics.median(costs):.2f} ms, "
              f"most {max(costs):.2f} ms over the {len(ids)} tokens of {json.dumps(REPLY)}")  # fmt: skip

    started = time.perf_counter()
    guide = FormatGuide(HERMES.calls_format(TOOLS, forced=False, many=True), tokenizer, VOCABULARY, ends)
    made_ms = (time.perf_counter() - started) * 1000
    costs = {False: [], True: []}  # held or not when the token came
    for token in tokenizer.encode(TEXT + CALL).ids:
        started = time.perf_counter()
        holding, allowed = guide.holding, guide.allowed()
        assert allowed is None or allowed[token], (
            f"the mask refused {tokenizer.id_to_token(token)!r} of a call"
        )
        guide.advance(token)
        costs[holding].append((time.perf_counter() - started) * 1000)
    free, held = statistics.median(costs[False]), statistics.median(costs[True])
    print(f"tools: guide {made_ms:.1f} ms; a token of free text (looked at for <tool_call>): median "
          f"{free:.3f} ms; a token of the call, masked: median {held:.2f} ms "
          f"({len(costs[False])} + {len(costs[True])} tokens)")  # fmt: skip


if __name__ == "__main__":
    main()
