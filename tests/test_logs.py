"""mesh.logs: one JSON format for our log calls and the standard library's, at the level set."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = """
import logging, structlog
from mesh.logs import configure_logging
configure_logging("warning")
log = structlog.get_logger("runtime.test")
structlog.contextvars.bind_contextvars(request_id="r-1")
log.info("below_the_level", n=1)
log.warning("turn_failed", code="llm_timeout")
logging.getLogger("grpc").info("a library's info %s", "line")
logging.getLogger("grpc").error("a library's error %s", "line")
try:
    1 / 0
except ZeroDivisionError:
    log.exception("crashed")
"""


def test_lines_are_json_with_context_and_nothing_below_the_level() -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, check=True
    )
    lines = [json.loads(line) for line in done.stderr.splitlines()]
    assert [(line["event"], line["level"]) for line in lines] == [
        ("turn_failed", "warning"),
        ("a library's error line", "error"),
        ("crashed", "error"),
    ]
    assert all(line["request_id"] == "r-1" for line in lines)
    assert all(line["timestamp"].endswith("Z") for line in lines)
    assert lines[0]["code"] == "llm_timeout"
    assert "ZeroDivisionError" in lines[2]["exception"]
