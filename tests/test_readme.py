"""The README's protocol examples are what the code accepts and sends."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from gateway.frames import parse_frame

ROOT = Path(__file__).resolve().parents[1]


def json_blocks() -> list[list[dict[str, Any]]]:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```json\n(.*?)```", text, re.DOTALL)
    return [[json.loads(line) for line in block.splitlines() if line.strip()] for block in blocks]


def test_every_ide_frame_example_is_accepted_by_the_gateway() -> None:
    ide_frames = json_blocks()[0]
    assert {frame["type"] for frame in ide_frames} == {
        "user_message",
        "tool_result",
        "hitl_decision",
        "switch_agent",
        "plan_approval",
        "cancel",
        "file_changed",
        "environment",
        "auth",
        "resume",
        "undo",
        "retry",
        "edit_message",
        "fork",
        "condense",
    }
    for frame in ide_frames:
        parse_frame(json.dumps(frame))  # raises FrameError for a bad example


FLAT_MODEL = {
    "content": str,
    "role": str,
    "is_final": bool,
    "call_id": str,
    "tool_name": str,
    "arguments": dict,
    "requires_approval": bool,
    "result": dict,
    "error": str,
    "agent_type": str,
    "from_agent": str,
    "to_agent": str,
    "reason": str,
    "metadata": dict,
}


def test_every_gateway_frame_example_reads_through_the_ides_flat_model() -> None:
    gateway_frames = json_blocks()[1]
    assert {frame["type"] for frame in gateway_frames} >= {
        "session_info",
        "agent_switched",
        "assistant_message",
        "tool_call",
        "plan_update",
        "plan_progress",
        "error",
    }
    for frame in gateway_frames:
        assert "seq" in frame
        for field, kind in FLAT_MODEL.items():
            if field in frame:
                assert isinstance(frame[field], kind), (frame["type"], field)
