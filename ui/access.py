"""Who is using this browser session: the local user (admin), or a LAN user who signed in."""

from __future__ import annotations

import streamlit as st

from core.access import LOCAL_USER, Identity, is_loopback
from core.errors import SignInError
from ui import resources, state
from ui.i18n import t


def client_address() -> str | None:
    """The browser's IP address as the server saw it; None for this machine (loopback)."""
    return st.context.ip_address


def is_local_client() -> bool:
    return is_loopback(client_address())


def current_user() -> Identity:
    """The person behind this session; a LAN browser that has not signed in gets the sign-in page."""
    if is_local_client():
        return LOCAL_USER
    if state.IDENTITY not in st.session_state:
        sign_in_page()  # stops the script
    return st.session_state[state.IDENTITY]


def is_admin() -> bool:
    return current_user().is_admin


def admin_only_note() -> None:
    """Shown where a LAN user meets a setting or action reserved to the admin."""
    st.caption(t("access.admin_only"))


def _sign_in() -> None:
    try:
        identity = resources.sign_in_gate().sign_in(
            client_address() or "", st.session_state["access.name"], st.session_state["access.password"]
        )
    except SignInError as exc:
        st.session_state["access.error"] = t(f"access.{exc.params['reason']}", **exc.params)
    else:
        st.session_state[state.IDENTITY] = identity
        st.session_state.pop("access.error", None)
    st.session_state["access.password"] = ""


def sign_out() -> None:
    st.session_state.pop(state.IDENTITY, None)


def signed_in() -> bool:
    """The local user always is; a LAN browser once it gave the password."""
    return is_local_client() or state.IDENTITY in st.session_state


def sign_in_page() -> None:
    """The sign-in form for a LAN browser, or why it cannot sign in; stops the script either way."""
    st.title(t("access.title"))
    if not resources.sign_in_gate().policy.lan_allowed:
        st.error(t("access.no_password"), icon=":material/lock:")
        st.stop()
    st.caption(t("access.intro"))
    with st.form("access.form"):
        st.text_input(t("access.name"), key="access.name", max_chars=40)
        st.text_input(t("access.password"), type="password", key="access.password")
        st.form_submit_button(t("access.submit"), type="primary", on_click=_sign_in)
    if error := st.session_state.get("access.error"):
        st.error(error)
    st.stop()
