from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Literal

import streamlit as st

from core.errors import LocalLLMError
from core.hub.catalog import ModelSpec
from core.hub.library import DownloadPlan, ModelLibrary, ModelStatus
from core.hub.search import MAX_QUERY_CHARS, SearchResults
from core.inference.sizing import (
    KvLayout,
    MemoryEstimate,
    decode_tokens_per_s_bound,
    estimate_memory,
    memory_verdict,
)
from core.storage import repo
from core.units import format_bytes, format_count
from ui import access, resources
from ui.failures import guarded
from ui.i18n import current_language, error_text, failure_text, has, t
from ui.markup import as_text, escape_markdown
from ui.widgets import download_settings, progress_bar

ACTIVE_POLL_S = 1.0
LANGUAGES_SHOWN = 6  # of those a model card names (Qwen's name 29)
STATUS_BADGES = {  # a model's state: (colour, icon) of its badge
    "ready": ("green", ":material/check_circle:"),
    "downloading": ("blue", ":material/downloading:"),
    "partial": ("orange", ":material/pause_circle:"),
    "damaged": ("red", ":material/error:"),
    "not_downloaded": ("gray", ":material/cloud_download:"),
}
library: ModelLibrary = resources.library()


@dataclass(frozen=True)
class Action:
    """A button on a model card."""

    label: str
    key: str
    callback: Callable[..., None]
    args: tuple = ()
    kind: Literal["primary", "secondary"] = "secondary"
    admin_only: bool = False
    done: bool = False  # what it would do holds already: shown, not clickable


def run_action(action, success: str | None = None) -> None:
    """Run a library call from a button; show a translated error instead of a traceback."""
    try:
        action()
    except LocalLLMError as exc:
        st.session_state["models.flash"] = ("error", error_text(exc))
    else:
        if success:
            st.session_state["models.flash"] = ("success", success)


def start_download(key: str) -> None:
    started = library.download(key)
    message = "models.started" if started else "models.already_running"
    st.session_state["models.flash"] = ("info", t(message, key=key))


def show_plan(plan: DownloadPlan) -> None:
    st.markdown(f"**{t('models.plan.title')}**")
    st.dataframe(
        [
            {t("models.plan.file"): f.path, t("models.plan.size"): format_bytes(f.size)}
            for f in plan.listing.files
        ],
        hide_index=True,
        width="stretch",
    )
    st.caption(
        t(
            "models.plan.summary",
            total=format_bytes(plan.listing.total_bytes),
            have=format_bytes(plan.bytes_on_disk),
            fetch=format_bytes(plan.bytes_to_fetch),
            free=format_bytes(plan.disk_free_bytes),
        )
    )
    margin = library.manager.policy.disk_margin_bytes
    if plan.bytes_to_fetch + margin > plan.disk_free_bytes:
        st.error(
            t(
                "models.plan.no_space",
                needed=format_bytes(plan.bytes_to_fetch + margin - plan.disk_free_bytes),
            )
        )
    else:
        st.button(
            t("models.action.download"),
            key=f"download-{plan.spec.key}",
            type="primary",
            on_click=guarded(run_action),
            args=(lambda: start_download(plan.spec.key),),
        )


def live_status(spec: ModelSpec) -> None:
    """Title, status badge and progress; polled while a download runs."""
    status = library.status(spec.key)
    progress = library.progress(spec.key)
    if (status.kind == "downloading") != st.session_state.get(f"models.polling.{spec.key}", False):
        st.rerun(scope="app")  # a download started or ended: redraw the card, polling only while it runs
    color, icon = STATUS_BADGES[status.kind]
    with st.container(horizontal=True, vertical_alignment="center"):  # one line, on a phone too
        st.subheader(f"{spec.key} · {t('models.custom')}" if spec.custom else spec.key)
        st.badge(t(f"models.status.{status.kind}", percent=f"{status.fraction:.0%}"), color=color, icon=icon)
    st.caption(escape_markdown(spec.repo_id))
    if status.kind == "downloading" and progress:
        progress_bar(progress)
        st.button(
            t("models.action.cancel"),
            key=f"cancel-{spec.key}",
            on_click=guarded(library.manager.cancel),
            args=(spec.key,),
        )
        return
    failed = progress is not None and progress.state == "failed"
    if failed:
        st.error(failure_text(progress.error_code, progress.error_params, progress.error or ""))
    elif status.kind == "partial" and progress and progress.state == "interrupted":
        st.warning(t("models.interrupted"))
    if status.kind == "partial" and progress and progress.bytes_total:
        progress_bar(progress, running=False)
    if status.kind == "partial" or (status.kind == "not_downloaded" and failed):
        with st.container(horizontal=True):
            label = "models.action.retry" if failed else "models.action.resume"
            st.button(t(label), key=f"resume-{spec.key}", type="primary", on_click=guarded(run_action),
                      args=(lambda: start_download(spec.key),))  # fmt: skip
            if failed:
                mirror_settings_link()


def mirror_settings_link() -> None:
    """Where an administrator adds a download mirror, beside a failed download's Retry."""
    if access.is_admin():
        st.page_link("pages/hardware.py", label=t("models.mirror_settings"), icon=":material/settings:")


def actions(spec: ModelSpec, status: ModelStatus) -> None:
    key = spec.key
    if status.kind == "not_downloaded" and st.session_state.get(f"models.plan-open.{key}"):
        with st.container(border=True):
            try:
                with st.spinner(t("models.plan.checking", repo=spec.repo_id)):
                    plan = library.plan(key)
                show_plan(plan)
            except LocalLLMError as exc:
                st.error(error_text(exc))
                with st.container(horizontal=True):
                    st.button(
                        t("models.action.check_again"), key=f"check-again-{key}", type="primary"
                    )  # a rerun
                    mirror_settings_link()
    if status.kind == "damaged":
        st.warning(t("models.damaged_files", files=", ".join(p.path for p in status.problems)))
    buttons: list[Action] = []
    if status.kind == "not_downloaded" and not st.session_state.get(f"models.plan-open.{key}"):
        open_plan = (st.session_state.__setitem__, (f"models.plan-open.{key}", True))
        buttons.append(Action(t("models.action.check"), f"check-{key}", *open_plan, "primary"))
    if status.kind == "not_downloaded" and resources.hf_cache_snapshot(spec.repo_id):
        use_cache = (lambda: library.use_cached(key),)
        buttons.append(Action(t("models.action.use_cache"), f"cache-{key}", run_action, use_cache))
    if status.kind == "damaged":
        repair = (lambda: start_download(key),)
        buttons.append(Action(t("models.action.repair"), f"repair-{key}", run_action, repair, "primary"))
    if status.kind == "ready":
        in_use = in_chat is not None and in_chat.provider == "local_model" and in_chat.model == key
        label = t("models.in_use") if in_use else t("models.use_for_chat")
        buttons.append(Action(label, f"use-{key}", use_for_chat, (key,), "primary", True, done=in_use))
        buttons.append(Action(t("models.action.verify"), f"verify-{key}", verify, (key,)))
        if resources.engine().parts_of(key) is not None:  # loaded (several may be): its memory back now
            buttons.append(
                Action(t("models.action.unload"), f"unload-{key}", release, (key,), admin_only=True)
            )
        redownload = (partial(release_and_redownload, key),)
        buttons.append(Action(t("models.action.redownload"), f"redownload-{key}", run_action, redownload,
                              admin_only=True))  # fmt: skip
    if status.kind in ("ready", "damaged", "partial"):
        ask = (key,)
        buttons.append(Action(t("models.action.delete"), f"delete-{key}", ask_delete, ask, admin_only=True))
    if spec.custom and status.kind != "downloading":
        remove = (lambda: library.remove_custom(key),)
        buttons.append(Action(t("models.action.remove"), f"remove-{key}", run_action, remove,
                              admin_only=True))  # fmt: skip
    if buttons:
        admin = access.is_admin()
        with st.container(horizontal=True):
            for action in buttons:
                locked = action.admin_only and not admin
                st.button(
                    action.label,
                    key=action.key,
                    on_click=None if locked else guarded(action.callback),  # a forged click: nothing
                    args=action.args,
                    type=action.kind,
                    disabled=locked or action.done,
                    help=t("access.admin_only") if locked else None,
                )
    if st.session_state.get("models.confirm-delete") == key:
        st.warning(t("models.confirm_delete", key=key, size=format_bytes(spec.download_bytes)))
        st.button(
            t("models.confirm_yes"),
            key=f"delete-yes-{key}",
            type="primary",
            on_click=guarded(delete),
            args=(key,),
        )


def use_for_chat(key: str) -> None:
    resources.config_store().use_local_model(key)
    st.session_state["models.flash"] = ("success", t("models.now_current", key=key))


def ask_delete(key: str) -> None:
    st.session_state["models.confirm-delete"] = key


def release(key: str) -> None:
    """Unload `key` if the engine holds it: on its Unload, and before its files go (a deleted model
    answers no more chats and keeps no memory, nor, on Windows, its files open)."""
    resources.engine().unload(key)


def release_and_redownload(key: str) -> None:
    release(key)
    library.redownload(key)


def delete(key: str) -> None:
    st.session_state.pop("models.confirm-delete", None)
    try:
        release(key)
        freed = library.delete(key)
    except LocalLLMError as exc:
        st.session_state["models.flash"] = ("error", error_text(exc))
    else:
        st.session_state["models.flash"] = ("success", t("models.deleted", key=key, size=format_bytes(freed)))


def verify(key: str) -> None:
    try:
        bad = [c.path for c in library.verify(key) if not c.ok]
    except LocalLLMError as exc:
        st.session_state["models.flash"] = ("error", error_text(exc))
        return
    if bad:
        st.session_state["models.flash"] = (
            "error",
            t("models.verify_failed", count=len(bad), files=", ".join(bad)),
        )
    else:
        st.session_state["models.flash"] = ("success", t("models.verified", key=key))


def speed_caption(key: str, estimate: MemoryEstimate) -> None:
    """The decode-speed estimate; polled while the memory bandwidth it needs is being measured (a
    second or two after the app starts), then the page is drawn again without polling."""
    bandwidth = resources.memory_bandwidth()
    if bandwidth is not None and measuring and page_drawn:
        st.rerun(scope="app")  # from a poll only: a full run's rerun dropped what its click had shown
    st.caption(speed_text(key, estimate, bandwidth))


def speed_text(key: str, estimate: MemoryEstimate, bandwidth: float | None) -> str:
    """The decode-speed estimate with its basis (on a CPU), and what was measured here if the model ran."""
    engine = resources.engine()
    if engine.runs_on() != "cpu":
        text = t("models.speed_gpu")
    elif bandwidth is None:
        return t("models.speed_pending")
    else:
        text = cpu_speed_text(estimate, bandwidth, engine.decode_efficiency())
    with resources.database().begin() as session:
        measured = repo.measured_tokens_per_s(session, key)
    return text + (t("models.measured", tps=f"{measured:,.1f}") if measured else "")


def cpu_speed_text(estimate: MemoryEstimate, bandwidth: float, efficiency: float) -> str:
    bound = decode_tokens_per_s_bound(estimate, bandwidth)
    return t(
        "models.speed",
        tps=f"{bound * efficiency:,.0f}",
        bound=f"{bound:,.0f}",
        efficiency=f"{efficiency * 100:.0f}",
        bandwidth=f"{bandwidth / 1e9:.0f}",
        weights=format_bytes(estimate.read_per_token_bytes),
    )


def card(spec: ModelSpec) -> None:
    with st.container(border=True, key=f"card-{spec.key}"):
        status = library.status(spec.key)  # once per card: it reads the job row and the disk
        downloading = status.kind == "downloading"
        st.session_state[f"models.polling.{spec.key}"] = downloading
        st.fragment(guarded(live_status), run_every=ACTIVE_POLL_S if downloading else None)(spec)
        facts = {
            t("models.size"): format_bytes(spec.download_bytes) if spec.download_bytes else "–",
            t("models.params"): format_count(spec.parameters) if spec.parameters else "–",
            t("models.context"): (
                t("models.tokens", count=format_count(spec.context_length)) if spec.context_length else "–"
            ),
        }
        with st.container(horizontal=True, horizontal_alignment="distribute"):  # side by side on a phone too
            for label, value in facts.items():
                st.metric(label, value, width="content")
        details = []
        if spec.languages:
            named = [t(f"language.{code}") if has(f"language.{code}") else code for code in spec.languages]
            more = len(named) - LANGUAGES_SHOWN
            languages = " / ".join(named[:LANGUAGES_SHOWN]) + (
                t("models.more", count=more) if more > 0 else ""
            )
            details.append(f"**{t('models.languages')}:** {languages}")
        if spec.license:
            details.append(f"**{t('models.license')}:** {spec.license}")
        if details:
            st.markdown(" · ".join(details))
        described = spec.key if has(f"catalog.{spec.key}.strengths") else "custom"
        st.markdown(f"**{t('models.strengths')}:** {t(f'catalog.{described}.strengths')}")
        st.markdown(f"**{t('models.use')}:** {t(f'catalog.{described}.use')}")
        estimate = library.memory_estimate(spec.key, resources.engine_precision())
        if estimate:
            verdict = memory_verdict(estimate.total_bytes, resources.hardware())
            text = t(
                f"models.verdict.{verdict.verdict}",
                needed=format_bytes(verdict.needed_bytes),
                available=format_bytes(verdict.available_bytes),
            )
            (st.error if verdict.verdict == "too_large" else st.caption)(text)
            st.fragment(guarded(speed_caption), run_every=ACTIVE_POLL_S if measuring else None)(
                spec.key, estimate
            )
        context_choice(spec)
        actions(spec, status)


CONTEXT_CHOICES = (1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072)


def context_choice(spec: ModelSpec) -> None:
    """The context length this model gets, each choice with the memory it needs; the admin's to change,
    and a choice that would not fit in memory is refused."""
    chosen = library.context_tokens(spec.key)
    window = spec.context_length or max(CONTEXT_CHOICES)
    choices = sorted({tokens for tokens in CONTEXT_CHOICES if tokens <= window} | {chosen, window})
    precision, info = resources.engine_precision(), resources.hardware()

    def label(tokens: int) -> str:
        estimate = library.memory_estimate(spec.key, precision, tokens)
        if estimate is None:
            return t("models.tokens", count=format_count(tokens))
        return t(
            "models.context_choice", tokens=format_count(tokens), memory=format_bytes(estimate.total_bytes)
        )

    # The labels themselves are the options (AppTest formats options outside a run, in another language).
    labels = {label(tokens): tokens for tokens in choices}

    def choose() -> None:
        # A browser may send a label drawn before the memory in it changed (a download ended, the weights
        # setting did): nothing is chosen, and the widget shows the saved choice again.
        tokens = labels.get(st.session_state[widget])
        if tokens is None:
            return
        estimate = library.memory_estimate(spec.key, precision, tokens)
        if estimate and memory_verdict(estimate.total_bytes, info).verdict == "too_large":
            refused = t("models.context_refused", tokens=format_count(tokens), key=spec.key)
            st.session_state["models.flash"] = ("error", refused)
            return
        library.preferences.set_context_for(spec.key, tokens)  # the next reply's cache follows it
        saved = t("models.context_saved", tokens=format_count(tokens), key=spec.key)
        st.session_state["models.flash"] = ("success", saved)

    admin = access.is_admin()
    widget = f"context-{spec.key}-{current_language()}"  # its labels are in the session's language
    st.selectbox(t("models.context_length"), list(labels), index=choices.index(chosen),
                 key=widget, on_change=guarded(choose) if admin else None, disabled=not admin,
                 help=t("models.context_help") if admin else t("access.admin_only"))  # fmt: skip


def find_model_form() -> None:
    """A search of the Hub by name (Enter searches); its results stay until the next search."""
    with st.container(border=True, key="find-model"):
        with st.form("find-model-form", border=False):
            st.markdown(f"**{t('models.find.title')}**")
            query = st.text_input(
                t("models.find.query"), placeholder=t("models.find.placeholder"), max_chars=MAX_QUERY_CHARS,
                key="find-model-query", help=t("models.find.help"),
            )  # fmt: skip
            searched = st.form_submit_button(t("models.find.submit"), key="find-model-submit",
                                             icon=":material/search:")  # fmt: skip
        if searched:
            st.session_state.pop("models.found", None)
            try:
                with st.spinner(t("models.find.searching")):
                    st.session_state["models.found"] = library.search(query)
            except LocalLLMError as exc:
                st.error(error_text(exc))
        if results := st.session_state.get("models.found"):
            show_results(results)


def show_results(results: SearchResults) -> None:
    if not results.models:
        st.info(t("models.find.none", query=as_text(results.query)))
        if results.copies_left_out:
            st.caption(t("models.find.copies", count=results.copies_left_out))
        return
    st.caption(t("models.find.from", count=len(results.models), query=as_text(results.query),
                 endpoint=as_text(results.endpoint)))  # fmt: skip
    if results.copies_left_out:
        st.caption(t("models.find.copies", count=results.copies_left_out))
    in_catalog = {spec.repo_id.lower() for spec in library.models()}
    precision, hardware = resources.engine_precision(), resources.hardware()
    for number, model in enumerate(results.models):
        with st.container(horizontal=True, vertical_alignment="center", key=f"found-{number}"):
            with st.container(gap=None):
                page = f"{results.endpoint.rstrip('/')}/{model.repo_id}"  # its model card, to read first
                st.markdown(f"**[{escape_markdown(model.repo_id)}]({page})**")
                downloads = format_count(model.downloads)
                if model.parameters:
                    st.caption(t("models.find.facts", params=format_count(model.parameters),
                                 size=format_bytes(model.download_bytes), downloads=downloads))  # fmt: skip
                    # Weights and runtime only: the cache needs the config, read once the model is added.
                    needed = estimate_memory(model.parameters, KvLayout(0, 0, 0), precision).total_bytes
                    verdict = memory_verdict(needed, hardware)
                    st.caption(t(f"models.verdict.{verdict.verdict}", needed=format_bytes(needed),
                                 available=format_bytes(verdict.available_bytes)))  # fmt: skip
                else:
                    st.caption(t("models.find.facts_unknown", downloads=downloads))
                if model.gated:
                    st.caption(t("models.find.gated"))
            added = model.repo_id.lower() in in_catalog
            label = t("models.find.in_catalog") if added else t("models.find.add")
            icon = ":material/check:" if added else ":material/add:"
            if st.button(label, key=f"find-add-{number}", disabled=added, icon=icon):
                add_found(model.repo_id)


def add_found(repo_id: str) -> None:
    try:
        with st.spinner(t("models.find.adding", repo=repo_id)):
            spec = library.add_custom(repo_id)
    except LocalLLMError as exc:
        st.error(error_text(exc))
    else:
        added(spec)


def added(spec: ModelSpec) -> None:
    """A model just added: said, and its card opens on the files to download (one click from there)."""
    st.session_state["models.flash"] = ("success", t("models.add.done", repo=spec.repo_id, key=spec.key))
    st.session_state[f"models.plan-open.{spec.key}"] = True
    st.rerun()


def add_model_form() -> None:
    with st.form("add-model", clear_on_submit=False, border=True):
        st.markdown(f"**{t('models.add.title')}**")
        repo_id = st.text_input(
            t("models.add.repo"),
            placeholder=t("models.add.placeholder"),
            max_chars=200,
            key="add-model-repo",
            help=t("models.add.help"),
        )
        if st.form_submit_button(t("models.add.submit"), key="add-model-submit"):
            try:
                spec = library.add_custom(repo_id)
            except LocalLLMError as exc:
                st.error(error_text(exc))
            else:
                added(spec)


st.title(t("models.title"))
st.caption(t("models.intro"))
if flash := st.session_state.pop("models.flash", None):
    kind, message = flash
    {"error": st.error, "success": st.success, "info": st.info}[kind](message)
in_chat = resources.config_store().get_current_config()  # read once: its card says "In use for chat"
measuring = resources.memory_bandwidth() is None  # the speed estimates poll until it is measured
page_drawn = False  # True once this run got to the end: what the fragments' own reruns see
for model in library.models():
    card(model)
find_model_form()
add_model_form()
if access.is_admin():
    download_settings()
page_drawn = True
