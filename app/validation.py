"""Checking what clients send (indices, choices, pixel positions); plain errors with user-facing messages."""
from __future__ import annotations


class RequestError(ValueError):
    """A request the app cannot answer; the message is meant for the user (no server paths)."""


def whole_number(value, name: str) -> int:
    """``value`` as an int; :class:`RequestError` naming ``name`` otherwise (floats must be whole)."""
    if isinstance(value, bool):
        raise RequestError(f"{name} must be a whole number, got {value!r}")
    try:
        number = float(value)
        index = int(number)
    except (TypeError, ValueError, OverflowError):
        raise RequestError(f"{name} must be a whole number, got {value!r}") from None
    if index != number:
        raise RequestError(f"{name} must be a whole number, got {value!r}")
    return index


def index_in(value, size: int, name: str) -> int:
    """A 0-based index into ``size`` items; :class:`RequestError` when not a number or out of range."""
    index = whole_number(value, name)
    if not 0 <= index < size:
        raise RequestError(f"{name} {index} is out of range: pick 0 to {size - 1}")
    return index


def choice(value, options: tuple[str, ...], name: str) -> str:
    if value not in options:
        raise RequestError(f"{name} must be one of {', '.join(options)}; got {value!r}")
    return value


def pixel(x, y, width: int, height: int) -> tuple[int, int]:
    """A pixel position ``(x, y)`` inside a ``width`` x ``height`` image."""
    px, py = whole_number(x, "x"), whole_number(y, "y")
    if not (0 <= px < width and 0 <= py < height):
        raise RequestError(f"pixel (x={px}, y={py}) is outside the shown {width}x{height} image")
    return px, py
