"""The OpenAI-compatible routes: GET /v1/models (and /v1/models/{id}), POST /v1/chat/completions,
POST /v1/completions (text the model continues, without the chat template; filled in before a
`suffix`) and POST /v1/responses (OpenAI's Responses API, stateless), with or without SSE
(core.api.shapes writes each), several replies to one request together (core.api.together), POST
/v1/embeddings; Ollama's /api/* (core.api.ollama) and Anthropic's /v1/messages (core.api.anthropic),
read into the same requests; GET /health. A chat completion or a response may list tools its reply
calls (core.api.calls reads the calls).

Internal logic of a completion:
1. the guards (host, origin, body size) have run; the bearer token is checked;
2. the body is validated into a ChatCompletionRequest, CompletionRequest or ResponseRequest (400 with
   the parameter at fault; 400 for what this server cannot honour, never ignored), and read into the
   prompt, the format its reply is held to and the tools it may call (core.api.asked);
3. the prompt is measured against the model's context window before anything is allocated for it
   (400 `context_length_exceeded`), and `max_tokens` is capped to what the context leaves;
4. the engine streams the reply; a client that goes away, streaming or not, sets the stop event.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TypeVar

from fastapi import Depends, FastAPI, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware

from core.access.hosts import HostPolicy, TrustedHostsMiddleware, load_host_policy
from core.access.policy import is_loopback
from core.api import anthropic, embeddings, ollama, pulls, tokenizing
from core.api.asked import (
    Calling,
    chat_prompt,
    completion_prompt,
    held_format,
    infilled,
    input_messages,
    logit_bias,
    tools_asked,
)
from core.api.calls import CallArguments, CallBegun, CallsMade, with_calls
from core.api.errors import APIError, asgi_refusal, from_core, install_handlers, validated
from core.api.kept import KeptResponses
from core.api.limits import DEFAULT_MAX_BODY_BYTES, BodyLimitMiddleware, BodyTooLargeError
from core.api.schemas import (
    MAX_REPLIES,
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    EmbeddingRequest,
    GenerationRequest,
    ModelCard,
    ModelList,
    ResponseRequest,
    TokenizeChatRequest,
    TokenizeTextRequest,
)
from core.api.shapes import ChatShape, ReplyShape, ResponseShape, TextShape, WholeReply, usage_of_choices
from core.api.stops import until_stop_sequence
from core.api.thinking import ReasoningDelta, with_reasoning
from core.api.together import Choices, Item, Start
from core.errors import ContextLengthError, LocalLLMError
from core.inference.events import Event, Finished, Logprobs, ReplyStats, TextDelta
from core.inference.params import GenerationParams, LogitBias
from core.inference.prompts import Continuation, Prompt, RawPrompt, TokenPrompt, ToolUse
from core.inference.tool_calls import call_style

if TYPE_CHECKING:  # the engine and the catalog are handed in; only their types are needed here
    from core.hub.library import ModelLibrary
    from core.inference.chat_tokenizer import ChatTokenizer
    from core.inference.engine import LocalEngine


def create_app(
    engine: LocalEngine,
    models: Callable[[], list[str]],
    api_key: str | None = None,
    *,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    hosts: HostPolicy | None = None,
    library: ModelLibrary | None = None,
) -> FastAPI:
    """`models` lists the keys of ready models; `api_key`, when set, is required as a bearer token;
    `library`: the catalog Ollama's /api/pull downloads into (None: no such route)."""
    hosts = hosts or load_host_policy()
    middleware = [Middleware(TrustedHostsMiddleware, policy=hosts, refuse=asgi_refusal)]
    if hosts.allowed_origins:
        middleware.append(Middleware(CORSMiddleware, allow_origins=sorted(hosts.allowed_origins),
                                     allow_methods=["GET", "POST", "DELETE"],
                                     allow_headers=["*"]))  # fmt: skip
    middleware.append(Middleware(BodyLimitMiddleware, max_bytes=max_body_bytes, refuse=asgi_refusal))
    app = FastAPI(title="LocalLLM Dashboard API", docs_url=None, redoc_url=None, openapi_url=None,
                  middleware=middleware)  # fmt: skip
    install_handlers(app)
    kept_responses = KeptResponses()

    def require_key(request: Request) -> None:
        if api_key is None:  # bound to loopback: this machine's programs need none, a proxy's clients do
            if hosts.names_this_machine(request.headers.get("host")):
                return
            raise APIError(
                401,
                "This server is reached through another name (a reverse proxy's): start it with "
                "LOCALLLM_API_KEY set, and send that key.",
                code="invalid_api_key",
            )
        # OpenAI's and Ollama's clients send a bearer token, Anthropic's an x-api-key
        given = request.headers.get("x-api-key") or request.headers.get("authorization", "")
        given = given.removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), api_key.encode()):
            raise APIError(401, "Invalid or missing API key.", code="invalid_api_key")

    @app.get("/health")
    def health() -> dict[str, str]:
        """For load balancers and monitors (as vLLM's and llama.cpp's): the server is up. No key needed."""
        return {"status": "ok"}

    def card(key: str) -> ModelCard:
        """A model as listed, with the context its requests may fill (as vLLM lists it: a dashboard that
        uses this server fits its conversations to it)."""
        try:
            return ModelCard(id=key, max_model_len=engine.context_tokens(key))
        except (LocalLLMError, OSError, ValueError):  # files changed since the list was read
            return ModelCard(id=key)

    @app.get("/v1/models", dependencies=[Depends(require_key)])
    def list_models(request: Request) -> dict[str, Any]:
        if anthropic.VERSION_HEADER in request.headers:  # Anthropic's SDK: its shape of the list
            return anthropic.model_list(models())
        return ModelList(data=[card(key) for key in models()]).model_dump()

    @app.get("/v1/models/{model:path}", dependencies=[Depends(require_key)])
    def retrieve_model(request: Request, model: str) -> dict[str, Any]:
        if anthropic.VERSION_HEADER in request.headers:
            return anthropic.model_info(ready(model))
        return card(ready(model)).model_dump()

    async def read(request: Request, kind: type[Body]) -> Body:
        return known(_checked(validated(kind, await raw_body(request))))

    async def raw_body(request: Request) -> bytes:
        try:
            return await request.body()
        except BodyTooLargeError:
            raise APIError(413, f"The request body is larger than {max_body_bytes // 1024**2} MiB.") from None

    def known(body: Body) -> Body:
        ready(body.model)
        return body

    def ready(key: str) -> str:
        """`key`, where it names a model ready here; else 404."""
        if key not in models():
            raise APIError(404, f"The model {key[:200]!r} does not exist or is not downloaded.",
                           code="model_not_found", param="model")  # fmt: skip
        return key

    async def fitted(body: GenerationRequest, prompt: Prompt) -> GenerationParams:
        """The request's sampling over the model's own (as vLLM), its reply's room capped to what the
        context leaves `prompt`: measured before anything is allocated for it (400 naming the prompt)."""
        wanted = GenerationParams().max_new_tokens if body.wanted_tokens is None else body.wanted_tokens
        try:
            fit = await run_in_threadpool(engine.fit_prompt, body.model, prompt, wanted)
        except ContextLengthError as exc:
            raise from_core(exc, body.prompt_param) from exc
        defaults = await run_in_threadpool(engine.default_params, body.model)
        return _params(body, replace(defaults, max_new_tokens=max(fit.max_new_tokens, 1)))

    async def events_of(
        request: Request,
        body: GenerationRequest,
        prompt: Prompt,
        params: GenerationParams,
        stop: threading.Event,
        shape: ReplyShape,
        calling: Calling | None,
        echo: str | None,
        steering: tuple[Any, LogitBias],
    ) -> Iterator[Event]:
        """One reply's events, read as `shape` writes them: its stop sequences, the prompt's text first where
        it is echoed, a thinking model's reasoning apart from its answer where the shape writes it apart (a
        reply that goes on in its message keeps its text as it was), its calls; `steering`: the format it is
        held to and its logit bias (`steering_of`)."""
        reply_format, bias = steering
        # A client's later turns may start from its earlier replies' caches, never from another's.
        client = request.client.host if request.client else ""
        events = engine.stream(body.model, prompt, params, stop, owner=f"api-{client}",
                               reply_format=reply_format, logprobs=body.logprobs_asked,
                               prompt_logprobs=None if echo is None else body.logprobs_asked,
                               generate=body.wanted_tokens != 0, bias=bias)  # fmt: skip
        if body.stop_sequences:
            events = until_stop_sequence(events, body.stop_sequences, stop)
        if echo is not None:
            events = _echoed(events, echo)
        if shape.reasoning_apart and body.thinking is not False and not isinstance(prompt, Continuation):
            tokenizer = await run_in_threadpool(engine.tokenizer, body.model)
            if tokenizer.thinks:
                inside = await run_in_threadpool(lambda: tokenizer.opens_thinking)
                events = with_reasoning(
                    events, inside, lambda text: len(tokenizer.encode(text)) if text else 0
                )
        if calling:
            streamed = body.stream and shape.streams_calls
            events = with_calls(events, calling.style, calling.names, streamed=streamed)
        return events

    async def steering_of(body: GenerationRequest, calling: Calling | None) -> tuple[Any, LogitBias]:
        """The format the reply is held to (calls: their own) and its logit bias, both checked before the
        model is touched."""
        reply_format = calling.held if calling else await run_in_threadpool(held_format, body)
        if not body.logit_bias:  # {}, which clients send by default, is none
            return reply_format, ()
        tokenizer = await run_in_threadpool(engine.tokenizer, body.model)
        return reply_format, logit_bias(body, tokenizer.vocabulary_size)

    async def reply(
        request: Request,
        body: GenerationRequest,
        prompt: Prompt,
        shape: ReplyShape,
        calling: Calling | None = None,
        echo: str | None = None,
        keep_alive: float | None = None,
    ) -> Any:
        """The reply to `body`'s `prompt` in `shape`; `calling`: the tools it may call; `echo`: the prompt's
        text, sent before the reply's (with its tokens' log-probabilities where the body asks them);
        `keep_alive`: the seconds the model stays loaded after it (Ollama's; None: the idle setting)."""
        steering = await steering_of(body, calling)
        params = await fitted(body, prompt)
        stop = threading.Event()
        events = await events_of(request, body, prompt, params, stop, shape, calling, echo, steering)
        try:
            first = await run_in_threadpool(next, events)  # the queue cap is checked on the first step
        except LocalLLMError as exc:
            raise from_core(exc) from exc
        if keep_alive is not None:  # the model is loaded for this reply by now
            engine.keep_alive(body.model, keep_alive)
        if body.stream:

            def ended() -> None:
                stop.set()
                threading.Thread(
                    target=_close_when_free, args=(events,), name="close-stream", daemon=True
                ).start()

            written = _sse(request, shape, first, events, body.usage_streamed)
            return _EngineStream(written, shape.media_type, ended)
        whole = run_in_threadpool(lambda: _complete(shape, _chain(first, events)))
        return await _until_done_or_gone(request, stop.set, whole)

    async def choices(
        request: Request,
        body: ChatCompletionRequest | CompletionRequest,
        asked: list[tuple[Prompt, str | None]],
        make_shape: Callable[[int], ChatShape | TextShape],
        calling: Calling | None = None,
    ) -> Any:
        """The replies to a request that asks several (`n` of each prompt, or a list of prompts), as one
        reply of several choices: choice i·n + j is prompt i's j-th (a seed given is the first choice's,
        the next ones' seed + 1, + 2: each different and reproducible). They run together in the engine's
        batch, as many at once as it runs together (core.api.together)."""
        n = body.n or 1
        steering = await steering_of(body, calling)
        shapes = [make_shape(index) for index in range(len(asked) * n)]
        for shape in shapes[1:]:
            shape.id, shape.created = shapes[0].id, shapes[0].created

        def start(prompt: Prompt, params: GenerationParams, shape: ReplyShape, echo: str | None) -> Start:
            return lambda stop: events_of(request, body, prompt, params, stop, shape, calling, echo, steering)

        starts = []
        for number, (prompt, echo) in enumerate(asked):
            params = await fitted(body, prompt)
            for j in range(n):
                seeded = params if params.seed is None else replace(params, seed=(params.seed + j) % 2**63)
                starts.append(start(prompt, seeded, shapes[number * n + j], echo))
        running = Choices(starts, lambda: engine.at_once(body.model))
        try:
            came = await running.begin()
        except LocalLLMError as exc:
            raise from_core(exc) from exc
        if body.stream:
            written = _sse_choices(request, shapes, n, came, running, body.usage_streamed)
            return _EngineStream(written, shapes[0].media_type, running.stop)
        return await _until_done_or_gone(request, running.stop, _whole_choices(shapes, n, came, running))

    def tool_use(body: ChatCompletionRequest | ResponseRequest) -> Calling | None:
        """How the reply may call tools (core.api.calls); 400 `tools_not_supported` where the request lists
        tools, or holds calls, and the model was not trained to call them as this server reads them."""
        asked = tools_asked(body)
        if asked is None and not body.uses_tools:
            return None
        try:
            tokenizer = engine.tokenizer(body.model)
            style = call_style(tokenizer.chat_template or "")
        except (LocalLLMError, OSError, ValueError) as exc:  # files changed since the list was read
            raise APIError(404, f"The model {body.model!r} is not ready: {exc}", code="model_not_found",
                           param="model") from exc  # fmt: skip
        if style is None:
            raise APIError(400, f"The model {body.model!r} was not trained to call tools (its chat template "
                           "writes no calls in a form this server reads: Hermes' <tool_call>, as Qwen's, or "
                           "Llama 3's JSON): send the request without tools, or with tool_choice \"none\".",
                           code="tools_not_supported", param="tools")  # fmt: skip
        return asked.held_by(style, tokenizer.thinks and body.thinking is not False) if asked else None

    @app.post("/v1/chat/completions", dependencies=[Depends(require_key)])
    async def chat_completions(request: Request) -> Any:
        body = await read(request, ChatCompletionRequest)
        calling = await run_in_threadpool(tool_use, body)
        logprobs_asked = body.logprobs_asked is not None
        prompt = chat_prompt(body, calling)
        if (body.n or 1) > 1:
            make = lambda index: ChatShape(body.model, logprobs_asked, index)  # noqa: E731
            return await choices(request, body, [(prompt, None)], make, calling)
        return await reply(request, body, prompt, ChatShape(body.model, logprobs_asked), calling)

    def completion_asked(body: CompletionRequest) -> list[tuple[RawPrompt | TokenPrompt, str]]:
        """A completion's prompts (token ids checked against the model's vocabulary), each with its text,
        what `echo` sends back (ids read back into text, special tokens written out)."""
        tokenizer = engine.tokenizer(body.model)
        prompts = [completion_prompt(asked, tokenizer.vocabulary_size) for asked in body.prompts]
        if body.suffix:  # each prompt is the text before the cursor (refused with token ids)
            prompts = [infilled(p.text, body.suffix, tokenizer, body.model) if isinstance(p, RawPrompt) else p
                       for p in prompts]  # fmt: skip
        return [(prompt, prompt.text) if isinstance(prompt, RawPrompt)
                else (prompt, tokenizer.decode(prompt.ids, skip_special_tokens=False))
                for prompt in prompts]  # fmt: skip

    @app.post("/v1/completions", dependencies=[Depends(require_key)])
    async def completions(request: Request) -> Any:
        body = await read(request, CompletionRequest)
        logprobs_asked = body.logprobs_asked is not None
        asked = [(prompt, text if body.echo else None)
                 for prompt, text in await run_in_threadpool(completion_asked, body)]  # fmt: skip
        if len(asked) > 1 or (body.n or 1) > 1:
            return await choices(
                request, body, asked, lambda index: TextShape(body.model, logprobs_asked, index)
            )
        [(prompt, echo)] = asked
        return await reply(request, body, prompt, TextShape(body.model, logprobs_asked), echo=echo)

    def tokenizer_of(asked: str | None) -> tuple[ChatTokenizer, int]:
        """The tokenizer of the model named, else of the only one loaded, else of the only one ready (vLLM
        serves one model: its clients name none), and the model's context."""
        if asked is not None:
            key = ready(asked)
        else:
            keys = models()
            loaded = [model.key for model in engine.loaded_models if model.key in keys]
            if len(loaded) == 1:
                key = loaded[0]
            elif len(keys) == 1:
                key = keys[0]
            else:
                names = ", ".join(keys[:20]) or "none is downloaded"
                raise APIError(400, f"Name the model whose tokenizer to use ('model'): {names}.",
                               code="invalid_request", param="model")  # fmt: skip
        return engine.tokenizer(key), engine.context_tokens(key)

    @app.post("/tokenize", dependencies=[Depends(require_key)])
    async def tokenize(request: Request) -> dict[str, Any]:
        raw = await raw_body(request)
        try:
            asks_chat = "messages" in json.loads(raw)
        except (ValueError, TypeError):  # no JSON object: `validated` says so
            asks_chat = False
        body = validated(TokenizeChatRequest if asks_chat else TokenizeTextRequest, raw)

        def tokenized() -> dict[str, Any]:
            tokenizer, context = tokenizer_of(body.model)
            return tokenizing.tokenized(tokenizer, body, context)

        return await run_in_threadpool(tokenized)

    @app.post("/detokenize", dependencies=[Depends(require_key)])
    async def detokenize(request: Request) -> dict[str, str]:
        body = validated(DetokenizeRequest, await raw_body(request))
        return await run_in_threadpool(lambda: tokenizing.detokenized(tokenizer_of(body.model)[0], body))

    @app.get("/tokenizer_info", dependencies=[Depends(require_key)])
    def tokenizer_info(model: str | None = None) -> dict[str, Any]:
        """A sync route: FastAPI runs it in its thread pool (the tokenizer may be read from disk)."""
        tokenizer, context = tokenizer_of(model)
        return tokenizing.tokenizer_info(tokenizer, context)

    def entry(key: str) -> dict[str, Any]:
        """A model as Ollama lists it: its files' size, its family (config.json's model_type)."""
        folder = engine.models_dir / key
        try:
            size = sum(path.stat().st_size for path in folder.glob("*.safetensors"))
            family = str(
                json.loads((folder / "config.json").read_text(encoding="utf-8")).get("model_type", "")
            )
        except (OSError, ValueError):  # files changed since the list was read
            size, family = 0, ""
        return ollama.model_entry(key, size, family, card(key).max_model_len)

    @app.get("/api/version")
    def ollama_version() -> dict[str, str]:
        """Ollama clients ask it before anything else; no key needed (as /health)."""
        return {"version": ollama.VERSION}

    @app.get("/api/tags", dependencies=[Depends(require_key)])
    def ollama_tags() -> dict[str, Any]:
        return {"models": [entry(key) for key in models()]}

    @app.get("/api/ps", dependencies=[Depends(require_key)])
    def ollama_running() -> dict[str, Any]:
        """The loaded models, used last first, each with the memory it takes (its weights as loaded and
        the copy kept for prompts: what `ollama ps` shows as its size; on a GPU, all of it there)."""
        served, copies, listed = models(), engine.prompt_copies, []
        for loaded in engine.loaded_models:
            if loaded.key in served:
                size = loaded.memory_bytes + copies.get(loaded.key, 0)
                listed.append(entry(loaded.key) | {
                    "size": size, "size_vram": size if loaded.device == "cuda" else 0,
                    "expires_at": ollama.expires_at(engine.idle_seconds_left(loaded.key)),
                })  # fmt: skip
        return {"models": listed}

    @app.post("/api/show", dependencies=[Depends(require_key)])
    async def ollama_show(request: Request) -> dict[str, Any]:
        key = ready(ollama.model_key(ollama.shown_name(await raw_body(request))))
        return await run_in_threadpool(lambda: ollama.shown(entry(key), engine.tokenizer(key)))

    async def ollama_asked(request: Request, chat: bool) -> tuple[Any, float | None]:
        """An Ollama chat's or generate's body as the request it means (core.api.ollama), checked, and its
        keep-alive in seconds; or, for a chat without messages or a generate without a prompt (Ollama's
        way to load a model), the model loaded before the answer that says so, in its turn and beside
        those loaded, as for a reply; with keep_alive 0 (Ollama's way to unload
        one), the model unloaded, at once where no reply runs or waits for it, else as soon as they end."""
        raw = await raw_body(request)
        body, keep_alive = ollama.chat_request(raw) if chat else ollama.generate_request(raw)
        if body is not None:
            return known(_checked(body)), keep_alive
        key = ready(ollama.model_key(ollama.shown_name(raw)))
        if keep_alive == 0:
            if not await run_in_threadpool(engine.unload_if_idle, key):
                engine.keep_alive(key, 0)
            return ollama.loading(key, chat, "unload"), None
        if keep_alive is not None:
            engine.keep_alive(key, keep_alive)
        await run_in_threadpool(engine.load_in_turn, key)
        return ollama.loading(key, chat, "load"), None

    @app.post("/api/chat", dependencies=[Depends(require_key)])
    async def ollama_chat(request: Request) -> Any:
        body, keep_alive = await ollama_asked(request, chat=True)
        if isinstance(body, dict):  # loading
            return body
        calling = await run_in_threadpool(tool_use, body)
        shape = ollama.OllamaShape(body.model, chat=True, logprobs_asked=body.logprobs_asked is not None)
        return await reply(request, body, chat_prompt(body, calling), shape, calling, keep_alive=keep_alive)

    @app.post("/api/generate", dependencies=[Depends(require_key)])
    async def ollama_generate(request: Request) -> Any:
        body, keep_alive = await ollama_asked(request, chat=False)
        if isinstance(body, dict):  # loading
            return body
        shape = ollama.OllamaShape(body.model, chat=False, logprobs_asked=body.logprobs_asked is not None)
        if isinstance(body, CompletionRequest):
            [(prompt, _)] = await run_in_threadpool(completion_asked, body)
        else:
            prompt = chat_prompt(body)
        return await reply(request, body, prompt, shape, keep_alive=keep_alive)

    def embedded(
        model: str, inputs: list[Any], truncate: bool, dimensions: int | None
    ) -> tuple[list[Any], int]:
        """The inputs' embeddings (core.api.embeddings) and the tokens read; run in a worker thread."""
        tokenizer, context = engine.tokenizer(model), engine.context_tokens(model)
        ids = embeddings.token_inputs(tokenizer, inputs, context, truncate)
        vectors = []
        try:  # a few inputs a turn: the replies that wait go between, as they would between requests
            for start in range(0, len(ids), embeddings.INPUTS_A_TURN):
                vectors += engine.embed(model, ids[start : start + embeddings.INPUTS_A_TURN])
        except LocalLLMError as exc:
            raise from_core(exc, "input") from exc
        return embeddings.shortened(vectors, dimensions), sum(len(each) for each in ids)

    @app.post("/v1/embeddings", dependencies=[Depends(require_key)])
    async def openai_embeddings(request: Request) -> dict[str, Any]:
        body = known(validated(EmbeddingRequest, await raw_body(request)))
        vectors, tokens = await run_in_threadpool(embedded, body.model, body.inputs, False, body.dimensions)
        return embeddings.openai_list(body.model, vectors, tokens, body.encoding_format)

    async def ollama_embedded(request: Request) -> tuple[str, list[Any], int, float]:
        """An Ollama embed's model, vectors, tokens read and seconds taken."""
        started = time.perf_counter()
        body = validated(ollama.EmbedAsked, await raw_body(request))
        key, keep_alive = ready(ollama.model_key(body.model)), ollama.seconds_of(body.keep_alive)
        if not body.inputs:
            raise APIError(400, "Missing required parameter: 'input'.", param="input")
        vectors, tokens = await run_in_threadpool(embedded, key, body.inputs, body.truncate, body.dimensions)
        if keep_alive is not None:
            engine.keep_alive(key, keep_alive)
        return key, vectors, tokens, time.perf_counter() - started

    @app.post("/api/embed", dependencies=[Depends(require_key)])
    async def ollama_embed(request: Request) -> dict[str, Any]:
        key, vectors, tokens, seconds = await ollama_embedded(request)
        return {"model": key + ollama.LATEST, "embeddings": vectors, "total_duration": int(seconds * 1e9),
                "load_duration": 0, "prompt_eval_count": tokens}  # fmt: skip

    @app.post("/api/embeddings", dependencies=[Depends(require_key)])
    async def ollama_embeddings(request: Request) -> dict[str, Any]:
        """Ollama's older route: one `prompt`, one `embedding`."""
        return {"embedding": (await ollama_embedded(request))[1][0]}

    if library is not None:

        def this_machines(request: Request, what: str) -> None:
            """403 for a client on the LAN: the models disk is this machine's programs' to change."""
            if not is_loopback(request.client.host if request.client else ""):
                raise APIError(403, f"Models are {what} by this machine's programs only (the dashboard's "
                               "Models page, `localllm`), not from the LAN.", "permission_error")  # fmt: skip

        @app.post("/api/pull", dependencies=[Depends(require_key)])
        async def ollama_pull(request: Request) -> Any:
            """A download asked by a program of this machine (core.api.pulls); a LAN client is refused."""
            this_machines(request, "downloaded")
            body = validated(ollama.PullAsked, await raw_body(request))
            key = await run_in_threadpool(pulls.catalog_key, library, body.name_asked)
            lines = pulls.pull_lines(library, key)
            if body.stream:
                written = (json.dumps(line, ensure_ascii=False) + "\n" for line in lines)
                return StreamingResponse(
                    iterate_in_threadpool(written), media_type=ollama.OllamaShape.media_type
                )
            last = await run_in_threadpool(lambda: list(lines)[-1])
            if "error" in last:
                raise APIError(500, last["error"], "server_error")
            return last

        @app.delete("/api/delete", dependencies=[Depends(require_key)])
        async def ollama_delete(request: Request) -> dict[str, Any]:
            """A downloaded model's files deleted (it stays in the catalog, as the Models page leaves it),
            unloaded first; refused while it answers or downloads."""
            this_machines(request, "deleted")
            key = ready(ollama.model_key(ollama.shown_name(await raw_body(request))))
            if not await run_in_threadpool(engine.unload_if_idle, key):
                raise APIError(409, f"{key} is answering now: delete it when its replies end.", code="in_use")
            await run_in_threadpool(library.delete, key)
            return {}

    @app.post("/v1/messages", dependencies=[Depends(require_key)])
    async def messages(request: Request) -> Any:
        body = known(_checked(anthropic.messages_request(await raw_body(request))))
        calling = await run_in_threadpool(tool_use, body)
        return await reply(
            request, body, chat_prompt(body, calling), anthropic.MessagesShape(body.model), calling
        )

    @app.post("/v1/messages/count_tokens", dependencies=[Depends(require_key)])
    async def count_message_tokens(request: Request) -> dict[str, int]:
        """Anthropic's: the tokens the prompt of these messages, system prompt and tools takes."""
        body = known(anthropic.counted_request(await raw_body(request)))
        calling = await run_in_threadpool(tool_use, body)
        prompt = chat_prompt(body, calling)
        return {"input_tokens": await run_in_threadpool(engine.count_tokens, body.model, prompt)}

    @app.post("/v1/responses", dependencies=[Depends(require_key)])
    async def responses(request: Request) -> Any:
        body = await read(request, ResponseRequest)
        said = {"instructions": body.instructions, "max_output_tokens": body.max_output_tokens,
                "temperature": body.temperature, "top_p": body.top_p, "tools": body.tools_said,
                "tool_choice": body.tool_choice_said, "top_logprobs": body.top_logprobs,
                "parallel_tool_calls": body.parallel_tool_calls,
                "previous_response_id": body.previous_response_id}  # fmt: skip
        asked, previous = body.input_items, body.previous_response_id
        if previous is not None:  # the conversation so far, then this input
            body = body.model_copy(update={"input": [*kept_responses.conversation(previous), *asked]})
        calling = await run_in_threadpool(tool_use, body)
        messages = tuple(input_messages(body))
        prompt = ToolUse(messages, calling.tools) if calling else list(messages)
        keep = (lambda response: kept_responses.keep(response, asked, previous)) if body.store else None
        shape = ResponseShape(body.model, said, body.logprobs_asked is not None, keep)
        return await reply(request, body, prompt, shape, calling)

    @app.get("/v1/responses/{response_id}", dependencies=[Depends(require_key)])
    def kept_response(response_id: str) -> dict[str, Any]:
        return kept_responses.get(response_id).response

    @app.get("/v1/responses/{response_id}/input_items", dependencies=[Depends(require_key)])
    def response_input_items(
        response_id: str,
        after: str | None = None,
        before: str | None = None,
        limit: str = "20",
        order: str = "desc",
    ) -> dict[str, Any]:
        if not (limit.isascii() and limit.isdigit() and 1 <= int(limit) <= 100):
            raise APIError(400, "limit must be a whole number from 1 to 100.", code="invalid_request",
                           param="limit")  # fmt: skip
        if order not in ("asc", "desc"):
            raise APIError(400, "order must be 'asc' or 'desc'.", code="invalid_request", param="order")
        page = kept_responses.input_items(
            response_id, after=after, before=before, limit=int(limit), order=order
        )
        return page.body()

    @app.delete("/v1/responses/{response_id}", dependencies=[Depends(require_key)])
    def forget_response(response_id: str) -> dict[str, Any]:
        kept_responses.delete(response_id)
        return {"id": response_id, "object": "response", "deleted": True}

    return app


Body = TypeVar("Body", ChatCompletionRequest, CompletionRequest, ResponseRequest)


def _checked(body: Body) -> Body:
    """What a valid body may ask that this server cannot give: 400 naming it, never ignored."""
    if isinstance(body, CompletionRequest):
        _check_completion(body)
    elif isinstance(body, ChatCompletionRequest):  # (a response asks nothing this server cannot give)
        _check_chat(body)
    return body


def _check_completion(body: CompletionRequest) -> None:
    """What a text completion may ask that this server cannot give: 400 naming it, never ignored."""
    if (body.best_of or 1) > 1:
        raise APIError(400, "This server does not take 'best_of' with a completion: send the request without "
                       "it ('n' asks for several replies).", code="unsupported_parameter",
                       param="best_of")  # fmt: skip
    if body.suffix and (body.echo or not all(isinstance(prompt, str) for prompt in body.prompts)):
        raise APIError(400, "'suffix' goes with a prompt of text, the text before the cursor, and without "
                       "echo.", code="invalid_request", param="suffix")  # fmt: skip
    if not body.prompts:
        raise APIError(400, "The prompt list is empty: send one prompt, as text or token ids.",
                       code="invalid_request", param="prompt")  # fmt: skip
    if (replies := len(body.prompts) * (body.n or 1)) > MAX_REPLIES:
        raise APIError(400, f"A request asks for at most {MAX_REPLIES} replies (n × prompts), not "
                       f"{replies}: send the rest in another request.", code="invalid_request",
                       param="prompt")  # fmt: skip
    if body.max_tokens == 0 and not body.echo:
        raise APIError(400, "max_tokens 0 goes with echo true (the prompt back, with its tokens' "
                       "log-probabilities where logprobs asks them).", code="invalid_request",
                       param="max_tokens")  # fmt: skip


def _check_chat(body: ChatCompletionRequest) -> None:
    """What a chat completion may ask that this server cannot give: 400 naming it, never ignored."""
    if body.top_logprobs is not None and not body.logprobs:
        raise APIError(
            400, "top_logprobs goes with logprobs true.", code="invalid_request", param="top_logprobs"
        )
    if body.functions:
        raise APIError(400, "'functions' is OpenAI's older form of tools: send them as 'tools' (each "
                       "{\"type\": \"function\", \"function\": …}).", code="unsupported_parameter",
                       param="functions")  # fmt: skip


def _params(body: GenerationRequest, defaults: GenerationParams) -> GenerationParams:
    """The request's sampling settings over `defaults` (what it leaves out)."""
    names = ("temperature", "top_p", "repetition_penalty", "presence_penalty", "frequency_penalty", "top_k",
             "min_p", "seed")  # fmt: skip
    given = {name: getattr(body, name) for name in names} | {"thinking": body.thinking}
    return replace(defaults, **{name: value for name, value in given.items() if value is not None})


def _echoed(events: Iterator[Event], text: str) -> Iterator[Event]:
    """`events` with the prompt's `text` before the reply's: after its tokens' log-probabilities, where
    they come first, else before anything the reply says."""
    try:
        for event in events:
            if text is not None and isinstance(event, Logprobs | TextDelta | Finished):
                if isinstance(event, Logprobs):
                    yield event
                yield TextDelta(text)
                text = None
                if isinstance(event, Logprobs):
                    continue
            yield event
    finally:
        events.close()  # type: ignore[attr-defined]  # frees the engine's turn, however this ends


def _chain(first: Event, events: Iterator[Event]) -> Iterator[Event]:
    yield first
    yield from events


def _complete(shape: ReplyShape, events: Iterable[Event]) -> dict[str, Any]:
    return shape.whole(_read_whole(events, shape.logprobs_asked))


def _read_whole(events: Iterable[Event], logprobs_asked: bool) -> WholeReply:
    """A reply's events read to its end (its tokens' log-probabilities None where not asked)."""
    text, stats, calls, chances, reasoning = [], None, (), [], []
    for event in events:
        if isinstance(event, TextDelta):
            text.append(event.text)
        elif isinstance(event, ReasoningDelta):
            reasoning.append(event.text)
        elif isinstance(event, Logprobs):
            chances += event.tokens
        elif isinstance(event, CallsMade):
            calls = event.calls
        elif isinstance(event, Finished):
            stats = event.stats
    assert stats is not None  # the engine always ends with Finished
    said = tuple(chances) if logprobs_asked else None
    return WholeReply("".join(text), stats, calls, said, "".join(reasoning))


async def _whole_choices(
    shapes: list[ReplyShape], n: int, came: list[Item], running: Choices
) -> dict[str, Any]:
    """A reply of several choices, each read to its end and written whole by its own writer."""
    events: list[list[Event]] = [[] for _ in shapes]
    async for index, item in _chain_async(came, running.rest()):
        if isinstance(item, LocalLLMError):
            running.stop()
            raise from_core(item)
        if isinstance(item, Exception):
            running.stop()
            raise item
        if item is not None:
            events[index].append(item)
    replies = [_read_whole(said, shape.logprobs_asked) for said, shape in zip(events, shapes, strict=True)]
    wholes = [shape.whole(reply) for shape, reply in zip(shapes, replies, strict=True)]
    return shapes[0].with_choices(wholes, usage_of_choices([reply.stats for reply in replies], n))


async def _until_done_or_gone(request: Request, stop: Callable[[], None], work: Awaitable[Any]) -> Any:
    """Await `work`; if the client disconnects meanwhile, `stop` (generation ends within a token) instead
    of finishing a reply nobody will read."""

    async def watch() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                stop()
                return

    watcher = asyncio.create_task(watch())
    try:
        return await work
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher


class _EngineStream(StreamingResponse):
    """An SSE response that, however it ends (finished, client gone, cancelled), calls `ended`: it stops
    generation and frees the engine's queue. An abandoned body iterator's own cleanup would wait for
    garbage collection, which can hold the engine for good."""

    def __init__(self, content: AsyncIterator[str], media_type: str, ended: Callable[[], None]) -> None:
        super().__init__(content, media_type=media_type)
        self._ended = ended

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._ended()


async def _sse(
    request: Request, shape: ReplyShape, first: Event, events: Iterator[Event], include_usage: bool
) -> AsyncIterator[str]:
    """Server-sent events. The server may drop writes to a closed connection without an error, so
    the disconnect is checked after every event."""
    sentinel = object()
    try:
        for written in shape.opening():
            yield written
        event: Any = first
        while event is not sentinel:
            written_now = (
                shape.closing(event.stats, include_usage)
                if isinstance(event, Finished)
                else _written(shape, event)
            )
            for written in written_now:
                yield written
            if await request.is_disconnected():
                return
            event = await run_in_threadpool(next, events, sentinel)
    except LocalLLMError as exc:
        for written in shape.failure(exc.message):
            yield written


def _written(
    shape: ReplyShape, event: Event | ReasoningDelta | CallBegun | CallArguments | CallsMade
) -> list[str]:
    """What `shape` writes of a reply's event before its end (nothing of a place in line)."""
    if isinstance(event, TextDelta):
        return shape.piece(event.text)
    if isinstance(event, ReasoningDelta):
        return shape.reasoning(event.text)
    if isinstance(event, CallBegun):
        return shape.call_begun(event.index, event.name)
    if isinstance(event, CallArguments):
        return shape.call_arguments(event.index, event.text)
    if isinstance(event, CallsMade):
        return shape.calls(event.calls, event.cut)
    if isinstance(event, Logprobs):
        shape.logprobs_came(event.tokens)  # they go out with the next piece
    return []


async def _sse_choices(
    request: Request,
    shapes: list[ChatShape | TextShape],
    n: int,
    came: list[Item],
    running: Choices,
    include_usage: bool,
) -> AsyncIterator[str]:
    """Server-sent events of several choices, each chunk naming its choice's index, in the order their
    events come; the usage of them all after the last one's end, then [DONE]."""
    stats: list[ReplyStats | None] = [None] * len(shapes)
    try:
        for shape in shapes:
            for written in shape.opening():
                yield written
        async for index, item in _chain_async(came, running.rest()):
            shape = shapes[index]
            if isinstance(item, Exception):
                running.stop()
                for written in shape.failure(item.message if isinstance(item, LocalLLMError) else str(item)):
                    yield written
                return
            if isinstance(item, Finished):
                stats[index] = item.stats
                yield shape.ending(item.stats)
            elif item is not None:
                for written in _written(shape, item):
                    yield written
            if await request.is_disconnected():
                return
        usage = usage_of_choices([s for s in stats if s is not None], n) if include_usage else None
        for written in shapes[0].finale(usage):
            yield written
    finally:
        running.stop()


async def _chain_async(came: list[Item], rest: AsyncIterator[Item]) -> AsyncIterator[Item]:
    for item in came:
        yield item
    async for item in rest:
        yield item


def _close_when_free(events: Iterator[Event]) -> None:
    """Close the engine stream, freeing its turn in the queue, once no next() runs in it any more.

    A cancelled request may leave a next() running in a worker thread; close() raises until it ends,
    which is soon, since the stop event is set. Waiting for garbage collection could take forever.
    """
    while True:
        try:
            events.close()  # type: ignore[attr-defined]
            return
        except ValueError:  # "generator already executing"
            time.sleep(0.01)
