"""The reply's text streams as it is decoded, also where transformers' streamer would wait to the end."""

from __future__ import annotations

import queue
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, TextIteratorStreamer

from core.inference.chat_tokenizer import ChatTokenizer
from core.inference.streaming import ReplyStreamer

SYMBOLS = "!?" * 40  # punctuation without a space: transformers' streamer holds it for the next space


def sent_before_the_end(streamer: TextIteratorStreamer | ReplyStreamer, ids: list[int]) -> str:
    for token in ids:
        streamer.put(torch.tensor([token]))
    pieces = []
    while True:
        try:
            pieces.append(streamer.text_queue.get_nowait())
        except queue.Empty:
            return "".join(pieces)


@pytest.mark.parametrize("text", [SYMBOLS, "🙂🎉" * 20])  # emoji: several byte tokens a character
def test_symbols_without_spaces_stream_before_the_reply_ends(tiny_models: dict[str, Path], text: str) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_models["qwen2"])
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert len(ids) > 16
    assert sent_before_the_end(TextIteratorStreamer(tokenizer), ids) == ""  # what the page saw: nothing

    streamer = ReplyStreamer(ChatTokenizer.from_transformers(tokenizer))
    early = sent_before_the_end(streamer, ids)
    assert len(early) >= len(text) - 1  # at most the character being spelled out waits
    streamer.end()
    rest = "".join(iter(streamer.text_queue.get, streamer.stop_signal))
    assert early + rest == tokenizer.decode(ids)  # nothing lost, nothing twice


def test_each_tokens_text_goes_out_with_the_token(tiny_models: dict[str, Path]) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_models["llama"])
    ids = tokenizer.encode("hello world, the sea is calm today.\nA second line", add_special_tokens=False)
    streamer = ReplyStreamer(ChatTokenizer.from_transformers(tokenizer))
    for count in range(1, len(ids) + 1):
        streamer.put(torch.tensor([ids[count - 1]]))
        # what the page has after each token: the reply so far, not the reply up to the last space
        assert "".join(list(streamer.text_queue.queue)) == tokenizer.decode(ids[:count])
    comma = next(count for count in range(1, len(ids)) if tokenizer.decode(ids[:count]) == "hello world,")
    assert sent_before_the_end(TextIteratorStreamer(tokenizer), ids[:comma]) == "hello world"  # transformers'
