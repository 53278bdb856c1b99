"""Reading one field of an IDE frame: its type and its bound; pure, no I/O.

The parsers of :mod:`gateway.frames` read every field through these, so a
field of the wrong type or over its bound is refused the same way
everywhere: :class:`~gateway.errors.FrameError` ``missing_field`` or
``invalid_field``, with the field's name.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from google.protobuf import struct_pb2, timestamp_pb2

from gateway.errors import FrameError
from runtime.v1 import runtime_pb2


def required_str(data: Mapping[str, Any], name: str, max_bytes: int | None = None) -> str:
    if data.get(name) is None:
        raise FrameError("missing_field", f"{name!r} is required")
    value = optional_str(data, name, max_bytes)
    assert value is not None
    return value


def optional_str(data: Mapping[str, Any], name: str, max_bytes: int | None = None) -> str | None:
    """The string field ``name``; with ``max_bytes``, at most that many bytes
    of UTF-8 (a lone surrogate raises UnicodeEncodeError, which
    :func:`parse_frame` refuses)."""
    value = data.get(name)
    if value is not None and not isinstance(value, str):
        raise FrameError("invalid_field", f"{name!r} must be a string")
    if value is not None and max_bytes is not None and longer_than(value, max_bytes):
        raise FrameError("invalid_field", f"{name!r} is longer than {max_bytes} bytes")
    return value


def flag(data: Mapping[str, Any], name: str) -> bool:
    """The optional boolean field ``name``; absent or null is false."""
    value = data.get(name)
    if value is not None and not isinstance(value, bool):
        raise FrameError("invalid_field", f"{name!r} must be a boolean")
    return bool(value)


def longer_than(value: str, max_bytes: int) -> bool:
    """Whether ``value`` takes more than ``max_bytes`` bytes of UTF-8; a
    character takes one to four, so most strings need no encoding."""
    if len(value) > max_bytes:
        return True
    if 4 * len(value) <= max_bytes:
        return False
    return len(value.encode("utf-8")) > max_bytes


def optional_object(data: Mapping[str, Any], name: str, max_depth: int) -> dict[str, Any] | None:
    """The object field ``name``, nested at most ``max_depth`` levels."""
    value = data.get(name)
    if value is not None and not isinstance(value, dict):
        raise FrameError("invalid_field", f"{name!r} must be an object")
    if value is not None and depth(value, max_depth) > max_depth:
        raise FrameError(
            "invalid_field", f"{name!r} is nested too deeply (at most {max_depth} levels)"
        )
    return value


def depth(value: object, limit: int) -> int:
    """Nesting depth of JSON data, counting stops once past ``limit``."""
    if limit < 0:
        return 1
    if isinstance(value, dict):
        return 1 + max((depth(item, limit - 1) for item in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((depth(item, limit - 1) for item in value), default=0)
    return 0


def required_choice(
    data: Mapping[str, Any], name: str, choices: Mapping[str, runtime_pb2.Decision.ValueType]
) -> runtime_pb2.Decision.ValueType:
    value = required_str(data, name)
    if value not in choices:
        raise FrameError("invalid_field", f"{name!r} must be one of {', '.join(choices)}")
    return choices[value]


def struct(value: Mapping[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    try:
        struct.update(value)
    except (ValueError, TypeError, OverflowError):
        # Lone surrogates in keys, integers beyond a double's range.
        raise FrameError("invalid_field", "the object cannot be represented") from None
    return struct


def timestamp(value: object) -> timestamp_pb2.Timestamp:
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            moment = datetime.fromtimestamp(value, UTC)
        except (OverflowError, OSError, ValueError):
            raise FrameError("invalid_field", "'timestamp' is out of range") from None
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise FrameError("invalid_field", "'timestamp' is not ISO-8601") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
    else:
        raise FrameError("invalid_field", "'timestamp' must be a number or an ISO-8601 string")
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp
