"""Who is using this browser session: the local user (admin), or a LAN user who signed in."""

from __future__ import annotations

import json

import streamlit as st

from core.access.policy import LOCAL_USER, Identity, is_loopback
from core.access.sign_in import SESSION_TTL_S
from core.errors import SignInError
from ui import resources, state
from ui.failures import guarded
from ui.i18n import t
from ui.lan_gate import SESSION_COOKIE
from ui.markup import escape_markdown

_COOKIE_CHANGE = "access.cookie"  # a token to store in the browser, or "" to clear it
_TOKEN = "access.token"  # this tab's session token


def client_address() -> str | None:
    """The browser's IP address as the server saw it; None for this machine (loopback)."""
    return st.context.ip_address


def trusted_origin() -> bool:
    """Whether this session's websocket came for this machine (its `Host`) from the dashboard's own
    page (its `Origin`). ui/server.py refuses the others before Streamlit sees them; this check also
    holds when the app is started by hand. No headers at all: a test run without a server."""
    headers = st.context.headers
    host = headers.get("Host")
    if host is None:
        return True
    policy = resources.host_policy()
    return policy.allows_host(host) and policy.allows_origin(headers.get("Origin"), host)


def is_local_client() -> bool:
    """The user at this machine: a loopback client that addressed this machine, not a reverse proxy's
    name (a proxy that does not pass X-Forwarded-For connects from loopback for every visitor)."""
    host = st.context.headers.get("Host")
    return is_loopback(client_address()) and (
        host is None or resources.host_policy().names_this_machine(host)
    )


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


_PENDING = "access.pending"  # a first sign-in waiting for its password to be typed again (the claim)


def _attempt(name: str, password: str, personal: str, confirm: str | None) -> None:
    """Sign in (or claim the name, with `confirm`); on success the session and its cookie start."""
    gate = resources.sign_in_gate()
    values = st.session_state
    values.pop(_PENDING, None)
    try:
        identity = gate.sign_in(client_address() or "", name, password, personal, confirm)
    except SignInError as exc:
        if exc.params["reason"] == "claim":
            values[_PENDING] = {"name": exc.params["name"], "password": password, "personal": personal}
            values.pop("access.error", None)
        else:
            values["access.error"] = (exc.params["reason"], exc.params)
        return
    values[state.IDENTITY] = identity
    values[_TOKEN] = values[_COOKIE_CHANGE] = gate.open_session(identity)
    values.pop("access.error", None)


def _sign_in() -> None:
    values = st.session_state
    _attempt(values["access.name"], values["access.password"], values["access.personal"], None)
    values["access.password"] = values["access.personal"] = ""  # never kept in the form


def _claim() -> None:
    pending = st.session_state.get(_PENDING) or {}
    confirm = st.session_state.get("access.confirm", "")
    _attempt(pending.get("name", ""), pending.get("password", ""), pending.get("personal", ""), confirm)


def _cancel_claim() -> None:
    st.session_state.pop(_PENDING, None)


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
    st.html(f"<script>document.cookie = {json.dumps(cookie)};</script>", unsafe_allow_javascript=True)


def sign_in_page() -> None:
    """The sign-in form for a LAN browser, or why it cannot sign in; stops the script either way."""
    st.title(t("access.title"))
    if not resources.sign_in_gate().policy.lan_allowed:
        st.error(t("access.no_password"), icon=":material/lock:")
        st.stop()
    st.caption(t("access.intro"))
    pending = st.session_state.get(_PENDING)
    if pending:
        st.info(t("access.claim", name=escape_markdown(pending["name"])), icon=":material/person_add:")
        with st.form("access.claim-form"):
            st.text_input(t("access.confirm"), type="password", key="access.confirm", max_chars=200,
                          autocomplete="new-password")  # fmt: skip
            st.form_submit_button(t("access.claim_submit"), type="primary", on_click=guarded(_claim))
        st.button(t("access.back"), on_click=_cancel_claim, key="access.back")
    else:
        # What a browser's password manager fills in: the name and the personal password (Streamlit
        # marks every password field "new-password", which offers to make one up instead).
        with st.form("access.form"):
            st.text_input(t("access.name"), key="access.name", max_chars=40, autocomplete="username")
            st.text_input(t("access.password"), type="password", key="access.password", max_chars=200,
                          autocomplete="off")  # fmt: skip
            st.text_input(t("access.personal"), type="password", key="access.personal", max_chars=200,
                          autocomplete="current-password")  # fmt: skip
            st.form_submit_button(t("access.submit"), type="primary", on_click=guarded(_sign_in))
    if error := st.session_state.get("access.error"):
        st.error(t(f"access.{error[0]}", **error[1]))
    st.stop()
