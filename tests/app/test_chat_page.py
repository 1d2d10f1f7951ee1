"""The Chat page over the real engine and a tiny model: a round trip, stats, escaping, conversations."""

from __future__ import annotations

import os
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from streamlit.testing.v1 import AppTest

from core.chat.configs import ConfigStore
from core.chat.service import ChatService
from core.inference import engine as engine_module
from core.inference.params import GenerationParams
from core.storage import repo
from core.storage.db import Database
from core.storage.records import Conversation
from core.storage.schema import ConversationRow
from core.units import format_bytes
from tests.fixtures.openai_faults import FaultyOpenAIServer
from tests.fixtures.tiny_models import install_ready
from ui import resources


def _asked(new_app, *questions: str) -> tuple[AppTest, ChatService, Conversation]:
    """The chat page after `questions` were sent in a new conversation, its service and that conversation."""
    at = new_app()
    at.run()
    for question in questions:
        at.chat_input[0].set_value(question).run()
    chat = resources.chat_service("local")
    [conversation] = chat.conversations()
    return at, chat, conversation


def test_without_a_ready_model_the_page_says_what_to_do(new_app) -> None:
    at = new_app()
    at.run()
    assert not at.exception
    assert any("Download the one below to chat on this machine" in info.value for info in at.info)
    assert at.button(key="quick-download").label.startswith("Download ")


def _sidebar_text(at: AppTest) -> str:
    return "\n".join(markdown.value for markdown in at.sidebar.markdown)


def test_opening_the_page_loads_the_chosen_model_before_the_first_message(
    new_app, ready_model: str, monkeypatch
) -> None:
    monkeypatch.setattr(engine_module, "KEEP_UNPACKED_MIN_BYTES", 0)  # the tiny model's copy is kept too
    at = new_app()
    engine = resources.engine()  # the app's own (process-wide) engine
    busy = threading.Event()
    engine._torch.submit(busy.wait, 120)  # the load waits behind this: the page sees it under way
    try:
        at.run()
        assert not at.exception and not resources.chat_service("local").conversations()
        assert engine.loading == ready_model  # loaded in the background while the user types
        assert f"Loading {ready_model}…" in _sidebar_text(at)  # and the sidebar says so
        at.switch_page("pages/hardware.py").run()  # as does the Hardware page's engine figure
        assert [m.value for m in at.metric if m.label == "Local engine"] == ["Loading a model"]
    finally:
        busy.set()
    deadline = time.monotonic() + 120
    while (engine.loaded is None or engine.loading) and time.monotonic() < deadline:  # the whole load:
        time.sleep(0.05)  # `loaded` is set before the load has planned its prompt copy
    assert engine.loaded is not None and engine.loaded.key == ready_model
    at.run()  # the status's next drawing (every second while a load runs, in the browser)
    assert f"Loaded: {ready_model}" in _sidebar_text(at) and "Loading" not in _sidebar_text(at)
    if copy := engine.prompt_copies.get(ready_model):  # bf16 here: the weights kept for prompts are said
        assert f"+ {format_bytes(copy)} for faster prompts" in _sidebar_text(at)

    at.sidebar.button(key="status.unload").click().run()
    assert not at.exception and engine.loaded is None
    assert "No model loaded" in _sidebar_text(at)


def test_the_sidebar_lists_every_loaded_model_and_unloads_them_all(
    new_app, ready_model: str, tiny_models: dict[str, Path]
) -> None:
    install_ready(Path(os.environ["LOCALLLM_MODELS_DIR"]), "second", tiny_models["llama"])  # an API's model
    at = new_app()
    at.run()
    engine = resources.engine()
    engine.load(ready_model)
    engine.load("second")
    at.run()
    lines = [line for line in _sidebar_text(at).splitlines() if "Loaded:" in line]
    assert [line.split()[2] for line in lines] == ["second", ready_model]  # the one used last first
    assert f"{ready_model} unloads after" in "".join(caption.value for caption in at.sidebar.caption)
    assert at.sidebar.button(key="status.unload").label == "Unload all models"
    at.sidebar.button(key="status.unload").click().run()
    assert not at.exception and engine.loaded_models == ()
    assert "No model loaded" in _sidebar_text(at)


def test_chat_round_trip_with_the_tiny_model(new_app, ready_model: str, db_url: str) -> None:
    at = new_app()
    at.run()
    assert at.selectbox(key="chat.model").value == "tiny"
    assert ConfigStore(Database(db_url)).get_current_config().model == "tiny"

    at.chat_input[0].set_value("Hello <b>there</b> **friend** 你好").run()
    assert not at.exception
    user, assistant = at.chat_message
    assert user.markdown[0].value == r"Hello \<b\>there\</b\> \*\*friend\*\* 你好"  # shown as typed
    assert "tokens/s" in assistant.caption[-1].value
    assert "tiny" in assistant.caption[-1].value
    # the conversation was created, titled after the message, and listed in the sidebar
    assert any(r"Hello \<b\>there" in button.label for button in at.sidebar.button)
    assert resources.engine().loaded.key == "tiny"  # the app's shared engine holds the model
    assert "Think before answering" not in [toggle.label for toggle in at.toggle]  # Qwen2 has no switch

    at.button(key="chat.regenerate").click().run()
    assert not at.exception
    assert len(at.chat_message) == 2


def test_a_preset_sets_the_conversation_up_and_can_be_a_models_default(new_app, ready_model: str) -> None:
    at = new_app()
    at.session_state["language"] = "zh"
    at.run()
    at.chat_input[0].set_value("第一句").run()
    conversation = resources.chat_service("local").conversations()[0]
    [picker] = [s for s in at.selectbox if s.key and s.key.startswith("preset-")]
    assert picker.value == "模型自带设置"  # as the new chat was started (not "your own settings")
    picker.select("翻译（中英互译）").run()
    assert not at.exception
    chosen = resources.chat_service("local").get(conversation.id)
    assert chosen.preset == "builtin:translator" and chosen.system_prompt.startswith("你是一名翻译")
    assert resources.chat_service("local").params(conversation.id).temperature == 0.3

    at.button(key=f"preset-default-{conversation.id}").click().run()
    assert resources.preferences().get("model_presets") == {"tiny": "builtin:translator"}
    at.button(key="chat.new").click().run()
    at.chat_input[0].set_value("第二句").run()
    newest = resources.chat_service("local").conversations()[0]
    assert newest.id != conversation.id and newest.preset == "builtin:translator"  # started from the default


def test_editing_a_message_branches_and_the_arrows_switch_back(new_app, ready_model: str) -> None:
    at, chat, conversation = _asked(new_app, "first question", "second question")
    first = chat.messages(conversation.id)[0]

    at.text_area(key=f"edit-{first.id}").set_value("an edited first question")
    at.button(key=f"edit-send-{first.id}").click().run()
    assert not at.exception
    shown = [m.markdown[0].value for m in at.chat_message if m.name == "user"]
    assert shown == ["an edited first question"]  # the new branch, answered, starts at the edit
    assert len(at.chat_message) == 2 and "2/2" in [c.value for c in at.caption]

    edited = chat.messages(conversation.id)[0]
    at.button(key=f"branch--1-{edited.id}").click().run()
    shown = [m.markdown[0].value for m in at.chat_message if m.name == "user"]
    assert shown == ["first question", "second question"]  # the earlier branch, whole
    assert (
        at.button(key=f"branch--1-{first.id}").disabled and not at.button(key=f"branch-1-{first.id}").disabled
    )

    at.button(key="chat.regenerate").click().run()  # a new answer to the last question, the old one kept
    assert [turn.branches for turn in chat.turns(conversation.id)] == [2, 1, 1, 2]


def test_a_new_chat_says_where_messages_go_and_a_suggestion_starts_the_conversation(
    new_app, ready_model: str, db_url: str
) -> None:
    at = new_app()
    at.session_state["language"] = "zh"
    at.run()
    assert "有什么可以帮你？" in [header.value for header in at.subheader]
    assert "tiny 在本机运行：你输入的内容不会离开这台电脑。" in [caption.value for caption in at.caption]

    at.button(key="chat.suggestion-2").click().run()
    assert not at.exception
    user, assistant = at.chat_message
    assert user.markdown[0].value == "写一首关于秋天的短诗。"  # sent as it reads on the button
    assert "tokens/s" in assistant.caption[-1].value
    [conversation] = resources.chat_service("local").conversations()
    assert conversation.title == "写一首关于秋天的短诗。"
    assert "有什么可以帮你？" not in [
        header.value for header in at.subheader
    ]  # the conversation took the page

    at.button(key="chat.new").click().run()  # a new chat offers them again and sends nothing by itself
    assert not at.chat_message and at.button(key="chat.suggestion-2")
    assert len(resources.chat_service("local").conversations()) == 1


def test_a_new_chat_with_a_remote_model_says_the_messages_are_sent_to_its_server(
    new_app, ready_model: str, db_url: str
) -> None:
    store = ConfigStore(Database(db_url))
    server = "http://admin:s3cret@10.0.0.5:8000/v1"
    store.set_current_config(store.save_config("openai_compatible", "gpt-4o", server))
    at = new_app()
    at.run()
    assert not at.exception
    captions = [caption.value for caption in at.caption]
    assert "gpt-4o answers from `http://10.0.0.5:8000`: your messages are sent there." in captions
    assert not any("s3cret" in caption for caption in captions)  # the address's password is not shown


def test_a_new_chat_starts_from_the_preset_chosen_before_its_first_message(new_app, ready_model: str) -> None:
    at = new_app()
    at.session_state["language"] = "zh"
    at.run()
    picker = at.selectbox(key="preset-new-tiny")
    assert picker.value == "model"  # no default for this model: its own settings
    picker.select("builtin:translator").run()
    at.chat_input[0].set_value("早上好").run()
    assert not at.exception
    [conversation] = resources.chat_service("local").conversations()
    assert conversation.preset == "builtin:translator" and conversation.system_prompt.startswith(
        "你是一名翻译"
    )
    assert resources.chat_service("local").params(conversation.id).temperature == 0.3


def test_a_model_too_big_for_the_free_memory_says_so_and_loads_anyway_on_request(
    new_app, ready_model: str, monkeypatch
) -> None:
    # Simulates a machine with 100 MB free: this one has far more than the tiny model needs.
    monkeypatch.setattr("core.inference.engine.available_memory", lambda _device: 100 * 1024**2)
    at = new_app()
    at.run()
    at.chat_input[0].set_value("hello").run()
    assert not at.exception
    assert at.error[0].value.startswith(f"Not enough memory: {ready_model} needs ")
    assert "and 104.9 MB is available. Close other programs, or load it anyway." in at.error[0].value
    # what the reply was waiting for, left in place by the failure: a load, and why a first one is slow
    assert any(
        "Loading tiny… (a first load prepares its weights" in c.value for c in at.chat_message[-1].caption
    )
    at.button(key="chat.load-anyway").click().run()
    assert not at.exception
    assert resources.engine().loaded.key == ready_model
    assert "tokens/s" in at.chat_message[-1].caption[-1].value  # answered after all


def test_a_message_sent_as_the_models_load_ends_is_answered(new_app, ready_model: str, monkeypatch) -> None:
    # The sidebar's status follows a load live and redraws the page once it sees the load over. A
    # message sent in the run that finds the load under way, then over (the Chat page's own load ahead
    # of a first message ending just then: seen once in CI), was dropped by that redraw.
    at = new_app()
    at.run()
    assert not at.exception
    states = iter(["tiny"])  # under way when the sidebar looks, over when its status is drawn
    monkeypatch.setattr(engine_module.LocalEngine, "loading", property(lambda _engine: next(states, None)))
    at.chat_input[0].set_value("hello").run()
    assert not at.exception
    assert [message.name for message in at.chat_message] == ["user", "assistant"]
    assert "tokens/s" in at.chat_message[-1].caption[-1].value


def test_a_thinking_models_reasoning_is_folded_away_above_its_answer(new_app, ready_model: str) -> None:
    # The tiny model cannot think: the reply is corrected by hand to what Qwen3 writes (kept as written).
    at, chat, conversation = _asked(new_app, "What is six times seven?")
    answer = chat.messages(conversation.id)[-1]
    chat.edit_reply(conversation.id, answer.id, "<think>\nSix sevens: **42**.\n</think>\n\nIt is **42**.")
    at.run()
    assert not at.exception
    [thought] = [e for e in at.expander if e.label == "Thought process"]
    assert [m.value for m in thought.markdown] == ["Six sevens: **42**."]
    assistant = [m for m in at.chat_message if m.name == "assistant"][-1]
    shown = [m.value for m in assistant.markdown]
    assert shown[-1] == "It is **42**." and not any("think>" in text for text in shown)
    assert at.code[-1].value == "It is **42**."  # Copy gives the answer
    asked = [m for m in at.chat_message if m.name == "user"][-1]
    assert [code.value for code in asked.code] == ["What is six times seven?"]  # and a question as asked


def test_a_thinking_model_can_be_told_to_answer_at_once(new_app, thinking_model: str) -> None:
    at, chat, conversation = _asked(new_app, "Quick: six times seven?")
    [switch] = [toggle for toggle in at.toggle if toggle.label == "Think before answering"]
    assert switch.value is True  # the model's own way by default
    switch.set_value(False)
    at.button(key=f"FormSubmitter:options-{conversation.id}-Save").click().run()
    assert not at.exception
    assert chat.params(conversation.id).thinking is False
    first = chat.messages(conversation.id)[-1].prompt_tokens
    at.button(key="chat.regenerate").click().run()  # asked again without reasoning: a longer prompt
    assert chat.messages(conversation.id)[-1].prompt_tokens > first


def test_a_servers_thinking_model_can_be_told_to_answer_at_once(new_app, db_url: str) -> None:
    # The switch was offered for models run here only: a Qwen3 on an Ollama or vLLM box always reasoned.
    with FaultyOpenAIServer("reasoning:reasoning_content") as server:
        store = ConfigStore(Database(db_url))
        store.set_current_config(store.save_config("openai_compatible", "qwen3:8b", server.url))
        at, _, conversation = _asked(new_app, "Quick: six times seven?")
        [switch] = [toggle for toggle in at.toggle if toggle.label == "Think before answering"]
        assert switch.value is True and "Ollama, vLLM, llama.cpp and OpenAI" in switch.help
        switch.set_value(False)
        at.button(key=f"FormSubmitter:options-{conversation.id}-Save").click().run()
        at.chat_input[0].set_value("And eight times nine?").run()
        assert not at.exception
    first, then = server.bodies
    assert "reasoning_effort" not in first and "chat_template_kwargs" not in first
    assert then["reasoning_effort"] == "none" and then["chat_template_kwargs"] == {"enable_thinking": False}


def test_a_reply_cut_at_its_length_goes_on_with_continue(new_app, endless_model: str, db_url: str) -> None:
    at, chat, conversation = _asked(new_app, "Tell me a long story")
    [_, cut] = chat.messages(conversation.id)
    assert cut.finish_reason == "length"
    chat.set_options(conversation.id, "", GenerationParams(temperature=0, max_new_tokens=8))
    at.run()
    at.button(key="chat.continue").click().run()
    assert not at.exception
    assert not at.error, [e.value for e in at.error]
    [_, grown] = chat.messages(conversation.id)  # the same reply, longer: no second one
    assert grown.id == cut.id and grown.content.startswith(cut.content.rstrip())
    assert grown.completion_tokens == cut.completion_tokens + 8 and len(grown.content) > len(cut.content)
    shown = [m for m in at.chat_message if m.name == "assistant"]
    assert len(shown) == 1 and f"{grown.completion_tokens} tokens" in shown[0].caption[-1].value
    store = ConfigStore(Database(db_url))  # a server's reply cannot be asked to go on: no button
    store.set_current_config(store.save_config("openai_compatible", "gpt-4o", "http://127.0.0.1:9/v1"))
    elsewhere = new_app()
    elsewhere.run()
    elsewhere.button(key=f"conversation-{conversation.id}").click().run()
    assert [m.name for m in elsewhere.chat_message] == ["user", "assistant"]
    assert not [button for button in elsewhere.button if button.key == "chat.continue"]


def test_a_servers_reply_cut_short_goes_on_where_the_server_lets_it(new_app, db_url: str) -> None:
    chunk = ('{"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "qwen", "choices": '
             '[{"index": 0, "delta": {"content": "Once upon"}, "finish_reason": "length"}]}')  # fmt: skip
    listing = {"data": [{"id": "qwen", "owned_by": "vllm"}]}  # vLLM lists itself as the owner
    with FaultyOpenAIServer(f"stream:{chunk}", listing=listing) as server:
        store = ConfigStore(Database(db_url))
        store.set_current_config(store.save_config("openai_compatible", "qwen", server.url))
        at, chat, conversation = _asked(new_app, "Tell me a story")
        at.button(key="chat.continue").click().run()
        assert not at.exception and not at.error, [e.value for e in at.error]
    asked = server.bodies[-1]
    assert asked["continue_final_message"] is True and asked["add_generation_prompt"] is False
    assert asked["messages"][-1] == {"role": "assistant", "content": "Once upon"}
    [_, grown] = chat.messages(conversation.id)
    assert grown.content == "Once uponOnce upon"


def test_settings_stored_as_whole_numbers_open_in_the_form(new_app, ready_model: str, db_url: str) -> None:
    # JSON writes 0 and 1 for a temperature of 0 and a top-p of 1 (an export from elsewhere, a config),
    # and a program may write 64.0 tokens: the form's sliders refused an int, its number boxes a float,
    # and the conversation could not be opened.
    at, _, conversation = _asked(new_app, "Hello")
    with Database(db_url).begin() as session:
        session.get(ConversationRow, conversation.id).params = {
            "temperature": 0, "top_p": 1, "max_new_tokens": 64.0, "top_k": 20.0, "seed": 7.0
        }  # fmt: skip
    at.run()
    assert not at.exception
    shown = {slider.label: slider.value for slider in at.slider}
    assert (shown["Temperature"], shown["Top-p"]) == (0.0, 1.0)
    counts = {box.label: box.value for box in at.number_input}
    assert (counts["Max new tokens"], counts["Top-k"], counts["Seed"]) == (64, 20, 7)


def test_a_reply_cut_off_while_thinking_says_how_to_get_the_answer(
    new_app, ready_model: str, db_url: str
) -> None:
    at = new_app()
    at.run()
    at.chat_input[0].set_value("A hard question").run()
    [conversation] = resources.chat_service("local").conversations()
    with Database(db_url).begin() as session:  # what a thinking model leaves at its token limit
        repo.add_message(
            session, conversation.id, "assistant", "<think>\nFirst, consider", finish_reason="length"
        )
    at.run()
    assert not at.exception
    [thinking] = [e for e in at.expander if e.label == "Thinking…"]
    assert [m.value for m in thinking.markdown] == ["First, consider"]
    assert any("reached its length limit while the model was still thinking" in c.value for c in at.caption)


def test_a_reply_with_no_text_says_so_instead_of_an_empty_bubble(
    new_app, ready_model: str, db_url: str
) -> None:
    with Database(db_url).begin() as session:
        conversation = repo.create_conversation(session, owner="local", title="Blank")
        repo.add_message(session, conversation.id, "user", "Hi")
        repo.add_message(
            session, conversation.id, "assistant", "\n\n \n", model=ready_model, finish_reason="stop"
        )
        repo.add_message(session, conversation.id, "user", "Hi again")
        repo.add_message(
            session, conversation.id, "assistant", "Hello!", model=ready_model, finish_reason="stop"
        )
    at = new_app()
    at.session_state["chat.conversation"] = conversation.id
    at.run()
    assert not at.exception
    said = [[c.value for c in m.caption if "no text" in c.value] for m in at.chat_message]
    assert said == [[], ["The model gave no text in this reply."], [], []]


def test_a_long_conversation_opens_on_its_newest_messages_and_shows_earlier_ones_on_request(
    new_app, ready_model: str, db_url: str
) -> None:
    with Database(db_url).begin() as session:
        conversation = repo.create_conversation(session, owner="local", title="Long")
        for turn in range(50):
            repo.add_message(session, conversation.id, "user", f"question {turn}")
            repo.add_message(session, conversation.id, "assistant", f"answer {turn}", finish_reason="stop")
    at = new_app()
    at.session_state["chat.conversation"] = conversation.id
    at.run()
    assert not at.exception
    shown = [m.markdown[0].value for m in at.chat_message]
    assert len(shown) == 40 and shown[0] == "question 30" and shown[-1] == "answer 49"  # the newest
    assert at.button(key="chat.show-earlier").label == "Show 40 earlier messages (60 not shown)"
    at.button(key="chat.show-earlier").click().run()
    assert len(at.chat_message) == 80 and at.chat_message[0].markdown[0].value == "question 10"
    at.button(key="chat.show-earlier").click().run()
    assert [m.markdown[0].value for m in at.chat_message][:2] == ["question 0", "answer 0"]
    assert len(at.chat_message) == 100 and not [b for b in at.button if b.key == "chat.show-earlier"]


def test_a_reply_that_never_ran_says_how_it_ended_without_made_up_figures(
    new_app, ready_model: str, db_url: str
) -> None:
    with Database(db_url).begin() as session:
        conversation = repo.create_conversation(session, owner="local", title="Cut short")
        repo.add_message(session, conversation.id, "user", "first")
        # Stopped while waiting in the queue: the engine reports it with zero tokens.
        repo.add_message(session, conversation.id, "assistant", "", model=ready_model, prompt_tokens=0,
                         completion_tokens=0, finish_reason="stopped")  # fmt: skip
        repo.add_message(session, conversation.id, "user", "second")
        # The app was killed mid-reply: the part saved so far, no figures.
        repo.add_message(
            session,
            conversation.id,
            "assistant",
            "Half an ans",
            model=ready_model,
            finish_reason="interrupted",
        )
    at = new_app()
    at.session_state["chat.conversation"] = conversation.id
    at.run()
    assert not at.exception
    lines = [c.value for m in at.chat_message for c in m.caption]
    assert f"{ready_model} · stopped by you" in lines and f"{ready_model} · interrupted" in lines, lines


def test_a_long_list_of_conversations_lists_the_newest_and_more_on_request(
    new_app, ready_model: str, db_url: str
) -> None:
    with Database(db_url).begin() as session:
        for number in range(250):
            repo.create_conversation(session, owner="local", title=f"Chat {number}")
    at = new_app()
    at.run()

    def listed() -> list[str]:
        return [b.label for b in at.button if b.key and b.key.startswith("conversation-")]

    assert not at.exception
    assert len(listed()) == 100 and listed()[0] == "Chat 249"  # the newest first
    assert at.button(key="chat.show-more").label == "Show 100 more conversations (150 not listed)"
    at.button(key="chat.show-more").click().run()
    at.button(key="chat.show-more").click().run()
    assert len(listed()) == 250 and listed()[-1] == "Chat 0"
    assert not [b for b in at.button if b.key == "chat.show-more"]  # all listed

    at.button(key="conversation-1").click().run()  # the oldest but one, opened from far down the list
    assert at.subheader[0].value == "Chat 0"
    at.text_input(key="chat.search").set_value("no such_words").run()
    assert listed() == [] and "No conversation mentions “no such\\_words”." in [c.value for c in at.caption]
    assert at.subheader[0].value == "Chat 0"  # the open conversation stays open while the list is searched


def test_the_conversations_are_listed_under_when_they_were_last_used(
    new_app, ready_model: str, db_url: str
) -> None:
    now = datetime.now(UTC)
    with Database(db_url).begin() as session:
        for title, days in (("Old", 45), ("Last week", 3), ("Now", 0)):
            conversation = repo.create_conversation(session, owner="local", title=title)
            session.get(ConversationRow, conversation.id).updated_at = now - timedelta(days=days)
    at = new_app()
    at.run()
    old = (now - timedelta(days=45)).date()  # AppTest's browser gives no time zone: UTC
    month = old.strftime("%B") + ("" if old.year == now.year else f" {old.year}")
    headings = [c.value for c in at.sidebar.caption if c.value in ("Today", "Previous 7 days", month)]
    assert headings == ["Today", "Previous 7 days", month]
    titles = [b.label for b in at.button if b.key and b.key.startswith("conversation-")]
    assert titles == ["Now", "Last week", "Old"]
    # Pinned (the header's Pin): on top under its own heading, the rest as they were.
    at.button(key=next(b.key for b in at.button if b.label == "Old")).click().run()
    at.button(key="chat.pin").click().run()
    headings = [
        c.value for c in at.sidebar.caption if c.value in ("Pinned", "Today", "Previous 7 days", month)
    ]
    assert headings == ["Pinned", "Today", "Previous 7 days"]
    assert [b.label for b in at.button if b.key and b.key.startswith("conversation-")] == [
        "Old",
        "Now",
        "Last week",
    ]
    assert [b.label for b in at.button if b.key == "chat.pin"] == ["Unpin"]
