"""Model servers: the OpenAI-compatible servers (vLLM, Ollama, LM Studio, OpenAI) and the local model
as providers; add, test, save, choose, delete. The admin's page only (app.py lists it for the admin)."""

import streamlit as st

from core.chat.providers import WELL_KNOWN_SERVERS, OpenAICompatibleProvider, said_context
from core.errors import LocalLLMError
from core.storage.repo import config_field_limit as limit
from core.units import format_count
from ui import resources
from ui.failures import guarded
from ui.i18n import error_text, t
from ui.markup import escape_markdown

st.title(t("providers.title"))
st.caption(t("providers.intro"))
store = resources.config_store()


def connect(base_url: str, api_key: str | None) -> None:
    """Test the server and remember the models it offers (for the model picker)."""
    try:
        models = OpenAICompatibleProvider(base_url.strip(), api_key or None, "").list_models()
    except LocalLLMError as exc:
        st.error(error_text(exc))
        return
    st.session_state[f"providers.models.{base_url.strip()}"] = models
    st.success(t("providers.connected", count=len(models)))


def model_field(base_url: str, current: str, key: str) -> str:
    offered = st.session_state.get(f"providers.models.{base_url.strip()}")
    if offered:
        index = offered.index(current) if current in offered else 0
        return st.selectbox(t("providers.model"), offered, index=index, key=f"{key}.select",
                            format_func=lambda model: offered_label(base_url.strip(), model))  # fmt: skip
    return st.text_input(t("providers.model"), value=current, key=f"{key}.text", max_chars=limit("model"))


def offered_label(base_url: str, model: str) -> str:
    """A model the server offers, with its context where the server lists it (vLLM's max_model_len)."""
    context = said_context(base_url, model)
    return f"{model} · {t('models.tokens', count=format_count(context))}" if context else model


def save_new() -> None:
    """Save the new server's config, then clear the form (the key is not kept in the page)."""
    state = st.session_state
    offered = state.get(f"providers.models.{state['pnew.url'].strip()}")
    model = state.get("pnew.model.select") if offered else state.get("pnew.model.text", "")
    try:
        config_id = store.save_config(
            "openai_compatible", model, state["pnew.url"].strip(), state["pnew.key"] or None,
            name=state["pnew.name"] or None,
        )  # fmt: skip
    except LocalLLMError as exc:
        state["providers.flash"] = ("error", error_text(exc))
        return
    state["providers.flash"] = (
        "ok",
        t("providers.saved", name=escape_markdown(store.get_config(config_id).name)),
    )
    for key in ("pnew.url", "pnew.key", "pnew.name", "pnew.model.text"):
        state[key] = ""
    state["pnew.kind"] = None


def fill_in_address() -> None:
    """A well-known server picked: its usual address in the field (the user may still edit it)."""
    if kind := st.session_state.get("pnew.kind"):
        st.session_state["pnew.url"] = WELL_KNOWN_SERVERS[kind]


def delete_config(config_id: int) -> None:
    store.delete_config(config_id)
    st.session_state.pop("providers.confirm-delete", None)


configs = store.list_configs()
for config in configs:
    kind = t("providers.remote") if config.provider == "openai_compatible" else t("providers.local")
    named = [config.name, kind] + ([config.model] if config.model != config.name else [])  # said once
    label = " · ".join(escape_markdown(part) for part in named)
    if config.is_current:
        label += f" — {t('providers.current')}"
    with st.expander(label):
        if config.provider == "openai_compatible":
            url = st.text_input(t("providers.base_url"), value=config.base_url or "", key=f"p{config.id}.url",
                                max_chars=limit("base_url"))  # fmt: skip
            key = st.text_input(
                t("providers.api_key"), type="password", key=f"p{config.id}.key", max_chars=limit("api_key"),
                placeholder=t("providers.keep_key", masked=config.masked_api_key) if config.api_key else "",
                autocomplete="off",  # a key, not this site's password: no browser offers to make one up
            )  # fmt: skip
            if st.button(t("providers.test"), key=f"p{config.id}.test"):
                connect(url, key or config.api_key)
            model = model_field(url, config.model, f"p{config.id}.model")
            name = st.text_input(
                t("providers.name"), value=config.name, key=f"p{config.id}.name", max_chars=limit("name")
            )
            if st.button(t("providers.save"), key=f"p{config.id}.save"):
                changes = {"name": name, "base_url": url.strip(), "model": model}
                if key:
                    changes["api_key"] = key
                try:
                    store.update_config(config.id, **changes)
                    st.success(t("providers.saved", name=escape_markdown(name)))
                except LocalLLMError as exc:
                    st.error(error_text(exc))
        with st.container(horizontal=True):
            st.button(t("providers.use"), key=f"p{config.id}.use", on_click=guarded(store.set_current_config),
                      args=(config.id,), disabled=config.is_current)  # fmt: skip
            ask = ("providers.confirm-delete", config.id)
            st.button(
                t("providers.delete"),
                key=f"p{config.id}.delete",
                on_click=st.session_state.__setitem__,
                args=ask,
            )
        if st.session_state.get("providers.confirm-delete") == config.id:
            st.warning(t("providers.confirm_delete", name=escape_markdown(config.name)))
            st.button(t("providers.confirm_yes"), key=f"p{config.id}.delete-yes", type="primary",
                      on_click=guarded(delete_config), args=(config.id,))  # fmt: skip

with st.expander(t("providers.add"), expanded=not configs, icon=":material/add:"):  # open on a first visit
    st.pills(t("providers.well_known"), list(WELL_KNOWN_SERVERS), key="pnew.kind", on_change=fill_in_address,
             help=t("providers.well_known_help"))  # fmt: skip
    new_url = st.text_input(t("providers.base_url"), placeholder=WELL_KNOWN_SERVERS["Ollama"], key="pnew.url",
                            max_chars=limit("base_url"))  # fmt: skip
    new_key = st.text_input(
        t("providers.api_key"),
        type="password",
        key="pnew.key",
        max_chars=limit("api_key"),
        autocomplete="off",
    )
    with st.container(horizontal=True):
        tested = st.button(t("providers.test"), key="pnew.test")
        refreshed = st.button(t("providers.refresh"), key="pnew.refresh")
    if tested or refreshed:
        connect(new_url, new_key)
    new_model = model_field(new_url, "", "pnew.model")
    new_name = st.text_input(
        t("providers.name"), key="pnew.name", placeholder=new_model or "", max_chars=limit("name")
    )
    st.button(t("providers.save"), key="pnew.save", type="primary", on_click=guarded(save_new))
    if flash := st.session_state.pop("providers.flash", None):
        (st.success if flash[0] == "ok" else st.error)(flash[1])
