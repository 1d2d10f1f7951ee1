"""Session-state keys, in one place."""

from __future__ import annotations

import streamlit as st

LANGUAGE = "language"
CONVERSATION = "chat.conversation"
IDENTITY = "access.identity"
REPLYING = "chat.replying"  # the streaming reply's (stop, saved) events
FOCUS_BOX = "chat.focus-box"  # how many times the message box was given the cursor; absent: not yet
FOCUS_WANTED = "chat.focus-wanted"  # the next run gives it the cursor ("asked": a chat was chosen)


def language() -> str | None:
    return st.session_state.get(LANGUAGE)
