"""Bad input and broken parts, as a user meets them in the app: a clear message each time, nothing lost."""

from __future__ import annotations

import time

import pytest

from core.chat.service import ChatService
from core.inference.engine import LocalEngine
from core.storage import repo
from core.storage.db import Database, sqlite_file
from tests.fixtures.database_servers import PostgresServer
from tests.fixtures.hub_server import HubServer
from tests.fixtures.markdown import visible_text
from tests.unit.test_server import engine, long_model, serving  # noqa: F401 - fixtures reused
from ui import widgets

# What a fault of the app's own under a page says (ui.failures.unexpected_failure).
FAULT_SAID = (
    "Something went wrong on this page ({kind}); it is written in the log (Hardware & Settings → Log). "
    "Try again, or reload the page."
)


def stored_messages(db_url: str) -> list[tuple[str, str]]:
    chat = ChatService(Database(db_url), provider=lambda: None)
    return [(m.role, m.content) for c in chat.conversations() for m in chat.messages(c.id)]


def test_a_blank_message_is_not_sent_and_says_why(new_app, ready_model: str, db_url: str) -> None:
    at = new_app()
    at.run()
    at.chat_input[0].set_value("   \n  ").run()
    assert not at.exception
    assert at.warning[0].value == "The message is empty: type something to send."
    assert stored_messages(db_url) == []


@pytest.mark.parametrize(
    ("language", "explained", "left_over"),
    [
        ("en", ["too long for this model's context: at least ", "Context length for chats"],
         ["Stop", "Reading the conversation…"]),
        ("zh", ["消息太长，超出了模型的上下文窗口：至少 ", "对话的上下文长度"], ["停止", "正在读取对话…"]),
    ],
)  # fmt: skip
def test_a_100k_character_message_is_kept_and_explained(
    new_app, ready_model: str, db_url: str, language: str, explained: list[str], left_over: list[str]
) -> None:
    huge = "长文本 long text 🚀 " * 6250  # 100,000 characters
    assert len(huge) == 100_000
    at = new_app()
    at.session_state["language"] = language
    at.run()
    at.chat_input[0].set_value(huge).run()
    assert not at.exception
    # Counting stopped early (the count is a lower bound), said in the page's language, with what to do.
    assert all(part in at.error[0].value for part in explained), at.error[0].value
    assert "{" not in at.error[0].value and (language == "en") == ("available" in at.error[0].value)
    # The failed reply leaves neither its Stop button nor its "reading" caption behind.
    shown = [b.label for b in at.button] + [c.value for c in at.caption]
    assert not set(left_over) & set(shown)
    assert stored_messages(db_url)[0] == ("user", huge)  # the text is not lost: it can be edited


def test_emoji_and_mixed_chinese_english_round_trip_exactly(new_app, ready_model: str, db_url: str) -> None:
    text = "你好 world 👋🏽 — 混合 English 和中文, ½ ∑ 🇨🇳"
    at = new_app()
    at.run()
    at.chat_input[0].set_value(text).run()
    assert not at.exception
    assert stored_messages(db_url)[0] == ("user", text)
    assert any(m.value.startswith("你好 world 👋🏽") for m in at.markdown)  # shown as typed


def test_html_and_script_in_titles_and_messages_render_as_text(
    new_app, ready_model: str, db_url: str
) -> None:
    attack = '<script>alert("x")</script><img src=x onerror=alert(1)>'
    chat = ChatService(Database(db_url), provider=lambda: None)
    conversation = chat.new_conversation(attack)
    at = new_app()
    at.session_state["chat.conversation"] = conversation.id
    at.run()
    assert not at.exception
    [title] = [h.value for h in at.subheader]
    assert "<script>" not in title  # every Markdown/HTML character is escaped: shown, not interpreted
    assert title.replace("\\", "") == attack
    at.chat_input[0].set_value(attack).run()
    shown = [m.value for m in at.markdown if "script" in m.value]
    assert shown
    assert all("<script>" not in value for value in shown)


@pytest.mark.parametrize("bad_id", ["../x", "a/b/c", "has space/model", "x" * 150 + "/" + "y" * 150])
def test_invalid_repo_ids_are_refused_with_a_message(
    new_app, hub: HubServer, monkeypatch: pytest.MonkeyPatch, bad_id: str
) -> None:
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    at = new_app()
    at.switch_page("pages/models.py").run()
    at.text_input(key="add-model-repo").input(bad_id)
    at.button(key="add-model-submit").click().run()
    assert not at.exception
    assert any("not a Hugging Face repository id" in e.value for e in at.error)
    assert hub.requests() == []  # refused before any request


def test_a_wrong_api_key_is_explained(new_app, engine: LocalEngine) -> None:  # noqa: F811
    with serving(engine, api_key="the-right-key") as url:
        at = new_app()
        at.switch_page("pages/servers.py").run()
        at.text_input(key="pnew.url").input(url)
        at.text_input(key="pnew.key").input("a-wrong-key")
        at.button(key="pnew.test").click().run()
        assert not at.exception
        assert any("refused the API key (401)" in e.value for e in at.error)
        assert "a-wrong-key" not in repr(at._tree)


@pytest.mark.sqlite_only
def test_a_damaged_database_offers_a_fresh_start_and_keeps_the_file(new_app, db_url: str) -> None:
    path = sqlite_file(db_url)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"garbage" * 1000)
    at = new_app()
    at.run()
    assert not at.exception
    assert "The database cannot be opened" in at.error[0].value
    at.button(key="db.start-fresh").click().run()
    assert not at.exception
    assert [title.value for title in at.title] == ["Chat"]
    [kept] = path.parent.glob("test.db.damaged-*")
    assert kept.read_bytes() == b"garbage" * 1000
    assert any(str(kept) in s.value for s in at.success)


def test_a_database_that_stops_answering_says_so_and_the_page_works_again_once_it_does(
    new_app, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its server stopped after the app opened it (found by hand: Streamlit's "This app has encountered
    an error" on every page until the app was started again)."""
    PostgresServer.require()
    with PostgresServer() as server:
        monkeypatch.setenv("LOCALLLM_DB_URL", server.new_database())
        at = new_app()
        at.run()
        assert not at.exception and not at.error
        server.stop()
        for page in ("pages/chat.py", "pages/models.py"):
            at.switch_page(page).run()
            assert not at.exception
            [said] = [visible_text(e.value) for e in at.error]
            assert said.startswith("The database stopped answering: The database postgresql+psycopg://")
            assert said.endswith("try again: nothing saved before is lost.")
        server.start()
        at.button(key="db.try-again").click().run()
        assert not at.exception and not at.error
        assert [title.value for title in at.title] == ["Models"]


def test_a_fault_of_the_apps_own_is_a_sentence_and_a_log_entry_not_streamlits_error(
    new_app, monkeypatch: pytest.MonkeyPatch, page_faults: list
) -> None:
    """A bug under the pages (injected: the sidebar's status raises) showed Streamlit's "This app has
    encountered an error … if you're on Streamlit Cloud, click on 'Manage app'"."""
    working = widgets.sidebar_status

    def broken(*args: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(widgets, "sidebar_status", broken)
    at = new_app()
    at.run()
    assert not at.exception
    assert [visible_text(e.value) for e in at.error] == [FAULT_SAID.format(kind="RuntimeError")]
    [logged] = page_faults
    assert logged.getMessage() == "the page failed: a bug" and logged.exc_info[0] is RuntimeError
    page_faults.clear()  # caused on purpose
    monkeypatch.setattr(widgets, "sidebar_status", working)
    at.button(key="unexpected.try-again").click().run()
    assert not at.exception and not at.error
    assert [title.value for title in at.title] == ["Chat"]


def test_a_fault_in_a_part_that_refreshes_itself_leaves_the_rest_of_the_page(
    new_app, monkeypatch: pytest.MonkeyPatch, page_faults: list
) -> None:
    """A fragment (here the sidebar's status, polled while a model loads) runs alone when polled,
    outside the pages' net: its fault is said where it draws (injected: it raises)."""

    def broken(*args: object, **kwargs: object) -> None:
        raise KeyError("a bug")

    monkeypatch.setattr(widgets, "_status", broken)
    at = new_app()
    at.run()
    assert not at.exception
    assert [visible_text(e.value) for e in at.sidebar.error] == [FAULT_SAID.format(kind="KeyError")]
    assert [title.value for title in at.title] == ["Chat"] and not at.main.error  # the page itself works
    assert len(page_faults) == 1
    page_faults.clear()  # caused on purpose


def test_a_fault_in_a_buttons_action_is_a_sentence_and_the_page_goes_on(
    new_app, ready_model: str, db_url: str, monkeypatch: pytest.MonkeyPatch, page_faults: list
) -> None:
    """Streamlit runs a click's callback before the page, outside the page's net (injected: Pin raises)."""
    with Database(db_url).begin() as session:
        conversation = repo.create_conversation(session, owner="local", title="Pin me")
        repo.add_message(session, conversation.id, "user", "Hello")

    def broken(*args: object) -> None:
        raise ValueError("a bug")

    monkeypatch.setattr(ChatService, "pin", broken)
    at = new_app()
    at.session_state["chat.conversation"] = conversation.id
    at.run()
    at.button(key="chat.pin").click().run()
    assert not at.exception
    assert [visible_text(e.value) for e in at.error] == [FAULT_SAID.format(kind="ValueError")]
    assert [m.markdown[0].value for m in at.chat_message] == ["Hello"]  # the page went on
    assert len(page_faults) == 1
    page_faults.clear()  # caused on purpose


def test_a_database_url_that_cannot_be_read_is_a_sentence(new_app, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCALLLM_DB_URL", "postgres ql://me:s3cret@host/db")
    at = new_app()
    at.run()
    assert not at.exception
    assert "is not one SQLAlchemy can read" in at.error[0].value and "s3cret" not in repr(at._tree)
    assert not [b for b in at.button if b.key == "db.start-fresh"]  # no file to set aside


def test_a_setting_the_environment_gives_wrong_is_a_sentence_on_every_page(
    new_app, monkeypatch: pytest.MonkeyPatch
) -> None:
    # It stopped every page with Streamlit's "This app has encountered an error" (found by hand).
    monkeypatch.setenv("LOCALLLM_PARALLEL", "abc")
    at = new_app()
    at.run()
    assert not at.exception
    assert visible_text(at.error[0].value).startswith(
        "A setting from the environment (LOCALLLM_PARALLEL) is not valid:"
    )
    at.switch_page("pages/hardware.py").run()
    assert not at.exception and "LOCALLLM_PARALLEL" in visible_text(at.error[0].value)
    at.session_state["language"] = "zh"
    at.run()
    assert visible_text(at.error[0].value).startswith(
        "设置无效：环境变量 LOCALLLM_PARALLEL 的值不可用（'abc'"
    )


@pytest.mark.sqlite_only
def test_lan_users_are_not_offered_to_replace_a_damaged_database(new_app, client_ip, db_url: str) -> None:
    path = sqlite_file(db_url)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"garbage" * 1000)
    client_ip("192.168.1.30")
    at = new_app()
    at.run()
    assert "The database cannot be opened" in at.error[0].value
    assert not [b for b in at.button if b.key == "db.start-fresh"]


@pytest.mark.sqlite_only
def test_the_dashboard_backs_the_database_up_when_it_starts(new_app, db_url: str) -> None:
    new_app().run()
    backups = sqlite_file(db_url).parent / "backups"
    deadline = time.monotonic() + 30  # the backup runs on its own thread, beside the first page
    while not list(backups.glob("test-*.db")):
        assert time.monotonic() < deadline, "no backup was made at start"
        time.sleep(0.05)
