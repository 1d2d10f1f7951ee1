"""Files given to the model with a message: their text, read with picked libraries (pypdf for PDF,
python-docx for DOCX; text, Markdown and code as they are).

A file is hostile until read: its size is checked before it is opened, a DOCX's unpacked size before
python-docx unpacks it (pypdf limits each PDF stream itself), a PDF's pages and every file's text are
capped. Only the text is kept (with its message, so with its owner); the file itself is not stored.
"""

from __future__ import annotations

import io
import logging
import zipfile
from dataclasses import dataclass
from pathlib import PurePath

from core.errors import AttachmentError

logger = logging.getLogger(__name__)

MAX_FILE_BYTES = 10 * 1024**2
MAX_FILES = 5  # with one message
MAX_CHARACTERS = 1_000_000  # of one file's text; the rest is left out, and the message says so
MAX_PDF_PAGES = 2_000
MAX_DOCX_UNPACKED_BYTES = 100 * 1024**2
TEXT_TYPES = frozenset({
    "txt", "md", "markdown", "rst", "csv", "tsv", "json", "jsonl", "yaml", "yml", "toml", "ini", "cfg",
    "log", "xml", "html", "htm", "css", "py", "js", "ts", "tsx", "jsx", "java", "kt", "c", "h", "cc",
    "cpp", "hpp", "cs", "go", "rs", "rb", "php", "sh", "bash", "zsh", "ps1", "sql", "r", "m", "swift",
    "scala", "lua", "pl", "tex",
})  # fmt: skip
FILE_TYPES = (*sorted(TEXT_TYPES), "pdf", "docx")


@dataclass(frozen=True)
class Attachment:
    name: str
    kind: str  # "text", "pdf" or "docx"
    size_bytes: int
    text: str
    pages: int | None = None  # a PDF's
    truncated: bool = False  # the text was longer than MAX_CHARACTERS


def file_type(name: str) -> str:
    return PurePath(name).suffix.lower().lstrip(".")


def read_attachment(name: str, data: bytes) -> Attachment:
    """The text of one file; AttachmentError (one sentence) for a file that cannot be read."""
    name = PurePath(name.replace("\\", "/")).name[:255] or "file"
    if len(data) > MAX_FILE_BYTES:
        raise AttachmentError(
            f"{name} is larger than the {MAX_FILE_BYTES // 1024**2} MB a file may be.",
            reason="attachment_too_large", file=name, limit_mb=MAX_FILE_BYTES // 1024**2,
        )  # fmt: skip
    suffix = file_type(name)
    if suffix == "pdf":
        text, pages, kind = *_pdf_text(name, data), "pdf"
    elif suffix == "docx":
        text, pages, kind = _docx_text(name, data), None, "docx"
    elif suffix in TEXT_TYPES:
        text, pages, kind = _plain_text(name, data), None, "text"
    else:
        raise AttachmentError(
            f"{name}: this kind of file cannot be read (text, Markdown, code, PDF and DOCX can).",
            reason="attachment_unsupported", file=name,
        )  # fmt: skip
    text = text.replace("\x00", "").strip()
    if not text:
        raise AttachmentError(
            f"{name} has no text to read (a scanned PDF holds only images).",
            reason="attachment_no_text",
            file=name,
        )
    truncated = len(text) > MAX_CHARACTERS
    return Attachment(name, kind, len(data), text[:MAX_CHARACTERS], pages, truncated)


def _plain_text(name: str, data: bytes) -> str:
    for encoding in ("utf-8-sig", "gb18030"):  # Chinese text files are often GBK
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    raise AttachmentError(f"{name} is not text in UTF-8 or GBK.", reason="attachment_not_text", file=name)


def _pdf_text(name: str, data: bytes) -> tuple[str, int]:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError, PyPdfError

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise AttachmentError(
                f"{name} is protected by a password.", reason="attachment_encrypted", file=name
            )
        pages, texts, length = len(reader.pages), [], 0
        for page in reader.pages[:MAX_PDF_PAGES]:
            texts.append(page.extract_text() or "")
            length += len(texts[-1])
            if length > MAX_CHARACTERS:
                break
    except (PdfReadError, PyPdfError, ValueError, KeyError, TypeError, OSError, RecursionError) as exc:
        logger.info("cannot read %s: %s", name, exc)
        raise AttachmentError(
            f"{name} is not a PDF this app can read.", reason="attachment_damaged", file=name
        ) from exc
    return "\n\n".join(texts), pages


def _docx_text(name: str, data: bytes) -> str:
    import docx
    from docx.opc.exceptions import PackageNotFoundError

    try:
        with zipfile.ZipFile(io.BytesIO(data)) as package:
            unpacked = sum(member.file_size for member in package.infolist())
        if unpacked > MAX_DOCX_UNPACKED_BYTES:
            raise AttachmentError(
                f"{name} unpacks to more than {MAX_DOCX_UNPACKED_BYTES // 1024**2} MB.",
                reason="attachment_too_large", file=name, limit_mb=MAX_DOCX_UNPACKED_BYTES // 1024**2,
            )  # fmt: skip
        document = docx.Document(io.BytesIO(data))
    except (zipfile.BadZipFile, PackageNotFoundError, KeyError, ValueError, OSError) as exc:
        logger.info("cannot read %s: %s", name, exc)
        raise AttachmentError(
            f"{name} is not a DOCX this app can read.", reason="attachment_damaged", file=name
        ) from exc
    parts = [paragraph.text for paragraph in document.paragraphs]
    for table in document.tables:
        parts += [" | ".join(cell.text for cell in row.cells) for row in table.rows]
    return "\n\n".join(part for part in parts if part.strip())
