"""A page link clicked while the page runs is not undone by a rerun the page asks for by itself."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest
from streamlit.runtime.scriptrunner_utils.script_requests import (
    RerunData,
    ScriptRequests,
    ScriptRequestType,
)
from streamlit.runtime.scriptrunner_utils.script_run_context import SCRIPT_RUN_CONTEXT_ATTR_NAME

from ui.reruns import keep_page_links

HARDWARE, CHAT, MODELS = "hash-hardware", "hash-chat", "hash-models"


def page_run_next(*requests: RerunData | tuple[RerunData, str]) -> str:
    """The page Streamlit's runner runs next after these requests (a pair: made from a page's script)."""
    keep_page_links()
    queue = ScriptRequests()
    for request in requests:
        if isinstance(request, tuple):
            data, running_page = request
            # The script's thread, as Streamlit's runner marks it: only the running page's hash is read.
            script = threading.Thread(target=queue.request_rerun, args=(data,))
            setattr(script, SCRIPT_RUN_CONTEXT_ATTR_NAME, SimpleNamespace(page_script_hash=running_page))
            script.start()
            script.join()
        else:
            queue.request_rerun(request)
    ready = queue.on_scriptrunner_ready()
    assert ready.type is ScriptRequestType.RERUN
    return ready.rerun_data.page_script_hash


def click(page: str) -> RerunData:
    return RerunData(page_script_hash=page, page_name=page)


def test_a_timed_fragment_rerun_does_not_undo_a_page_link() -> None:
    timer = RerunData(page_script_hash=HARDWARE, fragment_id="live-usage", is_auto_rerun=True)
    assert page_run_next(click(CHAT), timer) == CHAT


def test_the_old_pages_timer_is_dropped_while_the_clicked_page_runs() -> None:
    # The click was taken and its page runs; the old page's timer, sent before the browser heard of the
    # switch, would have rerun the old page after it (its fragment is gone: the old page drawn whole).
    keep_page_links()
    queue = ScriptRequests()
    queue.request_rerun(click(CHAT))
    assert queue.on_scriptrunner_ready().rerun_data.page_script_hash == CHAT  # the Chat page runs
    queue.request_rerun(RerunData(page_script_hash=HARDWARE, fragment_id="live-usage", is_auto_rerun=True))
    assert queue.on_scriptrunner_ready().type is ScriptRequestType.STOP
    # The running page's own timer still reruns its fragment.
    queue = ScriptRequests()
    queue.request_rerun(click(CHAT))
    queue.on_scriptrunner_ready()
    queue.request_rerun(RerunData(page_script_hash=CHAT, fragment_id="status", is_auto_rerun=True))
    assert queue.on_scriptrunner_ready().rerun_data.fragment_id_queue == ["status"]


def test_the_pages_own_rerun_does_not_undo_a_page_link() -> None:
    # The sidebar's status, polled while a model loads, reruns the page it is on when the load ends.
    assert page_run_next(click(CHAT), (RerunData(page_script_hash=HARDWARE), HARDWARE)) == CHAT


def test_the_newest_click_and_a_scripts_page_switch_still_win() -> None:
    timer = RerunData(page_script_hash=HARDWARE, fragment_id="live-usage", is_auto_rerun=True)
    assert page_run_next(timer, click(CHAT)) == CHAT
    assert page_run_next(click(CHAT), click(MODELS)) == MODELS
    assert page_run_next(click(CHAT), (RerunData(page_script_hash=MODELS), HARDWARE)) == MODELS


def test_a_streamlit_without_the_folding_it_patches_is_left_as_it_is(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(ScriptRequests, "_request_rerun_locked")
    keep_page_links()  # warns, patches nothing, raises nothing
    assert not hasattr(ScriptRequests, "_request_rerun_locked")
