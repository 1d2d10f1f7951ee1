"""A browser on another machine: sign-in, refusal without a password, own conversations, admin-only parts."""

from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from core.chat.configs import ConfigStore
from core.chat.service import ChatService
from core.storage.db import Database

LAN_ADDRESS = "192.168.50.20"


PERSONAL = "alice's own pw"


def sign_in(at: AppTest, name: str, password: str, personal: str = PERSONAL) -> AppTest:
    """Fill the form and submit; a name signing in for the first time is claimed (password twice)."""
    at.text_input(key="access.name").input(name)
    at.text_input(key="access.password").input(password)
    at.text_input(key="access.personal").input(personal)
    at.button[0].click().run()
    if any(widget.key == "access.confirm" for widget in at.text_input):
        at.text_input(key="access.confirm").input(personal)
        at.button[0].click().run()
    return at


@pytest.fixture
def lan_app(new_app, client_ip, monkeypatch: pytest.MonkeyPatch) -> AppTest:
    monkeypatch.setenv("LOCALLLM_PASSWORD", "open sesame")
    monkeypatch.setenv("LOCALLLM_ADMINS", "boss")
    client_ip(LAN_ADDRESS)
    at = new_app()
    at.run()
    return at


def test_without_a_password_lan_browsers_are_turned_away(new_app, client_ip) -> None:
    client_ip(LAN_ADDRESS)
    at = new_app()
    at.run()
    assert not at.exception
    assert "no password is configured" in at.error[0].value
    assert not at.chat_input  # nothing of the app behind it
    assert not at.text_input


def test_the_local_user_needs_no_sign_in(new_app, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCALLLM_PASSWORD", "open sesame")
    at = new_app()
    at.run()
    assert [title.value for title in at.title] == ["Chat"]


def test_sign_in_with_the_shared_password(lan_app: AppTest) -> None:
    assert [title.value for title in lan_app.title] == ["Sign in"]
    # A password manager fills in the name and the personal password (not the shared one).
    fields = {field.key: field.proto.autocomplete for field in lan_app.text_input}
    assert fields == {
        "access.name": "username",
        "access.password": "off",
        "access.personal": "current-password",
    }
    sign_in(lan_app, "alice", "wrong")
    assert lan_app.error[0].value == "Wrong user name or password."
    assert lan_app.text_input(key="access.password").value == ""  # never kept in the form
    sign_in(lan_app, "alice", "open sesame")
    assert not lan_app.exception
    assert [title.value for title in lan_app.title] == ["Chat"]


def test_a_new_name_is_claimed_with_the_password_typed_twice(lan_app: AppTest) -> None:
    lan_app.text_input(key="access.name").input("carol")
    lan_app.text_input(key="access.password").input("open sesame")
    lan_app.text_input(key="access.personal").input("carol's secret")
    lan_app.button[0].click().run()
    assert "**carol** is a new name on this dashboard" in lan_app.info[0].value
    lan_app.text_input(key="access.confirm").input("carol's secret")
    lan_app.button[0].click().run()
    assert [title.value for title in lan_app.title] == ["Chat"]


def test_the_shared_password_alone_does_not_open_someone_elses_name(new_app, lan_app: AppTest) -> None:
    sign_in(lan_app, "carol", "open sesame", "carol's secret")
    impostor = new_app()
    impostor.run()
    sign_in(impostor, "carol", "open sesame", "a good guess")
    assert impostor.error[0].value == "Wrong user name or password."
    assert [title.value for title in impostor.title] == ["Sign in"]


def test_repeated_wrong_passwords_are_rate_limited(lan_app: AppTest) -> None:
    for _ in range(5):
        sign_in(lan_app, "mallory", "guess")
    sign_in(lan_app, "mallory", "open sesame")
    assert lan_app.error[0].value == "Too many wrong passwords. Try again in 30 s."
    assert [title.value for title in lan_app.title] == ["Sign in"]


def test_each_lan_user_sees_only_their_own_conversations(
    lan_app: AppTest, db_url: str, ready_model: str
) -> None:
    db = Database(db_url)
    ConfigStore(db).use_local_model(ready_model)  # as the admin's first visit chooses it
    ChatService(db, provider=lambda: None, owner="lan:bob").new_conversation("Bob's secret plan")
    ChatService(db, provider=lambda: None, owner="local").new_conversation("The owner's notes")
    alice_chat = ChatService(db, provider=lambda: None, owner="lan:alice")
    alice_chat.new_conversation("Alice's shopping list")

    sign_in(lan_app, "alice", "open sesame")
    titles = [b.label for b in lan_app.button if b.key and b.key.startswith("conversation-")]
    assert titles == ["Alice's shopping list"]
    # her messages leave her machine for the one serving the page: the new chat says so
    said = "tiny runs on the computer that serves this page: your messages go there and no further."
    assert said in [caption.value for caption in lan_app.caption]


def test_lan_users_cannot_reach_settings_or_destructive_actions(lan_app: AppTest) -> None:
    sign_in(lan_app, "alice", "open sesame")
    lan_app.switch_page("pages/hardware.py").run()
    assert not lan_app.exception
    assert any("Only the admin can change this" in caption.value for caption in lan_app.caption)
    assert not [w for w in lan_app.text_input if w.key == "models-dir-input"]
    assert not [w for w in lan_app.selectbox if w.key == "api-serving-choice"]  # nor the API's switch
    assert "Not running. Start it with" in lan_app.info[-1].value  # what the admin can do is not said
    with pytest.raises(ValueError, match="Could not find a navigation page"):  # not in a LAN user's menu
        lan_app.switch_page("pages/servers.py")


def test_an_admin_name_signed_in_from_the_lan_gets_the_settings(lan_app: AppTest) -> None:
    sign_in(lan_app, "boss", "open sesame")
    lan_app.switch_page("pages/hardware.py").run()
    assert not lan_app.exception
    assert lan_app.text_input(key="models-dir-input").value
    lan_app.switch_page("pages/servers.py").run()
    assert not lan_app.exception
    assert lan_app.text_input(key="pnew.url").value == ""


def test_a_lan_visitor_before_the_admin_chats_with_the_ready_model(
    lan_app: AppTest, db_url: str, ready_model: str
) -> None:
    sign_in(lan_app, "alice", "open sesame")
    lan_app.chat_input[0].set_value("hi").run()
    assert not lan_app.exception  # it was an error page: nothing had been chosen
    assert "tokens/s" in lan_app.chat_message[-1].caption[-1].value
    assert ConfigStore(Database(db_url)).get_current_config().model == ready_model


def test_a_lan_visitor_never_starts_a_server_the_admin_did_not_choose(lan_app: AppTest, db_url: str) -> None:
    store = ConfigStore(Database(db_url))
    store.save_config("openai_compatible", "gpt-4o", "https://api.openai.com/v1", "sk-admins-own")
    sign_in(lan_app, "alice", "open sesame")
    assert not lan_app.exception
    assert store.get_current_config() is None
    assert "The admin has not chosen a model for chatting yet" in lan_app.info[0].value
    assert not lan_app.chat_input


def test_signing_out_closes_the_app_on_the_next_click(lan_app: AppTest) -> None:
    sign_in(lan_app, "alice", "open sesame")
    assert "Signed in as **alice**" in " ".join(caption.value for caption in lan_app.sidebar.caption)
    lan_app.button(key="access.sign-out").click().run()
    assert [title.value for title in lan_app.title] == ["Sign in"]
    lan_app.switch_page("pages/models.py").run()  # no page behind the gate
    assert [title.value for title in lan_app.title] == ["Sign in"]
    assert not [button for button in lan_app.button if button.key == "add-model-submit"]
