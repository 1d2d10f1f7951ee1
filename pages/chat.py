import threading
from collections.abc import Generator, Iterator
from contextlib import closing, nullcontext
from dataclasses import fields
from datetime import date, datetime
from functools import partial

import streamlit as st
from streamlit.runtime.uploaded_file_manager import UploadedFile

from core import outbound
from core.chat.archive import MAX_FILE_BYTES as ARCHIVE_BYTES
from core.chat.attachments import FILE_TYPES, MAX_CHARACTERS
from core.chat.attachments import MAX_FILE_BYTES as ATTACHMENT_BYTES
from core.chat.branches import Turn
from core.chat.limits import MAX_TEXT_CHARS
from core.chat.presets import Preset, PresetStore
from core.chat.reasoning import split_reasoning
from core.chat.retrieval import FileUse
from core.chat.service import ChatEvent, FilesUsed, TranscriptWords, Trimmed
from core.chat.titles import title_from
from core.errors import InsufficientMemoryError, LocalLLMError, NotFoundError
from core.hub.transfer import Progress
from core.inference.events import Queued, Reading, ReplyStats, TextDelta
from core.inference.params import GenerationParams
from core.inference.sizing import SIXTEEN_BIT
from core.storage.records import AttachmentInfo, Conversation, Message, ProviderConfig
from core.units import format_bytes
from ui import access, resources, state
from ui.failures import guarded
from ui.i18n import current_language, error_text, failure_text, has, ordinal, t
from ui.markup import as_typed, escape_markdown, urls_as_code
from ui.periods import browser_zone, period_of
from ui.presets import new_chat_preset, preset_picker
from ui.replies import reply_body, settle_interrupted_reply, streaming, write_reply
from ui.widgets import (
    attempt,
    button_list,
    file_picker,
    make_current,
    message_box_keys,
    model_choices,
    progress_bar,
)

DEFAULT_TITLE = "New chat"
SUGGESTIONS = 4  # first messages a new chat offers (chat.suggestion.1 … in the locales)
MESSAGES_SHOWN = 40  # a conversation opens on its newest messages; each click shows as many earlier ones
CONVERSATIONS_SHOWN = 100  # the sidebar lists the newest conversations; each click lists as many more
QUICK_POLL_S = 1.0  # the first model's download progress, while it runs
QUICK_POLLING = "chat.quick.polling"
chat = resources.chat_service(access.current_user().owner)
presets = PresetStore(resources.database(), access.current_user().owner)
store = resources.config_store()


def pick_model() -> str | None:
    """Choose what answers: a ready local model or a remote config (made current); None if neither."""
    choices = model_choices()
    if not choices:
        return None
    current = store.get_current_config()  # app.py settled it before the page

    def is_current(kind: str, value: int | str) -> bool:
        if current is None:
            return False
        if kind == "config":
            return value == current.id
        return current.provider == "local_model" and value == current.model

    first = next(iter(choices))
    selected = next((label for label, choice in choices.items() if is_current(*choice)), first)
    labels = list(choices)
    admin = access.is_admin()
    label = st.selectbox(
        t("chat.model"), labels, index=labels.index(selected), key="chat.model",
        help=t("chat.pick_model") if admin else t("chat.admin_picks_model"), disabled=not admin,
        # Current before the next run starts: app.py then loads a local model ahead of its first message.
        on_change=guarded(lambda: make_current(choices[st.session_state["chat.model"]])),
    )  # fmt: skip
    if admin and label != selected:
        make_current(choices[label])
    return label


def select(conversation_id: int | None) -> None:
    st.session_state[state.CONVERSATION] = conversation_id
    st.session_state.pop("chat.confirm-delete", None)
    st.session_state[state.FOCUS_WANTED] = "asked"  # type the next message without a click


def conversation_list() -> Conversation | None:
    """The sidebar's new-chat button, search and list; the conversation open, if any."""
    with st.sidebar:
        st.divider()
        st.button(
            t("chat.new"),
            icon=":material/add:",
            on_click=select,
            args=(None,),
            width="stretch",
            key="chat.new",
            shortcut="Ctrl+Shift+O",  # as in ChatGPT
        )
        search = st.text_input(t("chat.search"), key="chat.search", label_visibility="collapsed",
                               placeholder=t("chat.search"))  # fmt: skip
        conversations = chat.conversations(search)
        selected = st.session_state.get(state.CONVERSATION)
        if not conversations:
            st.caption(
                t("chat.no_match", search=escape_markdown(search)) if search else t("chat.no_conversations")
            )
        listed(conversations, selected)
        archive_tools()
    if not selected:
        return None
    if (found := next((c for c in conversations if c.id == selected), None)) or not search:
        return found
    try:  # the open conversation stays open while the list is searched
        return chat.get(selected)
    except NotFoundError:  # deleted in another window
        return None


def listed(conversations: list[Conversation], selected: int | None) -> None:
    """The pinned conversations, then the newest under headings by when they were last used, and a
    button for more."""
    shown = st.session_state.get("chat.conversations-shown", CONVERSATIONS_SHOWN)
    zone, heading = browser_zone(), None
    today = datetime.now(zone).date()
    with button_list("chat-list"):
        for conversation in conversations[:shown]:
            pinned = conversation.pinned_at is not None
            period = t("chat.pinned") if pinned else period_of(conversation.updated_at, today, zone)
            if period != heading:
                st.caption(period)
                heading = period
            st.button(
                escape_markdown(conversation.title),
                key=f"conversation-{conversation.id}",
                on_click=select,
                args=(conversation.id,),
                type="primary" if conversation.id == selected else "tertiary",
                width="stretch",
            )
    if (left := len(conversations) - shown) > 0:
        st.button(
            t("chat.show_more", count=min(left, CONVERSATIONS_SHOWN), left=left),
            icon=":material/expand_more:", type="tertiary", key="chat.show-more",
            on_click=st.session_state.__setitem__,
            args=("chat.conversations-shown", shown + CONVERSATIONS_SHOWN),
        )  # fmt: skip


def archive_tools() -> None:
    """Export every conversation to one file; import such a file, ChatGPT's export or OpenAI messages."""
    with st.popover(t("chat.archive"), icon=":material/import_export:", width="stretch"):
        st.caption(t("chat.archive_help", limit=ARCHIVE_BYTES // 1024**2))
        st.download_button(
            t("chat.export_all"), data=lambda: chat.export_json(), on_click="ignore",
            file_name=f"localllm-chats-{date.today():%Y%m%d}.json", mime="application/json",
            icon=":material/download:", key="chat.export-all",
        )  # fmt: skip
        upload = file_picker(t("chat.import_file"), ["json", "jsonl", "zip"], key="chat.import-file")
        if st.button(t("chat.import"), icon=":material/upload:", key="chat.import", disabled=upload is None):
            try:
                with st.spinner(t("chat.importing")):
                    result = chat.import_file(upload.getvalue())
            except LocalLLMError as exc:
                st.error(error_text(exc))
            else:
                st.session_state["chat.notice"] = t("chat.imported", count=result.imported,
                                                    skipped=result.already_here)  # fmt: skip
                st.rerun()  # the list shows what came in


def header(conversation: Conversation) -> None:
    st.subheader(escape_markdown(conversation.title))
    with st.container(horizontal=True):
        with st.popover(t("chat.rename"), icon=":material/edit:"):
            new_title = st.text_input(t("chat.title_label"), value=conversation.title, max_chars=300)
            saved = st.button(t("chat.save"), key="chat.rename-save")
            if saved and attempt(lambda: chat.rename(conversation.id, new_title)):
                st.rerun()
        name = f"chat-{conversation.id}"
        # Written when clicked (on Streamlit's thread), not at every run of the page.
        words = TranscriptWords(
            **{word.name: t(f"chat.transcript.{word.name}") for word in fields(TranscriptWords)}
        )
        st.download_button(t("chat.export_md"), partial(chat.export_markdown, conversation.id, words),
                           file_name=f"{name}.md", mime="text/markdown", icon=":material/description:",
                           on_click="ignore")  # fmt: skip
        st.download_button(t("chat.export_json"), partial(chat.export_json, conversation.id),
                           file_name=f"{name}.json", mime="application/json", icon=":material/data_object:",
                           on_click="ignore")  # fmt: skip
        pinned = conversation.pinned_at is not None
        st.button(
            t("chat.unpin" if pinned else "chat.pin"), key="chat.pin",
            icon=":material/keep_off:" if pinned else ":material/keep:",
            help=None if pinned else t("chat.pin_help"), on_click=guarded(chat.pin),
            args=(conversation.id, not pinned),
        )  # fmt: skip
        if st.button(t("chat.delete"), icon=":material/delete:"):
            st.session_state["chat.confirm-delete"] = conversation.id
    if st.session_state.get("chat.confirm-delete") == conversation.id:
        st.warning(t("chat.confirm_delete", title=conversation.title))
        if st.button(t("chat.confirm_yes"), type="primary", key="chat.delete-yes"):
            chat.delete(conversation.id)
            select(None)
            st.rerun()


def welcome(current: ProviderConfig) -> tuple[str | None, Preset | None]:
    """A new chat's page: where the messages go, first messages to try (the one clicked, if any) and the
    preset the conversation starts from."""
    st.subheader(t("chat.welcome"))
    if current.provider == "local_model":
        where = "chat.stays_here" if access.is_local_client() else "chat.stays_on_server"
        st.caption(t(where, model=escape_markdown(current.model)))
    else:
        server = outbound.shown_origin(current.base_url or "")
        st.caption(urls_as_code(t("chat.sent_to", model=escape_markdown(current.model), server=server)))
    clicked = None
    with st.container(horizontal=True):
        for number in range(1, SUGGESTIONS + 1):
            suggestion = t(f"chat.suggestion.{number}")
            if st.button(suggestion, icon=":material/chat_bubble:", key=f"chat.suggestion-{number}"):
                clicked = suggestion
    return clicked, new_chat_preset(presets, current.model)


def options(conversation: Conversation, current: ProviderConfig) -> None:
    params = chat.params(conversation.id)
    with st.expander(t("chat.options")):
        preset_picker(chat, presets, conversation, current.model)
        settings_form(conversation, params, thinking_help(current))
        if current.provider != "local_model":
            st.caption(t("chat.server_settings"))


def settings_form(conversation: Conversation, params: GenerationParams, thinking_help: str | None) -> None:
    """The conversation's system prompt and sampling settings; `thinking_help`: the thinking switch's
    help (None: no switch)."""
    with st.form(f"options-{conversation.id}", border=False):
        system = st.text_area(
            t("chat.system_prompt"), value=conversation.system_prompt, height=80, max_chars=MAX_TEXT_CHARS
        )
        left, right = st.columns(2)
        temperature = left.slider(t("chat.temperature"), 0.0, 2.0, params.temperature, 0.05)
        top_p = right.slider(t("chat.top_p"), 0.05, 1.0, params.top_p, 0.05)
        max_new = left.number_input(t("chat.max_new_tokens"), 1, 32768, params.max_new_tokens, 32)
        penalty = right.slider(t("chat.repetition_penalty"), 0.5, 2.0, params.repetition_penalty, 0.05)
        top_k = left.number_input(t("chat.top_k"), 0, 1000, params.top_k, 1, help=t("chat.top_k_help"),
                                  placeholder=t("chat.model_default"))  # fmt: skip
        min_p = right.slider(t("chat.min_p"), 0.0, 0.5, params.min_p, 0.01, help=t("chat.min_p_help"))
        presence = left.slider(t("chat.presence_penalty"), -2.0, 2.0, params.presence_penalty, 0.1,
                               help=t("chat.presence_penalty_help"))  # fmt: skip
        frequency = right.slider(t("chat.frequency_penalty"), -2.0, 2.0, params.frequency_penalty, 0.1,
                                 help=t("chat.frequency_penalty_help"))  # fmt: skip
        seed = left.number_input(t("chat.seed"), 0, 2**31, params.seed, 1, placeholder=t("chat.random"),
                                  help=t("chat.seed_help"))  # fmt: skip
        thinking = params.thinking
        if thinking_help:
            thinking = right.toggle(t("chat.think_first"), thinking, help=thinking_help)
        if st.form_submit_button(t("chat.save")):
            new_params = GenerationParams(
                temperature, top_p, int(max_new), penalty, top_k=None if top_k is None else int(top_k),
                min_p=min_p, presence_penalty=presence, frequency_penalty=frequency,
                seed=None if seed is None else int(seed), thinking=thinking,
            )  # fmt: skip
            attempt(lambda: chat.set_options(conversation.id, system, new_params))


def thinking_help(current: ProviderConfig) -> str | None:
    """The thinking switch's help where the chosen model can be asked to answer without reasoning first:
    a model here whose chat template can (Qwen3), or any server's (it asks its thinking models); None
    where it cannot."""
    if current.provider != "local_model":
        return t("chat.think_first_help_server")
    try:
        switches = resources.engine().tokenizer(current.model).switches_thinking
    # Not downloaded, or an unreadable tokenizer: no switch here, and the reply says what is wrong.
    except (LocalLLMError, OSError, ValueError):
        return None
    return t("chat.think_first_help") if switches else None


def stats_line(message: Message | ReplyStats) -> str:
    reason = message.finish_reason or "stop"
    if not message.prompt_tokens:  # ended before it ran (stopped in the queue, the app killed): no figures
        said = t(f"chat.reason.{reason}") if has(f"chat.reason.{reason}") else reason
        return " · ".join(part for part in (message.model, said) if part)
    return t(
        "chat.stats",
        model=message.model or "",
        prompt=message.prompt_tokens or 0,
        completion=message.completion_tokens or 0,
        ttft=f"{message.ttft_s:.2f} s" if message.ttft_s is not None else "–",
        tps=f"{message.tokens_per_s:.1f}" if message.tokens_per_s else "–",
        reason=t(f"chat.reason.{reason}") if has(f"chat.reason.{reason}") else reason,
    )


def history(conversation: Conversation, going_on: bool) -> None:
    """The shown branch's newest messages, and a button for earlier ones: the browser lays out every
    message drawn (with its copy and edit boxes), 3 s for a 100-turn conversation on 2 cores. A reply
    `going_on` is left to the reply that streams its next words."""
    turns = chat.turns(conversation.id)
    if going_on and turns:
        turns = turns[:-1]
    attached = chat.attachments(conversation.id)
    shown_key = f"chat.shown.{conversation.id}"
    earlier = max(0, len(turns) - st.session_state.get(shown_key, MESSAGES_SHOWN))
    if earlier:
        more = min(earlier, MESSAGES_SHOWN)
        st.button(
            t("chat.show_earlier", count=more, left=earlier), icon=":material/expand_less:", type="tertiary",
            key="chat.show-earlier", on_click=st.session_state.__setitem__,
            args=(shown_key, len(turns) - earlier + more),
        )  # fmt: skip
    for index, turn in enumerate(turns[earlier:], start=earlier):
        message, last = turn.message, index == len(turns) - 1
        with st.chat_message(message.role):
            if message.role == "user":
                st.markdown(as_typed(message.content))  # the user's text, never HTML or Markdown
                for info in attached.get(message.id, []):
                    st.caption(attachment_line(info))
                with st.container(horizontal=True, vertical_alignment="center"):
                    copy_box(message.content)
                    edit_message(message)
                    branch_arrows(conversation, turn)
                continue
            if last and (dropped := st.session_state.get(f"chat.trimmed.{conversation.id}")):
                st.caption(t("chat.trimmed", count=dropped))
            split = split_reasoning(message.content)
            reply_body(split)
            if message.finish_reason == "length" and split.thinking:
                st.caption(t("chat.cut_while_thinking"))
            elif message.finish_reason in ("stop", "length") and not split.answer.strip():
                st.caption(t("chat.no_text"))  # else an empty bubble (only blank lines, or an end at once)
            if message.sources:
                st.caption(sources_line([FileUse.from_dict(use) for use in message.sources]))
            st.caption(stats_line(message))
            with st.container(horizontal=True, vertical_alignment="center"):
                copy_box(split.answer)
                edit_reply(conversation, message)
                if last:
                    st.button(
                        t("chat.regenerate"),
                        icon=":material/refresh:",
                        key="chat.regenerate",
                        help=t("chat.regenerate_help"),
                        on_click=ask_again,
                        args=("regenerate",),
                    )
                if last and chat.goes_on(message):
                    st.button(
                        t("chat.continue"), icon=":material/play_arrow:", key="chat.continue",
                        help=t("chat.continue_help"), on_click=ask_again, args=("continue",),
                    )  # fmt: skip
                branch_arrows(conversation, turn)


def copy_box(text: str) -> None:
    """A message's text as it is, in a box whose button copies it (a reply: its answer, no reasoning)."""
    with st.popover(t("chat.copy"), icon=":material/content_copy:"):
        st.code(text, language=None, wrap_lines=True)


def attachment_line(info: AttachmentInfo) -> str:
    """report.pdf · 12 pages · 1.2 MB (· its text was cut)"""
    parts = [f":material/attach_file: {escape_markdown(info.name)}"]
    if info.pages:
        parts.append(t("chat.pages", count=info.pages))
    parts.append(format_bytes(info.size_bytes))
    if info.truncated:
        parts.append(t("chat.file_cut", limit=f"{MAX_CHARACTERS:,}"))
    return " · ".join(parts)


def sources_line(uses: list[FileUse]) -> str:
    """What of each attached file the reply was given: whole, or which passages."""
    parts = []
    for use in uses:
        name = escape_markdown(use.file)
        if use.passages is None:
            parts.append(t("chat.file_whole", file=name))
        elif use.passages:
            parts.append(t("chat.file_passages", file=name, passages=", ".join(map(str, use.passages)),
                           total=use.total))  # fmt: skip
        else:
            parts.append(t("chat.file_none", file=name))
    return ":material/description: " + "; ".join(parts)


def branch_arrows(conversation: Conversation, turn: Turn) -> None:
    """‹ 2/3 ›: the other versions of this message (edits, regenerated replies), each with what followed."""
    if turn.branches < 2:
        return

    def arrow(label: str, step: int, disabled: bool) -> None:
        st.button(
            label, key=f"branch-{step}-{turn.message.id}", type="tertiary", disabled=disabled,
            help=t("chat.branch_prev" if step < 0 else "chat.branch_next"),
            on_click=guarded(chat.switch_branch), args=(conversation.id, turn.message.id, step),
        )  # fmt: skip

    with st.container(horizontal=True, width="content", vertical_alignment="center", gap=None):
        arrow("‹", -1, turn.branch == 1)
        st.caption(t("chat.branch", branch=turn.branch, branches=turn.branches))
        arrow("›", 1, turn.branch == turn.branches)


def edit_message(message: Message) -> None:
    """Ask something else in its place: a new branch from here (the earlier one stays)."""
    with st.popover(t("chat.edit"), icon=":material/edit:", help=t("chat.edit_help")):
        text = st.text_area(t("chat.edit"), value=message.content, key=f"edit-{message.id}",
                            label_visibility="collapsed", max_chars=MAX_TEXT_CHARS)  # fmt: skip
        if st.button(t("chat.edit_send"), key=f"edit-send-{message.id}", type="primary"):
            st.session_state["chat.pending"] = ("edit", message.id, text)
            st.rerun()


def edit_reply(conversation: Conversation, message: Message) -> None:
    """Correct a reply by hand: kept as a new branch that the conversation continues from."""
    with st.popover(t("chat.edit"), icon=":material/edit:", help=t("chat.edit_reply_help")):
        text = st.text_area(t("chat.edit"), value=message.content, key=f"edit-{message.id}",
                            label_visibility="collapsed", max_chars=MAX_TEXT_CHARS)  # fmt: skip
        saved = st.button(t("chat.save"), key=f"edit-save-{message.id}", type="primary")
        if saved and attempt(lambda: chat.edit_reply(conversation.id, message.id, text)):
            st.rerun()


def ask_again(how: str) -> None:
    """A click's callback: the page's next run answers the last message again (`how`: "load-anyway",
    "regenerate"), or lets the last reply go on ("continue")."""
    st.session_state["chat.pending"] = (how,)


def waiting_text() -> str:
    """What a reply waits for before its first word: a model to load, its prompt to read, a server."""
    current = store.get_current_config()
    if current.provider != "local_model":
        return t("chat.waiting_server", model=escape_markdown(current.model))
    if resources.engine().parts_of(current.model) is None:
        return t("chat.loading", model=escape_markdown(current.model))
    return t("chat.reading")


def reply(
    conversation: Conversation, events: Generator[ChatEvent, None, None], stop: threading.Event,
    earlier: str = "",
) -> None:  # fmt: skip
    """Stream a reply (that goes on from `earlier`) into an assistant bubble; Stop (a rerun) sets `stop`,
    and the reply is saved as stopped before the next run draws the conversation."""
    with st.chat_message("assistant"):
        notice, files_note, stop_slot = st.empty(), st.empty(), st.empty()
        stop_slot.button(t("chat.stop"), icon=":material/stop_circle:", key="chat.stop", shortcut="Esc")

        def text() -> Iterator[str]:
            if earlier:
                yield earlier
            notice.caption(waiting_text())
            waiting = True
            for event in events:
                if isinstance(event, Queued):
                    notice.info(t("chat.queued", place=ordinal(event.ahead + 1)), icon=":material/hourglass:")
                elif isinstance(event, Reading):  # a long prompt, part by part
                    done, total = f"{event.done:,}", f"{event.total:,}"
                    notice.progress(
                        event.done / event.total, text=t("chat.reading_part", done=done, total=total)
                    )
                elif isinstance(event, FilesUsed):
                    files_note.caption(sources_line(list(event.uses)))
                elif isinstance(event, Trimmed):
                    notice.caption(t("chat.trimmed", count=event.dropped))
                    st.session_state[f"chat.trimmed.{conversation.id}"] = event.dropped
                    waiting = False
                elif isinstance(event, TextDelta):
                    if waiting:
                        notice.empty()
                        waiting = False
                    yield event.text

        try:
            with streaming(stop), closing(events):  # closed: saved as stopped if it did not finish
                write_reply(text())
        except LocalLLMError as exc:
            stop_slot.empty()  # nothing left to stop
            st.error(error_text(exc))
            if not isinstance(exc, InsufficientMemoryError):
                notice.empty()  # not still "reading the conversation"
            elif access.is_admin():  # the load it waited for stays said; the button asks for the reply again
                st.button(
                    t("chat.load_anyway"), key="chat.load-anyway", on_click=ask_again, args=("load-anyway",)
                )
            return
    st.rerun()


def quick_start() -> None:
    """With no model ready: the model to start with (`ModelLibrary.first_model`) downloaded from here,
    its progress polled while it runs; the chat opens by itself once it is ready."""
    library = resources.library()
    # Chosen without torch (a fresh app's engine thread imports it meanwhile): by memory and disk, with
    # 16-bit weights (the int4 ones the engine keeps on a CPU take less).
    machine = resources.memory_and_disk()
    spec = library.first_model(current_language(), SIXTEEN_BIT, machine)
    st.info(t("chat.no_model" if spec is None else "chat.no_model_start_here"), icon=":material/info:")
    if spec is None:
        return
    status, progress = library.status(spec.key), library.progress(spec.key)
    if status.kind == "ready" or (status.kind == "downloading") != st.session_state.get(QUICK_POLLING, False):
        st.rerun(scope="app")  # ready, or a download started or ended: the page, polling only while it runs
    with st.container(border=True, key="quick-start"):
        st.markdown(f"**{t('chat.quick.title', key=spec.key)}**")
        described = spec.key if has(f"catalog.{spec.key}.strengths") else "custom"
        st.markdown(t(f"catalog.{described}.strengths"))
        if spec.download_bytes:  # what it needs in memory is on the Models page (asking waits for torch)
            fits = library.fits(spec, SIXTEEN_BIT, machine)  # a model on its way may not
            st.caption(
                t("chat.quick.facts" if fits else "chat.quick.size", size=format_bytes(spec.download_bytes))
            )
        if status.kind == "downloading" and progress is not None:
            progress_bar(progress)
            st.caption(t("chat.quick.wait"))
            st.button(t("models.action.cancel"), key="quick-cancel", on_click=guarded(library.manager.cancel),
                      args=(spec.key,))  # fmt: skip
        else:
            first_download(spec.key, status.kind, progress)


def first_download(key: str, kind: str, progress: Progress | None) -> None:
    """The first model's button: Download, Resume (partly downloaded) or Try again (failed)."""
    failed = progress is not None and progress.state == "failed"
    if failed:
        st.error(failure_text(progress.error_code, progress.error_params, progress.error or ""))
    elif progress is not None and kind == "partial" and progress.bytes_total:
        progress_bar(progress, running=False)
    label = (
        t("chat.quick.retry") if failed
        else t("chat.quick.resume") if kind == "partial"
        else t("chat.quick.download", key=key)
    )  # fmt: skip
    clicked = st.button(label, key="quick-download", type="primary", icon=":material/download:")
    if clicked and attempt(lambda: resources.library().download(key)):
        st.rerun(scope="app")


def ask(
    conversation: Conversation | None, text: str, uploads: list[UploadedFile], preset: Preset | None = None
) -> None:
    """Send a message (a new conversation's first, which starts from `preset`) with its files, and stream
    the reply."""
    text = text if text.strip() else (t("chat.about_files") if uploads else "")
    if not text:
        st.warning(t("chat.empty_message"), icon=":material/edit_note:")
        return
    started_here = conversation is None
    if conversation is None:
        conversation = chat.new_conversation(title_from(text) or DEFAULT_TITLE)
        if preset is not None:
            chat.apply_preset(conversation.id, preset)
    with st.chat_message("user"):
        st.markdown(as_typed(text))
        for upload in uploads:
            st.caption(f":material/attach_file: {escape_markdown(upload.name)} · {format_bytes(upload.size)}")
    stop = threading.Event()
    try:
        st.session_state.pop(f"chat.trimmed.{conversation.id}", None)
        with st.spinner(t("chat.reading_files")) if uploads else nullcontext():
            events = chat.send(conversation.id, text, stop, files=[(u.name, u.getvalue()) for u in uploads])
    except LocalLLMError as exc:
        st.error(error_text(exc))
        if started_here:
            chat.delete(conversation.id)  # nothing was sent: no empty conversation stays behind
        return
    select(conversation.id)
    try:
        reply(conversation, events, stop)
    except LocalLLMError as exc:
        st.error(error_text(exc))


settle_interrupted_reply()  # before anything of the conversation is read
st.title(t("chat.title"))
if notice := st.session_state.pop("chat.notice", None):
    st.toast(notice, icon=":material/check_circle:")
model = pick_model()
conversation = conversation_list()
if model is None:
    downloading = bool(resources.library().active_downloads())  # running ones only
    st.session_state[QUICK_POLLING] = downloading
    st.fragment(guarded(quick_start), run_every=QUICK_POLL_S if downloading else None)()
    with st.container(horizontal=True):
        st.page_link("pages/models.py", label=t("chat.go_models"), icon=":material/download:")
        if access.is_admin():  # a LAN visitor cannot add a server
            st.page_link("pages/servers.py", label=t("chat.go_servers"), icon=":material/lan:")
    st.stop()
current = store.get_current_config()  # after the picker's choice
if current is None:  # a LAN visitor, with only servers that the admin has not chosen
    st.info(t("chat.not_chosen_yet"), icon=":material/info:")
    st.stop()

(suggested, first_preset), greeting = (None, None), st.empty()
pending = st.session_state.pop("chat.pending", None)
going_on = pending == ("continue",) and conversation is not None
if conversation is None:
    with greeting.container():
        suggested, first_preset = welcome(current)
else:
    header(conversation)
    options(conversation, current)
    history(conversation, going_on)
message_box_keys(
    st.session_state.pop(state.FOCUS_WANTED, None if state.FOCUS_BOX in st.session_state else "page")
)
prompt = st.chat_input(
    t("chat.input"), max_chars=MAX_TEXT_CHARS, accept_file="multiple", file_type=list(FILE_TYPES),
    max_upload_size=ATTACHMENT_BYTES // 1024**2,
)  # fmt: skip
if prompt is not None or suggested:
    greeting.empty()  # the conversation takes the page
    text, files = (prompt.text, prompt.files) if prompt is not None else (suggested, [])
    ask(conversation, text, files, first_preset)
elif pending and conversation is not None:
    try:
        if pending[0] == "load-anyway":
            with st.spinner(waiting_text()):
                resources.engine().load(store.get_current_config().model, force=True)
        stop = threading.Event()
        if pending[0] in ("regenerate", "load-anyway"):
            reply(conversation, chat.regenerate(conversation.id, stop), stop)
        elif going_on:  # the reply drawn again as it stood, then its next words
            earlier = chat.messages(conversation.id)[-1].content.rstrip()
            reply(conversation, chat.continue_reply(conversation.id, stop), stop, earlier)
        else:
            reply(conversation, chat.edit(conversation.id, pending[1], pending[2], stop), stop)
    except LocalLLMError as exc:
        st.error(error_text(exc))
