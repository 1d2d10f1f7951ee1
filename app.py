"""LocalLLM Dashboard: router, language, sidebar status."""

import streamlit as st

from core.errors import ConfigError, StorageError
from ui import access, resources
from ui.failures import guarded
from ui.i18n import error_text, t
from ui.resources import PAGE_ICON
from ui.widgets import (
    database_problem,
    ensure_language,
    language_switch,
    page_styles,
    settle_current_model,
    sidebar_status,
    sidebar_user,
    warm_chosen_model,
)

# The icon ships with the app (an SVG becomes a data: URL): a Material icon would be fetched from Google.
st.set_page_config(page_title="LocalLLM Dashboard", page_icon=str(PAGE_ICON), layout="wide")
if not access.trusted_origin():  # also when started by hand with `streamlit run`, without ui/server.py
    st.error(t("access.foreign_host"))
    st.stop()

try:
    resources.database()
except StorageError as exc:
    database_problem(exc)
    st.stop()


def dashboard() -> None:
    """The pages, once the database has opened."""
    ensure_language()
    try:
        resources.settings_checked()
    except ConfigError as exc:  # a setting the environment gives wrong (LOCALLLM_PARALLEL=abc): said, not run
        st.error(error_text(exc), icon=":material/tune:")
        st.stop()
    if kept := st.session_state.pop("db.kept", None):
        st.success(t("db.kept", path=kept), icon=":material/database:")
    servers = st.Page("pages/servers.py", title=t("nav.servers"), icon=":material/dns:")  # the admin's only
    chat = st.Page("pages/chat.py", title=t("nav.chat"), icon=":material/chat:", default=True)
    pages = [
        chat,
        st.Page("pages/models.py", title=t("nav.models"), icon=":material/download:"),
        servers,
        st.Page("pages/hardware.py", title=t("nav.hardware"), icon=":material/settings:"),
    ]
    with st.sidebar:
        access.sync_session_cookie()
        page_styles()
    if not access.signed_in():
        st.navigation(pages, position="hidden")  # keeps the page asked for, to open after signing in
        with st.sidebar:
            language_switch()
        access.sign_in_page()
    navigation = st.navigation(pages if access.is_admin() else [p for p in pages if p is not servers])
    current = settle_current_model()
    if navigation is chat:
        warm_chosen_model(current)  # before the sidebar status, which then says it is loading
    with st.sidebar:
        language_switch()
        sidebar_user()
        sidebar_status(current)
    navigation.run()


guarded(dashboard, retry=True)()  # the last net under every page: a sentence, never a traceback
