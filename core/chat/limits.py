"""How long a text that a person writes may be: a message, a reply edited by hand, a system prompt.

Checked here, before anything is stored, whatever the page's own box allows: a browser's limit is the
browser's, and a LAN client can send Streamlit up to 16 MB at a time.
"""

from __future__ import annotations

from core.errors import MessageError

MAX_TEXT_CHARS = 200_000  # past any catalog model's context; a whole 32k-token reply edited by hand


def checked_message(text: str) -> None:
    """A message to send or keep: not blank, at most MAX_TEXT_CHARS characters."""
    if not text.strip():
        raise MessageError("The message is empty.", reason="message_empty")
    checked_length(text)


def checked_length(text: str) -> None:
    """Any text a person writes (a system prompt may be blank), at most MAX_TEXT_CHARS characters."""
    if len(text) > MAX_TEXT_CHARS:
        raise MessageError(
            f"The text is {len(text):,} characters long; at most {MAX_TEXT_CHARS:,} fit.",
            reason="text_too_long",
            length=f"{len(text):,}",
            limit=f"{MAX_TEXT_CHARS:,}",
        )
