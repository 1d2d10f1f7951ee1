"""Request and response bodies of the OpenAI-compatible API, as pydantic models.

Requests are validated here before anything else happens: types, ranges (`max_tokens` a positive
integer, finite temperatures), and sizes (how many messages, how long a model name). Unknown fields
that OpenAI clients send (`user`, `metadata`, ...) are ignored. Tools are functions (a chat completion's
and a response's shapes of them); both requests say which in the chat completion's shape (`listed_tools`).
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt

from core.preferences import MAX_PARALLEL

FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
MAX_MESSAGES = 10_000
MAX_STOP_SEQUENCES = 16  # OpenAI takes 4; vLLM and llama.cpp more (code completion clients send ~10)
StopSequence = Annotated[str, Field(min_length=1, max_length=500)]
MAX_PATTERN_CHARS, MAX_CHOICES = 2_000, 200  # vLLM's guided_regex and guided_choice
GuidedChoice = Annotated[str, Field(min_length=1, max_length=500)]
RESPONSE_TEXT_PARTS = frozenset({"input_text", "output_text", "text"})  # a response's input parts of text
MAX_TOOLS = 128  # OpenAI's limit
# A request's replies (n × prompts): the most the engine generates together (its `parallel_replies` at
# most); each is held until the last ends, with its tokens' log-probabilities where asked.
MAX_REPLIES = MAX_PARALLEL
MAX_TOP_LOGPROBS = 20  # OpenAI's and vLLM's
LOGPROBS_INCLUDED = "message.output_text.logprobs"  # a response's `include` asking for them
ToolName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]  # OpenAI's rule for a function's name
ToolCallId = Annotated[str, Field(max_length=100)]
TokenIds = Annotated[list[Annotated[StrictInt, Field(ge=0)]], Field(min_length=1)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class ContentPart(_Request):
    type: str = Field(max_length=40)
    text: str | None = None


class CalledFunction(_Request):
    name: str = Field(max_length=64)
    arguments: str  # a JSON object's text, as OpenAI sends it back


class ToolCallMade(_Request):
    """A call an assistant's message made, sent back with the conversation."""

    id: ToolCallId | None = None
    type: Literal["function"] = "function"
    function: CalledFunction


class _Said(_Request):
    """What holds text, or parts of it (`said`): the parts of other kinds (images, audio) are named."""

    text_parts: ClassVar[frozenset[str]] = frozenset({"text"})

    @property
    def said(self) -> str | list[ContentPart] | None:
        raise NotImplementedError

    def parts_other_than_text(self) -> list[str]:
        if not isinstance(self.said, list):
            return []
        return [part.type for part in self.said if part.type not in self.text_parts]

    def text(self) -> str:
        if isinstance(self.said, list):
            return "".join(part.text or "" for part in self.said)
        return self.said or ""


class ChatMessage(_Said):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    tool_calls: Annotated[list[ToolCallMade], Field(max_length=MAX_TOOLS)] | None = None
    tool_call_id: ToolCallId | None = None  # a tool's message: the call it answers

    @property
    def said(self) -> str | list[ContentPart] | None:
        return self.content


class StreamOptions(_Request):
    include_usage: bool = False


class JsonSchemaSpec(_Request):
    """A chat completion's `json_schema` format: the schema the reply must fit (`strict` or not: held)."""

    name: str | None = Field(None, max_length=64)
    schema_: dict[str, Any] | None = Field(None, alias="schema")


class ResponseFormat(_Request):
    """OpenAI's `response_format` (`text`, `json_object`, `json_schema` with its `json_schema`), or a
    response's `text.format`, whose schema is beside its type."""

    type: str = Field(max_length=40)
    json_schema: JsonSchemaSpec | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")

    @property
    def schema_given(self) -> dict[str, Any] | None:
        return self.json_schema.schema_ if self.json_schema else self.schema_


class FunctionSpec(_Request):
    name: ToolName
    description: str | None = None
    parameters: dict[str, Any] | None = None  # a JSON schema of the arguments (None: none asked)
    strict: StrictBool | None = None


class ToolSpec(_Request):
    """A function a reply may call (OpenAI's chat completions' `tools`)."""

    type: Literal["function"]
    function: FunctionSpec


class NamedFunction(_Request):
    name: ToolName


class NamedToolChoice(_Request):
    """`tool_choice` naming the function the reply must call."""

    type: Literal["function"]
    function: NamedFunction


class ChatTemplateOptions(_Request):
    """vLLM's `chat_template_kwargs`: only Qwen3's switch is read (its other keys are ignored)."""

    enable_thinking: StrictBool | None = None


class GenerationRequest(_Request):
    """What chat and text completions share: the model, streaming, sampling, stop sequences."""

    model: str = Field(max_length=200)
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: FiniteFloat | None = Field(None, ge=0, le=2)
    top_p: FiniteFloat | None = Field(None, gt=0, le=1)
    max_tokens: StrictInt | None = Field(None, ge=1)
    repetition_penalty: FiniteFloat | None = Field(None, ge=0.5, le=2)
    presence_penalty: FiniteFloat | None = Field(None, ge=-2, le=2)
    frequency_penalty: FiniteFloat | None = Field(None, ge=-2, le=2)
    top_k: StrictInt | None = Field(None, ge=0, le=1000)  # vLLM's and llama.cpp's extension; 0: no limit
    min_p: FiniteFloat | None = Field(None, ge=0, lt=1)
    seed: StrictInt | None = Field(None, ge=0, lt=2**63)
    n: StrictInt | None = Field(None, ge=1, le=MAX_REPLIES)  # replies to each prompt, run together
    stop: StopSequence | Annotated[list[StopSequence], Field(max_length=MAX_STOP_SEQUENCES)] | None = None
    # token id (as text) → what is added to its logit: OpenAI's range and its limit of 300 tokens
    logit_bias: dict[str, Annotated[FiniteFloat, Field(ge=-100, le=100)]] | None = Field(None, max_length=300)
    # vLLM's structured outputs beside OpenAI's response_format: a JSON schema, a regular expression, or
    # one of a few texts (classification: ["positive", "negative"]).
    guided_json: dict[str, Any] | None = None
    guided_regex: str | None = Field(None, min_length=1, max_length=MAX_PATTERN_CHARS)
    guided_choice: Annotated[list[GuidedChoice], Field(min_length=1, max_length=MAX_CHOICES)] | None = None

    @property
    def wanted_tokens(self) -> int | None:
        return self.max_tokens

    @property
    def usage_streamed(self) -> bool:
        """Whether a stream ends with the usage (OpenAI's `stream_options.include_usage`)."""
        return bool(self.stream_options and self.stream_options.include_usage)

    @property
    def prompt_param(self) -> str:
        """The parameter that holds the prompt, named where it is refused."""
        return "messages"

    @property
    def logprobs_asked(self) -> int | None:
        """How many alternatives each token's log-probability comes with (None: none asked)."""
        return None

    @property
    def thinking(self) -> bool | None:
        """False where the request asks a thinking model (Qwen3) to answer without reasoning first."""
        return None

    @property
    def stop_sequences(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())

    @property
    def format_asked(self) -> tuple[ResponseFormat | None, str]:
        """The format the reply is asked in (None: text), and the parameter that asks it."""
        return None, "response_format"


class ChatCompletionRequest(GenerationRequest):
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_completion_tokens: StrictInt | None = Field(None, ge=1)
    tools: Annotated[list[ToolSpec], Field(max_length=MAX_TOOLS)] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: StrictBool = True
    functions: list[Any] | None = None  # OpenAI's older form of tools: refused by name, never ignored
    logprobs: StrictBool | None = None
    top_logprobs: StrictInt | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    response_format: ResponseFormat | None = None
    chat_template_kwargs: ChatTemplateOptions | None = None  # vLLM's: {"enable_thinking": false}
    reasoning_effort: str | None = Field(None, max_length=20)  # "none": OpenAI's and Ollama's no reasoning
    # vLLM's: the reply goes on in the last (assistant) message, not a new one: a prefilled reply.
    continue_final_message: StrictBool = False
    add_generation_prompt: StrictBool = True

    @property
    def wanted_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    @property
    def logprobs_asked(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None

    @property
    def listed_tools(self) -> tuple[dict[str, Any], ...]:
        """The tools as the chat template lists them: `{"type": "function", "function": {...}}`."""
        return tuple(
            tool.model_dump(exclude_none=True, exclude={"function": {"strict"}}) for tool in self.tools or ()
        )

    @property
    def tool_asked(self) -> str | None:
        """The tool_choice: "none", "auto", "required", the name of the function to call, or None."""
        choice = self.tool_choice
        return choice.function.name if isinstance(choice, NamedToolChoice) else choice

    @property
    def uses_tools(self) -> bool:
        """Whether the conversation holds calls or their results."""
        return any(message.role == "tool" or message.tool_calls for message in self.messages)

    @property
    def thinking(self) -> bool | None:
        if self.chat_template_kwargs and self.chat_template_kwargs.enable_thinking is not None:
            return self.chat_template_kwargs.enable_thinking
        return False if self.reasoning_effort == "none" else None

    @property
    def format_asked(self) -> tuple[ResponseFormat | None, str]:
        return self.response_format, "response_format"


class CompletionRequest(GenerationRequest):
    """OpenAI's legacy text completion (/v1/completions): text the model continues, without the chat
    template (code completion: a fill-in-the-middle prompt the client wrote). Prompts as text or as
    token ids, one or a list (each gets `n` replies, all run together); `echo`: the prompt comes back
    before the reply, with its tokens' log-probabilities where they are asked (lm-eval's loglikelihood);
    `max_tokens` 0 with `echo`: the prompt only."""

    prompt: str | TokenIds | list[str] | list[TokenIds]
    max_tokens: StrictInt | None = Field(16, ge=0)  # OpenAI's and vLLM's default here
    echo: StrictBool = False
    suffix: str | None = None
    logprobs: StrictInt | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    best_of: StrictInt | None = Field(None, ge=1)

    @property
    def prompt_param(self) -> str:
        return "prompt"

    @property
    def prompts(self) -> list[str] | list[TokenIds]:
        """The prompts sent, each as text or as token ids."""
        prompt = self.prompt
        return [prompt] if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)) else prompt

    @property
    def logprobs_asked(self) -> int | None:
        return self.logprobs


MAX_INPUTS = 2048  # an embeddings request's inputs: OpenAI's limit


class EmbeddingRequest(_Request):
    """POST /v1/embeddings: texts or token ids, each embedded alone (core.inference.embedding)."""

    model: str = Field(max_length=200)
    input: (
        str | TokenIds | Annotated[list[str], Field(min_length=1, max_length=MAX_INPUTS)]
        | Annotated[list[TokenIds], Field(min_length=1, max_length=MAX_INPUTS)]
    )  # fmt: skip
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: StrictInt | None = Field(None, ge=1)

    @property
    def inputs(self) -> list[str] | list[TokenIds]:
        asked = self.input
        return [asked] if isinstance(asked, str) or (asked and isinstance(asked[0], int)) else asked  # type: ignore[list-item]


class TokenizeTextRequest(_Request):
    """vLLM's POST /tokenize of a text: its ids, with the tokens the tokenizer adds around a text (a BOS)
    unless `add_special_tokens` is false. `model` may be left out (the one loaded)."""

    model: str | None = Field(None, max_length=200)
    prompt: str
    add_special_tokens: StrictBool = True
    return_token_strs: StrictBool = False


class TokenizeChatRequest(ChatCompletionRequest):
    """vLLM's POST /tokenize of a conversation: the ids of its prompt under the chat template, as a chat
    completion reads it."""

    model: str | None = Field(None, max_length=200)  # type: ignore[assignment]
    return_token_strs: StrictBool = False


class DetokenizeRequest(_Request):
    """vLLM's POST /detokenize: the text of token ids (special tokens written out)."""

    model: str | None = Field(None, max_length=200)
    tokens: list[Annotated[StrictInt, Field(ge=0)]]


class InputMessage(_Said):
    """An item of a response's `input`: a message (the Responses API's `easy` form, or typed)."""

    text_parts: ClassVar[frozenset[str]] = RESPONSE_TEXT_PARTS
    type: Literal["message"] = "message"
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart]

    @property
    def said(self) -> str | list[ContentPart]:
        return self.content


class FunctionCallItem(_Request):
    """A call the model made, sent back in a response's `input`."""

    type: Literal["function_call"]
    call_id: ToolCallId
    name: str = Field(max_length=64)
    arguments: str


class FunctionCallOutputItem(_Said):
    """A tool's result for a call, in a response's `input`: text, or parts of text."""

    text_parts: ClassVar[frozenset[str]] = RESPONSE_TEXT_PARTS
    type: Literal["function_call_output"]
    call_id: ToolCallId
    output: str | list[ContentPart]

    @property
    def said(self) -> str | list[ContentPart]:
        return self.output


class ReasoningItem(_Request):
    """A response's reasoning sent back with the next input (the Agents SDK sends every output item back):
    taken and left out, as chat templates leave a reply's reasoning out of the history."""

    type: Literal["reasoning"]


InputItem = InputMessage | FunctionCallItem | FunctionCallOutputItem | ReasoningItem


class ResponseTool(_Request):
    """A function a response may call (the Responses API's shape: name and parameters beside the type)."""

    type: Literal["function"]
    name: ToolName
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: StrictBool | None = None


class ResponseToolChoice(_Request):
    type: Literal["function"]
    name: ToolName


class ReasoningOptions(_Request):
    effort: str | None = Field(None, max_length=20)


class TextOptions(_Request):
    format: ResponseFormat | None = None


class ResponseRequest(GenerationRequest):
    """OpenAI's Responses API: `input` (text, or messages, and function calls with their outputs) after
    optional `instructions`, following the conversation of `previous_response_id` where given (kept:
    core.api.kept; the earlier instructions are not carried over, as OpenAI's); `store` false keeps
    this one from being followed."""

    input: str | Annotated[list[InputItem], Field(min_length=1, max_length=MAX_MESSAGES)]
    instructions: str | None = None
    max_output_tokens: StrictInt | None = Field(None, ge=1)
    previous_response_id: str | None = Field(None, max_length=200)
    store: StrictBool = True
    tools: Annotated[list[ResponseTool], Field(max_length=MAX_TOOLS)] | None = None
    tool_choice: Literal["none", "auto", "required"] | ResponseToolChoice | None = None
    parallel_tool_calls: StrictBool = True
    text: TextOptions | None = None
    reasoning: ReasoningOptions | None = None
    top_logprobs: StrictInt | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    include: Annotated[list[Annotated[str, Field(max_length=100)]], Field(max_length=20)] | None = None

    @property
    def wanted_tokens(self) -> int | None:
        return self.max_output_tokens or self.max_tokens

    @property
    def input_items(self) -> list[InputItem]:
        """The input as items (a text is the user's message)."""
        asked = self.input
        return [InputMessage(role="user", content=asked)] if isinstance(asked, str) else asked

    @property
    def listed_tools(self) -> tuple[dict[str, Any], ...]:
        """The tools in the chat completion's shape, as the chat template lists them."""
        return tuple(
            {"type": "function", "function": tool.model_dump(exclude_none=True, exclude={"type", "strict"})}
            for tool in self.tools or ()
        )

    @property
    def tool_asked(self) -> str | None:
        choice = self.tool_choice
        return choice.name if isinstance(choice, ResponseToolChoice) else choice

    @property
    def uses_tools(self) -> bool:
        return not isinstance(self.input, str) and any(
            item.type in ("function_call", "function_call_output") for item in self.input
        )

    @property
    def logprobs_asked(self) -> int | None:
        """Where `include` asks for the text's log-probabilities (or `top_logprobs` is given)."""
        if LOGPROBS_INCLUDED in (self.include or ()) or self.top_logprobs is not None:
            return self.top_logprobs or 0
        return None

    @property
    def tools_said(self) -> list[dict[str, Any]]:
        """The tools as a response repeats them."""
        return [tool.model_dump(exclude_none=True) for tool in self.tools or ()]

    @property
    def tool_choice_said(self) -> str | dict[str, Any]:
        choice = self.tool_choice or "auto"
        return choice if isinstance(choice, str) else choice.model_dump()

    @property
    def thinking(self) -> bool | None:
        return False if self.reasoning and self.reasoning.effort == "none" else None

    @property
    def format_asked(self) -> tuple[ResponseFormat | None, str]:
        return (self.text.format if self.text else None), "text.format"


class _Response(BaseModel):
    model_config = ConfigDict(frozen=True)


class ModelCard(_Response):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "localllm"
    max_model_len: int | None = None  # vLLM's: the context a request may fill (prompt and reply)


class ModelList(_Response):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class PromptTokensDetails(_Response):
    cached_tokens: int  # of the prompt, those an earlier reply's cache held (OpenAI's field)


class CompletionTokensDetails(_Response):
    reasoning_tokens: int  # of the completion, a thinking model's reasoning


class Usage(_Response):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails
    completion_tokens_details: CompletionTokensDetails


class FunctionCalled(_Response):
    name: str
    arguments: str


class ToolCallOut(_Response):
    """A call the reply makes (OpenAI's `tool_calls` item)."""

    id: str
    type: Literal["function"] = "function"
    function: FunctionCalled


class TopLogprob(_Response):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprobOut(TopLogprob):
    """A token of the reply, its log-probability and the likeliest at its place (OpenAI's shape)."""

    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(_Response):
    content: list[TokenLogprobOut]
    refusal: None = None


class TextLogprobs(_Response):
    """A text completion's log-probabilities (OpenAI's legacy shape): tokens, theirs, the likeliest as
    a mapping, each token's place in the text."""

    tokens: list[str]
    token_logprobs: list[float | None]  # None: an echoed prompt's first token (nothing came before it)
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class AssistantMessage(_Response):
    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[ToolCallOut] | None = None
    reasoning_content: str | None = None  # a thinking model's reasoning (DeepSeek's and vLLM's field)


FinishReason = Literal["stop", "length", "tool_calls"]


class Choice(_Response):
    index: int = 0
    message: AssistantMessage
    finish_reason: FinishReason
    logprobs: ChoiceLogprobs | None = None


class _Reply(_Response):
    """What every reply object carries: its id, when it was made, the model that made it."""

    id: str
    created: int
    model: str


class ChatCompletion(_Reply):
    object: Literal["chat.completion"] = "chat.completion"
    choices: list[Choice]
    usage: Usage


class FunctionDelta(_Response):
    name: str | None = None
    arguments: str


class ToolCallDelta(_Response):
    """A call in a stream (its place among the reply's calls in `index`): its id, type and name in its
    first chunk, its arguments in that chunk whole or in the next ones in pieces."""

    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionDelta


class Delta(_Response):
    role: Literal["assistant"] | None = None
    content: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChunkChoice(_Response):
    index: int = 0
    delta: Delta
    finish_reason: FinishReason | None = None
    logprobs: ChoiceLogprobs | None = None


class ChatCompletionChunk(_Reply):
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    choices: list[ChunkChoice]
    usage: Usage | None = None


class TextChoice(_Response):
    index: int = 0
    text: str
    logprobs: TextLogprobs | None = None
    finish_reason: Literal["stop", "length"] | None


class TextCompletion(_Reply):
    """A text completion, and each streamed chunk of one (the same object, as OpenAI and vLLM send)."""

    object: Literal["text_completion"] = "text_completion"
    choices: list[TextChoice]
    usage: Usage | None = None


class ErrorDetail(_Response):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(_Response):
    error: ErrorDetail
