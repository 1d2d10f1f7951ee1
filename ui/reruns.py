"""A click on a page link is never undone by a rerun the page asks for by itself.

Streamlit folds the rerun requests that arrive before the running script yields into one and takes
its page from the newest (`ScriptRequests._request_rerun_locked`, Streamlit 1.67). So a rerun that
the old page asks for on its own after the click (a timed fragment's, `run_every`; or the script's
own `st.rerun()`, as the sidebar's status does when a model finishes loading) drew the old page
again, and the click was lost: seen in CI, Hardware → Chat while a model loaded. `keep_page_links`
makes such a request keep the page of the request already waiting.

The old page's timer can also fire after the click was taken, while the new page runs (the browser
has not heard of the switch yet): Streamlit then ran that fragment's rerun after the new page, on the
old page, which drew the old page again (seen in CI, Hardware → Chat). Such a request is dropped: the
fragment it reruns is no longer on the screen.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from streamlit.runtime.scriptrunner import get_script_run_ctx
from streamlit.runtime.scriptrunner_utils.script_requests import (
    RerunData,
    ScriptRequests,
    ScriptRequestType,
)

log = logging.getLogger(__name__)


def _asked_by_the_page(data: RerunData) -> bool:
    """A fragment's timer, or a script's `st.rerun()` that stays on its own page (not a page switch)."""
    ctx = get_script_run_ctx(suppress_warning=True)
    return data.is_auto_rerun or (ctx is not None and data.page_script_hash == ctx.page_script_hash)


def keep_page_links() -> None:
    """Patch Streamlit's folding of rerun requests (once; idempotent)."""
    fold = getattr(ScriptRequests, "_request_rerun_locked", None)
    if getattr(fold, "keeps_page_links", False):
        return
    if fold is None or not all(hasattr(ScriptRequests(), name) for name in ("_state", "_rerun_data")):
        log.warning("Streamlit changed: a page link clicked while a page reruns itself may be lost")
        return

    def fold_keeping_page_links(self: ScriptRequests, new_data: RerunData) -> bool:
        # The request waiting, or (while the runner runs) the one it runs now.
        page = self._rerun_data.page_script_hash
        if page and page != new_data.page_script_hash and _asked_by_the_page(new_data):
            if self._state == ScriptRequestType.CONTINUE and new_data.is_auto_rerun:
                return True  # a timer of the page left: nothing of that page is drawn any more
            if self._state == ScriptRequestType.RERUN:
                new_data = replace(
                    new_data,
                    page_script_hash=page,
                    page_name=self._rerun_data.page_name,
                    query_string=self._rerun_data.query_string,
                )
        return fold(self, new_data)

    fold_keeping_page_links.keeps_page_links = True  # type: ignore[attr-defined]
    ScriptRequests._request_rerun_locked = fold_keeping_page_links  # type: ignore[method-assign]
