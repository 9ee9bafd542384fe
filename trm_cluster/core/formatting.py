"""How durations read in progress lines and reports: short, rounded, one unit or two."""

from __future__ import annotations


def clock(seconds: float) -> str:
    """``0.4s``, ``42s``, ``7m``, ``3h05m``."""
    if seconds < 10:
        return f"{seconds:.1f}s"
    if seconds < 60:
        return f"{seconds:.0f}s"
    minutes = round(seconds / 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m"
