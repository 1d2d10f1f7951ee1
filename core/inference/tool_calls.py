"""Tools a reply may call, in the form the model was trained on: Qwen's and Hermes' `<tool_call>` blocks.

The chat template lists the tools in the prompt (its `tools` section) and shows the model how to call
one: `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`. A reply is read back into calls
here (vLLM's `hermes` parser reads the same blocks). Once the model writes `<tool_call>`, what follows
is held to the calls' grammar: the JSON of a call of one of the tools, its arguments fitting the tool's
parameters, written as the template writes calls (", " and ": " between items); before that the reply
is free text (llama.cpp's lazy grammars). A call that must be made (OpenAI's tool_choice "required",
or a named function) starts the reply with `<tool_call>` itself. Either way a call a small model makes
always parses.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from core.errors import MessageError
from core.inference.formats import ReplyFormat, checked_format, checked_grammar

CALL_MARK = "<tool_call>"  # what starts a call; a forced call's reply starts with it, after the prompt
_BLOCK = re.compile(r"<tool_call>(.*?)</tool_call>|<tool_call>(.*)\Z", re.DOTALL)  # the last may be open
_AS_TEMPLATES_WRITE = {"item_separator": ", ", "key_separator": ": ", "whitespace_flexible": False}


@dataclass(frozen=True)
class ToolCall:
    """A call the model made: a function's name and its arguments, a JSON object's text."""

    name: str
    arguments: str


def takes_tools(chat_template: str) -> bool:
    """Whether the model was trained to call tools as this module reads them: its chat template lists
    `tools` and writes a call as a `<tool_call>` block (Qwen2.5, Qwen3, Hermes, SmolLM3)."""
    return "tools" in chat_template and CALL_MARK in chat_template


def call_format(
    tools: Sequence[Mapping[str, Any]], name: str | None = None, *, forced: bool, many: bool
) -> ReplyFormat:
    """The calls' format after `<tool_call>`: `\\n{"name": ..., "arguments": ...}\\n</tool_call>` for one of
    `tools` (OpenAI's `{"type": "function", "function": {...}}`), or the one called `name`; `many`: more
    such blocks may follow (else the reply ends after the call); `forced`: held from the reply's start
    (it starts with CALL_MARK), else once the model writes CALL_MARK. MessageError where a tool's
    parameters are no schema a reply can be held to."""
    functions = [tool["function"] for tool in tools if name is None or tool["function"]["name"] == name]
    for function in functions:  # each schema alone first: a fault is named with its function
        try:
            checked_format(function.get("parameters"))
        except MessageError as exc:
            said = exc.message.removeprefix("The JSON schema ")
            raise MessageError(f"The parameters of {function['name']!r} {said}", **exc.params) from exc
    choices = [
        {
            "type": "object",
            "properties": {
                "name": {"const": function["name"]},
                "arguments": function.get("parameters") or {"type": "object"},
            },
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for function in functions
    ]
    schema = {**(choices[0] if len(choices) == 1 else {"anyOf": choices}), "x-guidance": _AS_TEMPLATES_WRITE}
    more = ' ("\\n" "<tool_call>" call)*' if many else ""  # Lark: "\\n" is a newline
    lark = "\n".join((
        "%llguidance {}", f"start: call{more}", 'call: "\\n" body "\\n</tool_call>"',
        f"body: %json {json.dumps(schema)}",
    ))  # fmt: skip
    return checked_grammar(lark, None if forced else CALL_MARK, "The tools' parameters")


def read_calls(text: str, names: frozenset[str]) -> tuple[str, tuple[ToolCall, ...]] | None:
    """The text before the reply's first `<tool_call>` and the calls its blocks make; None when it makes
    none, or when a block is not a call of one of `names` with an object of arguments (the reply is
    then text, as written: nothing the model said is dropped)."""
    start = text.find(CALL_MARK)
    if start < 0:
        return None
    calls = []
    for block in _BLOCK.finditer(text, start):
        call = read_call((block.group(1) if block.group(1) is not None else block.group(2)).strip(), names)
        if call is None:
            return None
        calls.append(call)
    return text[:start].strip(), tuple(calls)


def read_call(written: str, names: frozenset[str]) -> ToolCall | None:
    """One call's JSON as the model wrote it (`{"name": ..., "arguments": {...}}`), or None."""
    try:
        call = json.loads(written)
    except ValueError:
        return None
    if not isinstance(call, dict) or call.get("name") not in names:
        return None
    arguments = call.get("arguments", {})
    if isinstance(arguments, str):  # some fine-tunes write the arguments' JSON as a string
        try:
            arguments = json.loads(arguments)
        except ValueError:
            return None
    if not isinstance(arguments, dict):
        return None
    return ToolCall(call["name"], json.dumps(arguments, ensure_ascii=False))
