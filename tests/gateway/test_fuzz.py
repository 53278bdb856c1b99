"""Malformed frames at one connection: every one is answered with an
``error`` frame (or, for invalid UTF-8, the documented close 1007), the
gateway never crashes, and a valid message still works afterwards.

Frames are generated with ``random.Random(SEED)`` so a failure replays.
"""

from __future__ import annotations

import json
import random
import string
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from gateway.errors import FrameError
from gateway.frames import parse_frame
from tests.gateway.conftest import Edge, close_code, opened, receive

SEED = 20240611
COUNT = 600
TYPES = [
    "user_message",
    "tool_result",
    "hitl_decision",
    "switch_agent",
    "plan_approval",
    "file_changed",
    "auth",
    "resume",
]
FIELDS = [
    "content",
    "role",
    "call_id",
    "result",
    "error",
    "decision",
    "modified_arguments",
    "agent_type",
    "plan_id",
    "path",
    "timestamp",
    "token",
    "last_seq",
]


def _value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(9 if depth < 4 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, -1, 2**63, -(2**70), 10**300, 3.5, -0.0, 1e308])
    if kind == 3:
        return "".join(rng.choice(string.printable) for _ in range(rng.randrange(20)))
    if kind == 4:
        return rng.choice(["\u0000", "\u2028", "\U0001f600", "é" * 5, "\\", '"'])
    if kind == 5:
        return rng.choice(["approve", "edit", "reject", "maybe", ""])
    if kind == 6:
        return [_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice([*FIELDS, "x", ""]): _value(rng, depth + 1) for _ in range(rng.randrange(4))}


def _random_text(rng: random.Random) -> str:
    alphabet = '{}[]":,0123456789truefalsn \\/ueE+-.' + "\x00\x7f\u00e9\u2603"
    return "".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 80)))


def _not_an_object(rng: random.Random) -> str:
    return json.dumps(rng.choice([[1, 2], "text", 42, None, True, [{"type": "cancel"}]]))


def _wrong_types(rng: random.Random) -> str:
    frame: dict[str, Any] = {"type": rng.choice(TYPES)}
    for name in rng.sample(FIELDS, rng.randrange(1, 6)):
        frame[name] = _value(rng)
    return json.dumps(frame)


def _bad_type(rng: random.Random) -> str:
    return json.dumps({"type": rng.choice([1, None, [], {}, "teleport", "TOOL_RESULT", " cancel"])})


def _huge_string(rng: random.Random) -> str:
    size = rng.randrange(10_000, 300_000)
    return json.dumps(
        rng.choice(
            [
                {"type": "x" * size},
                {"type": "tool_result", "call_id": 1, "result": {"blob": "y" * size}},
                {"type": "resume", "last_seq": "9" * size},
                {"type": "file_changed", "path": "p" * size, "timestamp": "not a time"},
            ]
        )
    )


def _deep(rng: random.Random) -> str:
    depth = rng.choice([40, 100, 900, 10_000])
    if rng.random() < 0.5:
        return "[" * depth + "]" * depth
    nested = "[" * depth + "]" * depth
    return '{"type": "tool_result", "call_id": "c", "result": {"a": ' + nested + "}}"


def _constants(rng: random.Random) -> str:
    return rng.choice(
        [
            '{"type": "tool_result", "call_id": "c", "result": {"n": NaN}}',
            '{"type": "tool_result", "call_id": "c", "result": {"n": 1e999}}',
            '{"type": "user_message", "content": "\\ud800"}',
            '{"type": "tool_result", "call_id": "c", "result": {"\\udfff": 1}}',
            '{"type": "resume", "last_seq": 18446744073709551616}',
            '{"type": "resume", "last_seq": 1.0}',
            '{"type": "user_message", "content": "   "}',
            '{"type": "hitl_decision", "call_id": "c", "decision": "edit"}',
        ]
    )


GENERATORS: list[Callable[[random.Random], str]] = [
    _random_text,
    _not_an_object,
    _wrong_types,
    _wrong_types,
    _wrong_types,
    _bad_type,
    _huge_string,
    _deep,
    _constants,
]


def malformed_frames(seed: int, count: int) -> Iterator[tuple[str | bytes, str]]:
    """``count`` frames the gateway must refuse, with the error code expected."""
    rng = random.Random(seed)
    produced = 0
    while produced < count:
        if rng.random() < 0.03:
            yield bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64))), "binary_frame"
            produced += 1
            continue
        text = rng.choice(GENERATORS)(rng)
        try:
            parse_frame(text)
        except FrameError as exc:
            yield text, exc.code
            produced += 1


def test_the_generator_makes_enough_distinct_frames():
    frames = list(malformed_frames(SEED, COUNT))
    assert len(frames) == COUNT
    assert len({text for text, _ in frames}) > COUNT // 2
    codes = {code for _, code in frames}
    assert {"invalid_json", "not_an_object", "unknown_type", "invalid_field"} <= codes


async def test_malformed_frames_get_error_frames_and_the_connection_survives(
    edge_factory: Any,
):
    async with edge_factory(frame_rate=0) as edge, edge.connect() as ws:
        await opened(ws)
        for index, (frame, code) in enumerate(malformed_frames(SEED, COUNT)):
            await ws.send(frame)
            answer = await receive(ws)
            assert (answer["type"], answer["code"], answer["seq"]) == ("error", code, None), (
                index,
                frame[:200],
            )
            assert len(answer["content"]) < 200  # never an echo of a huge input
        await ws.send(json.dumps({"type": "user_message", "content": "after the storm"}))
        assert [(await receive(ws))["content"] for _ in range(4)] == [
            "echo: ",
            "after the storm",
            "!",
            "",
        ]
    # Nothing malformed reached the runtime: only open, then the real message.
    assert edge.fake.requests.qsize() == 2


@pytest.mark.parametrize(
    "payload", [b"\xff\xfe", b'{"type": "cancel", "x": "\xc3"}', b"\xed\xa0\x80"]
)
async def test_invalid_utf8_text_closes_with_1007_and_others_carry_on(edge: Edge, payload: bytes):
    async with edge.connect("/ws/bystander") as bystander:
        await opened(bystander)
        async with edge.connect() as ws:
            await opened(ws)
            await ws.send(payload, text=True)
            assert (await close_code(ws))[0] == 1007
        await bystander.send(json.dumps({"type": "user_message", "content": "fine"}))
        assert (await receive(bystander))["content"] == "echo: "
    async with edge.connect() as again:
        await opened(again)
