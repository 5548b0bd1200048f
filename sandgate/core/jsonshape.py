"""Reading decoded JSON whose shape a client controls: the one home of the list/object guards.

Two policies, because the callers need both: the admission decisions read a pod *leniently* (a field of
the wrong type counts as absent; the API server has already validated the object, and a denial names
the field where it matters), while the extender's object views are *strict* (a wrong type is an error
naming the path, so one hostile object is reported instead of guessed at).
"""

from __future__ import annotations

from typing import Any, Mapping


class ShapeError(ValueError):
    """A JSON value is not of the type its path needs; the message starts with the path."""


def as_list(value: Any) -> list:
    """`value` if it is a JSON array, else an empty list."""
    return value if isinstance(value, list) else []


def as_object(value: Any) -> Mapping[str, Any]:
    """`value` if it is a JSON object, else an empty mapping."""
    return value if isinstance(value, dict) else {}


def object_at(value: Any, path: str) -> Mapping[str, Any]:
    """`value` as a JSON object; null/absent is empty; any other type raises ShapeError naming `path`."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ShapeError(f"{path}: must be an object, got {type(value).__name__}")
    return value


def list_at(value: Any, path: str) -> list:
    """`value` as a JSON array; null/absent is empty; any other type raises ShapeError naming `path`."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise ShapeError(f"{path}: must be a list, got {type(value).__name__}")
    return value
