"""Widgets every page shares: language switch, sidebar status, a file picker in the UI's language."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import streamlit as st

from core import outbound
from core.errors import LocalLLMError, SchemaTooNewError, StorageError
from core.hub.reachability import REMEMBER_S
from core.settings import load_settings
from core.storage.db import set_aside, sqlite_file
from core.storage.records import ProviderConfig
from core.units import format_bytes, format_duration
from ui import access, resources, state
from ui.failures import guarded, language_without_database
from ui.i18n import DEFAULT_LANGUAGE, LANGUAGES, error_text, language_from_locale, t
from ui.markup import escape_markdown, urls_as_code

if TYPE_CHECKING:
    from streamlit.delta_generator import DeltaGenerator

    from core.hub.transfer import Progress
    from core.inference.loading import LoadedModel

STATUS_POLL_S = 1.0  # the sidebar status is drawn again this often while a model loads or downloads


def attempt(action: Callable[[], Any]) -> bool:
    """Do it; on a product error show its sentence in the session's language and say False."""
    try:
        action()
    except LocalLLMError as exc:
        st.error(error_text(exc))
        return False
    return True


def progress_bar(progress: Progress, running: bool = True) -> None:
    """A download's bar: bytes, speed, time left and file while it runs (the endpoint asked while the
    file list is awaited), else how far it got."""
    done, total = format_bytes(progress.bytes_done), format_bytes(progress.bytes_total)
    percent = f"{progress.fraction:.0%}"
    if running and not progress.bytes_total:
        endpoint = outbound.shown_origin(progress.endpoint or "")
        text = t("models.progress_listing", endpoint=endpoint)
        if progress.attempts and progress.last_failure:
            why = t(f"reason.{progress.last_failure}")
            text += t("models.progress_failed_tries_why", count=progress.attempts, reason_text=why)
        elif progress.attempts:  # another process's job: its count only
            text += t("models.progress_failed_tries", count=progress.attempts)
    elif running:
        speed, eta = format_bytes(progress.speed_bps), format_duration(progress.eta_s)
        text = t("models.progress", done=done, total=total, percent=percent, speed=speed, eta=eta,
                 file=progress.current_file or "")  # fmt: skip
    else:
        text = t("models.progress_paused", done=done, total=total, percent=percent)
    st.progress(progress.fraction, text=text)


def file_picker(label: str, types: Sequence[str], key: str) -> Any:
    """st.file_uploader whose button and limits read in the session's language (Streamlit writes them in
    English): its own text hidden, ours drawn in its place by a style scoped to this widget's key."""
    scope = _key_class(key)
    limits = t("upload.limits", limit=st.get_option("server.maxUploadSize"),
               types=", ".join(kind.upper() for kind in types))  # fmt: skip
    button = f"{scope} [data-testid='stFileUploader'] button [data-testid='stMarkdownContainer'] p"
    note = f"{scope} [data-testid='stFileUploaderDropzoneInstructions'] span"
    st.html(
        f"<style>{button}, {note} {{font-size: 0}}"
        f" {button}::after {{content: {_css_string(t('upload.button'))}; font-size: 0.875rem}}"
        f" {note}::after {{content: {_css_string(limits)}; font-size: 0.875rem}}</style>"
    )
    return st.file_uploader(label, type=list(types), key=key)


def button_list(key: str) -> DeltaGenerator:
    """A container whose buttons read from the left like a list's lines (Streamlit centres a label)."""
    scope = _key_class(key)
    st.html(
        f"<style>{scope} button, {scope} button > div {{justify-content: flex-start}}"
        f" {scope} button p {{text-align: left}}</style>"
    )
    return st.container(key=key)


def page_styles() -> None:
    """Hide the Stop beside Streamlit's running indicator: it halts the page's script and leaves a
    streaming reply drawn with its own Stop until the next click (the reply's Stop, Esc, is the one).
    And on a touch screen (no pointer that hovers: a phone), the buttons' keyboard shortcuts. And the
    hint a text field shows while typed in ("Press Enter to submit form"), which Streamlit writes in
    English (and "submit form" in a form, "apply" outside one), in the session's language."""
    spans = (
        f"{_INSTRUCTIONS}:first-child:not(:only-child)",
        *(f"{_key_class(key)} {_INSTRUCTIONS}:only-child" for key in UNLIMITED_FIELDS),
    )
    hints, translated = ", ".join(spans), ", ".join(f"{span}::after" for span in spans)
    st.html(
        "<style>[data-testid='stStatusWidget'] button {display: none}"
        " @media (hover: none) and (pointer: coarse) {"
        "button [data-has-shortcut] > kbd {display: none}}"
        f" {hints} {{font-size: 0}}"
        f" {translated} {{content: {_css_string(t('field.enter'))}; font-size: 12px}}</style>"
    )


# The hint's part of a text field's instructions: first, beside the character count of a field with a
# limit (max_chars; the count alone before the first key), alone in the fields without one (their keys).
_INSTRUCTIONS = "[data-testid='stTextInput'] [data-testid='InputInstructions'] > span"
UNLIMITED_FIELDS = ("chat.search", "models-dir-input")


# Shift+Esc (ChatGPT's key) puts the cursor in the message box from anywhere on the page. `focusBox` puts
# it there once the box is drawn, but not on a touch screen (its keyboard would cover the page), and not
# from another field the person types in unless they asked for it. Installed once a browser page
# (Streamlit runs an st.html script when its element is drawn anew).
_MESSAGE_BOX_KEYS = """<script>
if (!window.localllmFocusBox) {
  const messageBox = () => document.querySelector('[data-testid="stChatInput"] textarea');
  window.localllmFocusBox = (asked) => {
    if (matchMedia("(hover: none) and (pointer: coarse)").matches) return;
    let tries = 0;
    const attempt = () => {
      const box = messageBox();
      if (!box || box.disabled) {
        if (++tries < 100) setTimeout(attempt, 50);
        return;
      }
      const active = document.activeElement;
      const typing = active && active !== box && active.matches("input, textarea, select, [contenteditable]");
      if (asked || !typing) box.focus();
    };
    attempt();
  };
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && event.shiftKey && messageBox()) {
      event.preventDefault();
      messageBox().focus();
    }
  });
}
</script>"""


def message_box_keys(focus: str | None) -> None:
    """Shift+Esc puts the cursor in the chat's message box; `focus`: put it there now, as ChatGPT does, so
    that a keyboard needs no click to type: "asked" (a new chat or a conversation was chosen), or "page"
    (the page opened: not from a field the person types in)."""
    st.html(_MESSAGE_BOX_KEYS, unsafe_allow_javascript=True)
    if focus:
        times = st.session_state[state.FOCUS_BOX] = st.session_state.get(state.FOCUS_BOX, 0) + 1
        asked = "true" if focus == "asked" else "false"
        # A script that differs from the last one's, so that Streamlit runs it.
        st.html(
            f"<script>window.localllmFocusBox({asked}); // {times}</script>", unsafe_allow_javascript=True
        )


def _key_class(key: str) -> str:
    """The CSS class selector Streamlit gives the element of widget or container key `key`."""
    return f".st-key-{re.sub(r'[^A-Za-z0-9_-]', '-', key)}"


def _css_string(text: str) -> str:
    """`text` as a CSS string literal that cannot close the string or the style element."""
    return '"' + "".join(c if c.isalnum() or c in " ·•,.()" else f"\\{ord(c):x} " for c in text) + '"'


def ensure_language() -> None:
    """First run of a session: the remembered choice, else the browser's language."""
    if state.language() in LANGUAGES:
        return
    remembered = resources.preferences().get("language")
    st.session_state[state.LANGUAGE] = remembered or language_from_locale(st.context.locale)


def database_problem(exc: StorageError) -> None:
    """The database cannot be used: say why, and offer the local user a fresh one (the old file is kept)."""
    language_without_database()
    st.error(error_text(exc), icon=":material/database:")
    url = load_settings().db_url
    damaged = sqlite_file(url)
    if isinstance(exc, SchemaTooNewError) or damaged is None or not damaged.exists():
        return
    if not access.is_local_client():
        st.caption(t("db.ask_admin"))
        return
    st.markdown(t("db.way_out", path=str(damaged)))
    if st.button(t("db.start_fresh"), type="primary", key="db.start-fresh"):
        try:
            kept = set_aside(url)
        except (OSError, StorageError) as error:
            st.error(t("db.set_aside_failed", reason=str(error)))
            return
        st.cache_resource.clear()
        st.session_state["db.kept"] = str(kept)
        st.rerun()


def _switch_language(widget_key: str) -> None:
    """Use the chosen language; remember it for later visits (a LAN user's choice stays theirs)."""
    st.session_state[state.LANGUAGE] = st.session_state[widget_key]
    if not access.is_local_client():
        return
    resources.preferences().set("language", st.session_state[state.LANGUAGE])


def language_switch() -> None:
    """The radio's default is the current language and its key changes with it: a radio that the
    browser resets mid-rerun (a page link clicked while a page still runs) sent its first option,
    Chinese, and switched an English session for good."""
    current = state.language() or DEFAULT_LANGUAGE
    widget_key = f"{state.LANGUAGE}.{current}"
    st.radio(
        t("lang.label"),
        options=list(LANGUAGES),
        index=list(LANGUAGES).index(current),
        format_func=LANGUAGES.__getitem__,
        key=widget_key,
        horizontal=True,
        on_change=guarded(_switch_language),
        args=(widget_key,),
        help=t("lang.theme_hint"),
    )


def sidebar_user() -> None:
    """A LAN user's name and a sign-out button; nothing for the local user."""
    if access.is_local_client():
        return
    user = access.current_user()
    role = t("access.role_admin") if user.is_admin else t("access.role_user")
    st.caption(t("access.signed_in_as", name=escape_markdown(user.name), role=role))
    st.button(
        t("access.sign_out"),
        icon=":material/logout:",
        on_click=guarded(access.sign_out),
        key="access.sign-out",
    )


Choice = tuple[str, int | str]  # ("local", model key) or ("config", a remote config's id)


def model_choices() -> dict[str, Choice]:
    """What can answer in the chat, by its label: ready local models, then remote configs."""
    library, store = resources.library(), resources.config_store()
    choices: dict[str, Choice] = {
        spec.key: ("local", spec.key) for spec in library.models() if library.status(spec.key).kind == "ready"
    }
    for config in store.list_configs():
        if config.provider == "openai_compatible":
            choices[f"{config.name} · {config.model} ({t('providers.remote')})"] = ("config", config.id)
    return choices


def make_current(choice: Choice) -> None:
    kind, value = choice
    if kind == "local":
        resources.config_store().use_local_model(str(value))
    else:
        resources.config_store().set_current_config(int(value))


def settle_current_model() -> ProviderConfig | None:
    """The current config; with nothing chosen yet, or a local model chosen that is not ready (deleted,
    being downloaded again), a visit first makes the first of the chat's choices current, before the
    sidebar says what answers: what answers is what the chat's model list shows. A LAN visitor settles
    only on a local model: never on a server the admin did not choose."""
    store = resources.config_store()
    current = store.get_current_config()
    if current is None or (
        current.provider == "local_model" and resources.library().status(current.model).kind != "ready"
    ):  # the chat's choices are read only then: every page runs this
        admin = access.is_admin()
        if first := next((c for c in model_choices().values() if admin or c[0] == "local"), None):
            make_current(first)
            current = store.get_current_config()
    return current


def warm_chosen_model(current: ProviderConfig | None) -> None:
    """As the Chat page opens, or a local model is chosen there: start loading it, so that it is loaded
    (and its prompt weights kept) by the time the first message is typed (`LocalEngine.warm`: once per
    model and app start)."""
    if current is not None and current.provider == "local_model":
        resources.engine().warm(current.model)


def sidebar_status(current: ProviderConfig | None) -> None:
    """What answers (`current`), the loaded model and running downloads: followed live (drawn again
    every STATUS_POLL_S) while a model loads or a download runs."""
    busy = resources.engine().loading is not None or bool(resources.library().active_downloads())
    # Emptied by the fragment's first call, in this run: its later runs are the polls.
    this_run = [True]
    st.fragment(guarded(_status), run_every=STATUS_POLL_S if busy else None)(
        current, polled=busy, this_run=this_run
    )


def _status(current: ProviderConfig | None, *, polled: bool, this_run: list[bool]) -> None:
    engine, downloads = resources.engine(), resources.library().active_downloads()
    loaded, loading, copies = engine.loaded_models, engine.loading, engine.prompt_copies
    in_page_run = bool(this_run) and this_run.pop()
    if polled and not in_page_run and loading is None and not downloads:
        # Done: a poll redraws the page, which shows the model too, and polling stops. Not in the page's
        # own run, which draws the rest of the page after this and may carry a message (a rerun drops it).
        st.rerun(scope="app")
    st.caption(t("status.header"))
    no_provider = t("status.no_provider")
    provider = t("status.provider", name=escape_markdown(current.name)) if current else no_provider
    model_lines = [_loaded_line(model, copies.get(model.key, 0)) for model in loaded]
    if loading or not loaded:
        model_lines.append(t("status.loading", model=loading) if loading else t("status.no_model"))
    lines = [provider, *model_lines]
    if downloads:
        lines.append(t("status.downloads_some", count=len(downloads)))
        lines.extend(f"  - {p.key}: {p.fraction:.0%}" for p in downloads)
    else:
        lines.append(t("status.downloads_none"))
    st.markdown("\n".join(f"- {line}" if not line.startswith("  ") else line for line in lines))

    if loaded:
        for model in loaded:
            if (left := engine.idle_seconds_left(model.key)) is not None:
                time_left = format_duration(left)
                st.caption(
                    t("status.idle_unload_model", model=model.key, time=time_left)
                    if len(loaded) > 1
                    else t("status.idle_unload", time=time_left)
                )
        unload = st.button(
            t("status.unload_all") if len(loaded) > 1 else t("status.unload"),
            icon=":material/eject:",
            key="status.unload",
            disabled=not access.is_admin(),
            help=None if access.is_admin() else t("access.admin_only"),
        )
        if unload and access.is_admin():  # a click inside the status's fragment reruns only the fragment:
            engine.unload()
            st.rerun()  # the whole page, which may show the model too (Chat, Hardware)


def _loaded_line(model: LoadedModel, copy: int) -> str:
    """A loaded model as the status says it: its device, weights and memory (and its prompt copy's)."""
    memory = format_bytes(model.memory_bytes)
    return t(
        "status.loaded",
        model=model.key,
        device=model.device,
        dtype=model.weights if model.weights != model.dtype else model.dtype,
        memory=memory + t("status.prompt_copy", size=format_bytes(copy)) if copy else memory,
    )


def _test_endpoints() -> None:
    """Check each endpoint, before the page is drawn: what it learns (those asked last) shows at once."""
    library = resources.library()
    st.session_state["downloads.probes"] = [library.probe_endpoint(url) for url in library.endpoints()]


def _keep_last() -> None:
    """Save the endpoint order downloads take for now (those that did not answer last), for good."""
    library = resources.library()
    saved = library.set_endpoints(library.manager.failures.ordered(library.endpoints()))
    st.session_state["downloads.endpoints"] = "\n".join(saved)  # the list shown: the order saved


def download_settings() -> None:
    """Endpoint order (with a reachability test) and auto-resume: the same on Models and Settings."""
    library = resources.library()
    with st.expander(t("models.endpoints.title")):
        st.caption(t("models.endpoints.help"))
        if proxy := outbound.download_proxy():  # where a failing download may be stuck
            st.caption(t("models.endpoints.proxy", proxy=proxy))
        saved, failures = library.endpoints(), library.manager.failures
        if failures.ordered(saved) != saved:  # downloads take another order for now
            failing = ", ".join(failures.failing(saved))
            st.caption(urls_as_code(t("models.endpoints.asked_last", urls=failing,
                                      minutes=f"{REMEMBER_S / 60:.0f}")))  # fmt: skip
            st.button(
                t("models.endpoints.keep_last"), key="downloads.keep-last", on_click=guarded(_keep_last)
            )
        text = st.text_area(t("models.endpoints.title"), value="\n".join(saved),
                            label_visibility="collapsed", height=110, key="downloads.endpoints")  # fmt: skip
        save, test = st.columns(2)
        if save.button(t("models.endpoints.save"), key="downloads.save"):
            try:
                library.set_endpoints(text.splitlines())
            except LocalLLMError as exc:
                st.error(error_text(exc))
            else:
                st.success(t("models.endpoints.saved"))
                st.session_state.pop("downloads.probes", None)  # they were of the endpoints before
        test.button(t("models.endpoints.test"), key="downloads.test", on_click=guarded(_test_endpoints))
        for probe in st.session_state.get("downloads.probes", []):  # kept: a rerun does not wipe them
            if probe.ok:
                st.success(
                    urls_as_code(t("models.endpoints.ok", url=probe.endpoint, ms=f"{probe.latency_ms:.0f}"))
                )
            else:
                reason = t(f"reason.{probe.reason}")
                st.error(urls_as_code(t("models.endpoints.bad", url=probe.endpoint, reason_text=reason)))
        st.toggle(
            t("models.auto_resume"),
            value=library.auto_resume,
            key="downloads.auto-resume",
            on_change=guarded(lambda: library.set_auto_resume(st.session_state["downloads.auto-resume"])),
        )
