"""Error-message helpers: an offending value is shown, but never more than 200 characters of it."""

from __future__ import annotations

from typing import Any

MAX_SHOWN = 200


def show(value: Any, limit: int = MAX_SHOWN) -> str:
    """``repr(value)``, cut to ``limit`` characters with the total length said (a 10 MB title stays short)."""
    text = repr(value)
    if len(text) <= limit:
        return text
    tail = f"... ({len(text):,} chars)"
    return text[: max(limit - len(tail), 0)] + tail
