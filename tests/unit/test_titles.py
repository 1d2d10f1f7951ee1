from core.chat.titles import TITLE_CHARS, title_from


def test_a_short_first_line_is_the_title_as_written() -> None:
    assert title_from("\n  How do   tides work?  \nAnd why twice a day?") == "How do tides work?"
    assert title_from("写一首关于秋天的短诗。") == "写一首关于秋天的短诗。"
    assert title_from(" \n\t ") == ""


def test_a_long_line_is_cut_after_its_last_whole_word_with_an_ellipsis() -> None:
    title = title_from("Explain what a large language model is in three sentences.")
    assert title == "Explain what a large language model is…"
    assert len(title) <= TITLE_CHARS


def test_text_without_spaces_is_cut_at_the_limit() -> None:
    text = "请用三句话解释什么是大语言模型，并举一个日常生活中的例子说明它能做什么、不能做什么。"
    title = title_from(text)
    assert len(title) == TITLE_CHARS and title.endswith("…")
    assert text.startswith(title[:-1])


def test_one_long_word_is_cut_inside_it_rather_than_lost() -> None:
    title = title_from("https://example.com/a/very/long/path/to/some/page?with=query&and=more")
    assert title == "https://example.com/a/very/long/path/to…"
