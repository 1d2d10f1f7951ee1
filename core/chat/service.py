"""Conversations: history, context window, persistence and per-reply stats, for any provider."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import asdict, dataclass, replace

from sqlalchemy import update
from sqlalchemy.orm import Session

from core.chat import archive, branches
from core.chat.attachments import MAX_FILES, Attachment, read_attachment
from core.chat.branches import Turn
from core.chat.limits import checked_length, checked_message
from core.chat.presets import Preset
from core.chat.providers import ChatProvider, cannot_go_on
from core.chat.reasoning import split_reasoning
from core.chat.retrieval import FileText, FileUse, with_files
from core.errors import (
    AttachmentError,
    ConfigError,
    ContextLengthError,
    LocalLLMError,
    MessageError,
    NotFoundError,
    ServerContextError,
)
from core.inference.events import Event, Finished, ReplyStats, TextDelta
from core.inference.formats import ReplyFormat
from core.inference.params import GenerationParams
from core.storage import repo
from core.storage.db import Database
from core.storage.records import AttachmentInfo, Conversation, Message, from_row
from core.storage.schema import ConversationRow, MessageRow, utcnow

SAVE_EVERY_S = 1.0  # a partial reply reaches the database at least this often
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Trimmed:
    """The oldest `dropped` messages were left out to fit the model's context window."""

    dropped: int


@dataclass(frozen=True)
class FilesUsed:
    """What of each attached file the reply was given (whole files, or the passages that fitted)."""

    uses: tuple[FileUse, ...]


ChatEvent = Event | Trimmed | FilesUsed


@dataclass(frozen=True)
class _Prompt:
    """What a reply is asked with: its settings, the messages that fit, the files' parts they hold, and
    the events that tell the user so."""

    params: GenerationParams
    messages: list[dict[str, str]]
    uses: tuple[FileUse, ...]
    notes: tuple[Trimmed | FilesUsed, ...]


GOES_ON = ("length", "stopped", "interrupted")  # how a reply ended that may go on (`continue_reply`)
GO_ON_ROOM = 64  # tokens a reply that goes on needs beside it at least (it may take all the context leaves)
TRIM_MARKS = 2  # a long history may be cut where its running size passes a multiple of half the budget


def _no_room_to_go_on() -> MessageError:
    return MessageError(
        "This reply fills what the model's context leaves: it cannot go on here. Ask for the rest in a new "
        "message.", reason="continue_no_room",
    )  # fmt: skip


def trim_history(
    system_prompt: str,
    turns: Sequence[dict[str, str]],
    budget_tokens: int,
    count: Callable[[list[dict[str, str]], int], int],
) -> tuple[list[dict[str, str]], int]:
    """The system prompt plus the newest turns that fit in `budget_tokens`; returns (messages, dropped).

    A history that no longer fits is cut before a user's turn, at the first of a few fixed marks from
    which the rest fits: where the turns' running size from the conversation's start passes a multiple
    of half the budget. The cut then stays put while later turns still fit after it, so turn after
    turn the prompt starts alike and the engine's kept cache serves it, instead of the whole history
    being prefilled again at every message (llama.cpp likewise shifts its context by half, not a turn
    at a time): about half the budget is given up for that at most. The kept turns start with the
    user's (templates that want user and assistant in turn).
    `count(messages, limit)` may stop counting early above `limit`, so a huge message costs no more
    than the budget to refuse."""
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    turns = list(turns)

    def tokens_from(start: int) -> int:
        return count(system + turns[start:], budget_tokens)

    if tokens_from(0) <= budget_tokens:
        return system + turns, 0
    first = len(turns)  # the oldest turn from which the rest fits
    while first > 0 and tokens_from(first - 1) <= budget_tokens:
        first -= 1
    if first == len(turns):  # not even the newest message fits (or the system prompt alone)
        tokens = tokens_from(max(0, first - 1))
        at_least = "at least " if ContextLengthError.counting_stopped(tokens, budget_tokens) else ""
        raise ContextLengthError(
            f"The message is too long for this model's context ({at_least}{tokens} tokens, "
            f"{budget_tokens} available). Shorten it, lower 'max new tokens', or choose a longer "
            "context length for the model.",
            tokens=tokens,
            budget=budget_tokens,
        )

    def size(text: str) -> int:  # a turn's text measured as a question (any template takes one)
        return count([{"role": "user", "content": text}], budget_tokens)

    step, overhead = max(1, budget_tokens // TRIM_MARKS), size("")
    running = [0]  # the turns' running size before each turn
    marks, passed = [], False  # marks: the questions a cut may go before
    for index, turn in enumerate(turns):
        if passed and turn["role"] == "user":
            marks.append(index)
            passed = False
        running.append(running[-1] + max(0, size(turn["content"]) - overhead))
        passed |= running[-1] // step > running[-2] // step
    users = [i for i in range(first, len(turns)) if turns[i]["role"] == "user"]
    cut = users[0] if users else first
    mark = next((i for i in marks if i >= first), None)
    if mark is not None and running[mark] - running[first] <= step:  # half the budget given up at most
        cut = mark
    return system + turns[cut:], cut


def _added_up(earlier: Message | None, stats: ReplyStats) -> ReplyStats:
    """A reply's figures once it went on from `earlier` (its own, then): its tokens all told, its first
    token's wait as first said."""
    if earlier is None or not earlier.completion_tokens:
        return stats
    return replace(stats, completion_tokens=earlier.completion_tokens + stats.completion_tokens,
                   ttft_s=earlier.ttft_s if earlier.ttft_s is not None else stats.ttft_s)  # fmt: skip


@dataclass(frozen=True)
class TranscriptWords:
    """The headings of a conversation exported as Markdown, in the reader's language."""

    you: str = "You"
    assistant: str = "Assistant"  # a reply whose model is not recorded
    system: str = "System prompt"
    thought: str = "Thought process"


def _without_nul(events: Iterator[Event]) -> Iterator[Event]:
    """A reply's pieces without NUL characters, as the database keeps its text (schema.Chars): a model's
    byte-level token can decode to one, which shows as nothing; what the page shows is what is saved."""
    for event in events:
        if isinstance(event, TextDelta) and "\x00" in event.text:
            event = TextDelta(event.text.replace("\x00", ""))
        yield event


class ChatService:
    """Conversations of one owner, replies from the current provider config, stored as they stream."""

    def __init__(self, db: Database, provider: Callable[[], ChatProvider], owner: str = "local") -> None:
        """`provider` returns the provider to answer with (the app's: from the current config)."""
        self.db = db
        self.provider = provider
        self.owner = owner

    # -- conversations --------------------------------------------------------------------------
    def conversations(self, search: str = "") -> list[Conversation]:
        with self.db.begin() as session:
            return repo.list_conversations(session, self.owner, search)

    def new_conversation(self, title: str = "New chat", system_prompt: str = "") -> Conversation:
        checked_length(system_prompt)
        with self.db.begin() as session:
            current = repo.get_current_config(session)
            return repo.create_conversation(
                session,
                owner=self.owner,
                title=title.strip()[:300] or "New chat",
                config_id=current.id if current else None,
                system_prompt=system_prompt,
            )

    def _row(self, session: Session, conversation_id: int) -> ConversationRow:
        row = session.get(ConversationRow, conversation_id)
        if row is None or row.owner != self.owner:
            raise NotFoundError(
                f"No conversation {conversation_id}.", id=conversation_id, reason="conversation_gone"
            )
        return row

    def get(self, conversation_id: int) -> Conversation:
        with self.db.begin() as session:
            return from_row(Conversation, self._row(session, conversation_id))

    def rename(self, conversation_id: int, title: str) -> None:
        if not title.strip():
            raise ConfigError("A conversation needs a title.", reason="title_required")
        with self.db.begin() as session:
            self._row(session, conversation_id).title = title.strip()[:300]

    def pin(self, conversation_id: int, pinned: bool = True) -> None:
        """Keep a conversation at the top of the list (or let it go back among the others); when it was
        last used stays as it was."""
        with self.db.begin() as session:
            row = self._row(session, conversation_id)
            session.execute(
                update(ConversationRow).where(ConversationRow.id == row.id)
                .values(pinned_at=utcnow() if pinned else None, updated_at=row.updated_at)
            )  # fmt: skip

    def set_options(self, conversation_id: int, system_prompt: str, params: GenerationParams) -> None:
        """The conversation's own system prompt and settings (no preset's any more)."""
        checked_length(system_prompt)
        with self.db.begin() as session:
            row = self._row(session, conversation_id)
            row.system_prompt = system_prompt
            row.params = params.to_dict()
            row.preset = None

    def follows_model(self, conversation_id: int) -> bool:
        """Whether the conversation set nothing of its own (no preset, settings or system prompt): it
        samples as its model's publisher says."""
        with self.db.begin() as session:
            row = self._row(session, conversation_id)
            return row.preset is None and not row.params and not row.system_prompt

    def params(self, conversation_id: int) -> GenerationParams:
        """The conversation's own settings (from its options or a preset), else the provider's (a local
        model: what its publisher recommends)."""
        with self.db.begin() as session:
            row = self._row(session, conversation_id)
            if row.params:
                return GenerationParams.from_mapping(row.params)
        return self.provider().default_params()

    def apply_preset(self, conversation_id: int, preset: Preset) -> GenerationParams:
        """Use a preset in this conversation: its system prompt, and the model's own settings with what
        the preset fixes on top (from the next reply)."""
        params = preset.applied_to(self.provider().default_params())
        with self.db.begin() as session:
            row = self._row(session, conversation_id)
            row.system_prompt, row.params, row.preset = preset.system_prompt, params.to_dict(), preset.key
        return params

    def delete(self, conversation_id: int) -> None:
        with self.db.begin() as session:
            session.delete(self._row(session, conversation_id))

    def messages(self, conversation_id: int) -> list[Message]:
        """The shown branch, oldest first."""
        return [turn.message for turn in self.turns(conversation_id)]

    def turns(self, conversation_id: int) -> list[Turn]:
        """The shown branch, each message with its place among the branches at that point."""
        with self.db.begin() as session:
            leaf = repo.leaf_id(session, self._row(session, conversation_id))
            return branches.turns(repo.list_messages(session, conversation_id), leaf)

    def switch_branch(self, conversation_id: int, message_id: int, step: int) -> None:
        """Show the branch `step` siblings away from `message_id` (-1: the previous, 1: the next)."""
        with self.db.begin() as session:
            row = self._row(session, conversation_id)
            row.leaf_id = branches.sibling_leaf(
                repo.list_messages(session, conversation_id), message_id, step
            )

    def export_markdown(self, conversation_id: int, words: TranscriptWords = TranscriptWords()) -> str:
        """The shown branch as Markdown, its headings in `words` (the page's language); a reply is headed
        by the model that wrote it."""
        conversation = self.get(conversation_id)
        lines = [f"# {conversation.title}", ""]
        if conversation.system_prompt:
            quoted = [f"> {line}".rstrip() for line in conversation.system_prompt.splitlines()]
            lines += [f"> **{words.system}**", ">", *quoted, ""]
        for message in self.messages(conversation_id):
            if message.role == "user":
                lines += [f"**{words.you}**", "", message.content, ""]
                continue
            lines += [f"**{message.model or words.assistant}**", ""]
            split = split_reasoning(message.content)
            if split is not None and split.reasoning:  # folded, as the page shows it
                summary = f"<details><summary>{words.thought}</summary>"
                lines += [summary, "", split.reasoning, "", "</details>", "", split.answer, ""]
            else:
                lines += [message.content, ""]
        return "\n".join(lines)

    def export_json(self, conversation_id: int | None = None) -> bytes:
        """One conversation (or all of them), every branch, as our export file (docs/chat-export.md)."""
        if conversation_id is not None:
            self.get(conversation_id)
        return archive.export_bytes(self.db, self.owner, conversation_id)

    def import_file(self, data: bytes) -> archive.ImportResult:
        """Import an export file (ours, ChatGPT's, OpenAI chat messages); what is here already is skipped."""
        return archive.import_bytes(self.db, self.owner, data)

    # -- replies --------------------------------------------------------------------------------
    def send(
        self,
        conversation_id: int,
        text: str,
        stop: threading.Event | None = None,
        *,
        ignore_eos: bool = False,
        files: Sequence[tuple[str, bytes] | Attachment] = (),
        reply_format: ReplyFormat | None = None,
    ) -> Generator[ChatEvent, None, None]:
        """Store the user's message (with the text of `files`: (name, bytes) pairs, or files already
        read) after the shown branch and stream the reply to it (held to `reply_format`, JSON, if one is
        given). Every file is read before anything is stored."""
        checked_message(text)
        if len(files) > MAX_FILES:
            raise AttachmentError(
                f"At most {MAX_FILES} files go with one message.",
                reason="attachment_too_many",
                limit=MAX_FILES,
            )
        attached = [file if isinstance(file, Attachment) else read_attachment(*file) for file in files]
        with self.db.begin() as session:
            self._row(session, conversation_id).updated_at = utcnow()  # newest conversations list first
            message = repo.add_message(session, conversation_id, "user", text)
            for attachment in attached:
                repo.add_attachment(session, message.id, **asdict(attachment))
        return self._reply(conversation_id, stop or threading.Event(), ignore_eos, reply_format=reply_format)

    def attachments(self, conversation_id: int) -> dict[int, list[AttachmentInfo]]:
        """The files given with the shown branch's messages, by message id."""
        ids = [message.id for message in self.messages(conversation_id)]
        found: dict[int, list[AttachmentInfo]] = {}
        with self.db.begin() as session:
            for info, _ in repo.attachment_texts(session, ids, with_text=False):
                found.setdefault(info.message_id, []).append(info)
        return found

    def regenerate(
        self, conversation_id: int, stop: threading.Event | None = None
    ) -> Generator[ChatEvent, None, None]:
        """Answer the shown branch's last question again; the earlier answer stays as a branch (an empty
        one, stopped or failed before its first word, is replaced)."""
        with self.db.begin() as session:
            last = self._message(
                session, conversation_id, repo.leaf_id(session, self._row(session, conversation_id))
            )
            if last is not None and last.role == "assistant":
                question = last.parent_id
                if not last.content:
                    session.delete(last)
            else:
                question = last.id if last is not None else None
        if question is None:
            raise MessageError("There is no message to answer.")
        return self._reply(conversation_id, stop or threading.Event(), after=question)

    def goes_on(self, reply: Message) -> bool:
        """Whether `reply` can go on where it ended (`continue_reply`): it was cut at its length limit,
        stopped or interrupted, and what answers now lets it (a model run here; a server, as it can)."""
        return (
            reply.role == "assistant" and reply.finish_reason in GOES_ON and bool(reply.content.strip())
            and self.provider().continues(reply.content)
        )  # fmt: skip

    def continue_reply(
        self, conversation_id: int, stop: threading.Event | None = None
    ) -> Generator[ChatEvent, None, None]:
        """Let the shown branch's last reply, cut at its length limit, stopped or interrupted, go on where
        it ended (`goes_on`): its text grows, its figures add up."""
        with self.db.begin() as session:
            leaf = repo.leaf_id(session, self._row(session, conversation_id))
            reply = self._message(session, conversation_id, leaf, role="assistant")
            if not reply.content.strip():
                raise MessageError("There is no reply to go on with.")
            reply_id, text = reply.id, reply.content
        if not self.provider().continues(text):
            raise cannot_go_on()
        return self._reply(conversation_id, stop or threading.Event(), going_on=reply_id)

    def edit(
        self, conversation_id: int, message_id: int, text: str, stop: threading.Event | None = None
    ) -> Generator[ChatEvent, None, None]:
        """Ask `text` in place of one of the user's messages: a new branch from there, answered; the
        earlier branch stays."""
        checked_message(text)
        with self.db.begin() as session:
            original = self._message(session, conversation_id, message_id, role="user")
            edited = repo.add_message(session, conversation_id, "user", text, parent_id=original.parent_id)
            repo.copy_attachments(session, original.id, edited.id)  # its files go with it
        return self._reply(conversation_id, stop or threading.Event())

    def edit_reply(self, conversation_id: int, message_id: int, text: str) -> Message:
        """Keep `text` in place of a reply, as a new branch (the conversation continues from it)."""
        checked_message(text)
        with self.db.begin() as session:
            original = self._message(session, conversation_id, message_id, role="assistant")
            return repo.add_message(session, conversation_id, "assistant", text, parent_id=original.parent_id,
                                    model=original.model, finish_reason="edited")  # fmt: skip

    def _message(
        self, session: Session, conversation_id: int, message_id: int | None, role: str | None = None
    ) -> MessageRow:
        """One of the conversation's messages (of `role`, if given); NotFoundError otherwise."""
        self._row(session, conversation_id)
        row = session.get(MessageRow, message_id) if message_id is not None else None
        if row is None or row.conversation_id != conversation_id or role not in (None, row.role):
            raise NotFoundError(
                f"No message {message_id} to change in this conversation.",
                id=message_id,
                reason="message_gone",
            )
        return row

    def _reply(
        self, conversation_id: int, stop: threading.Event, ignore_eos: bool = False, after: int | None = None,
        going_on: int | None = None, reply_format: ReplyFormat | None = None,
    ) -> Generator[ChatEvent, None, None]:  # fmt: skip
        """Answer the branch that ends at `after` (default: the shown one); the reply continues it. Or
        let the reply `going_on` (the branch's last message) go on."""
        provider = self.provider()
        conversation = self.get(conversation_id)
        with self.db.begin() as session:
            question = next((given for given in (going_on, after) if given is not None), None)
            if question is None:
                question = repo.leaf_id(session, self._row(session, conversation_id))
            branch = branches.path_to(repo.list_messages(session, conversation_id), question)
            attached = repo.attachment_texts(session, [m.id for m in branch if m.role == "user"])

        def fitted() -> _Prompt:
            return self._prompt(conversation, provider, branch, attached, going_on is not None)

        prompt = fitted()
        yield from prompt.notes
        earlier = branch[-1] if going_on is not None else None
        with self.db.begin() as session:
            # Stored before the first token: a crash leaves the partial reply, marked interrupted.
            if earlier is None:
                reply_id = repo.add_message(
                    session, conversation_id, "assistant", "", parent_id=question, model=provider.model,
                    finish_reason="interrupted", sources=[use.to_dict() for use in prompt.uses] or None,
                ).id  # fmt: skip
            else:
                reply_id = earlier.id
                session.get(MessageRow, reply_id).finish_reason = "interrupted"
        text, saved_at = (earlier.content.rstrip() if earlier else ""), time.monotonic()
        finished = False

        def take(event: Event) -> None:
            """Add a piece to the reply's text; a finished reply is saved with its figures."""
            nonlocal text, finished
            if isinstance(event, TextDelta):
                text += event.text
            elif isinstance(event, Finished):
                finished = True
                self._save_finished(reply_id, text, _added_up(earlier, event.stats))

        stream = _without_nul(self._within_context(
            provider,
            prompt,
            fitted,
            reply_id,
            stop,
            ignore_eos=ignore_eos,
            owner=f"conversation-{conversation_id}",
            go_on=earlier is not None,
            reply_format=reply_format,
        ))  # fmt: skip
        try:
            for event in stream:
                take(event)
                if isinstance(event, TextDelta) and time.monotonic() - saved_at > SAVE_EVERY_S:
                    self._save_reply(reply_id, text)
                    saved_at = time.monotonic()
                yield event
        except GeneratorExit:  # the reader went away (Stop, a reload)
            if not finished:
                stop.set()  # the provider ends within a step: its last words and figures are kept
                try:
                    for event in stream:
                        take(event)
                except LocalLLMError as exc:
                    logger.warning("reply %d, stopped: %s", reply_id, exc.message)
                if not finished:
                    self._save_reply(reply_id, text, finish_reason="stopped")
            raise
        except Exception as exc:
            logger.warning("reply %d failed: %s", reply_id, getattr(exc, "message", exc))
            if earlier is not None and text == earlier.content.rstrip():  # it did not go on: as it was
                self._save_reply(reply_id, earlier.content, finish_reason=earlier.finish_reason)
            else:
                self._save_reply(reply_id, text, finish_reason="error")
            raise
        finally:
            if not finished and not stop.is_set():
                stop.set()

    def _prompt(
        self, conversation: Conversation, provider: ChatProvider, branch: list[Message],
        attached: list[tuple[AttachmentInfo, str]], going_on: bool = False,
    ) -> _Prompt:  # fmt: skip
        """The branch's messages within the provider's context as it knows it now (a reply may take at
        most half of it), earlier replies without their reasoning (as thinking models' own templates send
        them back; a reply `going_on`, the last, whole), the attached files' parts that fit."""
        params = self.params(conversation.id)
        params = replace(params, max_new_tokens=min(params.max_new_tokens, provider.context_length // 2))
        history = [
            {
                "role": m.role,
                "content": split_reasoning(m.content).answer if m.role == "assistant" else m.content,
            }
            for m in branch
        ]
        budget = provider.context_length - params.max_new_tokens
        if going_on:  # the reply's next words may take what the context leaves beside it (the engine caps)
            history[-1]["content"] = branch[-1].content.rstrip()
            budget = provider.context_length - min(params.max_new_tokens, GO_ON_ROOM)
        uses: list[FileUse] = []
        notes: list[Trimmed | FilesUsed] = []
        if attached and history:
            system = (
                [{"role": "system", "content": conversation.system_prompt}]
                if conversation.system_prompt
                else []
            )
            files = [FileText(info.name, file_text) for info, file_text in attached]
            asked_with = {info.message_id for info, _ in attached}
            # A reply that goes on keeps its files with its question, beside the reply so far.
            going = [history.pop()] if going_on and len(history) > 1 else []
            room = budget - (provider.count_tokens(going, budget) if going else 0)
            query = " ".join([history[-1]["content"], *(m.content for m in branch if m.id in asked_with)])
            history, uses = with_files(system, history, files, query, room, provider.count_tokens)
            history += going
            notes.append(FilesUsed(tuple(uses)))
        try:
            messages, dropped = trim_history(
                conversation.system_prompt, history, budget, provider.count_tokens
            )
        except ContextLengthError as exc:
            if not going_on:
                raise
            raise _no_room_to_go_on() from exc
        if dropped:
            notes.append(Trimmed(dropped))
        if going_on:  # what the context leaves (a server may refuse more: vLLM and OpenAI do)
            room = provider.context_length - provider.count_tokens(messages)
            params = replace(params, max_new_tokens=max(1, min(params.max_new_tokens, room)))
        return _Prompt(params, messages, tuple(uses), tuple(notes))

    def _within_context(
        self, provider: ChatProvider, prompt: _Prompt, fitted: Callable[[], _Prompt], reply_id: int,
        stop: threading.Event, ignore_eos: bool, owner: str, go_on: bool = False,
        reply_format: ReplyFormat | None = None,
    ) -> Iterator[ChatEvent]:  # fmt: skip
        """The provider's reply; asked once more, fitted anew, where a server refused the conversation
        as longer than its model's context (it said how long that is: the provider knows it now)."""
        options = {"ignore_eos": ignore_eos, "owner": owner, "go_on": go_on, "reply_format": reply_format}
        stream = provider.stream(prompt.messages, prompt.params, stop, **options)
        try:
            first = next(stream, None)
        except ServerContextError as exc:
            logger.info("reply %d: %s; fitted to it and asked again", reply_id, exc.message)
            prompt = fitted()
            self._save_reply(reply_id, "", sources=[use.to_dict() for use in prompt.uses] or None)
            yield from prompt.notes
            stream = provider.stream(prompt.messages, prompt.params, stop, **options)
            try:
                first = next(stream, None)
            except ServerContextError as again:
                if not go_on:
                    raise
                raise _no_room_to_go_on() from again  # the reply so far fills the server's context
        if first is not None:
            yield first
            yield from stream

    def _save_finished(self, message_id: int, text: str, stats: ReplyStats) -> None:
        stored = asdict(stats)
        del stored["cached_tokens"]  # the log has it; the message keeps what the reply cost
        self._save_reply(message_id, text, **stored)
        logger.info("reply %d by %s: %s", message_id, stats.model, stats)

    def _save_reply(self, message_id: int, text: str, **stats: object) -> None:
        with self.db.begin() as session:
            row = session.get(MessageRow, message_id)
            row.content = text
            for name, value in stats.items():
                if name != "model" or value:
                    setattr(row, name, value)

    # -- the seed's unified API -----------------------------------------------------------------
    def _conversation_for(self, chat_id: int | str) -> int:
        """An existing conversation id, or the owner's conversation titled `chat_id` (created if new)."""
        if isinstance(chat_id, int):
            return self.get(chat_id).id
        for conversation in self.conversations():
            if conversation.title == chat_id:
                return conversation.id
        return self.new_conversation(chat_id).id

    def stream_response(self, chat_id: int | str, message: str) -> Iterator[str]:
        """Stream the reply's text to `message` in conversation `chat_id`, keeping the history."""
        for event in self.send(self._conversation_for(chat_id), message):
            if isinstance(event, TextDelta):
                yield event.text

    def get_single_response(self, chat_id: int | str, message: str) -> str:
        return "".join(self.stream_response(chat_id, message))
