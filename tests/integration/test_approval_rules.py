"""A user's approval rules over the real mesh: set through the front door, applied
to the offline model's calls, added by "always allow this".

Each test has a user of its own (rules are per user), logs in at the front
door, puts rules with ``PUT /api/v1/approval-rules`` and drives turns with
:class:`ide.turns.IdeSession` in a real workspace folder.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ide.connection import IdeConnection
from ide.turns import Decision, IdeSession
from ide.workspace import Workspace
from tests.integration.conftest import Mesh, add_user
from tests.integration.test_agents import Approvals

RULES = "/api/v1/approval-rules"


@pytest.fixture
async def token(mesh: Mesh) -> str:
    """An access token of a user of the test's own, from the front door."""
    user = add_user(mesh)
    async with httpx.AsyncClient(base_url=mesh.front_url, timeout=10) as http:
        reply = await http.post(
            "/oauth/token", data={"grant_type": "password", "client_id": "codelab-ide", **user}
        )
    assert reply.status_code == 200, reply.text
    return str(reply.json()["access_token"])


async def rules(mesh: Mesh, token: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    """PUT ``body`` as the user's rules (GET without one), through the front door."""
    async with httpx.AsyncClient(
        base_url=mesh.front_url, headers={"Authorization": f"Bearer {token}"}, timeout=10
    ) as http:
        reply = await (http.get(RULES) if body is None else http.put(RULES, json=body))
    assert reply.status_code == 200, reply.text
    answer: dict[str, Any] = reply.json()
    return answer


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("still here\n")
    (tmp_path / "test_ok.py").write_text("def test_ok():\n    pass\n")
    return Workspace(tmp_path)


@pytest.fixture
async def connection(mesh: Mesh, token: str) -> AsyncIterator[IdeConnection]:
    async with IdeConnection(mesh.ws_url, f"rules-{uuid.uuid4().hex[:10]}", token) as conn:
        await conn.next_frame()  # session_info
        yield conn


async def test_a_rule_runs_pytest_unasked_and_nothing_chained_to_it(
    mesh: Mesh, token: str, connection: IdeConnection, workspace: Workspace
) -> None:
    stored = await rules(mesh, token, {"allow": ["execute_command(pytest:*)"]})
    assert stored["allow"] == ["execute_command(pytest:*)"]
    approvals = Approvals(Decision("reject"))
    ide = IdeSession(connection, workspace, approve=approvals)
    turn = await ide.say("run pytest -q")
    assert approvals.asked == [], "nobody was asked"
    (ran,) = turn.executed
    assert (ran["tool_name"], ran["arguments"]["command"]) == ("execute_command", "pytest -q")
    assert ran["requires_approval"] is False
    assert ran["reason"] == "auto-approved by your rule execute_command(pytest:*)"
    chained = await ide.say("run pytest; rm -rf x")
    (asked,) = approvals.asked
    assert (asked["arguments"]["command"], asked["requires_approval"]) == (
        "pytest; rm -rf x",
        True,
    )
    assert "always asked: rm -r (recursive delete)" in asked["reason"]
    assert chained.executed == [], "rejected: nothing ran"
    assert (workspace.root / "x" / "keep.txt").exists()


async def test_the_call_after_the_turns_cap_is_asked(
    mesh: Mesh, token: str, connection: IdeConnection, workspace: Workspace
) -> None:
    await rules(mesh, token, {"allow": ["create_directory"], "max_auto_approvals_per_turn": 2})
    approvals = Approvals(Decision("approve"))
    ide = IdeSession(connection, workspace, approve=approvals)
    turn = await ide.say("mkdir d1 and mkdir d2 and mkdir d3")
    (asked,) = approvals.asked
    assert asked["arguments"] == {"path": "d3"}
    assert "this turn's 2 auto-approved calls are used up" in asked["reason"]
    unasked = [call["arguments"]["path"] for call in turn.executed if call["reason"] != "approved"]
    assert unasked == ["d1", "d2"]
    assert all((workspace.root / name).is_dir() for name in ("d1", "d2", "d3"))


async def test_always_allow_adds_the_rule_and_the_next_run_is_unasked(
    mesh: Mesh, token: str, connection: IdeConnection, workspace: Workspace
) -> None:
    approvals = Approvals(Decision("approve", always_allow=True), Decision("reject"))
    ide = IdeSession(connection, workspace, approve=approvals)
    first = await ide.say("run pytest -q")
    assert len(approvals.asked) == 1
    assert [call["reason"] for call in first.executed] == ["approved"]
    assert (await rules(mesh, token))["allow"] == ["execute_command(pytest:*)"]
    again = await ide.say("run pytest -x")
    assert len(approvals.asked) == 1, "the rule let it run unasked"
    (ran,) = again.executed
    assert ran["reason"] == "auto-approved by your rule execute_command(pytest:*)"
    approvals.decisions.insert(0, Decision("approve", always_allow=True))
    chained = await ide.say("run pytest && ls")
    (not_added,) = chained.of_type("error")
    assert not_added["code"] == "rule_not_added"
    assert "several commands" in not_added["content"]
    assert len(chained.executed) == 1, "the decision stands: approved this once"
    assert (await rules(mesh, token))["allow"] == ["execute_command(pytest:*)"]
