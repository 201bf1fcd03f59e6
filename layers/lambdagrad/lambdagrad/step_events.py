"""The fields of a training step's event, read with their types checked.

The state machine builds each step's event from the previous step's output, but an execution
started by hand (the console's "New execution", a replayed or edited input) or a function
invoked directly can carry anything. Each step reads its fields here before it reads or
writes a byte, so a bad one fails the execution with :class:`EventError` naming the event
(``where``: ``"worker event"``) and the field, not a ``KeyError`` or ``TypeError`` from deep
inside, and never after a write.

Example
-------
>>> event_int({"round": "3"}, "worker event", "round")
Traceback (most recent call last):
...
lambdagrad.step_events.EventError: worker event: round: expected an integer, got '3'
"""

from __future__ import annotations

import math
from typing import Any

__all__ = [
    "EventError",
    "event_int",
    "event_number",
    "event_object",
    "event_optional_object",
    "event_str",
]


class EventError(ValueError):
    """A step's event lacks a field or has one of the wrong type; the message names both."""


_MISSING = object()


def event_object(event: Any, where: str) -> dict[str, Any]:
    """The event (or a part of it), which must be a JSON object."""
    if not isinstance(event, dict):
        raise EventError(f"{where}: expected a JSON object, got {_shown(event)}")
    return event


def _get(event: dict[str, Any], where: str, key: str) -> Any:
    value = event.get(key, _MISSING)
    if value is _MISSING or value is None:
        raise EventError(f"{where}: {key}: missing")
    return value


def event_int(event: dict[str, Any], where: str, key: str, *, minimum: int = 0) -> int:
    """An integer field (not a bool, a float or a numeric string) of at least ``minimum``."""
    value = _get(event, where, key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise EventError(f"{where}: {key}: expected an integer, got {_shown(value)}")
    if value < minimum:
        raise EventError(f"{where}: {key}: {value} is below {minimum}")
    return value


def event_number(event: dict[str, Any], where: str, key: str) -> float:
    """A finite number field (an int or a float, not a bool)."""
    value = _get(event, where, key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise EventError(f"{where}: {key}: expected a finite number, got {_shown(value)}")
    return float(value)


def event_str(event: dict[str, Any], where: str, key: str) -> str:
    """A non-empty string field."""
    value = _get(event, where, key)
    if not isinstance(value, str) or not value:
        raise EventError(f"{where}: {key}: expected a non-empty string, got {_shown(value)}")
    return value


def event_optional_object(event: dict[str, Any], where: str, key: str) -> dict[str, Any] | None:
    """A JSON object field, or None when it is absent or null."""
    value = event.get(key)
    if value is not None and not isinstance(value, dict):
        raise EventError(f"{where}: {key}: expected a JSON object, got {_shown(value)}")
    return value


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
