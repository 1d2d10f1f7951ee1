"""Text shown through Streamlit's Markdown: the user's own text as typed, model replies without images,
the addresses in our own sentences as code.

A reply is Markdown on purpose (lists, code, tables), but an image in it would make every viewer's
browser fetch its URL, which a prompt injection could point at any server with the conversation in
the query string. So `![alt](url)` becomes a link the reader may follow or not, never a fetch. HTML
is never enabled (Streamlit escapes it), and code is left as it is.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from markdown_it import MarkdownIt

# Escaped anywhere. '.', '-', '+', '(' and ')' only mean something at the start of a line (lists,
# rules, headings): escaped there only, since inside a bare URL (which becomes a link) a backslash
# would show.
_MARKDOWN_SPECIALS = "\\`*_{}[]<>#!|~$"
_LINE_START = re.compile(r"(?m)^([ \t]*)(\d+(?=[.)])|[-+=](?=[-=+ \t]|$))")
# Fenced code blocks (``` or ~~~, to the matching fence or the end) and inline code spans.
_CODE = re.compile(r"(?ms)^[ ]{0,3}(`{3,}|~{3,}).*?(?:^[ ]{0,3}\1[`~]*[ \t]*$|\Z)|(`+)(?!`).+?(?<!`)\2(?!`)")
_IMAGE = re.compile(r"!(?=\s*\[)")
_ENTITY = re.compile(r"&(?=#?\w+;)")  # `&copy;` shows as typed, not as ©; `?a=1&b=2` needs nothing
# A line break between two lines of text (not after a backslash, Markdown's own hard break, or LaTeX's).
_SOFT_BREAK = re.compile(r"(?<=[^\s\\])[ \t]*\n(?=[ \t]*\S)")
_SPACES = re.compile(r"^ +| {2,}")  # spaces that Markdown would drop or collapse: a line's indent, a run
# A bare http(s) URL up to whitespace, quotes, brackets, a backslash (none is in an address: one is
# Markdown's escape) or CJK punctuation (fullwidth forms included).
_BARE_URL = re.compile(r"https?://[^\s`<>\"'()\[\]\\\u3000-\u303f\uff00-\uffef]+")
# Math as models write it (`math_as_dollars`): $$…$$, \[…\], \(…\) on one line, and $…$ by pandoc's rule.
_MATH = re.compile(
    r"(?s)(?<!\\)\$\$(?P<display>.+?)(?<!\\)\$\$"
    r"|(?<!\\)\\\[(?P<bracket>.+?)(?<!\\)\\\]"
    r"|(?<!\\)\\\((?P<paren>[^\n]+?)(?<!\\)\\\)"
    r"|(?<![A-Za-z0-9_$\\-])\$(?P<inline>[^\s$](?:[^\n$]*?[^\s$\\])?)\$(?!\d)"
)
_LONE_DOLLAR = re.compile(r"(?<!\\)\$")
# Block structure as Streamlit's renderer sees it (CommonMark with GitHub's tables).
_BLOCKS = MarkdownIt("commonmark").enable("table")


def escape_markdown(text: str) -> str:
    """User text shown inside Markdown: every Markdown character escaped, so it renders as typed."""
    escaped = "".join("\\" + ch if ch in _MARKDOWN_SPECIALS else ch for ch in text)
    return _ENTITY.sub(r"\\\g<0>", _LINE_START.sub(_escape_marker, escaped))


def as_typed(text: str) -> str:
    """A person's message as Markdown that shows it as typed: every character as it is (`escape_markdown`),
    and its lines, blank lines and runs of spaces kept (Markdown joins lines and collapses spaces: a
    pasted poem or piece of code lost its shape)."""
    typed = text.replace("\r\n", "\n").replace("\r", "\n").rstrip("\n").expandtabs(4)
    lines = escape_markdown(typed).split("\n")
    kept = [_SPACES.sub(_no_break, line) or "&nbsp;" for line in lines]
    return "  \n".join(kept)  # hard line breaks


def _no_break(run: re.Match[str]) -> str:
    """Spaces as no-break spaces, the first as an entity (a paragraph's start is trimmed of the character)."""
    return "&nbsp;" + "\u00a0" * (len(run.group()) - 1)


def as_text(text: str) -> str:
    """Text from outside (a file name, a server's own words) inside one of our Markdown sentences: shown
    as it is, nothing in it a link, an image or emphasis; its addresses whole, as code (`urls_as_code`)."""
    pieces, last = [], 0
    for url in _BARE_URL.finditer(text):
        pieces += [escape_markdown(text[last : url.start()]), _url_as_code(url)]
        last = url.end()
    pieces.append(escape_markdown(text[last:]))
    return "".join(pieces)


def urls_as_code(text: str) -> str:
    """Our own sentences with addresses in them (endpoints, a server's URL): each bare URL as a code
    span. Markdown's autolink runs on to the next space, so in Chinese it took in the punctuation
    and the rest of the sentence ("…hf-mirror.com）。请检查网络…" was one link)."""
    return _outside_code(text, lambda part: _BARE_URL.sub(_url_as_code, part))


def _url_as_code(match: re.Match[str]) -> str:
    url = match.group(0)
    address = url.rstrip(".,:;!?")  # a sentence's own punctuation after the address
    return f"`{address}`{url[len(address) :]}"


def _escape_marker(match: re.Match[str]) -> str:
    """`1.` / `1)` (a numbered list), `-`, `+` (a bullet), `---` / `===` (a rule or a heading's line)."""
    indent, marker = match.groups()
    if marker.isdigit():
        return f"{indent}{marker}\\"  # the '.' or ')' after the number follows this backslash
    return f"{indent}\\{marker}"


def reply_markdown(text: str, image_label: str = "image:") -> str:
    """A model's reply as Markdown that loads nothing: each image `![alt](url)` becomes the label and a
    plain link to it, its math is in the delimiters Streamlit renders (`math_as_dollars`), and a line
    break inside a paragraph stays one (a poem, an address: Markdown joined them into one line, as chat
    apps do not), outside code blocks and code spans, which show it as written."""
    label = escape_markdown(image_label) + " "
    return _outside_code(
        text, lambda part: _SOFT_BREAK.sub("  \n", math_as_dollars(_IMAGE.sub(lambda _m: label, part)))
    )


def math_as_dollars(text: str) -> str:
    """LaTeX as models write it, in the delimiters Streamlit renders: `\\[…\\]` as `$$…$$` and `\\(…\\)`
    as `$…$` (Qwen and DeepSeek write these; Streamlit showed "[ A = 4\\pi ]"). Every other dollar
    sign is a dollar: `$…$` is math only by pandoc's rule (no space inside either dollar, the closing
    one not followed by a digit) and not after a letter or digit, so "costs $5 where $x$ is" keeps its
    $5 and "$5 and $10" stays money (Streamlit paired them into math: "5wherexis")."""
    pieces, last = [], 0
    for math in _MATH.finditer(text):
        pieces.append(_LONE_DOLLAR.sub(r"\\$", text[last : math.start()]))
        display, bracket, paren, inline = math.group("display", "bracket", "paren", "inline")
        if display is not None or bracket is not None:
            pieces.append(f"$${display if bracket is None else bracket}$$")
        else:
            pieces.append(f"${inline if paren is None else paren.strip()}$")
        last = math.end()
    pieces.append(_LONE_DOLLAR.sub(r"\\$", text[last:]))
    return "".join(pieces)


def _outside_code(text: str, change: Callable[[str], str]) -> str:
    """`change` applied to the text between code blocks and code spans, which stay as written."""
    pieces, last = [], 0
    for code in _CODE.finditer(text):
        pieces += [change(text[last : code.start()]), code.group(0)]
        last = code.end()
    pieces.append(change(text[last:]))
    return "".join(pieces)


_LINE_BREAK = re.compile(r"\r\n?|\n")  # what markdown-it counts as one (a reply may say "\r" alone)


def settled_length(markdown: str) -> int:
    """How much of a Markdown text still being written is whole top-level blocks that no text added
    after it can change: everything before the line where the last top-level block of its complete
    lines starts (a line still being written may yet join the block above it: "3" before "3. three").
    A streaming reply draws those once, and redraws only what follows."""
    ends = [match.end() for match in _LINE_BREAK.finditer(markdown)]  # where each complete line ends
    if not ends:
        return 0
    tokens = _BLOCKS.parse(markdown[: ends[-1]])
    starts = [token.map[0] for token in tokens if token.level == 0 and token.map and token.nesting >= 0]
    return ends[starts[-1] - 1] if len(starts) >= 2 else 0
