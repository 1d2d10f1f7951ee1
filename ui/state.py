"""Session-state keys, in one place."""

from __future__ import annotations

import streamlit as st

LANGUAGE = "language"
CONVERSATION = "chat.conversation"
IDENTITY = "access.identity"


def language() -> str | None:
    return st.session_state.get(LANGUAGE)
