"""Conversations: history, context window, persistence and per-reply stats, for any provider."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace

from core.chat.presets import Preset
from core.chat.providers import ChatProvider
from core.errors import ConfigError, ContextLengthError, MessageError, NotFoundError
from core.inference.events import Event, Finished, TextDelta
from core.inference.params import GenerationParams
from core.storage import repo
from core.storage.db import Database
from core.storage.records import Conversation, Message
from core.storage.schema import ConversationRow, MessageRow, utcnow

SAVE_EVERY_S = 1.0  # a partial reply reaches the database at least this often
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Trimmed:
    """The oldest `dropped` messages were left out to fit the model's context window."""

    dropped: int


ChatEvent = Event | Trimmed


def trim_history(
    system_prompt: str,
    turns: Sequence[dict[str, str]],
    budget_tokens: int,
    count: Callable[[list[dict[str, str]], int], int],
) -> tuple[list[dict[str, str]], int]:
    """The system prompt plus the newest turns that fit in `budget_tokens`; returns (messages, dropped).

    `count(messages, limit)` may stop counting early above `limit`, so a huge message costs no more
    than the budget to refuse."""
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    kept: list[dict[str, str]] = []
    for turn in reversed(turns):
        candidate = [turn, *kept]
        if kept and count(system + candidate, budget_tokens) > budget_tokens:
            break
        kept = candidate
    tokens = count(system + kept, budget_tokens)
    if tokens > budget_tokens:
        raise ContextLengthError(
            f"The message is too long for this model's context ({tokens} tokens, "
            f"{budget_tokens} available). Shorten it or lower 'max new tokens'.",
            tokens=tokens,
            budget=budget_tokens,
        )
    return system + kept, len(turns) - len(kept)


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
        with self.db.begin() as session:
            current = repo.get_current_config(session)
            return repo.create_conversation(
                session,
                owner=self.owner,
                title=title.strip()[:300] or "New chat",
                config_id=current.id if current else None,
                system_prompt=system_prompt,
            )

    def _row(self, session, conversation_id: int) -> ConversationRow:  # type: ignore[no-untyped-def]
        row = session.get(ConversationRow, conversation_id)
        if row is None or row.owner != self.owner:
            raise NotFoundError(f"No conversation {conversation_id}.", id=conversation_id)
        return row

    def get(self, conversation_id: int) -> Conversation:
        with self.db.begin() as session:
            self._row(session, conversation_id)
            return next(c for c in repo.list_conversations(session, self.owner) if c.id == conversation_id)

    def rename(self, conversation_id: int, title: str) -> None:
        if not title.strip():
            raise ConfigError("A conversation needs a title.")
        with self.db.begin() as session:
            self._row(session, conversation_id).title = title.strip()[:300]

    def set_options(self, conversation_id: int, system_prompt: str, params: GenerationParams) -> None:
        """The conversation's own system prompt and settings (no preset's any more)."""
        with self.db.begin() as session:
            row = self._row(session, conversation_id)
            row.system_prompt = system_prompt
            row.params = params.to_dict()
            row.preset = None

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
        with self.db.begin() as session:
            self._row(session, conversation_id)
            return repo.list_messages(session, conversation_id)

    def export_markdown(self, conversation_id: int) -> str:
        conversation = self.get(conversation_id)
        lines = [f"# {conversation.title}", ""]
        if conversation.system_prompt:
            lines += [f"> System: {conversation.system_prompt}", ""]
        for message in self.messages(conversation_id):
            lines += [f"**{message.role}**", "", message.content, ""]
        return "\n".join(lines)

    def export_json(self, conversation_id: int) -> str:
        conversation = self.get(conversation_id)
        data = {
            "conversation": asdict(conversation),
            "messages": [asdict(m) for m in self.messages(conversation_id)],
        }
        return json.dumps(data, ensure_ascii=False, indent=2, default=str)

    # -- replies --------------------------------------------------------------------------------
    def send(
        self,
        conversation_id: int,
        text: str,
        stop: threading.Event | None = None,
        *,
        ignore_eos: bool = False,
    ) -> Iterator[ChatEvent]:
        """Store the user's message and stream the reply to the whole conversation."""
        if not text.strip():
            raise MessageError("The message is empty.")
        with self.db.begin() as session:
            self._row(session, conversation_id).updated_at = utcnow()  # newest conversations list first
            repo.add_message(session, conversation_id, "user", text)
        return self._reply(conversation_id, stop or threading.Event(), ignore_eos)

    def regenerate(self, conversation_id: int, stop: threading.Event | None = None) -> Iterator[ChatEvent]:
        """Answer the last user message again (the previous answer is replaced)."""
        self._drop_trailing_assistant(conversation_id)
        return self._reply(conversation_id, stop or threading.Event())

    def edit_last(
        self, conversation_id: int, text: str, stop: threading.Event | None = None
    ) -> Iterator[ChatEvent]:
        """Replace the last user message and answer it again."""
        if not text.strip():
            raise MessageError("The message is empty.")
        self._drop_trailing_assistant(conversation_id)
        with self.db.begin() as session:
            last = session.query(MessageRow).filter_by(conversation_id=conversation_id, role="user")
            row = last.order_by(MessageRow.id.desc()).first()
            if row is None:
                raise MessageError("There is no message to edit.")
            row.content = text
        return self._reply(conversation_id, stop or threading.Event())

    def _drop_trailing_assistant(self, conversation_id: int) -> None:
        with self.db.begin() as session:
            self._row(session, conversation_id)
            rows = session.query(MessageRow).filter_by(conversation_id=conversation_id)
            last = rows.order_by(MessageRow.id.desc()).first()
            if last is not None and last.role == "assistant":
                session.delete(last)

    def _reply(
        self, conversation_id: int, stop: threading.Event, ignore_eos: bool = False
    ) -> Iterator[ChatEvent]:
        provider = self.provider()
        conversation = self.get(conversation_id)
        params = self.params(conversation_id)
        # Sensible per model: a reply may use at most half the context, the rest is for the history.
        params = replace(params, max_new_tokens=min(params.max_new_tokens, provider.context_length // 2))
        history = [{"role": m.role, "content": m.content} for m in self.messages(conversation_id)]
        budget = provider.context_length - params.max_new_tokens
        messages, dropped = trim_history(conversation.system_prompt, history, budget, provider.count_tokens)
        if dropped:
            yield Trimmed(dropped)
        with self.db.begin() as session:
            # Stored before the first token: a crash leaves the partial reply, marked interrupted.
            reply_id = repo.add_message(
                session, conversation_id, "assistant", "", model=provider.model, finish_reason="interrupted"
            ).id
        text, saved_at = "", time.monotonic()
        finished = False
        try:
            for event in provider.stream(messages, params, stop, ignore_eos=ignore_eos):
                if isinstance(event, TextDelta):
                    text += event.text
                    if time.monotonic() - saved_at > SAVE_EVERY_S:
                        self._save_reply(reply_id, text)
                        saved_at = time.monotonic()
                elif isinstance(event, Finished):
                    finished = True
                    self._save_reply(reply_id, text, **asdict(event.stats))
                    logger.info("reply %d by %s: %s", reply_id, event.stats.model, event.stats)
                yield event
        except GeneratorExit:
            stop.set()
            self._save_reply(reply_id, text, finish_reason="stopped")
            raise
        except Exception as exc:
            logger.warning("reply %d failed: %s", reply_id, getattr(exc, "message", exc))
            self._save_reply(reply_id, text, finish_reason="error")
            raise
        finally:
            if not finished and not stop.is_set():
                stop.set()

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
