"""Text through Markdown, checked with a real CommonMark renderer (markdown-it-py): user text shows
exactly as typed, and a model reply never holds an image, whatever it says."""

from __future__ import annotations

import html
import re

import pytest

from tests.fixtures.markdown import RENDERER, visible_text
from ui.markup import as_typed, escape_markdown, math_as_dollars, reply_markdown, settled_length, urls_as_code


@pytest.mark.parametrize(
    "text",
    [
        "plain words",
        "**bold?** _it_ `code` ~~gone~~ # not a heading",
        "1. not a list\n2) nor this\n- nor a bullet\n+ nor this\n* nor this",
        "a line\n===\nand\n---",
        "![title](http://198.51.100.7/leak?q=1) [link](http://x.test)",
        "<img src=x onerror=alert(1)><script>alert(2)</script>",
        "back\\slash | pipe > quote {braces} $math$",
        "中文和 English 混合 😀",
        "&copy; is not &#169;, &amp; stays &amp; (?a=1&b=2)",
    ],
)
def test_user_text_shows_exactly_as_typed(text: str) -> None:
    rendered = RENDERER.render(escape_markdown(text))
    assert (
        "<img" not in rendered and "<li" not in rendered and "<h1" not in rendered and "<h2" not in rendered
    )
    assert visible_text(escape_markdown(text)).split() == text.split()


@pytest.mark.parametrize(
    "text",
    [
        "def area(r):\n    return 3.14 * r * r\n\n\n# two blank lines above",
        "床前明月光，\n疑是地上霜。",
        "name:  Ada\tage: 36\r\nrole: *admin*",
        "  - indented, not a list\n1. nor this\n    nor code",
    ],
)
def test_a_message_keeps_its_lines_blank_lines_and_spaces(text: str) -> None:
    # Markdown joined a message's lines and collapsed its spaces: pasted code or a poem lost its shape.
    rendered = RENDERER.render(as_typed(text))
    assert not re.search(r"<(pre|code|li|h\d|em|strong)\b", rendered)
    shown = html.unescape(re.sub(r"<[^>]+>", "", rendered.replace("<br />\n", "\n"))).strip("\n")
    typed = text.replace("\r\n", "\n").expandtabs(4)
    assert shown.replace("\u00a0", " ").split("\n") == [line or " " for line in typed.split("\n")]


@pytest.mark.parametrize(
    "reply",
    [
        "![a cat](http://198.51.100.7/leak?q=secret)",
        "text ![a](u) more ![b](v)",
        "![ref image][r]\n\n[r]: http://198.51.100.7/x",
        "[![nested](http://i.test/a.png)](http://l.test)",
        "| a | b |\n|---|---|\n| ![x](http://i.test) | y |",
    ],
)
def test_a_reply_never_holds_an_image(reply: str) -> None:
    rendered = RENDERER.render(reply_markdown(reply, "image:"))
    assert "<img" not in rendered
    assert "image:" in visible_text(reply_markdown(reply, "image:"))


def test_code_in_a_reply_is_left_as_written() -> None:
    reply = "Use `![x](u)` like this:\n\n```md\n![x](u)\n```\n\nthen ![y](v)"
    rendered = RENDERER.render(reply_markdown(reply))
    assert rendered.count("![x](u)") == 2  # both code spans kept their text
    assert "<img" not in rendered
    assert "**bold**" not in reply_markdown("**bold**") or "<strong>" in RENDERER.render(
        reply_markdown("**bold**")
    )


def test_a_replys_line_breaks_stay_line_breaks_and_its_blocks_stay_blocks() -> None:
    # A poem or an address from the model was shown as one line ("床前明月光， 疑是地上霜。").
    reply = (
        "床前明月光，\n疑是地上霜。\n\nTo: Ada\n1 Main St\n\n```python\na = 1\nb = 2\n```\n\n"
        "| n | fib |\n|---|---|\n| 10 | 55 |\n\nTitle\n===\n\n- one\n- two\n\nkept\\\nas is"
    )
    rendered = RENDERER.render(reply_markdown(reply))
    assert (
        "<p>床前明月光，<br />\n疑是地上霜。</p>" in rendered
        and "<p>To: Ada<br />\n1 Main St</p>" in rendered
    )
    assert '<code class="language-python">a = 1\nb = 2\n</code>' in rendered  # code as written
    assert "<td>55</td>" in rendered and "<h1>Title</h1>" in rendered and "<li>two</li>" in rendered
    assert "<p>kept<br />\nas is</p>" in rendered  # Markdown's own hard break, untouched


@pytest.mark.parametrize(
    ("sentence", "addresses", "after"),
    [
        (
            "无法获取 org/x 的文件列表：无法连接（https://huggingface.co, https://hf-mirror.com）。请检查网络。",
            ["https://huggingface.co", "https://hf-mirror.com"],
            "）。请检查网络。",
        ),
        ("http://127.0.0.1:9：可访问，3 毫秒", ["http://127.0.0.1:9"], "：可访问，3 毫秒"),
        (
            "Could not reach http://10.0.0.5:8000/v1?a=1. Check it.",
            ["http://10.0.0.5:8000/v1?a=1"],
            ". Check it.",
        ),
        (
            "Already `http://a.test:1/` as code, `or http://b.test` in a span.",
            ["http://a.test:1/", "or http://b.test"],
            " in a span.",
        ),
    ],
)
def test_an_address_in_a_sentence_is_shown_whole_and_ends_where_it_ends(
    sentence: str, addresses: list[str], after: str
) -> None:
    rendered = RENDERER.render(urls_as_code(sentence))
    assert re.findall(r"<code>(.*?)</code>", rendered) == addresses
    assert visible_text(urls_as_code(sentence)) == sentence.replace("`", "")
    assert html.unescape(rendered.rsplit("</code>", 1)[1]).removesuffix("</p>\n") == after


REPLY = (
    "## Steps\n\nFirst a paragraph\nthat runs on.\n\n1. one\n2. two\n\n   more about two\n\n3. three\n\n"
    "```python\nx = 1\n\ny = 2\n```\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n> a quote\nlazily continued\n\n"
    "    indented code\n\n- a\n\n- b\n\n  more about b\n\nA setext title\n==============\n\n"
    "10) ten\n11) eleven\n\nThe end ~~really~~."
)


def test_a_growing_reply_settles_only_blocks_that_render_as_in_the_finished_reply() -> None:
    # Every prefix a stream can show: what it settles must render exactly as the start of the finished
    # reply does (a list that goes on, a code fence still open, a lazy line stay unsettled).
    finished = RENDERER.render(REPLY)
    settled_at = []
    for end in range(len(REPLY) + 1):
        shown = REPLY[:end]
        settled = settled_length(shown)
        assert shown[:settled] == REPLY[:settled]
        assert finished.startswith(RENDERER.render(REPLY[:settled]))
        settled_at.append(settled)
    assert settled_at == sorted(settled_at)  # never taken back as the text grows
    assert len(set(settled_at)) >= 8  # the reply's blocks settle one after another


def test_one_block_still_being_written_settles_nothing() -> None:
    assert settled_length("") == 0
    assert settled_length("A single paragraph\nover two lines") == 0
    assert settled_length("```\ncode\n\nstill code") == 0
    assert settled_length("- a\n\n- b\n\n  more b") == 0


def test_carriage_returns_end_lines_as_markdown_counts_them() -> None:
    # A model may say "\r" alone or "\r\n" (random weights did, and the Chat page failed on it): the
    # blocks settle where markdown-it, which counts both as line breaks, says they start.
    for newline in ("\r", "\r\n", "\n"):
        text = newline.join(["one", "", "two", "", "three", "and mo"])
        assert settled_length(text) == len(newline.join(["one", "", "two", "", ""]))
    reply = REPLY.replace("\n", "\r\n")
    assert [settled_length(reply[:end]) for end in range(len(reply) + 1)] == sorted(
        settled_length(reply[:end]) for end in range(len(reply) + 1)
    )


@pytest.mark.parametrize(
    ("reply", "shown"),
    [  # Qwen's and DeepSeek's delimiters become Streamlit's; anything else with a dollar stays money
        (r"The area is \(A = \pi r^2\), so:" "\n\n" r"\[" "\nA = 4\\pi\n" r"\]",
         r"The area is $A = \pi r^2$, so:" "\n\n$$\nA = 4\\pi\n$$"),
        (r"其中 \( a \) 是底，面积为$S = ah$。", r"其中 $a$ 是底，面积为$S = ah$。"),
        ("An apple costs $5 and an orange $10, so $15.", r"An apple costs \$5 and an orange \$10, so \$15."),
        ("costs $5 where $x$ is the price", r"costs \$5 where $x$ is the price"),
        ("$5-$10 a month; $HOME and $PATH", r"\$5-\$10 a month; \$HOME and \$PATH"),
        ("inline $x^2$ and display $$\\int_0^1 x\\,dx$$", "inline $x^2$ and display $$\\int_0^1 x\\,dx$$"),
        (r"already \$5, and a line break \\[4pt] in TeX", r"already \$5, and a line break \\[4pt] in TeX"),
        ("a $$ not closed yet", r"a \$\$ not closed yet"),  # a reply still being written
    ],
)  # fmt: skip
def test_math_is_in_the_delimiters_streamlit_renders_and_money_stays_money(reply: str, shown: str) -> None:
    assert math_as_dollars(reply) == shown


def test_dollars_in_code_are_left_as_written() -> None:
    reply = "Run `echo $HOME` then:\n\n```sh\nexport A=$5 \\(x\\)\n```\n"
    assert reply_markdown(reply) == reply
