"""The sidebar's headings: when a conversation was last used, as the browser's clock and calendar say."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

import pytest

from ui.periods import period_of

SHANGHAI = timezone(timedelta(hours=8))


@pytest.mark.parametrize(
    ("stored", "english", "chinese"),
    [  # as SQLite returns them: naive, in UTC
        (datetime(2026, 12, 4, 17, 0), "Today", "今天"),  # 01:00 on the 5th in Shanghai
        (datetime(2026, 12, 4, 15, 0), "Yesterday", "昨天"),  # 23:00 on the 4th there
        (datetime(2026, 11, 29, 12, 0), "Previous 7 days", "7 天内"),
        (datetime(2026, 11, 6, 12, 0), "Previous 30 days", "30 天内"),
        (datetime(2026, 10, 10, 12, 0), "October", "10 月"),
        (datetime(2025, 12, 20, 12, 0), "December 2025", "2025 年 12 月"),
        (datetime(2026, 12, 5, 10, 0, tzinfo=UTC), "Today", "今天"),  # an aware time (another database)
        (datetime(2026, 12, 6, 1, 0), "Today", "今天"),  # a clock ahead of the browser's: not "the future"
    ],
)
def test_a_conversation_goes_under_the_heading_of_the_browsers_day(
    stored: datetime, english: str, chinese: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    today = date(2026, 12, 5)
    assert period_of(stored, today, SHANGHAI) == english
    monkeypatch.setattr("ui.state.language", lambda: "zh")
    assert period_of(stored, today, SHANGHAI) == chinese
