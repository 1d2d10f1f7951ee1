"""How the pages say a failure: the last net under every page, fragment and callback (`guarded`): a
product error is its sentence, a database that stopped answering `database_lost`, a fault of the app's
own `unexpected_failure`, logged with its traceback; never Streamlit's error."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import ParamSpec

import streamlit as st

from core.errors import LocalLLMError, StorageError
from ui import state
from ui.i18n import error_text, language_from_locale, t
from ui.markup import as_text, urls_as_code

P = ParamSpec("P")
UNEXPECTED = "ui.unexpected"  # the logger of the faults that reach the net, into the log file


def language_without_database() -> None:
    """The session's language where it has none yet: the browser's (the remembered choice is in the
    database, which may be what failed)."""
    st.session_state.setdefault(state.LANGUAGE, language_from_locale(st.context.locale))


def database_lost(exc: StorageError, *, retry: bool = True) -> None:
    """The database stopped answering after it opened (its server stopped, another program holds a
    lock): say so, and offer to try again; once it answers, the page works as before."""
    language_without_database()
    st.error(urls_as_code(t("db.lost", message=as_text(exc.message))), icon=":material/database:")
    if retry:
        st.button(t("db.try_again"), key="db.try-again", icon=":material/refresh:")  # a click runs the page


def unexpected_failure(exc: Exception, *, retry: bool = True) -> None:
    """A fault of the app's own (no LocalLLMError): logged with its traceback (UNEXPECTED), said in one
    sentence that names where the details are, instead of Streamlit's redacted error."""
    logging.getLogger(UNEXPECTED).error("the page failed: %s", exc, exc_info=exc)
    language_without_database()
    st.error(t("error.unexpected", kind=type(exc).__name__), icon=":material/bug_report:")
    if retry:
        st.button(t("db.try_again"), key="unexpected.try-again", icon=":material/refresh:")


def guarded(draw: Callable[P, None], *, retry: bool = False) -> Callable[P, None]:
    """`draw` under the last net: a LocalLLMError is its sentence, a StorageError `database_lost`, any
    other exception `unexpected_failure`; never Streamlit's error. Around the pages (app.py, with a Try
    again button), each fragment (polled, a fragment runs alone, outside the pages' net: its failure is
    said where it draws, the rest of the page stays, and it runs again by itself or at a click) and each
    callback that reaches the core (Streamlit runs callbacks before the page: said at its top)."""

    @functools.wraps(draw)
    def draw_guarded(*args: P.args, **kwargs: P.kwargs) -> None:
        try:
            draw(*args, **kwargs)
        except StorageError as exc:  # it stopped answering since it opened: its server stopped, a lock
            database_lost(exc, retry=retry)
        except LocalLLMError as exc:
            st.error(error_text(exc))
        except Exception as exc:  # a fault of the app's own
            unexpected_failure(exc, retry=retry)

    return draw_guarded
