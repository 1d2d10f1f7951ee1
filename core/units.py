"""Human-readable quantities."""

from __future__ import annotations


def format_bytes(count: float) -> str:
    """Decimal units as the Hub and disk tools show them, one decimal: 1_500 -> '1.5 KB'."""
    value = float(count)
    for unit in ("B", "KB", "MB", "GB"):
        if abs(value) < 1000:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"


def format_count(count: int) -> str:
    """Large counts with a suffix: 494032768 -> '494M', 1100048384 -> '1.1B', 32768 -> '32K'."""
    if count >= 1024 and count % 1024 == 0 and count < 1024**2:
        return f"{count // 1024}K"
    for threshold, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if count >= threshold:
            return f"{count / threshold:.3g}{suffix}"
    return str(count)


def format_duration(seconds: float | None) -> str:
    """'1:05' for 65 s, '1:01:05' past an hour, '–' when unknown."""
    if seconds is None:
        return "–"
    total = round(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
