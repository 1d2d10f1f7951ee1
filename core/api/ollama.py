"""Ollama's own API beside OpenAI's, for the apps that speak only it: POST /api/chat and /api/generate
(streamed as lines of JSON unless `stream` is false), GET /api/tags, /api/ps and /api/version, POST
/api/show. A request is read into the OpenAI request it means (a chat completion; a raw generate, a
text completion) and runs the same way: the same checks, queue, formats and tools; its reply is written
in Ollama's shape, its errors as Ollama's `{"error": "..."}`.
"""

from __future__ import annotations

import json
import math
import re
import time
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt

from core.api.errors import APIError, validated, validated_fields
from core.api.schemas import (
    MAX_INPUTS,
    MAX_MESSAGES,
    MAX_TOP_LOGPROBS,
    ChatCompletionRequest,
    CompletionRequest,
    FiniteFloat,
)
from core.api.shapes import ReplyShape, WholeReply, finish_reason, logprob_items
from core.inference.events import ReplyStats
from core.inference.tool_calls import ToolCall

VERSION = "0.9.0"  # the Ollama API this server answers as (clients check it before using newer fields)
LATEST = ":latest"  # Ollama's default tag: "qwen2.5-0.5b:latest" is this server's "qwen2.5-0.5b"


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class Options(_Body):
    """The sampling options Ollama takes (its runtime options, num_ctx, num_thread, ..., are this
    server's to choose, and ignored as Ollama ignores what a model cannot use)."""

    temperature: FiniteFloat | None = None
    top_p: FiniteFloat | None = None
    top_k: StrictInt | None = None
    min_p: FiniteFloat | None = None
    repeat_penalty: FiniteFloat | None = None
    presence_penalty: FiniteFloat | None = None
    frequency_penalty: FiniteFloat | None = None
    seed: StrictInt | None = None
    num_predict: StrictInt | None = None  # -1: no limit but the context's
    stop: list[str] | None = None


class CalledFunction(_Body):
    name: str = Field(max_length=64)
    arguments: dict[str, Any]


class ToolCallSent(_Body):
    function: CalledFunction


class Message(_Body):
    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""
    images: list[str] | None = None
    tool_calls: list[ToolCallSent] | None = None


class _Asked(_Body):
    model: str = Field(max_length=200)
    stream: StrictBool = True
    format: Literal["json"] | dict[str, Any] | None = None
    options: Options | None = None
    think: StrictBool | None = None
    keep_alive: float | str | None = None  # how long the model stays loaded after this reply (seconds_of)
    logprobs: StrictBool = False
    top_logprobs: StrictInt | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)


class ChatAsked(_Asked):
    messages: Annotated[list[Message], Field(max_length=MAX_MESSAGES)] = []
    tools: list[dict[str, Any]] | None = None


class GenerateAsked(_Asked):
    prompt: str = ""
    system: str | None = None
    raw: StrictBool = False
    suffix: str | None = None
    images: list[str] | None = None


# Seconds, or a duration as Go writes them ("5m", "1h30m", "1.5h", "300ms"), either signed.
_DURATION = re.compile(r"[-+]?(?:(?:(?:\d+\.?\d*|\.\d+)(?:ns|us|µs|ms|s|m|h))+|\d+\.?\d*|\.\d+)")
_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|ms|s|m|h)?")
_UNIT_S = {"": 1.0, "ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def seconds_of(keep_alive: float | str | None) -> float | None:
    """Ollama's `keep_alive` in seconds: a number of seconds or a duration as Go writes them; a negative
    one keeps the model loaded for good (math.inf); None where not given."""
    text = keep_alive.strip() if isinstance(keep_alive, str) else None
    if keep_alive is None or text == "":
        return None
    if text is not None:
        if not _DURATION.fullmatch(text):
            raise APIError(400, f"keep_alive {text[:40]!r} is not a duration: send seconds (300) or a "
                           "duration such as \"5m\" or \"1h30m\"; 0 unloads the model after the reply, a "
                           "negative one keeps it loaded.", code="invalid_request",
                           param="keep_alive")  # fmt: skip
        seconds = sum(float(number) * _UNIT_S[unit] for number, unit in _PART.findall(text))
        seconds *= -1 if text.startswith("-") else 1
    else:
        seconds = float(keep_alive)
    if not math.isfinite(seconds):
        raise APIError(400, "keep_alive is a finite number of seconds.", code="invalid_request",
                       param="keep_alive")  # fmt: skip
    return math.inf if seconds < 0 else seconds


class PullAsked(_Body):
    model: str = Field("", max_length=300)
    name: str = Field("", max_length=300)  # older clients' field
    stream: StrictBool = True

    @property
    def name_asked(self) -> str:
        if not (self.model or self.name):
            raise APIError(400, "Missing required parameter: 'model'.", code="invalid_request", param="model")
        return self.model or self.name


class EmbedAsked(_Body):
    """POST /api/embed (`input`: a text or several), and the older /api/embeddings (`prompt`: one)."""

    model: str = Field(max_length=200)
    input: str | Annotated[list[str], Field(min_length=1, max_length=MAX_INPUTS)] | None = None
    prompt: str | None = None
    truncate: StrictBool = True
    dimensions: StrictInt | None = Field(None, ge=1)
    keep_alive: float | str | None = None

    @property
    def inputs(self) -> list[str]:
        asked = self.input if self.input is not None else self.prompt
        return [asked] if isinstance(asked, str) else list(asked or [])


def model_key(name: str) -> str:
    """This server's model key for an Ollama model name ("qwen2.5-0.5b:latest" is "qwen2.5-0.5b")."""
    return name.removesuffix(LATEST)


def _openai(asked: _Asked) -> dict[str, Any]:
    """What a chat and a generate share, as an OpenAI request's fields."""
    options = asked.options or Options()
    fields = {
        "model": model_key(asked.model), "stream": asked.stream, "temperature": options.temperature,
        "top_p": options.top_p, "top_k": options.top_k, "min_p": options.min_p,
        "repetition_penalty": options.repeat_penalty, "presence_penalty": options.presence_penalty,
        "frequency_penalty": options.frequency_penalty, "seed": options.seed, "stop": options.stop,
        "max_tokens": options.num_predict if options.num_predict and options.num_predict > 0 else None,
    }  # fmt: skip
    if asked.format == "json":
        fields["response_format"] = {"type": "json_object"}
    elif asked.format is not None:
        fields["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "reply", "schema": asked.format},
        }
    if asked.think is False:
        fields["chat_template_kwargs"] = {"enable_thinking": False}
    if asked.top_logprobs is not None and not asked.logprobs:
        raise APIError(
            400, "top_logprobs goes with logprobs true.", code="invalid_request", param="top_logprobs"
        )
    if asked.logprobs:  # in a chat completion's shape
        fields |= {"logprobs": True, "top_logprobs": asked.top_logprobs}
    return {name: value for name, value in fields.items() if value is not None}


def chat_request(raw: bytes) -> tuple[ChatCompletionRequest | None, float | None]:
    """POST /api/chat's body as the chat completion it means (no messages, Ollama's way to load or unload
    a model: None), and its keep-alive in seconds (seconds_of)."""
    asked: ChatAsked = validated(ChatAsked, raw)
    keep_alive = seconds_of(asked.keep_alive)
    messages = []
    for index, message in enumerate(asked.messages):
        if message.images:
            raise APIError(400, f"Messages may hold text only; message {index} has images.",
                           code="unsupported_content", param=f"messages[{index}].images")  # fmt: skip
        said: dict[str, Any] = {"role": message.role, "content": message.content}
        if message.tool_calls:
            said["tool_calls"] = [
                {"id": f"call_{index}_{place}", "type": "function", "function": {
                    "name": call.function.name, "arguments": json.dumps(call.function.arguments)}}
                for place, call in enumerate(message.tool_calls)
            ]  # fmt: skip
        messages.append(said)
    if not messages:
        return None, keep_alive
    fields = {**_openai(asked), "messages": messages, "tools": asked.tools}
    return validated_fields(ChatCompletionRequest, fields), keep_alive


def generate_request(raw: bytes) -> tuple[ChatCompletionRequest | CompletionRequest | None, float | None]:
    """POST /api/generate's body as what it means: the prompt (and system) under the chat template, a
    chat completion; with `raw`, the text continued as written, a text completion; an empty prompt
    (Ollama's way to load or unload a model) None. And its keep-alive in seconds (seconds_of)."""
    asked: GenerateAsked = validated(GenerateAsked, raw)
    keep_alive = seconds_of(asked.keep_alive)
    if asked.images:
        raise APIError(400, "This server does not take 'images' with a generate: send the request without "
                       "them.", code="unsupported_parameter", param="images")  # fmt: skip
    if not asked.prompt:
        return None, keep_alive
    if asked.raw or asked.suffix:  # the text continued as written, or filled in before the suffix
        fields = {"max_tokens": None, **_openai(asked), "prompt": asked.prompt, "suffix": asked.suffix}
        fields.pop("top_logprobs", None)  # a text completion's `logprobs` is their count
        fields["logprobs"] = (asked.top_logprobs or 0) if asked.logprobs else None
        return validated_fields(CompletionRequest, fields), keep_alive
    system = [{"role": "system", "content": asked.system}] if asked.system else []
    messages = [*system, {"role": "user", "content": asked.prompt}]
    return validated_fields(ChatCompletionRequest, {**_openai(asked), "messages": messages}), keep_alive


def now() -> str:
    return _written(datetime.now(UTC))


def _written(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def expires_at(seconds_left: float | None) -> str:
    """When the loaded model will be unloaded, as /api/ps says it (None: never; Ollama then says a time
    centuries ahead)."""
    if seconds_left is None:
        return "2318-01-01T00:00:00Z"
    return _written(datetime.now(UTC) + timedelta(seconds=seconds_left))


class OllamaShape(ReplyShape):
    """A reply as Ollama writes it: whole, or as lines of JSON (`"done": false` with each piece, then the
    last with the reason and the counts and durations, in nanoseconds, that clients show speeds from);
    a chat's text in `message`, a generate's in `response`; where asked, the tokens' log-probabilities in
    `logprobs` (each line's own tokens)."""

    media_type = "application/x-ndjson"

    def __init__(self, model: str, chat: bool, logprobs_asked: bool = False) -> None:
        super().__init__(model, logprobs_asked)
        self.chat = self.reasoning_apart = chat
        self.started = time.perf_counter()

    def whole(self, reply: WholeReply) -> dict[str, Any]:
        chances = {} if reply.chances is None else {"logprobs": logprob_items(reply.chances)}
        return {
            **self._said(reply.text, reply.calls, reply.reasoning),
            **chances,
            "done": True,
            **self._counts(reply.stats),
        }

    def piece(self, text: str) -> list[str]:
        return [self._line({**self._said(text), "done": False})]

    def reasoning(self, text: str) -> list[str]:
        return [self._line({**self._said("", thinking=text), "done": False})]

    def calls(self, calls: tuple[ToolCall, ...], cut: bool = False) -> list[str]:
        return [self._line({**self._said("", calls), "done": False})]

    def closing(self, stats: ReplyStats, include_usage: bool) -> list[str]:
        return [self._line({**self._said(""), "done": True, **self._counts(stats)})]

    def _line(self, fields: dict[str, Any]) -> str:
        """A line of the stream, with the log-probabilities of the tokens that came since the last."""
        if taken := self._taken():
            fields["logprobs"] = logprob_items(taken)
        return json.dumps(fields, ensure_ascii=False) + "\n"

    def failure(self, message: str) -> list[str]:
        return [self._line({"error": message})]

    def _said(self, text: str, calls: tuple[ToolCall, ...] = (), thinking: str = "") -> dict[str, Any]:
        said: dict[str, Any] = {"model": self.model, "created_at": now()}
        if not self.chat:
            return {**said, "response": text}
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if thinking:
            message["thinking"] = thinking
        if calls:
            message["tool_calls"] = [
                {"function": {"name": call.name, "arguments": json.loads(call.arguments)}} for call in calls
            ]
        return {**said, "message": message}

    def _counts(self, stats: ReplyStats) -> dict[str, Any]:
        """Ollama's counts and durations (nanoseconds): the prompt's, until the first token; the reply's,
        from its speed."""
        prompt_s = stats.ttft_s or 0.0
        reply_s = stats.completion_tokens / stats.tokens_per_s if stats.tokens_per_s else 0.0
        reason = finish_reason(stats)
        return {
            "done_reason": "stop" if reason == "tool_calls" else reason,
            "total_duration": int((time.perf_counter() - self.started) * 1e9), "load_duration": 0,
            "prompt_eval_count": stats.prompt_tokens, "prompt_eval_duration": int(prompt_s * 1e9),
            "eval_count": stats.completion_tokens, "eval_duration": int(reply_s * 1e9),
        }  # fmt: skip


def model_entry(key: str, size: int, family: str, context: int | None) -> dict[str, Any]:
    """A model as /api/tags and /api/ps list it."""
    return {
        "name": key + LATEST, "model": key + LATEST, "modified_at": now(), "size": size, "digest": "",
        "details": {"format": "safetensors", "family": family, "families": [family], "parameter_size": "",
                    "quantization_level": ""},
        **({"context_length": context} if context else {}),
    }  # fmt: skip


class _Named(_Body):
    model: str = Field("", max_length=200)
    name: str = Field("", max_length=200)  # older clients' field


def shown_name(raw: bytes) -> str:
    """The model a body names (/api/show's `model`, or its older `name`)."""
    named = validated(_Named, raw)
    if not (named.model or named.name):
        raise APIError(400, "Missing required parameter: 'model'.", code="invalid_request", param="model")
    return named.model or named.name


def shown(entry: dict[str, Any], tokenizer: Any) -> dict[str, Any]:
    """/api/show: the model's details, its chat template, and what it can do (tools where its template
    writes calls this server reads)."""
    from core.inference.tool_calls import call_style

    family = entry["details"]["family"]
    template = tokenizer.chat_template or ""
    return {
        "modelfile": "", "parameters": "", "template": template, "details": entry["details"],
        "model_info": {"general.architecture": family,
                       f"{family}.context_length": entry.get("context_length")},
        "capabilities": ["completion", *(["tools"] if call_style(template) else [])],
        "modified_at": entry["modified_at"],
    }  # fmt: skip


def loading(key: str, chat: bool, reason: Literal["load", "unload"]) -> dict[str, Any]:
    """The answer to a chat without messages, a generate without a prompt: the model is being loaded, or
    unloaded (`keep_alive` 0)."""
    said = {"message": {"role": "assistant", "content": ""}} if chat else {"response": ""}
    return {"model": key + LATEST, "created_at": now(), **said, "done": True, "done_reason": reason}
