"""Numbers as users type them on a command line.

Python's ``float`` and ``int`` read ``1_0`` as 10 (a digit separator): from a user that is a
typo more likely than a number, so it is refused rather than read as another number.
"""

from __future__ import annotations

__all__ = ["parse_float", "parse_int"]


def parse_float(text: str) -> float:
    """``float(text)``, refusing underscores (ValueError)."""
    if "_" in text:
        raise ValueError(f"{text!r} is not a number")
    return float(text)


def parse_int(text: str) -> int:
    """``int(text)``, refusing underscores (ValueError)."""
    if "_" in text:
        raise ValueError(f"{text!r} is not a whole number")
    return int(text)
