"""The provider interface the chat service talks to, and the local-engine provider."""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from core import outbound
from core.chat.reasoning import CLOSE, OPEN, split_reasoning
from core.errors import ConfigError, ProviderError, ReplyBrokeOffError, ServerContextError
from core.inference.events import Event, Finished, ReplyStats, TextDelta
from core.inference.formats import ReplyFormat
from core.inference.params import GenerationParams
from core.inference.prompts import Continuation
from core.storage.records import ProviderConfig, check_base_url

if TYPE_CHECKING:  # the engine is handed in; only its type is needed here
    from core.inference.engine import LocalEngine

logger = logging.getLogger(__name__)
MAX_LISTED_MODELS = 1_000  # the model picker's choices: a server may list any number


class ChatProvider(Protocol):
    model: str
    context_length: int

    def continues(self, reply: str) -> bool:
        """Whether a reply cut short (`reply`: its text so far) can go on where it ended (`go_on`)."""
        ...

    def count_tokens(self, messages: Sequence[dict[str, str]], limit: int | None = None) -> int:
        """Prompt tokens; past `limit` the count may stop early at a number above it."""
        ...

    def default_params(self) -> GenerationParams:
        """The sampling a conversation gets when it sets none (a local model: its publisher's)."""
        ...

    def stream(
        self,
        messages: Sequence[dict[str, str]],
        params: GenerationParams,
        stop: threading.Event,
        *,
        ignore_eos: bool = False,
        owner: str = "",
        go_on: bool = False,
        reply_format: ReplyFormat | None = None,
    ) -> Iterator[Event]:
        """The reply's events; `owner` (the conversation): whose earlier turns' caches the local engine
        may start from (a remote server keeps its own); `go_on`: the last message is the model's reply,
        cut short, which the events continue; `reply_format`: the JSON the reply is held to."""
        ...


class LocalProvider:
    """A downloaded model run by the process-wide LocalEngine (`local_model`)."""

    def __init__(self, engine: LocalEngine, key: str, config_params: GenerationParams | None = None) -> None:
        """`config_params`: the provider config's; those it sets apart from the product's defaults win over
        the publisher's."""
        self.engine = engine
        self.model = key
        self._config_params = config_params or GenerationParams()

    @property
    def context_length(self) -> int:
        return self.engine.context_tokens(self.model)

    def continues(self, reply: str) -> bool:
        return True

    def default_params(self) -> GenerationParams:
        """What the model's publisher recommends, with what the provider config changed on top."""
        product = GenerationParams().to_dict()
        changed = {k: v for k, v in self._config_params.to_dict().items() if v != product[k]}
        return GenerationParams.from_mapping(self.engine.default_params(self.model).to_dict() | changed)

    def count_tokens(self, messages: Sequence[dict[str, str]], limit: int | None = None) -> int:
        return self.engine.count_tokens(self.model, messages, limit)

    def stream(
        self,
        messages: Sequence[dict[str, str]],
        params: GenerationParams,
        stop: threading.Event,
        *,
        ignore_eos: bool = False,
        owner: str = "",
        go_on: bool = False,
        reply_format: ReplyFormat | None = None,
    ) -> Iterator[Event]:
        prompt = Continuation(tuple(messages)) if go_on else messages
        return self.engine.stream(
            self.model, prompt, params, stop, ignore_eos=ignore_eos, owner=owner, reply_format=reply_format
        )


# A server's model is sent the conversation up to this many tokens (an estimate) until the server says
# its context: vLLM lists it (`max_model_len`), as OpenRouter does (`context_length`); OpenAI, vLLM,
# llama.cpp's server, LM Studio, TGI say it when they refuse a longer conversation (and it is sent
# again, trimmed to it). Ollama shortens a long one itself. 8192 cut GPT-4o's conversations to 8k.
UNKNOWN_CONTEXT_TOKENS = 131_072
_CONTEXT: dict[tuple[str, str], int] = {}  # (base URL, model): its context window, as the server said
# Servers that let a reply cut short go on in its message, by their listing's `owned_by`: vLLM and SGLang
# take `continue_final_message` (as `localllm serve` does), llama.cpp's server and Ollama (its library's
# models) continue a conversation that ends with the model's message. Others (OpenAI, LM Studio) would
# start a new reply: not asked.
CONTINUING_SERVERS = frozenset({"vllm", "sglang", "localllm", "llamacpp", "library"})
GO_ON_FIELDS = {"continue_final_message": True, "add_generation_prompt": False}  # vLLM's names
_OWNER: dict[tuple[str, str], str] = {}  # (base URL, model): who the server's listing says owns it
OWNER_TIMEOUT_S = (
    3.0  # asked while the Chat page draws a reply: a server that does not answer waits no longer
)
MIN_CONTEXT_TOKENS = 512  # a smaller window said by a server is no chat model's: not believed
_SAID_CONTEXT = (  # how servers say a model's context when they refuse a longer conversation
    re.compile(r"maximum context length is (\d{1,9}) tokens"),  # OpenAI's and vLLM's words
    re.compile(r"exceed context limit: \d{1,9} \+ \d{1,9} > (\d{1,9})"),  # Anthropic's OpenAI-compatible API
    re.compile(r"`max_new_tokens` must be <= (\d{1,9})"),  # Hugging Face's text-generation-inference
    re.compile(r"loaded with (?:a )?context length of only (\d{1,9}) tokens"),  # LM Studio's words
    re.compile(r"n_ctx: (\d{1,9})"),  # LM Studio's other ones ("(n_keep: 13055>= n_ctx: 4096)")
)
MAX_SAID_CHARS = 300  # of a server's own words for an error, shown in the sentence that explains it
# Parameters a server may refuse for a model that takes only its own (OpenAI's reasoning models, o1 to
# gpt-5: "Unsupported parameter: 'max_tokens' … Use 'max_completion_tokens' instead", "Unsupported
# value: 'temperature' does not support 0.7 with this model"): the request is sent again without
# them, and later requests to that model leave them out at once (`_REFUSED`).
ADJUSTABLE = (
    "max_tokens", "temperature", "top_p", "presence_penalty", "frequency_penalty", "seed", "reasoning_effort"
)  # fmt: skip
# A reply without reasoning first, asked as the servers know it: OpenAI's `reasoning_effort` "none" (its
# GPT-5.1 on, Ollama's OpenAI-compatible API, recent vLLM) and the chat template's switch (vLLM, SGLang,
# llama.cpp's server, `localllm serve`: Qwen3's `enable_thinking`). A server that refuses either by name
# (OpenAI for a model that does not reason, o3's "does not support 'none'", LiteLLM's proxy, an older
# vLLM's validation) gets the request again without it.
NO_THINKING: dict[str, Any] = {"reasoning_effort": "none", "chat_template_kwargs": {"enable_thinking": False}}
UNSUPPORTED = ("unsupported_parameter", "unsupported_value")  # the error codes of such a refusal
_REFUSED: dict[tuple[str, str], frozenset[str]] = {}  # (base URL, model): the parameters it refused
# What OpenAI says of a field it does not know (vLLM's and llama.cpp's top_k, say): no param, no code.
_UNRECOGNIZED = re.compile(r"Unrecognized request argument supplied: (\w+)")
# A server that answers at all accepts a connection within a second or two, even over the internet; one
# that does not (a host that drops packets) is said to be unreachable after 4 tries of this, not of the
# minute a reply's next words may take.
CONNECT_TIMEOUT_S = 5.0
# Where the usual OpenAI-compatible servers answer by default, offered when a server is added.
WELL_KNOWN_SERVERS = {
    "Ollama": "http://localhost:11434/v1",
    "LM Studio": "http://localhost:1234/v1",
    "vLLM": "http://localhost:8000/v1",
    "OpenAI": "https://api.openai.com/v1",
}


def sampling_fields(params: GenerationParams) -> dict[str, Any]:
    """A request's sampling fields: temperature, top_p and max_tokens, and the settings changed from the
    defaults by the names servers know them: OpenAI's own, and in `extra_body` the extensions of vLLM
    (`repetition_penalty`) and of llama.cpp and LM Studio (`repeat_penalty`); the rest are the server's.
    Thinking turned off asks both ways servers know (`NO_THINKING`)."""
    default = GenerationParams()
    changed = {name: getattr(params, name) for name in ("presence_penalty", "frequency_penalty", "seed")}
    fields = {"temperature": params.temperature, "top_p": params.top_p, "max_tokens": params.max_new_tokens}
    fields |= {name: value for name, value in changed.items() if value != getattr(default, name)}
    extra: dict[str, Any] = {"top_k": params.top_k} if params.top_k is not None else {}
    if params.min_p:
        extra["min_p"] = params.min_p
    if params.repetition_penalty != default.repetition_penalty:
        extra["repetition_penalty"] = extra["repeat_penalty"] = params.repetition_penalty
    if not params.thinking:
        fields["reasoning_effort"] = NO_THINKING["reasoning_effort"]
        extra["chat_template_kwargs"] = NO_THINKING["chat_template_kwargs"]
    return fields | ({"extra_body": extra} if extra else {})


def _error_body(exc: Any) -> dict[str, Any]:
    """An error's JSON: the `error` object of OpenAI's shape, as the client took it out; an error that is
    a string (Hugging Face's TGI) as its message."""
    return (
        exc.body if isinstance(exc.body, dict) else {"message": exc.body} if isinstance(exc.body, str) else {}
    )


def _estimated_tokens(text: str) -> int:
    ascii_chars = len(text.encode("ascii", "ignore"))
    return ascii_chars // 3 + len(text) - ascii_chars


def said_context(base_url: str, model: str) -> int | None:
    """A server's model's context window as the server said it (listed, or in a refusal), if it has."""
    return _CONTEXT.get((base_url, model))


def _learn_listing(base_url: str, listed: list[Any]) -> None:
    """Each listed model's owner and context window where the listing says it (vLLM's `max_model_len`,
    OpenRouter's `context_length`); what earlier refusals said of this server is forgotten (its models may
    have been loaded again with another context since: LM Studio's are 4096 tokens unless told)."""
    for key in [key for key in _CONTEXT if key[0] == base_url]:
        del _CONTEXT[key]
    for model in listed:
        if said := _context_tokens(model.get("max_model_len", model.get("context_length"))):
            _CONTEXT[(base_url, str(model["id"]))] = said
        _OWNER[(base_url, str(model["id"]))] = str(model.get("owned_by", ""))[:40]


def _context_said(body: dict[str, Any]) -> int | None:
    """The context window a server gave for refusing a conversation as too long: llama.cpp's `n_ctx`,
    or its words (`_SAID_CONTEXT`: "This model's maximum context length is 8192 tokens. However …")."""
    if body.get("type") == "exceed_context_size_error":
        return _context_tokens(body.get("n_ctx"))
    message = str(body.get("message", ""))
    found = next((match for words in _SAID_CONTEXT if (match := words.search(message))), None)
    return _context_tokens(int(found.group(1))) if found else None


def _context_tokens(said: object) -> int | None:
    """A context window a server gave, if it is one: a whole number of at least MIN_CONTEXT_TOKENS."""
    return (
        said if isinstance(said, int) and not isinstance(said, bool) and said >= MIN_CONTEXT_TOKENS else None
    )


def _refused_by(exc: Any, request: dict[str, Any]) -> frozenset[str]:
    """The parameters of `request` that a 400 refuses: one a model takes only its own way (`ADJUSTABLE`,
    OpenAI's reasoning models), every extension in `extra_body` where the server knows none (OpenAI:
    "Unrecognized request argument supplied: top_k"), one of OpenAI's own a server does not know yet
    (Azure's older API versions: `stream_options`; the usage is then counted here), or a way of asking
    for no reasoning (`NO_THINKING`) that the refusal names."""
    body = _error_body(exc)
    name, code, message = body.get("param"), body.get("code"), str(body.get("message", ""))
    if name in ADJUSTABLE and name in request and code in UNSUPPORTED:
        return frozenset({name})
    extra = request.get("extra_body", {})
    if unknown := _UNRECOGNIZED.search(message):
        if unknown.group(1) in extra:
            return frozenset(extra)
        return frozenset({unknown.group(1)}) & (set(ADJUSTABLE) | {"stream_options"}) & request.keys()
    named = {field for field in NO_THINKING if field in f"{name} {message}"}
    return frozenset(named & (request.keys() | extra.keys()))


def _server_said(exc: Any, secret: str | None) -> str | None:
    """The server's own words for an error (OpenAI-style `{"error": {"message": …}}`): one line, at most
    MAX_SAID_CHARS, the key (`secret`) never among them."""
    body = _error_body(exc)
    message = body.get("message", body.get("error"))
    if isinstance(message, dict):
        message = message.get("message")
    if not isinstance(message, str) or not message.strip():
        return None
    said = " ".join(message.split())
    if secret and len(secret) >= 4:
        said = said.replace(secret, "***")
    return said if len(said) <= MAX_SAID_CHARS else said[: MAX_SAID_CHARS - 1] + "…"


def _explain(exc: Exception, base_url: str, secret: str | None = None) -> ProviderError:
    """Turn an openai client error into one clear sentence (never a traceback, never the key)."""
    import httpx2
    import openai

    # A connection never made (the connect timeout) is an unreachable server, not a slow one.
    if isinstance(exc, openai.APITimeoutError) and not isinstance(exc.__cause__, httpx2.ConnectTimeout):
        return ProviderError(
            f"{base_url} did not answer in time. Check that the server is running.",
            reason="server_timeout",
            url=base_url,
        )
    if isinstance(exc, openai.APIConnectionError) and outbound.is_certificate_error(exc):
        return ProviderError(
            f"The certificate of {base_url} could not be verified: a self-signed one, a clock far off, or a "
            "network that inspects HTTPS. Add it to the system's certificates, or set SSL_CERT_FILE to it.",
            reason="server_certificate",
            url=base_url,
        )
    if isinstance(exc, openai.APIConnectionError) and isinstance(
        exc.__cause__, outbound.ProxyUnreachableError
    ):
        return ProviderError(
            f"Cannot reach {base_url}: the proxy {exc.__cause__.proxy} that the environment sets "
            "(http_proxy, https_proxy or all_proxy) takes no connection. Start it, or unset those variables.",
            reason="proxy_unreachable",
            url=base_url,
            proxy=exc.__cause__.proxy,
        )
    if isinstance(exc, openai.APIConnectionError):
        return ProviderError(
            f"Cannot connect to {base_url}: the server is not running, the address is wrong, or the "
            "network is down.",
            reason="server_unreachable",
            url=base_url,
        )
    if isinstance(exc, openai.AuthenticationError):
        return ProviderError(
            "The server refused the API key (401). Check the key saved for this server.", reason="server_key"
        )
    if isinstance(exc, openai.PermissionDeniedError):
        return ProviderError(
            "The server does not allow this key to use this model (403).", reason="server_forbidden"
        )
    if isinstance(exc, openai.NotFoundError):
        return ProviderError(
            "The server does not know this model (404). Pick one with 'Refresh models'.",
            reason="server_no_model",
        )
    if isinstance(exc, openai.RateLimitError):
        return ProviderError(
            "The server is busy or the key's rate limit is reached (429); try again shortly.",
            reason="server_busy",
        )
    refused = isinstance(exc, openai.APIStatusError) and exc.status_code in (400, 413, 422)
    if refused and (limit := _context_said(_error_body(exc))):
        return ServerContextError(
            f"The conversation is longer than this model's context on the server ({limit} tokens).",
            limit=limit,
        )
    if isinstance(exc, openai.APIStatusError):
        if said := _server_said(exc, secret):
            return ProviderError(
                f"The server answered with an error (HTTP {exc.status_code}): {said}",
                reason="server_status_said", status=exc.status_code, said=said,
            )  # fmt: skip
        return ProviderError(
            f"The server answered with an error (HTTP {exc.status_code}).",
            reason="server_status",
            status=exc.status_code,
        )
    return ProviderError(
        "The server's answer could not be read: it is not what an OpenAI-compatible server sends.",
        reason="server_unreadable",
    )


class OpenAICompatibleProvider:
    """Any OpenAI-compatible server (vLLM, Ollama, LM Studio, OpenAI) through the official client."""

    def __init__(
        self, base_url: str, api_key: str | None, model: str, timeout_s: float = 60.0,
        params: GenerationParams | None = None,
    ) -> None:  # fmt: skip
        import openai

        check_base_url(base_url)
        self.base_url = base_url
        self.model = model
        self._params = params or GenerationParams()
        self._api_key = api_key
        # max_retries: the client retries connection errors, 429 and 5xx with exponential backoff.
        self._client = openai.OpenAI(
            base_url=base_url,
            api_key=api_key or "not-needed",
            timeout=openai.Timeout(timeout_s, connect=CONNECT_TIMEOUT_S),
            max_retries=3,
            http_client=outbound.client(follow_redirects=True),
        )

    def default_params(self) -> GenerationParams:
        """The provider config's sampling."""
        return self._params

    @property
    def context_length(self) -> int:
        return said_context(self.base_url, self.model) or UNKNOWN_CONTEXT_TOKENS

    def continues(self, reply: str) -> bool:
        """Whether the server lets a reply go on in its message (`CONTINUING_SERVERS`, by its listing:
        asked once a process where none was read yet) and the reply holds no reasoning (a server sends
        that apart from the answer: what it would make of the two in one message is its own)."""
        if split_reasoning(reply).reasoning is not None:
            return False
        key = (self.base_url, self.model)
        if key not in _OWNER:
            _OWNER[key] = ""  # a server that cannot list now is not asked again
            with contextlib.suppress(ProviderError):
                self.list_models(timeout_s=OWNER_TIMEOUT_S)
        refused = _REFUSED.get(key, frozenset())
        return _OWNER[key] in CONTINUING_SERVERS and not refused & GO_ON_FIELDS.keys()

    def list_models(self, timeout_s: float | None = None) -> list[str]:
        """The server's models; no retries (someone is waiting at the page: a refused connection took 4 s);
        `timeout_s`: at most this long in all (else the client's: a minute to answer).

        Read from the answer's JSON here: the client fails on an answer of another shape (a web page)
        with a bare AttributeError."""
        import openai

        client = self._client.with_options(max_retries=0)
        if timeout_s is not None:
            client = client.with_options(timeout=timeout_s)
        try:
            answer = client.models.with_raw_response.list().http_response
        except openai.PermissionDeniedError as exc:  # no model asked for yet: the key's, not a model's
            raise ProviderError(
                "The server does not let this key list its models (403). Check the key.",
                reason="server_forbidden_listing",
            ) from exc
        except openai.NotFoundError as exc:  # an address without its /v1 (Ollama's, LM Studio's port alone)
            raise self._no_listing() from exc
        except openai.OpenAIError as exc:
            raise _explain(exc, self.base_url, self._api_key) from exc
        try:
            listed = answer.json()["data"]
            ids = {model["id"] for model in listed}
            _learn_listing(self.base_url, listed)
        except (ValueError, KeyError, TypeError) as exc:  # not JSON, no list of models, a model without id
            raise ProviderError(
                f"{self.base_url} answered, but not as an OpenAI-compatible server: check the address "
                "(it usually ends in /v1).",
                reason="server_not_openai",
                url=self.base_url,
            ) from exc
        return sorted(str(model_id) for model_id in ids)[:MAX_LISTED_MODELS]

    def _create(self, request: dict[str, Any]) -> Any:
        """The streamed completion; parameters the model refused (`_refused_by`) are left out, and the
        request sent again (`max_tokens` as `max_completion_tokens`)."""
        import openai

        refused = _REFUSED.get((self.base_url, self.model), frozenset())
        while True:
            extra = request.get("extra_body", {})
            for name in refused & (request.keys() | extra.keys()):
                value = extra.pop(name) if name in extra else request.pop(name)
                if name == "max_tokens":
                    request["max_completion_tokens"] = value
            try:
                return self._client.chat.completions.create(**request)
            except openai.BadRequestError as exc:
                dropped = _refused_by(exc, request)
                if dropped & GO_ON_FIELDS.keys():  # sent without them, the reply would start anew
                    _REFUSED[(self.base_url, self.model)] = refused | dropped
                    raise cannot_go_on() from exc
                if not dropped:
                    raise
                logger.info(
                    "%s (%s) refused %s: sent again without", self.base_url, self.model, sorted(dropped)
                )
                refused |= dropped
                _REFUSED[(self.base_url, self.model)] = refused

    def _no_listing(self) -> ProviderError:
        """What a 404 for the model list means: the address is not the API's; where the same address with
        /v1 (what Ollama, LM Studio and vLLM serve), or without the endpoint pasted after it
        (…/v1/chat/completions), lists models, that one is named."""
        address = self.base_url.rstrip("/")
        before, v1, _ = address.partition("/v1/")
        fixed = before + "/v1" if v1 else address.removesuffix("/v1") + "/v1"
        with contextlib.suppress(ProviderError):
            if fixed != address:  # already the API's address: nothing else to try
                OpenAICompatibleProvider(fixed, self._api_key, self.model).list_models()
                return ProviderError(
                    f"Nothing lists models at {self.base_url} (404), but {fixed} does: use that address.",
                    reason="server_add_v1", url=self.base_url, fixed=fixed,
                )  # fmt: skip
        return ProviderError(
            f"Nothing lists models at {self.base_url} (404): check the address (an OpenAI-compatible "
            "server's usually ends in /v1).", reason="server_no_listing", url=self.base_url,
        )  # fmt: skip

    def count_tokens(self, messages: Sequence[dict[str, str]], limit: int | None = None) -> int:
        """An estimate (a remote tokenizer is not available here): 3 characters of ASCII a token, and a
        token for every other character (a Chinese one is 0.6-1 token to GPT-4o's and Qwen's tokenizers)."""
        return sum(_estimated_tokens(m["content"]) + 4 for m in messages)

    def stream(
        self,
        messages: Sequence[dict[str, str]],
        params: GenerationParams,
        stop: threading.Event,
        *,
        ignore_eos: bool = False,
        owner: str = "",
        go_on: bool = False,
        reply_format: ReplyFormat | None = None,
    ) -> Iterator[Event]:
        import openai

        if go_on and not self.continues(messages[-1]["content"]):
            raise cannot_go_on()
        started = time.perf_counter()
        first_at: float | None = None
        pieces = 0
        finish, usage = None, None
        reasoning = _ReasoningAsText()
        try:
            request = {
                "model": self.model, "messages": list(messages), "stream": True,
                "stream_options": {"include_usage": True}, **sampling_fields(params),
            }  # fmt: skip
            if go_on:
                request["extra_body"] = request.get("extra_body", {}) | GO_ON_FIELDS
            if reply_format is not None:
                request["response_format"] = reply_format.as_openai()
            response = self._create(request)
            with response:
                for chunk in response:
                    if stop.is_set():
                        finish = "stopped"
                        break  # leaving the block closes the connection: the server stops too
                    usage = chunk.usage or usage
                    if not chunk.choices:
                        continue
                    choice = chunk.choices[0]
                    for text in reasoning.texts(choice.delta):
                        first_at = first_at or time.perf_counter()
                        pieces += 1
                        yield TextDelta(text)
                    if choice.finish_reason:
                        finish = "length" if choice.finish_reason == "length" else "stop"
        # The client checks no chunk's shape: an event that is not JSON, or JSON of another shape,
        # fails inside it or here as one of these.
        except (openai.OpenAIError, AttributeError, TypeError, ValueError) as exc:
            error = _explain(exc, self.base_url, self._api_key)
            logger.warning("%s (%s): %s", self.base_url, self.model, error.message)
            if isinstance(error, ServerContextError):
                _CONTEXT[(self.base_url, self.model)] = error.params["limit"]
            if pieces:
                error = ReplyBrokeOffError(f"The reply broke off midway: {error.message}", **error.params)
            raise error from exc
        if finish is None:  # no finish reason: the connection ended before the reply did
            raise ReplyBrokeOffError(
                "The reply broke off midway: the server closed the connection early.", reason="closed_early"
            )
        completion = _counted(usage, "completion_tokens", pieces)
        decode_s = time.perf_counter() - first_at if first_at else 0.0
        yield Finished(
            ReplyStats(
                prompt_tokens=_counted(usage, "prompt_tokens", self.count_tokens(messages)),
                completion_tokens=completion,
                ttft_s=first_at - started if first_at else None,
                tokens_per_s=(completion - 1) / decode_s if decode_s > 0 and completion > 1 else None,
                finish_reason=finish,
                model=self.model,
            )
        )


def cannot_go_on() -> ProviderError:
    return ProviderError(
        "This server cannot let a reply go on where it ended: regenerate it with a higher Max new tokens.",
        reason="continue_not_here",
    )


def _counted(usage: Any, field: str, otherwise: int) -> int:
    """A token count of the server's usage where it gave one, else our own."""
    count = getattr(usage, field, None)
    return count if isinstance(count, int) and count >= 0 else otherwise


class _ReasoningAsText:
    """A server's reasoning deltas (DeepSeek's and older vLLM's `reasoning_content`, newer vLLM's and
    Ollama's `reasoning`) as the text a thinking model writes itself, <think>…</think> before the
    answer, so the page folds it away as it does a local model's."""

    def __init__(self) -> None:
        self.open = False

    def texts(self, delta: Any) -> Iterator[str]:
        thought = getattr(delta, "reasoning_content", None) or getattr(delta, "reasoning", None)
        if isinstance(thought, str) and thought:
            if not self.open:
                self.open = True
                yield OPEN + "\n"
            yield thought
        if isinstance(delta.content, str) and delta.content:
            if self.open:
                self.open = False
                yield "\n" + CLOSE + "\n\n"
            yield delta.content


def provider_for_config(config: ProviderConfig | None, engine: LocalEngine) -> ChatProvider:
    """The provider for the current config (`None`: nothing chosen yet)."""
    if config is None:
        raise ConfigError(
            "No model is selected: download one on the Models page and choose it for chat.",
            reason="no_model_chosen",
        )
    if config.provider == "local_model":
        return LocalProvider(engine, config.model, config.params)
    return OpenAICompatibleProvider(config.base_url or "", config.api_key, config.model, params=config.params)
