"""The sidebar's conversations under headings by when they were last used: today, yesterday, the
previous 7 and 30 days, then by month, in the browser's time zone."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

import streamlit as st

from ui.i18n import t

RECENT = ((0, "today"), (1, "yesterday"), (6, "week"), (29, "month"))  # (at most days ago, period)


def browser_zone() -> timezone:
    """The browser's UTC offset (UTC when it did not say)."""
    offset = st.context.timezone_offset  # minutes behind UTC, as JavaScript's getTimezoneOffset
    return timezone(-timedelta(minutes=offset)) if isinstance(offset, int) else UTC


def period_of(moment: datetime, today: date, zone: timezone) -> str:
    """The heading a conversation last used at `moment` (naive: UTC, as SQLite returns it) goes under."""
    day = (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(zone).date()
    age = (today - day).days
    period = next((name for most, name in RECENT if age <= most), None)
    if period is not None:
        return t(f"chat.period.{period}")
    if day.year == today.year:
        return t("chat.period.this_year", month=t(f"chat.month.{day.month}"))
    return t("chat.period.earlier_year", month=t(f"chat.month.{day.month}"), year=day.year)
