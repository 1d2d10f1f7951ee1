"""`localllm chat`: replies from a downloaded model, one message or a REPL on stdin."""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace

import click
import psutil

from core import outbound
from core.chat.attachments import MAX_FILE_BYTES, MAX_FILES, Attachment, read_attachment
from core.chat.configs import ConfigStore
from core.chat.limits import checked_message
from core.chat.presets import PresetStore
from core.chat.providers import ChatProvider, LocalProvider, OpenAICompatibleProvider
from core.chat.reasoning import CLOSE, OPEN
from core.chat.retrieval import FileUse
from core.chat.service import ChatEvent, ChatService, FilesUsed, Trimmed
from core.cli.common import library, load_with_notice, warn
from core.errors import AttachmentError, MessageError, NotFoundError, ProviderError
from core.hardware import peak_rss_bytes
from core.hub.catalog import ModelSpec
from core.hub.library import ModelLibrary
from core.inference.events import Finished, Reading, ReplyStats, TextDelta
from core.inference.formats import MAX_SCHEMA_CHARS, ReplyFormat, checked_format
from core.inference.loading import LoadedModel
from core.inference.params import DEFAULT_TOP_K
from core.preferences import QUANTIZATIONS
from core.storage.records import ProviderConfig

PROMPT, MORE = ">>> ", "... "  # the prompt, and the one for the next line of a message of several
QUOTES = '"""'  # a message of several lines goes between them, as in Ollama's REPL
# What a line typed at the prompt may ask instead of a message (Ollama's /bye and /clear among them).
COMMANDS = {
    "/continue": "let the last reply go on where it ended",
    "/clear": "a new conversation (the earlier messages are left out)",
    "/bye": "quit (as Ctrl+D; /exit and /quit too)",
    "/?": "these commands",
    QUOTES: f"a message of several lines: {QUOTES} on its own, the lines, then {QUOTES}",
}


@click.command(short_help="chat with a downloaded model (a REPL on stdin without --prompt)")
@click.argument("model", metavar="KEY")
@click.option(
    "-p", "--prompt", help="one message; without it, each line on stdin is a message (history kept)"
)
@click.option("--system", default=None, help="system prompt (default: the preset's, else none)")
@click.option("--preset", metavar="NAME",
              help="start from a preset saved on the Chat page: its system prompt and sampling settings; "
              "the options below change them further")  # fmt: skip
@click.option("-f", "--file", "files", multiple=True, metavar="PATH",
              help=f"a file that goes with the first message, as with 📎 on the page: text, Markdown, "
              f"code, PDF or DOCX, up to {MAX_FILES} of {MAX_FILE_BYTES // 1024**2} MB; - reads it from "
              "stdin")  # fmt: skip
@click.option("--max-new-tokens", type=click.IntRange(1, 32768), default=256, show_default=True,
              help="most tokens in one reply")  # fmt: skip
@click.option("--temperature", type=click.FloatRange(0, 2), default=None,
              help="0 for greedy (the same reply every time); default: the model's own, as a new chat on "
              "the page has it (its publisher's generation_config, else 0.7)")  # fmt: skip
@click.option("--top-p", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="choose among the likeliest tokens that together reach this probability")  # fmt: skip
@click.option("--top-k", type=click.IntRange(0, 1000), default=None,
              help=f"choose among the k likeliest tokens only; 0: no limit (default: the model's own, else "
              f"{DEFAULT_TOP_K})")  # fmt: skip
@click.option("--min-p", type=click.FloatRange(0, 1, max_open=True), default=None,
              help="drop tokens less likely than this fraction of the likeliest one; 0: off")  # fmt: skip
@click.option("--repetition-penalty", "--repeat-penalty", type=click.FloatRange(0.5, 2), default=None,
              help="above 1: tokens already in the conversation become less likely")  # fmt: skip
@click.option("--presence-penalty", type=click.FloatRange(-2, 2), default=None,
              help="lowers every token already in the conversation once; negative: the opposite")  # fmt: skip
@click.option("--frequency-penalty", type=click.FloatRange(-2, 2), default=None,
              help="lowers a token again each time the reply uses it; negative: the opposite")  # fmt: skip
@click.option("--seed", type=click.IntRange(0, 2**63 - 1), default=None,
              help="the same seed, message and settings give the same reply")  # fmt: skip
@click.option("--think/--no-think", default=True, show_default=True,
              help="--no-think: a thinking model with the switch (Qwen3) answers at once")  # fmt: skip
@click.option("--format", "reply_format", metavar="json|SCHEMA_FILE", callback=lambda _c, _p, v: _format(v),
              help="hold each reply to JSON: json for any object, or a file with a JSON schema the reply "
              "must fit (as Ollama's --format json)")  # fmt: skip
@click.option("--ignore-eos", is_flag=True, help="always generate --max-new-tokens tokens (benchmarks)")
@click.option("--stats", is_flag=True, help="print one JSON line of statistics after each reply")
@click.option("--force", is_flag=True, help="load even if memory looks insufficient")
@click.option("--quantization", type=click.Choice(QUANTIZATIONS), default=None,
              help="weights on the CPU for this run: int4 (fastest), int8, or none (16-bit, the reference); "
              "default: the saved setting")  # fmt: skip
def chat(
    model: str, prompt: str | None, system: str | None, preset: str | None, files: tuple[str, ...],
    max_new_tokens: int, think: bool, ignore_eos: bool, stats: bool, force: bool, quantization: str | None,
    reply_format: ReplyFormat | None, **sampling: float | None,
) -> int:  # fmt: skip
    """Stream replies from a downloaded model, with the device and weights of the saved settings, or
    from a model server saved on the Model servers page or with `localllm config add` (KEY: its name)."""
    from core.inference.engine import LocalEngine

    if prompt is not None:  # before a model loads for nothing (stdin's lines are checked one by one)
        checked_message(prompt)
    if ignore_eos and reply_format is not None:  # a JSON value ends where it is whole
        raise click.UsageError(
            "--ignore-eos and --format do not go together: a JSON reply ends when it is whole."
        )
    if "-" in files and prompt is None:
        raise click.UsageError("--file - reads the file from stdin: give the message with --prompt.")
    attached = _attached(files)

    models_library = library()
    target = _chat_target(models_library, model)
    chosen = None if preset is None else PresetStore(models_library.db).named(preset)
    interactive = prompt is None and sys.stdin.isatty()
    provider: ChatProvider
    loaded, load_s = None, 0.0
    if isinstance(target, ProviderConfig):
        if quantization or force:
            raise click.UsageError("--quantization and --force are for a model run on this machine.")
        provider = OpenAICompatibleProvider(
            target.base_url or "", target.api_key, target.model, params=target.params
        )
        key, where = target.name, f"{target.model} at {outbound.shown_origin(target.base_url or '')}"
    else:
        key, prefs = target.key, models_library.preferences
        # Kept unpacked weights speed up later prompts, at the cost of a second's work between replies:
        # only a chat typed at a terminal has later prompts and time between them.
        options = {"idle_unload_s": 0, "keep_prompt_weights": interactive and prefs.get("prompt_copy")}
        options |= {"quantization": quantization} if quantization else {}
        engine = LocalEngine.from_preferences(prefs, **options)
        provider = LocalProvider(engine, key)
        started = time.perf_counter()
        loaded = load_with_notice(engine, key, force=force)
        load_s = time.perf_counter() - started
        where = f"{key} ({loaded.device}, {loaded.weights})"
    service = ChatService(models_library.db, lambda: provider, owner="cli")
    # The model's own sampling (what a new chat on the page starts from), the preset's, the options'.
    params = provider.default_params() if chosen is None else chosen.applied_to(provider.default_params())
    given = {name: value for name, value in sampling.items() if value is not None}
    params = replace(params, max_new_tokens=max_new_tokens, thinking=think, **given)
    system = (chosen.system_prompt if chosen else "") if system is None else system

    def new_conversation() -> int:
        conversation = service.new_conversation(f"CLI {key}", system_prompt=system)
        service.set_options(conversation.id, system, params)
        return conversation.id

    if interactive:
        warn(f"{where}: type a message and press Enter ({QUOTES} for several lines). Ctrl+C stops a reply, "
             "Ctrl+D quits, /? lists commands.")  # fmt: skip
        messages: Iterable[str] = _typed_lines()
    else:
        messages = [prompt] if prompt is not None else (line.rstrip("\n") for line in sys.stdin)
    return _converse(
        service,
        new_conversation,
        messages,
        attached,
        ignore_eos,
        loaded,
        load_s if stats else None,
        interactive,
        reply_format,
    )


def _format(given: str | None) -> ReplyFormat | None:
    """--format: `json` (any JSON object), or a file holding the JSON schema a reply must fit."""
    if given is None:
        return None
    try:
        if given == "json":
            return checked_format(None)
        with open(given, "rb") as file:
            schema = json.loads(file.read(4 * MAX_SCHEMA_CHARS + 1))
        if not isinstance(schema, dict):
            raise click.BadParameter(f"{given} holds no JSON schema (an object).")
        return checked_format(schema)
    except OSError as exc:
        raise click.BadParameter(f"cannot read {given}: {exc.strerror or exc}.") from exc
    except ValueError as exc:  # not JSON (or cut at its limit)
        raise click.BadParameter(f"{given} is not JSON: {exc}.") from exc
    except MessageError as exc:
        raise click.BadParameter(exc.message) from exc


def _chat_target(models_library: ModelLibrary, name: str) -> ModelSpec | ProviderConfig:
    """The catalog's model called `name`, else the model server saved as `name` (its name or its
    model's, as `localllm config list` shows them); NotFoundError where neither has it, naming both."""
    try:
        return models_library.get(name)
    except NotFoundError as exc:
        servers = [c for c in ConfigStore(models_library.db).list_configs() if c.provider != "local_model"]
        found = next((c for c in servers if name in (c.name, c.model)), None)
        if found is None:
            names = ", ".join(c.name for c in servers) or "none"
            raise NotFoundError(f"{exc.message[:-1]}, nor a model server saved as {name[:100]!r} (saved: "
                                f"{names[:300]}).", key=name[:100]) from exc  # fmt: skip
        return found


def _attached(paths: tuple[str, ...]) -> list[Attachment]:
    """The files given with --file, read and checked before a model loads (at most a file's limit and a
    byte more of each is read: a larger one is refused)."""
    if len(paths) > MAX_FILES:
        raise AttachmentError(f"At most {MAX_FILES} files go with one message.",
                              reason="attachment_too_many", limit=MAX_FILES)  # fmt: skip
    attached = []
    for path in paths:
        if path == "-":
            attached.append(read_attachment("stdin.txt", sys.stdin.buffer.read(MAX_FILE_BYTES + 1)))
            continue
        try:
            with open(path, "rb") as file:
                data = file.read(MAX_FILE_BYTES + 1)
        except OSError as exc:
            raise AttachmentError(f"Cannot read {path}: {exc.strerror or exc}.",
                                  reason="attachment_unreadable", file=path) from exc  # fmt: skip
        attached.append(read_attachment(path, data))
    return attached


class _Quoted(str):
    """A message typed between `QUOTES`: never a command, whatever it starts with."""


def _typed_lines() -> Iterator[str]:
    """Messages typed at a prompt (with line editing where Python has readline), a line each, or the
    lines between two `QUOTES` as one, until Ctrl+D (which drops a message of several lines unfinished)."""
    with contextlib.suppress(ImportError):  # not on Windows
        import readline  # noqa: F401  (input() edits and recalls lines once it is imported)
    try:
        while True:
            line = input(PROMPT)
            if not line.lstrip().startswith(QUOTES):
                yield line
                continue
            lines = [line.lstrip().removeprefix(QUOTES)]
            while not lines[-1].rstrip().endswith(QUOTES) or lines == [""]:
                lines.append(input(MORE))
            lines[-1] = lines[-1].rstrip().removesuffix(QUOTES)
            yield _Quoted("\n".join(lines).strip("\n"))
    except EOFError:
        click.echo()


def _converse(
    service: ChatService, new_conversation: Callable[[], int], messages: Iterable[str],
    files: list[Attachment], ignore_eos: bool, loaded: LoadedModel | None, load_s: float | None,
    interactive: bool = False, reply_format: ReplyFormat | None = None,
) -> int:  # fmt: skip
    """Send each message (`files` with the first one sent) and print its reply; a message that cannot be
    sent is explained and skipped. Typed at a prompt, Ctrl+C stops the reply (kept as far as it got) and
    the prompt comes back, and a line that starts with / is a command (COMMANDS)."""
    exit_code, conversation_id = 0, new_conversation()
    try:
        for message in messages:
            if not message.strip():
                continue
            typed_command = interactive and message.startswith("/") and not isinstance(message, _Quoted)
            command = message.split()[0].lower() if typed_command else None
            if command in ("/bye", "/exit", "/quit"):
                break
            if command == "/clear":
                conversation_id = new_conversation()
                warn("[a new conversation: the earlier messages are left out]")
                continue
            if command is not None and command != "/continue":
                said = "" if command in ("/?", "/help") else f"Unknown command {command}. "
                warn(said + "; ".join(f"{name}: {what}" for name, what in COMMANDS.items()))
                continue
            stop = threading.Event()
            try:
                with _interrupt_sets(stop) if interactive else contextlib.nullcontext():
                    events = (
                        service.continue_reply(conversation_id, stop)
                        if command == "/continue"
                        else service.send(
                            conversation_id,
                            message,
                            stop,
                            ignore_eos=ignore_eos,
                            files=files,
                            reply_format=reply_format,
                        )
                    )
                    reply = _reply(events)
            except (MessageError, NotFoundError) as exc:  # this one cannot be sent; the next may be fine
                warn(f"error: {exc.message}")
                exit_code = 2
                continue
            except ProviderError as exc:  # a server that failed this reply may answer the next
                if not interactive:
                    raise
                warn(f"error: {exc.message}")
                exit_code = 1
                continue
            files = []
            if load_s is not None and reply:
                click.echo(json.dumps(_stats_record(reply, loaded, load_s)))
    except KeyboardInterrupt:
        return 130
    return exit_code


@contextlib.contextmanager
def _interrupt_sets(stop: threading.Event) -> Iterator[None]:
    """While a typed message's reply streams, Ctrl+C (SIGINT) sets its stop instead of ending the chat."""
    previous = signal.signal(signal.SIGINT, lambda _signal, _frame: stop.set())
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class _ShadedReasoning:
    """A thinking model's reasoning as a terminal shows it: dim, without its <think> tags, so that the
    answer stands out (Ollama's REPL sets it apart too). A tag cut between two pieces is held back until
    it is whole; text that only looked like the start of one goes out with the next piece."""

    DIM, NORMAL = "\033[2m", "\033[0m"

    def __init__(self) -> None:
        self._held = ""

    def feed(self, piece: str) -> str:
        text, self._held = self._held + piece, ""
        for tag, shade in ((OPEN, self.DIM), (CLOSE, self.NORMAL)):
            text = text.replace(tag, shade)
        cut = text.rfind("<")
        if cut >= 0 and any(tag.startswith(text[cut:]) for tag in (OPEN, CLOSE)):
            text, self._held = text[:cut], text[cut:]
        return text

    def end(self) -> str:
        """What is held back, and the normal colour again (a reply cut while it thought)."""
        held, self._held = self._held, ""
        return held + self.NORMAL


def _reply(events: Iterable[ChatEvent]) -> ReplyStats | None:
    """Print a reply's text as it comes (at a terminal, a reasoning shaded: `_ShadedReasoning`; what else
    it says on stderr); its figures."""
    stats = None
    reading = False  # a progress line on a terminal's stderr while a long prompt is read
    shade = _ShadedReasoning() if sys.stdout.isatty() else None
    for event in events:
        if isinstance(event, Reading):
            if sys.stderr.isatty():
                click.echo(f"\r[reading {event.done:,} of {event.total:,} tokens]", nl=False, err=True)
                reading = True
            continue
        if reading:  # the reply takes the progress line's place
            click.echo("\r\033[K", nl=False, err=True)
            reading = False
        if isinstance(event, TextDelta):
            click.echo(shade.feed(event.text) if shade else event.text, nl=False)
        elif isinstance(event, Trimmed):
            warn(f"[{event.dropped} older messages left out to fit the context]")
        elif isinstance(event, FilesUsed):
            warn(f"[{'; '.join(map(_file_used, event.uses))}]")
        elif isinstance(event, Finished):
            stats = event.stats
    click.echo(shade.end() if shade else "")
    if stats is not None and stats.finish_reason == "stopped":  # Ctrl+C at a terminal
        warn("[stopped]")
    return stats


def _file_used(use: FileUse) -> str:
    """What of a file the reply was given, in the page's words."""
    if use.passages is None:
        return f"{use.file}: the whole file"
    if not use.passages:
        return f"{use.file}: nothing (no room left in the context)"
    passages = ", ".join(map(str, use.passages))
    return f"{use.file}: passages {passages} of {use.total} (the whole file does not fit in the context)"


def _stats_record(stats: ReplyStats, loaded: LoadedModel | None, load_s: float) -> dict[str, object]:
    """A reply's figures as one JSON object; a server's reply has no device, dtype or weights here."""
    return {
        "prompt_tokens": stats.prompt_tokens,
        "cached_tokens": stats.cached_tokens,
        "completion_tokens": stats.completion_tokens,
        "ttft_s": stats.ttft_s,
        "decode_tps": stats.tokens_per_s,
        "load_s": load_s,
        "peak_rss_mb": peak_rss_bytes() / 1024**2,
        "rss_mb": psutil.Process().memory_info().rss / 1024**2,
        "device": loaded.device if loaded else "server",
        "dtype": loaded.dtype if loaded else None,
        "weights": loaded.weights if loaded else None,
    }
