from collections.abc import Iterator

import streamlit as st

from core.chat.presets import PresetStore
from core.chat.service import ChatEvent, Trimmed
from core.errors import InsufficientMemoryError, LocalLLMError
from core.inference.events import Finished, Queued, ReplyStats, TextDelta
from core.inference.params import GenerationParams
from core.storage.records import Conversation, Message
from ui import access, resources, state
from ui.i18n import error_text, has, ordinal, t
from ui.markup import escape_markdown, reply_markdown
from ui.presets import default_preset, preset_picker

DEFAULT_TITLE = "New chat"
chat = resources.chat_service(access.current_user().owner)
presets = PresetStore(resources.database(), access.current_user().owner)
library = resources.library()
store = resources.config_store()


def pick_model() -> str | None:
    """Choose what answers: a ready local model or a remote config (made current); None if neither."""
    choices: dict[str, tuple[str, int | str]] = {}
    for spec in library.models():
        if library.status(spec.key).kind == "ready":
            choices[spec.key] = ("local", spec.key)
    for config in store.list_configs():
        if config.provider == "openai_compatible":
            choices[f"{config.name} · {config.model} ({t('providers.remote')})"] = ("config", config.id)
    if not choices:
        return None
    current = store.get_current_config()

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
    )  # fmt: skip
    kind, value = choices[label]
    if admin and (label != selected or current is None):
        if kind == "local":
            store.use_local_model(str(value))
        else:
            store.set_current_config(int(value))
    return label


def select(conversation_id: int | None) -> None:
    st.session_state[state.CONVERSATION] = conversation_id
    st.session_state.pop("chat.confirm-delete", None)


def conversation_list() -> Conversation | None:
    with st.sidebar:
        st.divider()
        st.button(
            t("chat.new"),
            icon=":material/add:",
            on_click=select,
            args=(None,),
            width="stretch",
            key="chat.new",
        )
        search = st.text_input(t("chat.search"), key="chat.search", label_visibility="collapsed",
                               placeholder=t("chat.search"))  # fmt: skip
        conversations = chat.conversations(search)
        selected = st.session_state.get(state.CONVERSATION)
        if not conversations:
            st.caption(t("chat.no_conversations"))
        for conversation in conversations[:100]:
            st.button(
                escape_markdown(conversation.title),
                key=f"conversation-{conversation.id}",
                on_click=select,
                args=(conversation.id,),
                type="primary" if conversation.id == selected else "tertiary",
                width="stretch",
            )
    return next((c for c in conversations if c.id == selected), None) if selected else None


def header(conversation: Conversation) -> None:
    st.subheader(escape_markdown(conversation.title))
    with st.container(horizontal=True):
        with st.popover(t("chat.rename"), icon=":material/edit:"):
            new_title = st.text_input(t("chat.title_label"), value=conversation.title, max_chars=300)
            if st.button(t("chat.save"), key="chat.rename-save"):
                run(lambda: chat.rename(conversation.id, new_title))
                st.rerun()
        name = f"chat-{conversation.id}"
        st.download_button(t("chat.export_md"), chat.export_markdown(conversation.id), file_name=f"{name}.md",
                           mime="text/markdown", icon=":material/description:")  # fmt: skip
        st.download_button(t("chat.export_json"), chat.export_json(conversation.id), file_name=f"{name}.json",
                           mime="application/json", icon=":material/data_object:")  # fmt: skip
        if st.button(t("chat.delete"), icon=":material/delete:"):
            st.session_state["chat.confirm-delete"] = conversation.id
    if st.session_state.get("chat.confirm-delete") == conversation.id:
        st.warning(t("chat.confirm_delete", title=conversation.title))
        if st.button(t("chat.confirm_yes"), type="primary", key="chat.delete-yes"):
            chat.delete(conversation.id)
            select(None)
            st.rerun()


def options(conversation: Conversation) -> None:
    params = chat.params(conversation.id)
    with st.expander(t("chat.options")):
        preset_picker(chat, presets, conversation, store.get_current_config().model)
        settings_form(conversation, params)


def settings_form(conversation: Conversation, params: GenerationParams) -> None:
    with st.form(f"options-{conversation.id}", border=False):
        system = st.text_area(t("chat.system_prompt"), value=conversation.system_prompt, height=80)
        left, right = st.columns(2)
        temperature = left.slider(t("chat.temperature"), 0.0, 2.0, params.temperature, 0.05)
        top_p = right.slider(t("chat.top_p"), 0.05, 1.0, params.top_p, 0.05)
        max_new = left.number_input(t("chat.max_new_tokens"), 1, 32768, params.max_new_tokens, 32)
        penalty = right.slider(t("chat.repetition_penalty"), 0.5, 2.0, params.repetition_penalty, 0.05)
        top_k = left.number_input(t("chat.top_k"), 0, 1000, params.top_k, 1, help=t("chat.top_k_help"),
                                  placeholder=t("chat.model_default"))  # fmt: skip
        min_p = right.slider(t("chat.min_p"), 0.0, 0.5, params.min_p, 0.01, help=t("chat.min_p_help"))
        presence = left.slider(t("chat.presence_penalty"), -2.0, 2.0, params.presence_penalty, 0.1)
        seed = right.number_input(t("chat.seed"), 0, 2**31, params.seed, 1, placeholder=t("chat.random"),
                                  help=t("chat.seed_help"))  # fmt: skip
        if st.form_submit_button(t("chat.save")):
            new_params = GenerationParams(
                temperature, top_p, int(max_new), penalty, top_k=None if top_k is None else int(top_k),
                min_p=min_p, presence_penalty=presence, seed=None if seed is None else int(seed),
            )  # fmt: skip
            run(lambda: chat.set_options(conversation.id, system, new_params))


def stats_line(message: Message | ReplyStats) -> str:
    reason = message.finish_reason or "stop"
    return t(
        "chat.stats",
        model=message.model or "",
        prompt=message.prompt_tokens or 0,
        completion=message.completion_tokens or 0,
        ttft=f"{message.ttft_s:.2f} s" if message.ttft_s is not None else "–",
        tps=f"{message.tokens_per_s:.1f}" if message.tokens_per_s else "–",
        reason=t(f"chat.reason.{reason}") if has(f"chat.reason.{reason}") else reason,
    )


def history(conversation: Conversation) -> None:
    messages = chat.messages(conversation.id)
    for index, message in enumerate(messages):
        last = index == len(messages) - 1
        with st.chat_message(message.role):
            if message.role == "user":
                st.markdown(escape_markdown(message.content))  # the user's text, never HTML or Markdown
                if last or (index == len(messages) - 2 and messages[-1].role == "assistant"):
                    edit_last(message)
                continue
            if last and (dropped := st.session_state.get(f"chat.trimmed.{conversation.id}")):
                st.caption(t("chat.trimmed", count=dropped))
            st.markdown(reply_markdown(message.content, t("chat.image")))  # Markdown; no image is fetched
            st.caption(stats_line(message))
            with st.container(horizontal=True):
                with st.popover(t("chat.copy"), icon=":material/content_copy:"):
                    st.code(message.content, language=None, wrap_lines=True)
                if last:
                    st.button(
                        t("chat.regenerate"),
                        icon=":material/refresh:",
                        key="chat.regenerate",
                        on_click=st.session_state.__setitem__,
                        args=("chat.pending", ("regenerate",)),
                    )


def edit_last(message: Message) -> None:
    with st.popover(t("chat.edit"), icon=":material/edit:"):
        text = st.text_area(t("chat.edit"), value=message.content, key=f"edit-{message.id}",
                            label_visibility="collapsed")  # fmt: skip
        if st.button(t("chat.edit_send"), key=f"edit-send-{message.id}"):
            st.session_state["chat.pending"] = ("edit", text)
            st.rerun()


def run(action) -> None:
    try:
        action()
    except LocalLLMError as exc:
        st.error(error_text(exc))


def write_reply(pieces: Iterator[str]) -> None:
    """The reply as it streams, rendered as the finished one is (reply_markdown: no image fetched)."""
    shown, text = st.empty(), ""
    for piece in pieces:
        text += piece
        shown.markdown(reply_markdown(text, t("chat.image")))


def reply(conversation: Conversation, events: Iterator[ChatEvent]) -> None:
    """Stream a reply into an assistant bubble; Stop (a rerun) closes the stream, which stops generation."""
    with st.chat_message("assistant"):
        notice = st.empty()
        st.button(t("chat.stop"), icon=":material/stop_circle:", key="chat.stop")
        finished: list[ReplyStats] = []

        def text() -> Iterator[str]:
            notice.caption(t("chat.loading", model=store.get_current_config().model))
            waiting = True
            for event in events:
                if isinstance(event, Queued):
                    notice.info(t("chat.queued", place=ordinal(event.ahead + 1)), icon=":material/hourglass:")
                elif isinstance(event, Trimmed):
                    notice.caption(t("chat.trimmed", count=event.dropped))
                    st.session_state[f"chat.trimmed.{conversation.id}"] = event.dropped
                    waiting = False
                elif isinstance(event, TextDelta):
                    if waiting:
                        notice.empty()
                        waiting = False
                    yield event.text
                elif isinstance(event, Finished):
                    finished.append(event.stats)

        try:
            write_reply(text())
        except InsufficientMemoryError as exc:
            st.error(error_text(exc))
            if access.is_admin() and st.button(t("chat.load_anyway"), key="chat.load-anyway"):
                resources.engine().load(store.get_current_config().model, force=True)
                st.session_state["chat.pending"] = ("regenerate",)
            return
        except LocalLLMError as exc:
            st.error(error_text(exc))
            return
    st.rerun()


st.title(t("chat.title"))
model = pick_model()
conversation = conversation_list()
if model is None:
    st.info(t("chat.no_model"), icon=":material/info:")
    st.page_link("pages/models.py", label=t("chat.go_models"), icon=":material/download:")
    st.stop()

if conversation is not None:
    header(conversation)
    options(conversation)
    history(conversation)

pending = st.session_state.pop("chat.pending", None)
prompt = st.chat_input(t("chat.input"), max_chars=100_000)
if prompt and prompt.strip():
    if conversation is None:
        conversation = chat.new_conversation(prompt.strip().splitlines()[0][:40] or DEFAULT_TITLE)
        if preset := default_preset(presets, store.get_current_config().model):
            chat.apply_preset(conversation.id, preset)  # the model's default preset
        select(conversation.id)
    with st.chat_message("user"):
        st.markdown(escape_markdown(prompt))
    try:
        st.session_state.pop(f"chat.trimmed.{conversation.id}", None)
        reply(conversation, chat.send(conversation.id, prompt))
    except LocalLLMError as exc:
        st.error(error_text(exc))
elif prompt is not None:
    st.warning(t("chat.empty_message"), icon=":material/edit_note:")
elif pending and conversation is not None:
    try:
        if pending[0] == "regenerate":
            reply(conversation, chat.regenerate(conversation.id))
        else:
            reply(conversation, chat.edit_last(conversation.id, pending[1]))
    except LocalLLMError as exc:
        st.error(error_text(exc))
