"""``google.protobuf.Struct`` as plain JSON data, for both ends of a hop."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format, struct_pb2


def struct_to_dict(struct: struct_pb2.Struct) -> dict[str, Any]:
    """A Struct as plain JSON data, integral numbers as ints.

    Struct stores every number as a double; a file size or line number sent
    as ``3`` should come back as ``3``, not ``3.0``.
    """
    value = json_format.MessageToDict(struct)
    return {key: _integral(item) for key, item in value.items()}


def _integral(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, dict):
        return {key: _integral(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_integral(item) for item in value]
    return value
