"""Files with a message: their text is read by pypdf / python-docx (or as text), a bad or hostile file
is refused with one sentence before it is stored, a file that fits goes to the model whole, one that
does not gives the passages BM25 finds for the question and the reply says which; files stay their
owner's. Real files, a real SQLite file and the tiny model."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest

from core.chat import attachments, retrieval
from core.chat.attachments import read_attachment
from core.chat.providers import LocalProvider
from core.chat.retrieval import PASSAGE_CHARS, FileText, FileUse, passages, ranked, terms
from core.chat.service import ChatService, FilesUsed
from core.errors import AttachmentError, NotFoundError
from core.inference.engine import LocalEngine
from core.inference.params import GenerationParams
from core.storage.db import Database
from tests.fixtures.documents import blank_pdf, docx_with, pdf_with_pages
from tests.fixtures.tiny_models import install_ready

TOPICS = {
    "tea": "Longjing tea grows on the hills west of the lake and is picked by hand in early spring.",
    "bridge": "The Broken Bridge is where the legend of the White Snake begins, east of the causeway.",
    "pagoda": "Leifeng Pagoda was rebuilt in 2002 above the ruins of the old tower that fell in 1924.",
    "food": "Dongpo pork is braised for hours in rice wine and soy sauce until it melts.",
}  # fmt: skip


def test_text_markdown_code_pdf_and_docx_are_read() -> None:
    assert read_attachment("notes.md", "# 标题\n\n正文 text".encode()).text == "# 标题\n\n正文 text"
    assert read_attachment("gbk.txt", "杭州西湖".encode("gb18030")).text == "杭州西湖"  # GBK text files
    assert read_attachment("C:\\Users\\me\\main.py", b"print('hi')\n").name == "main.py"

    pdf = read_attachment("trip.pdf", pdf_with_pages([["Day one: (West Lake)"], ["Day two: Lingyin"]]))
    assert (pdf.kind, pdf.pages) == ("pdf", 2)
    assert "Day one: (West Lake)" in pdf.text and "Day two: Lingyin" in pdf.text

    document = read_attachment(
        "plan.docx", docx_with(["第一段 first", "second"], [["city", "days"], ["杭州", "3"]])
    )
    assert document.kind == "docx"
    assert document.text.split("\n\n") == ["第一段 first", "second", "city | days", "杭州 | 3"]


@pytest.mark.parametrize(
    ("name", "data", "reason"),
    [
        ("tool.exe", b"MZ\x90\x00", "attachment_unsupported"),
        ("locked.pdf", blank_pdf(password="secret"), "attachment_encrypted"),
        ("scan.pdf", blank_pdf(), "attachment_no_text"),
        ("fake.pdf", b"%PDF-1.4 not really", "attachment_damaged"),
        ("fake.docx", b"PK\x03\x04 not a zip", "attachment_damaged"),
        ("binary.txt", bytes(range(128, 256)) * 4, "attachment_not_text"),
        ("empty.md", b"   \n", "attachment_no_text"),
    ],
)
def test_a_file_that_cannot_be_read_is_refused_with_a_sentence(name: str, data: bytes, reason: str) -> None:
    with pytest.raises(AttachmentError) as refused:
        read_attachment(name, data)
    assert refused.value.params == {"reason": reason, "file": name}
    assert refused.value.message.startswith(name) and refused.value.message.endswith(".")


def test_limits_hold_before_a_file_is_opened(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(AttachmentError, match="larger than the 10 MB"):
        read_attachment("big.txt", b"a" * (attachments.MAX_FILE_BYTES + 1))
    monkeypatch.setattr(attachments, "MAX_DOCX_UNPACKED_BYTES", 1024**2)  # small, to keep the test light
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as package:
        package.writestr("word/document.xml", b" " * (2 * 1024**2))
    with pytest.raises(AttachmentError, match="unpacks to more than 1 MB"):
        read_attachment("bomb.docx", bomb.getvalue())
    monkeypatch.setattr(attachments, "MAX_CHARACTERS", 100)
    cut = read_attachment("long.txt", b"x" * 1000)
    assert (len(cut.text), cut.truncated) == (100, True)


def test_passages_keep_all_the_text_in_bounded_pieces() -> None:
    text = "\n\n".join(f"Paragraph {i}. " + "Sentence with words. " * (i * 7) for i in range(1, 30))
    found = passages("doc.txt", text + "\n\n" + "no-sentence-end" * 300)
    assert all(len(p.text) <= PASSAGE_CHARS for p in found)
    assert [p.index for p in found] == list(range(1, len(found) + 1)) and found[0].total == len(found)

    def letters(value: str) -> str:
        return "".join(value.split())

    assert "".join(letters(p.text) for p in found) == letters(text + "no-sentence-end" * 300)  # nothing lost


def test_terms_and_ranking_find_the_passage_about_the_question() -> None:
    assert terms("West Lake 西湖龙井") == ["west", "lake", "西", "湖", "龙", "井", "西湖", "湖龙", "龙井"]
    text = "\n\n".join(sentence * 12 for sentence in TOPICS.values())
    candidates = passages("guide.txt", text)
    assert ranked(candidates, "When was the pagoda rebuilt?")[0].text.startswith(TOPICS["pagoda"])
    chinese = passages("指南.txt", "龙井茶产于西湖西边的山上。" * 60 + "\n\n" + "雷峰塔于2002年重建。" * 60)
    assert "雷峰塔" in ranked(chinese, "雷峰塔是哪年重建的？")[0].text
    assert ranked(candidates, "???") == candidates  # no terms: the file's order


def test_files_fit_whole_or_by_the_most_relevant_passages() -> None:
    def count_text(text: str, limit: int) -> int:
        return len(text) // 4  # about four characters a token, for this test

    small = [FileText("note.txt", "A short note.")]
    text, uses = retrieval.fit_files(small, "note", 1000, count_text)
    assert uses == [FileUse("note.txt", None, 1)] and "A short note." in text

    guide = FileText("guide.txt", "\n\n".join(sentence * 12 for sentence in TOPICS.values()))
    text, [use] = retrieval.fit_files([guide], "Dongpo pork rice wine", 400, count_text)
    assert use.passages and len(use.passages) < use.total
    assert TOPICS["food"] in text and TOPICS["tea"] not in text
    assert f"[passage {use.passages[0]} of {use.total}]" in text


@pytest.fixture
def chat(tmp_path: Path, tiny_models: dict[str, Path], database: Database) -> ChatService:
    install_ready(tmp_path / "models", "tiny", tiny_models["qwen2"])
    engine = LocalEngine(tmp_path / "models", idle_unload_s=0)
    return ChatService(database, lambda: LocalProvider(engine, "tiny"))


def new_conversation(chat: ChatService) -> int:
    conversation = chat.new_conversation()
    chat.set_options(conversation.id, "", GenerationParams(temperature=0, max_new_tokens=8))  # short replies
    return conversation.id


def test_the_model_gets_the_file_and_the_reply_says_what_of_it(chat: ChatService, database: Database) -> None:
    conversation_id = new_conversation(chat)
    events = list(
        chat.send(conversation_id, "What does the note say?", files=[("note.txt", b"Meet at the bridge.")])
    )
    assert [e.uses for e in events if isinstance(e, FilesUsed)] == [(FileUse("note.txt", None, 1),)]
    question, reply = chat.messages(conversation_id)
    assert reply.sources == [{"file": "note.txt", "passages": None, "of": 1}]
    plain = new_conversation(chat)
    list(chat.send(plain, "What does the note say?"))
    assert reply.prompt_tokens > chat.messages(plain)[-1].prompt_tokens  # the file was in the prompt
    assert [a.name for a in chat.attachments(conversation_id)[question.id]] == ["note.txt"]

    guide = "\n\n".join(sentence * 40 for sentence in TOPICS.values()).encode()  # far more than the context
    list(chat.send(conversation_id, "When was Leifeng Pagoda rebuilt?", files=[("guide.txt", guide)]))
    reply = chat.messages(conversation_id)[-1]
    used = {use["file"]: use for use in reply.sources}
    assert used["guide.txt"]["passages"] and len(used["guide.txt"]["passages"]) < used["guide.txt"]["of"]
    assert reply.prompt_tokens <= chat.provider().context_length

    list(chat.edit(conversation_id, question.id, "Where do we meet?"))  # an edit keeps its files
    assert [a.name for a in chat.attachments(conversation_id)[chat.messages(conversation_id)[0].id]] == [
        "note.txt"
    ]

    stranger = ChatService(database, chat.provider, owner="lan:bob")
    with pytest.raises(NotFoundError):
        stranger.attachments(conversation_id)


def test_a_bad_file_stores_nothing(chat: ChatService) -> None:
    conversation_id = new_conversation(chat)
    with pytest.raises(AttachmentError):
        chat.send(conversation_id, "read these", files=[("ok.txt", b"fine"), ("bad.pdf", b"%PDF junk")])
    with pytest.raises(AttachmentError, match="At most 5 files"):
        chat.send(conversation_id, "many", files=[(f"{i}.txt", b"x") for i in range(6)])
    assert chat.messages(conversation_id) == []
