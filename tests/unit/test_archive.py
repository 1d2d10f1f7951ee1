"""Export and import of the chat history: every branch survives a round trip, a file imported twice
adds nothing, ChatGPT's export and OpenAI chat messages come in as conversations, and a hostile file
is refused with one sentence before it costs memory. Real SQLite files; no model is needed."""

from __future__ import annotations

import io
import json
import random
import zipfile
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from sqlalchemy import event

from core.chat import archive
from core.chat.archived import ArchivedConversation, ArchivedMessage
from core.chat.branches import turns
from core.cli import main
from core.errors import ArchiveError
from core.storage import repo
from core.storage.db import Database
from core.storage.schema import ConversationRow


def _conversation_with_branches(db: Database, owner: str = "local") -> int:
    """Q1 → A1 → Q2 → {A2, A2'} and Q1' → A1' (an edited first question), shown: A2'."""
    with db.begin() as session:
        conversation = repo.create_conversation(
            session,
            owner=owner,
            title="Branches 分支",
            system_prompt="Be brief.",
            params={"temperature": 0.2},
        )
        q1 = repo.add_message(session, conversation.id, "user", "Q1")
        repo.add_attachment(
            session, q1.id, name="plan.pdf", kind="pdf", size_bytes=2048, text="Day 1", pages=1
        )
        sources = [{"file": "plan.pdf", "passages": None, "of": 1}]
        repo.add_message(
            session, conversation.id, "assistant", "A1", model="tiny", completion_tokens=3, sources=sources
        )
        q2 = repo.add_message(session, conversation.id, "user", "Q2")
        repo.add_message(session, conversation.id, "assistant", "A2")
        q1_edit = repo.add_message(session, conversation.id, "user", "Q1'", parent_id=q1.parent_id)
        repo.add_message(session, conversation.id, "assistant", "A1'", parent_id=q1_edit.id)
        shown = repo.add_message(session, conversation.id, "assistant", "A2'", parent_id=q2.id)
        assert shown.parent_id == q2.id
        return conversation.id


def _shape(db: Database, owner: str) -> list[tuple[str, list[tuple[str, int, int]]]]:
    """Each conversation's title and its shown branch as (content, branch, branches)."""
    with db.begin() as session:
        found = []
        for conversation in repo.list_conversations(session, owner):
            row_leaf = repo.leaf_id(session, session.get(ConversationRow, conversation.id))
            shown = turns(repo.list_messages(session, conversation.id), row_leaf)
            found.append((conversation.title, [(t.message.content, t.branch, t.branches) for t in shown]))
        return found


@pytest.fixture
def other_db(tmp_path: Path) -> Iterator[Database]:
    db = Database(f"sqlite:///{tmp_path / 'other.db'}")
    yield db
    db.dispose()


def test_every_branch_survives_a_round_trip_and_a_second_import_adds_nothing(
    database: Database, other_db: Database
) -> None:
    _conversation_with_branches(database)
    data = archive.export_bytes(database, "local")
    exported = json.loads(data)
    assert (exported["format"], exported["version"]) == ("localllm-chats", 1)

    assert archive.import_bytes(other_db, "lan:alice", data) == archive.ImportResult(1, 0)
    expected = [("Branches 分支", [("Q1", 1, 2), ("A1", 1, 1), ("Q2", 1, 1), ("A2'", 2, 2)])]
    assert _shape(other_db, "lan:alice") == _shape(database, "local") == expected
    with other_db.begin() as session:
        [conversation] = repo.list_conversations(session, "lan:alice")
        assert (conversation.system_prompt, conversation.uid) == (
            "Be brief.",
            exported["conversations"][0]["uid"],
        )
        messages = {m.content: m for m in repo.list_messages(session, conversation.id)}
        first_question, first_reply = messages["Q1"], messages["A1"]
        assert (first_reply.model, first_reply.completion_tokens) == ("tiny", 3)
        assert first_reply.sources == [{"file": "plan.pdf", "passages": None, "of": 1}]
        [(attached, text)] = repo.attachment_texts(session, [first_question.id])
        assert (attached.name, attached.kind, attached.pages, text) == ("plan.pdf", "pdf", 1, "Day 1")

    assert archive.import_bytes(other_db, "lan:alice", data) == archive.ImportResult(0, 1)  # nothing doubled
    assert archive.import_bytes(other_db, "lan:bob", data) == archive.ImportResult(1, 0)  # bob's own copy


def _chatgpt_export() -> list[dict]:
    """The shape of ChatGPT's conversations.json: a node tree with a hidden root, a system note, a
    regenerated answer, a tool call and an image part."""

    def node(key, parent, children, role=None, parts=None, content_type="text", **metadata):
        message = None
        if role:
            message = {
                "id": key,
                "author": {"role": role, "name": None, "metadata": {}},
                "create_time": 1.7e9,
                "content": {"content_type": content_type, "parts": parts},
                "metadata": metadata,
            }
        return {"id": key, "message": message, "parent": parent, "children": children}

    mapping = {
        "root": node("root", None, ["sys"]),
        "sys": node("sys", "root", ["u1"], "system", ["You are ChatGPT."]),
        "u1": node("u1", "sys", ["a1", "a1b"], "user", ["Plan a trip to 杭州", {"asset_pointer": "file-1"}],
                   "multimodal_text"),
        "a1": node("a1", "u1", [], "assistant", ["Day 1: West Lake."], model_slug="gpt-4o"),
        "a1b": node("a1b", "u1", ["tool"], "assistant", ["Let me look that up."]),
        "tool": node("tool", "a1b", ["a2"], "tool", None, "code"),
        "a2": node("a2", "tool", [], "assistant", ["Day 1: Lingyin Temple."], model_slug="gpt-4o"),
    }  # fmt: skip
    return [{"title": "Trip", "create_time": 1.7e9, "update_time": 1.7e9 + 60, "mapping": mapping,
             "current_node": "a2", "conversation_id": "c-123", "id": "c-123"}]  # fmt: skip


def test_chatgpt_exports_come_in_with_their_branches_json_or_zip(database: Database) -> None:
    data = json.dumps(_chatgpt_export()).encode()
    assert archive.import_bytes(database, "local", data) == archive.ImportResult(1, 0)
    assert _shape(database, "local") == [
        (
            "Trip",
            [("Plan a trip to 杭州", 1, 1), ("Let me look that up.", 2, 2), ("Day 1: Lingyin Temple.", 1, 1)],
        )
    ]  # the tool call is left out; what followed it follows the reply before it
    with database.begin() as session:
        [conversation] = repo.list_conversations(session, "local")
        assert (conversation.system_prompt, conversation.uid) == ("You are ChatGPT.", "chatgpt:c-123")
        assert {m.model for m in repo.list_messages(session, conversation.id)} == {None, "gpt-4o"}

    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w", zipfile.ZIP_DEFLATED) as export:
        export.writestr("chat.html", "<html></html>")
        export.writestr("conversations.json", data)
    assert archive.import_bytes(database, "local", zipped.getvalue()) == archive.ImportResult(0, 1)


def test_openai_chat_messages_come_in_as_one_branch_each(database: Database) -> None:
    lines = [
        {"messages": [{"role": "system", "content": "Translate."}, {"role": "user", "content": "你好"},
                      {"role": "assistant", "content": "Hello"}]},
        {"messages": [{"role": "user", "content": "2+2?"}, {"role": "tool", "content": "calc"},
                      {"role": "assistant", "content": "4"}]},
    ]  # fmt: skip
    data = "\n".join(json.dumps(line, ensure_ascii=False) for line in lines).encode()
    assert archive.import_bytes(database, "local", data) == archive.ImportResult(2, 0)
    assert sorted(_shape(database, "local")) == [
        ("2+2?", [("2+2?", 1, 1), ("4", 1, 1)]),
        ("你好", [("你好", 1, 1), ("Hello", 1, 1)]),
    ]
    assert archive.import_bytes(database, "local", data) == archive.ImportResult(0, 2)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\xff\xfe not text", "archive_not_json"),
        (b'{"hello": "world"}', "archive_unknown"),
        (b'{"format": "localllm-chats", "version": 99, "conversations": []}', "archive_too_new"),
        (b"PK\x03\x04 a broken zip", "archive_zip"),
    ],
)
def test_a_file_that_is_not_an_export_is_refused_with_a_sentence(data: bytes, reason: str) -> None:
    with pytest.raises(ArchiveError) as refused:
        archive.read_archive(data)
    assert refused.value.params["reason"] == reason and refused.value.message.endswith(".")


def test_size_limits_hold_before_anything_is_unpacked(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ArchiveError, match="larger than the 50 MB"):
        archive.read_archive(b" " * (archive.MAX_FILE_BYTES + 1))
    monkeypatch.setattr(archive, "MAX_UNPACKED_BYTES", 1024**2)  # a small limit, to keep the test light
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as export:
        export.writestr("conversations.json", b"[" + b" " * (2 * 1024**2) + b"]")
    assert len(bomb.getvalue()) < 10_000  # 2 MB of spaces compress to almost nothing
    with pytest.raises(ArchiveError) as refused:
        archive.read_archive(bomb.getvalue())
    assert refused.value.params["reason"] == "archive_zip"


def test_a_chatgpt_zip_with_its_images_imports_from_this_machine_at_any_size(
    capsys: pytest.CaptureFixture[str], database: Database, tmp_path: Path
) -> None:
    """ChatGPT's export ZIP holds every image made or uploaded (hundreds of MB): it was refused past
    50 MB, from the page and from `localllm chats import` alike. The command reads the ZIP from disk now
    (only conversations.json is unpacked); the page, limited to 50 MB an upload, says how to do it."""
    zipped = tmp_path / "chatgpt-export.zip"
    with zipfile.ZipFile(zipped, "w", zipfile.ZIP_STORED) as export:
        export.writestr("conversations.json", json.dumps(_chatgpt_export()))
        with export.open("file-dalle-1.webp", "w") as image:
            for _ in range(60):  # 60 MB of an image that does not compress
                image.write(random.randbytes(1024**2))
    assert zipped.stat().st_size > archive.MAX_FILE_BYTES
    with pytest.raises(ArchiveError) as refused:
        archive.read_archive(zipped.read_bytes())  # an upload
    assert "localllm chats import FILE" in refused.value.message
    assert main(["chats", "import", str(zipped)]) == 0
    assert "Conversations imported: 1 (already here, skipped: 0)." in capsys.readouterr().out


def test_conversations_larger_than_free_memory_can_parse_are_refused_before_they_are_read(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A parse takes 2.5-4 × the JSON's size: the machine's free memory is asked first (mocked: a machine
    short of memory cannot be made here)."""
    exported = tmp_path / "conversations.json"
    exported.write_text(json.dumps(_chatgpt_export()))
    monkeypatch.setattr(archive.psutil, "virtual_memory", lambda: SimpleNamespace(available=1000))
    with pytest.raises(ArchiveError) as refused:
        archive.read_archive(exported)
    assert refused.value.params["reason"] == "archive_memory" and "free memory" in refused.value.message


def test_hostile_fields_are_checked_one_by_one(database: Database) -> None:
    hostile = {"format": "localllm-chats", "version": 1, "conversations": [{
        "uid": "u" * 500, "title": "T" * 5000, "params": {"temperature": 99}, "preset": {"x": 1},
        "created_at": "not a date", "leaf": 2,
        "messages": [
            {"id": 1, "parent": 2, "role": "user", "content": "loop A"},  # a cycle: 1 → 2 → 1
            {"id": 2, "parent": 1, "role": "assistant", "content": "loop B", "prompt_tokens": -5,
             "model": ["not", "text"]},
            {"id": 3, "parent": None, "role": "system", "content": "never a message"},
            {"id": 4, "parent": 2, "role": "user", "content": {"not": "text"}},
            "not a message",
        ],
    }]}  # fmt: skip
    assert archive.import_bytes(database, "local", json.dumps(hostile).encode()).imported == 1
    with database.begin() as session:
        [conversation] = repo.list_conversations(session, "local")
        messages = repo.list_messages(session, conversation.id)
    assert len(conversation.title) == 300 and len(conversation.uid) == 100
    assert [(m.role, m.content) for m in messages] == [
        ("assistant", "loop B"),
        ("user", "loop A"),
        ("user", ""),
    ]
    assert messages[0].parent_id is None  # the cycle is broken at a root
    assert (messages[0].prompt_tokens, messages[0].model) == (None, None)
    assert conversation.preset is None
    with database.begin() as session:
        assert session.get(ConversationRow, conversation.id).params == {}  # out of range: the model's own


def test_the_command_line_exports_and_imports(
    capsys: pytest.CaptureFixture[str], database: Database, tmp_path: Path
) -> None:
    _conversation_with_branches(database)
    exported = tmp_path / "chats.json"
    assert main(["chats", "export", str(exported)]) == 0
    assert main(["chats", "import", str(exported), "--user", "Alice"]) == 0
    assert "Conversations imported: 1 (already here, skipped: 0)." in capsys.readouterr().out
    assert main(["chats", "import", str(exported), "--user", "alice"]) == 0
    assert "Conversations imported: 0 (already here, skipped: 1)." in capsys.readouterr().out
    assert _shape(database, "lan:alice") == _shape(database, "local")

    (tmp_path / "bad.json").write_text("[1, 2, 3]")
    assert main(["chats", "import", str(tmp_path / "bad.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: This file is not a chat export") and "Traceback" not in err


def test_a_big_import_takes_a_few_statements_per_level_of_its_trees_not_one_per_message(
    database: Database,
) -> None:
    """45,000 messages of a ChatGPT export took 43 s, a flush and an update of their conversation each;
    inserted by tree level, 6 s (on SQLite, which numbers rows itself, still a row per INSERT)."""

    def chat(number: int) -> ArchivedConversation:
        roles = ("user", "assistant")
        messages = [ArchivedMessage(str(turn), str(turn - 1) if turn else None, roles[turn % 2],
                                    f"chat {number} message {turn}") for turn in range(6)]  # fmt: skip
        messages.append(ArchivedMessage("edit", "3", "user", f"chat {number} message 4, edited"))  # a branch
        return ArchivedConversation(f"uid-{number}", f"Chat {number}", tuple(messages), leaf="5")

    statements: list[str] = []
    event.listen(database.engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    assert archive.import_conversations(database, "local", [chat(n) for n in range(50)]).imported == 50
    updates = [statement for statement in statements if statement.startswith("UPDATE")]
    assert len(updates) == 1 and len(statements) <= 350 + 50 + 3  # one row each, then the 50 leaves at once
    with database.begin() as session:
        for conversation in repo.list_conversations(session, "local"):
            shown = [turn.message.content for turn in turns(repo.list_messages(session, conversation.id),
                                                            conversation.leaf_id)]  # fmt: skip
            number = conversation.title.removeprefix("Chat ")
            assert shown == [f"chat {number} message {turn}" for turn in range(6)]
