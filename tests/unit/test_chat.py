"""The chat service over the real engine and a real SQLite file."""

from __future__ import annotations

import itertools
import json
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from core.chat import archive
from core.chat.configs import ConfigStore
from core.chat.limits import MAX_TEXT_CHARS
from core.chat.presets import PresetStore
from core.chat.providers import LocalProvider, provider_for_config
from core.chat.service import ChatService, TranscriptWords, Trimmed, trim_history
from core.errors import ConfigError, ContextLengthError, MessageError, NotFoundError
from core.inference.engine import LocalEngine
from core.inference.events import Finished, ReplyStats, TextDelta
from core.inference.params import GenerationParams
from core.storage import repo
from core.storage.db import Database
from tests.fixtures.serving import serving
from tests.fixtures.tiny_models import build_tiny_model, install_ready
from ui.i18n import error_text


@pytest.fixture
def engine(tmp_path: Path, tiny_models: dict[str, Path]) -> LocalEngine:
    install_ready(tmp_path / "models", "tiny", tiny_models["llama"])
    return LocalEngine(tmp_path / "models", idle_unload_s=0)


@pytest.fixture
def chat(database: Database, engine: LocalEngine) -> ChatService:
    store = ConfigStore(database)
    config = store.use_local_model("tiny")
    store.update_config(config.id, params=GenerationParams(temperature=0, max_new_tokens=12))
    return ChatService(database, lambda: provider_for_config(store.get_current_config(), engine))


def test_a_reply_streams_and_is_stored_with_its_stats(chat: ChatService) -> None:
    conversation = chat.new_conversation("测试 chat", system_prompt="Be brief.")
    events = list(chat.send(conversation.id, "Hello 😀 你好"))
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    stats = next(e.stats for e in events if isinstance(e, Finished))
    user, reply = chat.messages(conversation.id)
    assert (user.role, user.content) == ("user", "Hello 😀 你好")
    assert reply.role == "assistant"
    assert reply.content == text
    assert (reply.prompt_tokens, reply.completion_tokens) == (stats.prompt_tokens, stats.completion_tokens)
    assert reply.finish_reason in ("stop", "length")
    assert reply.ttft_s is not None
    assert reply.model == "tiny"


def test_the_next_turn_starts_from_the_cache_of_its_own_conversation_only(chat: ChatService) -> None:
    def stats(events: list[object]) -> ReplyStats:
        return next(e.stats for e in events if isinstance(e, Finished))

    first, other = chat.new_conversation("first"), chat.new_conversation("other")
    opening = stats(list(chat.send(first.id, "Hello there")))
    # The very same prompt in another conversation: prefilled whole.
    assert stats(list(chat.send(other.id, "Hello there"))).cached_tokens == 0
    follow_up = stats(list(chat.send(first.id, "And then?")))
    # The first turn at least came from the kept cache; the new question went in.
    assert opening.prompt_tokens <= follow_up.cached_tokens < follow_up.prompt_tokens


def test_stop_keeps_the_partial_reply_marked_stopped(chat: ChatService, database: Database) -> None:
    store = ConfigStore(database)
    current = store.get_current_config()
    store.update_config(current.id, params=GenerationParams(temperature=0, max_new_tokens=400))
    conversation = chat.new_conversation()
    stop = threading.Event()
    pieces = []
    for event in chat.send(conversation.id, "tell me a long story", stop):
        if isinstance(event, TextDelta):
            pieces.append(event.text)
            if len(pieces) == 3:
                stop.set()
    reply = chat.messages(conversation.id)[-1]
    assert reply.finish_reason == "stopped"
    assert reply.content == "".join(pieces)
    assert reply.completion_tokens < 400


def test_a_reader_that_leaves_mid_reply_leaves_a_stored_partial_with_its_figures(
    chat: ChatService, database: Database
) -> None:
    store = ConfigStore(database)
    store.update_config(store.get_current_config().id, params=GenerationParams(max_new_tokens=400))
    conversation = chat.new_conversation()
    stream = chat.send(conversation.id, "tell me a long story", ignore_eos=True)
    seen = next(e for e in stream if isinstance(e, TextDelta)).text
    stream.close()  # as the page does when Stop reruns it
    reply = chat.messages(conversation.id)[-1]
    assert reply.finish_reason == "stopped" and reply.content.startswith(seen)
    # The engine was stopped and its last step's words and figures kept: what the reply cost.
    assert 1 <= reply.completion_tokens < 400 and reply.prompt_tokens > 0 and reply.ttft_s is not None


def count_words(messages: list[dict[str, str]], _limit: int) -> int:
    return sum(len(m["content"].split()) for m in messages)


def test_trimming_keeps_the_system_prompt_and_the_newest_turns_from_a_question_on() -> None:
    turns = [
        {"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i} words here"} for i in range(10)
    ]
    messages, dropped = trim_history("system rules", turns, budget_tokens=14, count=count_words)
    assert messages[0] == {"role": "system", "content": "system rules"}
    # Turns 7 to 9 would fit, but 7 is the model's: the kept history starts with a question.
    assert [m["content"] for m in messages[1:]] == ["turn 8 words here", "turn 9 words here"]
    assert dropped == 8
    assert trim_history("", turns[:3], budget_tokens=14, count=count_words) == (turns[:3], 0)
    # The only mark left comes after a long reply: cutting there would keep the newest question alone,
    # more than half the budget given up, so the cut goes where the newest turns that fit begin.
    sizes = [("user", 10), ("assistant", 10), ("user", 10), ("assistant", 10), ("user", 10),
             ("assistant", 45), ("user", 10)]  # fmt: skip
    history = [{"role": role, "content": "w " * words} for role, words in sizes]
    assert trim_history("", history, budget_tokens=100, count=count_words)[1] == 2
    with pytest.raises(MessageError, match="too long for this model's context"):
        trim_history("", [{"role": "user", "content": "word " * 50}], budget_tokens=10, count=count_words)


@pytest.mark.parametrize(("question", "answer"), [(20, 40), (50, 1)])  # marks passed in either turn
def test_a_long_conversation_is_cut_in_steps_so_that_turns_start_alike(question: int, answer: int) -> None:
    budget, turns, cuts = 600, [], []
    for _ in range(60):
        turns.append({"role": "user", "content": "ask " * question})
        messages, dropped = trim_history("", turns, budget, count_words)
        assert count_words(messages, budget) <= budget
        assert messages[0]["role"] == "user"
        if dropped:
            assert count_words(messages, budget) >= budget // 2 - 60  # half the budget given up at most
            cuts.append(dropped)
        turns.append({"role": "assistant", "content": "say " * answer})
    assert len(cuts) > 40
    # The prompt keeps its start for several turns (the newest turns that fit moved it at every turn),
    # so the engine's kept cache serves them.
    moves = sum(before != after for before, after in itertools.pairwise(cuts))
    assert moves <= len(cuts) // 4


def test_a_long_history_is_trimmed_with_a_note(chat: ChatService, database: Database) -> None:
    conversation = chat.new_conversation(system_prompt="You are a helpful assistant.")
    params = GenerationParams(temperature=0, max_new_tokens=200)  # the tiny model's context is 512
    chat.set_options(conversation.id, "You are a helpful assistant.", params)
    for i in range(8):
        list(chat.send(conversation.id, f"message number {i} hello"))
    events = list(chat.send(conversation.id, "last one"))
    assert isinstance(events[0], Trimmed)
    assert events[0].dropped > 0
    assert isinstance(events[-1], Finished)
    assert events[-1].stats.prompt_tokens <= 512 - 200
    assert len(chat.messages(conversation.id)) == 18  # trimming only shapes the prompt, nothing is deleted


def test_regenerating_and_editing_branch_off_and_every_branch_stays(chat: ChatService) -> None:
    conversation = chat.new_conversation()
    list(chat.send(conversation.id, "first question"))
    list(chat.send(conversation.id, "second question"))
    first_q, first_a, second_q, second_a = chat.messages(conversation.id)
    list(chat.regenerate(conversation.id))
    turns = chat.turns(conversation.id)
    assert [(turn.branch, turn.branches) for turn in turns] == [(1, 1), (1, 1), (1, 1), (2, 2)]
    again = turns[-1].message
    assert again.id != second_a.id and again.parent_id == second_q.id

    list(chat.edit(conversation.id, first_q.id, "an edited first question"))
    edited_q, edited_a = turns = chat.turns(conversation.id)
    assert (edited_q.message.content, edited_q.branch, edited_q.branches) == (
        "an edited first question",
        2,
        2,
    )
    # the new reply saw the new branch only: the same prompt as a conversation with just that message
    fresh = chat.new_conversation()
    list(chat.send(fresh.id, "an edited first question"))
    assert edited_a.message.prompt_tokens == chat.messages(fresh.id)[-1].prompt_tokens

    chat.switch_branch(conversation.id, edited_q.message.id, -1)  # back: its newest continuation
    assert [m.id for m in chat.messages(conversation.id)] == [first_q.id, first_a.id, second_q.id, again.id]
    chat.switch_branch(conversation.id, again.id, -1)
    assert chat.messages(conversation.id)[-1].id == second_a.id
    chat.switch_branch(conversation.id, second_a.id, -1)  # at the first branch already: stays
    assert chat.messages(conversation.id)[-1].id == second_a.id

    better = chat.edit_reply(conversation.id, second_a.id, "a better answer")
    assert chat.messages(conversation.id)[-1].id == better.id and better.finish_reason == "edited"
    assert chat.turns(conversation.id)[-1].branches == 3
    with pytest.raises(NotFoundError):
        chat.edit(conversation.id, second_a.id, "a reply is not the user's message")
    with pytest.raises(MessageError):
        chat.edit(conversation.id, first_q.id, "  ")


def test_a_pinned_conversation_stays_on_top_keeps_when_it_was_used_and_travels_in_an_export(
    chat: ChatService, tmp_path: Path
) -> None:
    first, second, _ = (chat.new_conversation(title) for title in ("First", "Second", "Third"))
    assert [c.title for c in chat.conversations()] == ["Third", "Second", "First"]  # newest first
    used = chat.get(first.id).updated_at
    chat.pin(first.id)
    chat.pin(second.id)  # the last pinned first, then the others by when they were used
    assert [c.title for c in chat.conversations()] == ["Second", "First", "Third"]
    assert chat.get(first.id).updated_at == used and chat.get(first.id).pinned_at is not None
    assert [c.title for c in chat.conversations("ir")] == ["First", "Third"]  # a search keeps the order
    exported = chat.export_json()
    chat.pin(second.id, pinned=False)
    assert [c.title for c in chat.conversations()] == ["First", "Third", "Second"]
    elsewhere = Database(f"sqlite:///{tmp_path / 'elsewhere.db'}")
    assert archive.import_bytes(elsewhere, "local", exported).imported == 3
    with elsewhere.begin() as session:
        assert [c.title for c in repo.list_conversations(session, "local")] == ["Second", "First", "Third"]
    elsewhere.dispose()


def test_conversations_rename_search_export_delete_and_owners(chat: ChatService, database: Database) -> None:
    conversation = chat.new_conversation("Trip to 杭州")
    list(chat.send(conversation.id, "<script>alert(1)</script> what about 西湖?"))
    chat.rename(conversation.id, "Hangzhou trip")
    assert [c.title for c in chat.conversations(search="西湖")] == ["Hangzhou trip"]
    assert chat.conversations(search="nowhere") == []
    markdown = chat.export_markdown(conversation.id)
    assert markdown.startswith("# Hangzhou trip")
    assert "<script>alert(1)</script> what about 西湖?" in markdown
    reply = chat.messages(conversation.id)[-1]
    chat.edit_reply(
        conversation.id, reply.id, "<think>\nThe lake.\n</think>\n\nWest Lake."
    )  # as Qwen3 writes
    thought = "<details><summary>Thought process</summary>\n\nThe lake.\n\n</details>\n\nWest Lake.\n"
    assert chat.export_markdown(conversation.id).endswith(f"**tiny**\n\n{thought}")  # the reply's model
    chat.set_options(conversation.id, "Be brief.\n\nAnswer in 中文.", chat.params(conversation.id))
    words = TranscriptWords(you="你", assistant="助手", system="系统提示词", thought="思考过程")
    assert chat.export_markdown(conversation.id, words) == (
        "# Hangzhou trip\n\n> **系统提示词**\n>\n> Be brief.\n>\n> Answer in 中文.\n\n"  # every line quoted
        "**你**\n\n<script>alert(1)</script> what about 西湖?\n\n"
        "**tiny**\n\n<details><summary>思考过程</summary>\n\nThe lake.\n\n</details>\n\nWest Lake.\n"
    )
    [exported] = json.loads(chat.export_json(conversation.id))["conversations"]
    assert exported["title"] == "Hangzhou trip"
    assert [m["role"] for m in exported["messages"]] == ["user", "assistant", "assistant"]  # and the edit

    someone_else = ChatService(database, chat.provider, owner="bob")
    assert someone_else.conversations() == []
    with pytest.raises(NotFoundError):
        someone_else.messages(conversation.id)
    chat.delete(conversation.id)
    assert chat.conversations() == []
    with pytest.raises(NotFoundError) as gone:  # a second window still shows it, and sends to it
        list(chat.send(conversation.id, "still there?"))
    assert error_text(gone.value) == "This conversation was deleted (perhaps in another window)."


def test_empty_messages_and_missing_models_give_clear_errors(chat: ChatService, database: Database) -> None:
    conversation = chat.new_conversation()
    with pytest.raises(MessageError, match="empty"):
        chat.send(conversation.id, "   ")
    nothing_chosen = ChatService(
        database, lambda: provider_for_config(None, LocalEngine(Path("/nonexistent")))
    )
    with pytest.raises(ConfigError, match="No model is selected"):
        list(nothing_chosen.send(conversation.id, "hi"))
    assert chat.messages(conversation.id)[-1].content == "hi"  # the user's message is kept


def test_seed_api_keeps_history_per_chat_id(database: Database, engine: LocalEngine) -> None:
    chat = ChatService(database, lambda: LocalProvider(engine, "tiny"))
    first = chat.get_single_response("test_chat", "你好，请介绍一下自己")
    assert isinstance(first, str)
    streamed = "".join(chat.stream_response("test_chat", "and again"))
    assert isinstance(streamed, str)
    [conversation] = chat.conversations()
    assert conversation.title == "test_chat"
    assert [m.role for m in chat.messages(conversation.id)] == ["user", "assistant", "user", "assistant"]


def test_cli_chat_prompt_with_stats_and_a_piped_repl(tiny_models: dict[str, Path], db_url: str) -> None:
    import os
    import subprocess
    import sys

    from core.settings import PROJECT_ROOT
    from core.storage import repo

    install_ready(Path(os.environ["LOCALLLM_MODELS_DIR"]), "tiny", tiny_models["qwen2"])
    with Database(db_url).begin() as session:
        repo.add_custom_model(session, "tiny", "test/tiny", "main", {})
    command = [sys.executable, "-m", "core", "chat", "tiny", "--max-new-tokens", "8"]
    one = subprocess.run(
        [*command, "--prompt", "你好", "--ignore-eos", "--stats"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, env=os.environ, timeout=120,
    )  # fmt: skip
    assert one.returncode == 0, one.stderr
    stats = json.loads(one.stdout.strip().splitlines()[-1])
    assert stats["completion_tokens"] == 8
    assert stats["cached_tokens"] == 0  # a new conversation: its prompt prefilled whole
    assert stats["device"] == "cpu"
    assert set(stats) >= {"prompt_tokens", "ttft_s", "decode_tps", "load_s", "peak_rss_mb", "dtype"}

    repl = subprocess.run(
        command, input="first line\n\nsecond line\n", cwd=PROJECT_ROOT, capture_output=True, text=True,
        env=os.environ, timeout=120,
    )  # fmt: skip
    assert repl.returncode == 0, repl.stderr
    with Database(db_url).begin() as session:
        conversations = repo.list_conversations(session, "cli")
        latest = repo.list_messages(session, conversations[0].id)
    assert [m.content for m in latest if m.role == "user"] == ["first line", "second line"]
    assert [m.role for m in latest] == ["user", "assistant", "user", "assistant"]


def test_a_text_past_the_limit_is_refused_before_anything_is_stored(
    chat: ChatService, database: Database
) -> None:
    # A LAN client can send Streamlit 16 MB at a time, whatever the page's box allows.
    conversation = chat.new_conversation()
    huge = "x" * (MAX_TEXT_CHARS + 1)
    refused = [
        lambda: chat.send(conversation.id, huge),
        lambda: chat.set_options(conversation.id, huge, GenerationParams()),
        lambda: chat.new_conversation("t", system_prompt=huge),
        lambda: PresetStore(database, "local").save("p", huge, {}),
    ]
    for attempt in refused:
        with pytest.raises(MessageError, match=r"200,001 characters long; at most 200,000 fit"):
            attempt()
    assert chat.messages(conversation.id) == [] and len(chat.conversations()) == 1
    assert chat.get(conversation.id).system_prompt == ""
    with pytest.raises(ContextLengthError):  # at the limit: kept, then explained as too long for the model
        list(chat.send(conversation.id, "x" * MAX_TEXT_CHARS))
    assert chat.messages(conversation.id)[0].content == "x" * MAX_TEXT_CHARS


def _endless_chat(database: Database, tmp_path: Path, max_new_tokens: int) -> tuple[ChatService, LocalEngine]:
    """Chats with a model whose greedy replies run to `max_new_tokens`, and its engine."""
    install_ready(
        tmp_path / "models", "endless", build_tiny_model(tmp_path / "endless", "llama", endless=True)
    )
    engine = LocalEngine(tmp_path / "models", idle_unload_s=0)
    store = ConfigStore(database)
    config = store.use_local_model("endless")
    store.update_config(config.id, params=GenerationParams(temperature=0, max_new_tokens=max_new_tokens))
    return ChatService(database, lambda: provider_for_config(store.get_current_config(), engine)), engine


def test_a_reply_cut_at_its_length_goes_on_where_it_ended(
    database: Database, tmp_path: Path, tiny_models: dict[str, Path]
) -> None:
    """Continue: a long answer cut at Max new tokens went on only by asking "continue" (a new reply that
    starts over) or by Regenerate with a higher limit (all of it again). Now the same reply grows: the
    model reads the conversation with its reply left open, and writes on."""
    chat, engine = _endless_chat(database, tmp_path, max_new_tokens=6)
    conversation = chat.new_conversation()
    list(chat.send(conversation.id, "Tell me a story"))
    question, cut = chat.messages(conversation.id)
    assert (cut.finish_reason, cut.completion_tokens) == ("length", 6)
    more = "".join(e.text for e in chat.continue_reply(conversation.id) if isinstance(e, TextDelta))
    [_, grown] = chat.messages(conversation.id)
    assert grown.id == cut.id and more and grown.content == cut.content.rstrip() + more
    assert (grown.finish_reason, grown.completion_tokens, grown.ttft_s) == ("length", 12, cut.ttft_s)
    # Read with the reply so far, left open: not closed by the template's end of turn (</s> here).
    closed = engine.tokenizer("endless").chat_ids(
        [{"role": "user", "content": question.content}, {"role": "assistant", "content": cut.content}],
        add_generation_prompt=False,
    )
    assert cut.prompt_tokens < grown.prompt_tokens < len(closed)
    stop, pieces = threading.Event(), []  # a Stop keeps all of it
    for event in chat.continue_reply(conversation.id, stop):
        if isinstance(event, TextDelta):
            pieces.append(event.text)
            stop.set()
    [_, stopped] = chat.messages(conversation.id)
    assert stopped.finish_reason == "stopped" and stopped.content == grown.content.rstrip() + "".join(pieces)
    with pytest.raises(NotFoundError):  # no reply to go on with
        chat.continue_reply(chat.new_conversation().id)


def test_a_servers_reply_cut_short_goes_on_where_the_server_lets_it(
    database: Database, tmp_path: Path, tiny_models: dict[str, Path]
) -> None:
    """vLLM, SGLang, llama.cpp's server, Ollama and `localllm serve` let a reply go on in its message
    (`continue_final_message`, or a conversation that ends with the model's message): Continue was not
    offered for any server, so a LAN user of another machine's `localllm serve` had none. A real
    `localllm serve` on loopback answers here; the reply grows as the same model's does run here."""
    here, engine = _endless_chat(database, tmp_path, max_new_tokens=6)
    asked_here = here.new_conversation()
    list(here.send(asked_here.id, "Tell me a story"))
    list(here.continue_reply(asked_here.id))
    [_, grown_here] = here.messages(asked_here.id)
    store = ConfigStore(database)
    with serving(engine, ["endless"]) as url:
        params = GenerationParams(temperature=0, max_new_tokens=6)
        store.set_current_config(store.save_config("openai_compatible", "endless", url, params=params))
        chat = ChatService(database, lambda: provider_for_config(store.get_current_config(), engine))
        conversation = chat.new_conversation()
        list(chat.send(conversation.id, "Tell me a story"))
        [_, cut] = chat.messages(conversation.id)
        assert cut.finish_reason == "length" and chat.goes_on(cut)
        more = "".join(e.text for e in chat.continue_reply(conversation.id) if isinstance(e, TextDelta))
    [_, grown] = chat.messages(conversation.id)
    assert grown.id == cut.id and more and grown.content == cut.content.rstrip() + more
    assert (grown.finish_reason, grown.completion_tokens) == ("length", 12)
    assert grown.content == grown_here.content  # went on from where it ended, not a new reply
    reasoned = replace(cut, content="<think>Plan it.</think>Once upon")  # a server sends it apart
    assert not chat.goes_on(reasoned)


def test_a_reply_that_goes_on_keeps_its_files_with_its_question(
    database: Database, tmp_path: Path, tiny_models: dict[str, Path]
) -> None:
    chat, engine = _endless_chat(database, tmp_path, max_new_tokens=4)
    conversation = chat.new_conversation()
    list(chat.send(conversation.id, "What does it say?", files=[("note.txt", b"Meet at the bridge.")]))
    asked: list[object] = []
    stream = engine.stream
    engine.stream = lambda key, prompt, *args, **kwargs: (
        asked.append(prompt),
        stream(key, prompt, *args, **kwargs),
    )[1]
    list(chat.continue_reply(conversation.id))
    [*_, question, reply_so_far] = asked[0].messages
    cut = chat.messages(conversation.id)[-1]
    assert "<file name='note.txt'>" in question["content"] and "Meet at the bridge." in question["content"]
    assert question["content"].endswith("What does it say?") and reply_so_far["role"] == "assistant"
    assert cut.content.startswith(reply_so_far["content"]) and "<file" not in reply_so_far["content"]
