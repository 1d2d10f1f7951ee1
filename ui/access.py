"""Who is using this browser session: the local user (admin), or a LAN user who signed in."""

from __future__ import annotations

import json

import streamlit as st
import streamlit.components.v1 as components

from core.access import LOCAL_USER, SESSION_TTL_S, Identity, is_loopback
from core.errors import SignInError
from ui import resources, state
from ui.i18n import t

SESSION_COOKIE = "localllm_session"
_COOKIE_CHANGE = "access.cookie"  # a token to store in the browser, or "" to clear it
_TOKEN = "access.token"  # this tab's session token


def client_address() -> str | None:
    """The browser's IP address as the server saw it; None for this machine (loopback)."""
    return st.context.ip_address


def is_local_client() -> bool:
    return is_loopback(client_address())


def current_user() -> Identity:
    """The person behind this session; a LAN browser that has not signed in gets the sign-in page."""
    if is_local_client():
        return LOCAL_USER
    if not signed_in():
        sign_in_page()  # stops the script
    return st.session_state[state.IDENTITY]


def is_admin() -> bool:
    return current_user().is_admin


def admin_only_note() -> None:
    """Shown where a LAN user meets a setting or action reserved to the admin."""
    st.caption(t("access.admin_only"))


def _sign_in() -> None:
    gate = resources.sign_in_gate()
    try:
        identity = gate.sign_in(
            client_address() or "", st.session_state["access.name"], st.session_state["access.password"]
        )
    except SignInError as exc:
        st.session_state["access.error"] = t(f"access.{exc.params['reason']}", **exc.params)
    else:
        st.session_state[state.IDENTITY] = identity
        st.session_state[_TOKEN] = st.session_state[_COOKIE_CHANGE] = gate.open_session(identity)
        st.session_state.pop("access.error", None)
    st.session_state["access.password"] = ""


def sign_out() -> None:
    resources.sign_in_gate().close_session(st.session_state.pop(_TOKEN, None))
    st.session_state.pop(state.IDENTITY, None)
    st.session_state[_COOKIE_CHANGE] = ""


def signed_in() -> bool:
    """The local user always is; a LAN browser once it gave the password (in this tab, or a session
    cookie from an earlier one that the app still knows)."""
    if is_local_client() or state.IDENTITY in st.session_state:
        return True
    token = st.context.cookies.get(SESSION_COOKIE)
    token = token if isinstance(token, str) else None
    identity = resources.sign_in_gate().resume(token)
    if identity is not None:
        st.session_state[state.IDENTITY], st.session_state[_TOKEN] = identity, token
    return identity is not None


def sync_session_cookie() -> None:
    """Write (after signing in) or clear (after signing out) the browser's session cookie."""
    token = st.session_state.pop(_COOKIE_CHANGE, None)
    if token is None:
        return
    age = int(SESSION_TTL_S) if token else 0
    cookie = f"{SESSION_COOKIE}={token}; path=/; max-age={age}; SameSite=Strict"
    components.html(f"<script>window.parent.document.cookie = {json.dumps(cookie)};</script>", height=0)


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
