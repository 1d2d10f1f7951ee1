"""Tools a reply may call, in the form the model was trained on, known from its chat template:

- Hermes' `<tool_call>` blocks (Qwen2.5, Qwen3, Hermes, SmolLM3): `<tool_call>\\n{"name": ...,
  "arguments": {...}}\\n</tool_call>`, after text or not, one block a call;
- Llama 3.1/3.2's JSON: the whole reply is `{"name": ..., "parameters": {...}}`, one call.

The chat template lists the tools in the prompt; a reply is read back into calls here (as vLLM's
`hermes` and `llama3_json` parsers read them). Once the model starts a call (writes `<tool_call>`, or
starts its reply with `{`), what follows is held to the calls' grammar: the JSON of a call of one of
the tools, its arguments fitting the tool's parameters, written as the template writes calls (", "
and ": " between items); before that the reply is free text (llama.cpp's lazy grammars). A call that
must be made (OpenAI's tool_choice "required", or a named function) is held from the reply's first
token. Either way a call a small model makes always parses.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from core.errors import MessageError
from core.inference.chat_tokenizer import THINKING_ENDS
from core.inference.formats import ReplyFormat, checked_format, checked_grammar

# As templates write calls (", " and ": "); lenient: a keyword or format llguidance does not hold a value
# to (uniqueItems, "not", a format of the app's own) is passed over, as OpenAI's non-strict tools take it.
_AS_TEMPLATES_WRITE = {"item_separator": ", ", "key_separator": ": ", "whitespace_flexible": False,
                       "lenient": True}  # fmt: skip
_COMPILER_SAID = re.compile(r"failed to compile JSON schema: (.*?)(?: \d+ \||$)")  # llguidance's words
_BLOCK = re.compile(r"<tool_call>(.*?)</tool_call>|<tool_call>(.*)\Z", re.DOTALL)  # the last may be open


@dataclass(frozen=True)
class ToolCall:
    """A call the model made: a function's name and its arguments, a JSON object's text."""

    name: str
    arguments: str


@dataclass(frozen=True)
class CallStyle:
    """How a family of models writes its calls: what starts one (`mark`), whether after text
    (`after_text`) or only as the reply's start, and the key of its arguments."""

    name: str
    mark: str
    after_text: bool
    arguments_key: str

    def read(self, text: str, names: frozenset[str]) -> tuple[str, tuple[ToolCall, ...]] | None:
        """The text before the reply's first call and the calls it makes; None when it makes none, or
        when one is not a call of one of `names` with an object of arguments (the reply is then text,
        as written: nothing the model said is dropped)."""
        start = text.find(self.mark) if self.after_text else 0 if text.lstrip().startswith(self.mark) else -1
        if start < 0:
            return None
        if self.after_text:
            written = [(block.group(1) if block.group(1) is not None else block.group(2)).strip()
                       for block in _BLOCK.finditer(text, start)]  # fmt: skip
        else:
            written = [text.strip()]
        calls = [self._call(call, names) for call in written]
        if any(call is None for call in calls):
            return None
        return text[:start].strip(), tuple(calls)  # type: ignore[arg-type]  # None was ruled out

    def _call(self, written: str, names: frozenset[str]) -> ToolCall | None:
        """One call's JSON as the model wrote it, or None."""
        try:
            call = json.loads(written)
        except ValueError:
            return None
        if not isinstance(call, dict) or call.get("name") not in names:
            return None
        arguments = call.get(self.arguments_key, call.get("arguments", {}))
        if isinstance(arguments, str):  # some fine-tunes write the arguments' JSON as a string
            try:
                arguments = json.loads(arguments)
            except ValueError:
                return None
        if not isinstance(arguments, dict):
            return None
        return ToolCall(call["name"], json.dumps(arguments, ensure_ascii=False))

    def calls_format(
        self, tools: Sequence[Mapping[str, Any]], name: str | None = None, *, forced: bool, many: bool,
        thinks: bool = False,
    ) -> ReplyFormat:  # fmt: skip
        """The grammar a reply's calls are held to: one of `tools` (OpenAI's `{"type": "function",
        "function": {...}}`), or the one called `name`, and more calls after it where `many` (and this
        style writes several); `forced`: held from the reply's first token, else from the call's mark
        on (`thinks`: a mark the model's reasoning writes, before </think>, is not a call). MessageError
        where a tool's parameters are no schema a reply can be held to."""
        functions = [tool["function"] for tool in tools if name is None or tool["function"]["name"] == name]
        for function in functions:  # each schema alone first: a fault is named with its function
            try:
                checked_format({**(function.get("parameters") or {}), "x-guidance": {"lenient": True}})
            except MessageError as exc:
                said = exc.message.removeprefix("The JSON schema ")
                raise MessageError(f"The parameters of {function['name']!r} {said}", **exc.params) from exc
        choices, definitions = [], {}
        for place, function in enumerate(functions):
            parameters, defined = _hoisted(function.get("parameters") or {"type": "object"}, f"tool{place}_")
            definitions |= defined
            choices.append({
                "type": "object",
                "properties": {"name": {"const": function["name"]}, self.arguments_key: parameters},
                "required": ["name", self.arguments_key],
                "additionalProperties": False,
            })  # fmt: skip
        body = {
            **(choices[0] if len(choices) == 1 else {"anyOf": choices}),
            "x-guidance": _AS_TEMPLATES_WRITE,
        }
        if definitions:
            body["$defs"] = definitions
        if self.after_text:  # Lark: "\\n" is a newline
            call = 'call: "<tool_call>\\n" body "\\n</tool_call>"'
            start = 'start: call ("\\n" call)*' if many else "start: call"
        else:
            call, start = "call: body", "start: call"
        lark = "\n".join(("%llguidance {}", start, call, f"body: %json {json.dumps(body)}"))
        try:
            return checked_grammar(lark, None if forced else self.mark, anywhere=self.after_text,
                                   after=THINKING_ENDS if thinks else None)  # fmt: skip
        except MessageError as exc:  # each schema compiled alone: together they are too much
            found = _COMPILER_SAID.search(exc.params.get("said", ""))
            raise MessageError(f"The tools' parameters together cannot hold a reply: "
                               f"{found.group(1) if found else 'too large'}; send fewer or smaller tools.",
                               reason="format_invalid") from exc  # fmt: skip


def _hoisted(parameters: dict[str, Any], prefix: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A tool's parameters to sit inside the calls' schema, and the definitions they refer to, named its
    own way (`prefix`) for the root's `$defs`: pydantic's schemas (OpenAI's `pydantic_function_tool`,
    the Agents SDK's tools) refer to their nested models as `#/$defs/…`, which means the root."""
    own = {**parameters.get("definitions", {}), **parameters.get("$defs", {})}
    recursive = False

    def moved(node: Any) -> Any:
        nonlocal recursive
        if isinstance(node, list):
            return [moved(item) for item in node]
        if not isinstance(node, dict):
            return node
        kept = {key: moved(value) for key, value in node.items() if key not in ("$defs", "definitions")}
        reference = node.get("$ref")
        if reference == "#":  # the parameters themselves (a recursive model)
            kept["$ref"], recursive = f"#/$defs/{prefix}", True
        elif isinstance(reference, str):
            for head in ("#/$defs/", "#/definitions/"):
                if reference.startswith(head):
                    kept["$ref"] = f"#/$defs/{prefix}{reference.removeprefix(head)}"
        return kept

    body = moved(parameters)
    definitions = {f"{prefix}{name}": moved(value) for name, value in own.items()}
    if recursive:
        definitions[prefix] = body
    return body, definitions


HERMES = CallStyle("hermes", "<tool_call>", after_text=True, arguments_key="arguments")
LLAMA_JSON = CallStyle("llama3_json", "{", after_text=False, arguments_key="parameters")


def call_style(chat_template: str) -> CallStyle | None:
    """How the model calls tools, read from its chat template; None where it was not trained to (or
    writes its calls in a form this module does not read)."""
    if "tools" not in chat_template:
        return None
    if HERMES.mark in chat_template:
        return HERMES
    if "dictionary of argument name and its value" in chat_template:  # Llama 3.1, 3.2, 3.3
        return LLAMA_JSON
    return None
