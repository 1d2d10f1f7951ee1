"""The reply's text streams as it is decoded, also where transformers' streamer would wait to the end."""

from __future__ import annotations

import queue
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, TextIteratorStreamer

from core.inference.chat_tokenizer import ChatTokenizer
from core.inference.events import Reading
from core.inference.streaming import ReplyStreamer

SYMBOLS = "!?" * 40  # punctuation without a space: transformers' streamer holds it for the next space


def sent_before_the_end(streamer: TextIteratorStreamer | ReplyStreamer, ids: list[int]) -> str:
    for token in ids:
        streamer.put(torch.tensor([token]))
    if isinstance(streamer, ReplyStreamer):
        return "".join(streamer.take(timeout=0))
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
    rest = "".join(streamer.take(timeout=0))
    assert early + rest == tokenizer.decode(ids)  # nothing lost, nothing twice
    assert streamer.take(timeout=0) is None  # the end was taken


def test_each_tokens_text_goes_out_with_the_token(tiny_models: dict[str, Path]) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_models["llama"])
    ids = tokenizer.encode("hello world, the sea is calm today.\nA second line", add_special_tokens=False)
    streamer = ReplyStreamer(ChatTokenizer.from_transformers(tokenizer))
    sent = ""
    for count in range(1, len(ids) + 1):
        streamer.put_token(ids[count - 1])
        sent += "".join(streamer.take(timeout=0))
        # what the page has after each token: the reply so far, not the reply up to the last space
        assert sent == tokenizer.decode(ids[:count])
    comma = next(count for count in range(1, len(ids)) if tokenizer.decode(ids[:count]) == "hello world,")
    assert sent_before_the_end(TextIteratorStreamer(tokenizer), ids[:comma]) == "hello world"  # transformers'


def test_tokens_that_came_while_the_reader_was_busy_go_out_as_one_piece(tiny_models: dict[str, Path]) -> None:
    # The thread that generates only queues ids; a reader that fell behind (many users at once) decodes
    # what came since its last look once and sends it as one piece, in order with the prompt's progress.
    tokenizer = AutoTokenizer.from_pretrained(tiny_models["llama"])
    ids = tokenizer.encode("hello world, the sea is calm today.\nA second line", add_special_tokens=False)
    streamer = ReplyStreamer(ChatTokenizer.from_transformers(tokenizer), skip_prompt=True)
    streamer.put(torch.tensor([[5, 6, 7]]))  # the prompt, skipped
    streamer.reading(512, 1024)
    for token in ids:
        streamer.put_token(token)
    assert streamer.take(timeout=0) == [Reading(512, 1024), tokenizer.decode(ids)]
    assert streamer.take(timeout=0) == []  # nothing new: the reader is told so at once
    streamer.end()
    assert streamer.take(timeout=0) == []  # the end, with no text left
    assert streamer.take(timeout=0) is None
