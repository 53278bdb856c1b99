"""Calls the runtime runs itself (an MCP server's tool), on both databases.

The same gate as an IDE tool (schema, approval, the owner's rules), then the
runtime runs the call, never the IDE; its row is the audit. A call that was
running when the runtime died fails on reopen and is not run again. The
executor here is an in-process stand-in for :class:`runtime.mcp.McpTools`
(tests/runtime/test_mcp.py runs that against a real MCP server).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import sqlalchemy as sa

from mesh.database import create_engine
from runtime.commands import ApprovalDecision, CancelTurn, ClientOptions, ToolResult, UserMessage
from runtime.events import ErrorEvent, ToolCallEvent, TurnDone, TurnStatus
from runtime.executions import INTERRUPTED
from runtime.executors import Execution, Executors, Offer
from runtime.hub import SessionHub
from runtime.records import CallRecord
from runtime.rules import ApprovalRules, Rule, RulesInvalid
from runtime.schema import tool_calls
from runtime.settings import ConversationSettings
from runtime.store import Store
from runtime.tools import Effect, Side, Tool
from tests.runtime.test_conversation import ScriptedLlm, call
from tests.runtime.test_reopen import Client, database_url

__all__ = ["database_url"]

ADD = "mcp__demo__add"


class Adder:
    """An executor of one tool it declares, ``mcp__demo__add``; counts its runs
    and, with ``hold``, waits for it before answering."""

    def __init__(self, *, approval: bool = True, hold: asyncio.Event | None = None) -> None:
        self.ran: list[Execution] = []
        self.started = asyncio.Event()
        self.hold = hold
        self.tool = Tool(
            ADD,
            "[MCP demo] Add two integers.",
            {
                "type": "object",
                "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                "required": ["a", "b"],
            },
            Side.EXECUTOR,
            Effect.EXECUTE,
            approval=approval,
        )

    def runs(self, tool_name: str) -> bool:
        return tool_name == ADD

    async def offer(self, agent: str) -> Offer:
        return Offer((self.tool,), frozenset({ADD})) if agent == "coder" else Offer()

    async def run(self, execution: Execution) -> dict[str, Any]:
        self.ran.append(execution)
        self.started.set()
        if self.hold is not None:
            await self.hold.wait()
        return {"result": {"content": str(execution.arguments["a"] + execution.arguments["b"])}}

    async def close(self) -> None:
        pass


class Runtime:
    def __init__(self, url: str, executor: Adder) -> None:
        self.engine = create_engine(url)
        self.store = Store(self.engine)
        self.llm = ScriptedLlm()
        self.executor = executor
        self.hub = SessionHub(
            self.store,
            self.llm,  # type: ignore[arg-type]
            ConversationSettings(model="m", detach_grace=0),
            default_agent="coder",
            replica="host:50051",
            executors=Executors([executor]),
        )

    async def close(self) -> None:
        await self.hub.close()
        await self.engine.dispose()


@pytest.fixture
async def runtime(database_url: str) -> AsyncIterator[Runtime]:
    runtime = Runtime(database_url, Adder())
    yield runtime
    await runtime.close()


async def start(runtime: Runtime, **arguments: Any) -> tuple[Client, str]:
    """A session whose model calls ``mcp__demo__add`` with ``arguments``, then says done."""
    session_id = f"s-{uuid.uuid4().hex[:8]}"
    conversation, _ = await runtime.hub.open(session_id, "alice")
    client = Client(conversation, conversation.subscribe())
    runtime.llm.scripts = [[call(ADD, **arguments)]]
    await client.send(UserMessage("add"))
    return client, session_id


async def _row(runtime: Runtime, session_id: str, call_id: str) -> CallRecord:
    """The call's row: its audit."""
    async with runtime.engine.connect() as conn:
        result = await conn.execute(
            sa.select(tool_calls).where(
                tool_calls.c.session_id == session_id, tool_calls.c.call_id == call_id
            )
        )
        found = result.one()
    return CallRecord(
        call_id=found.call_id,
        tool_name=found.tool_name,
        agent=found.agent,
        status=found.status,
        arguments=json.loads(found.arguments),
        final_arguments=json.loads(found.final_arguments) if found.final_arguments else None,
        decided_by=found.decided_by,
        decided_at=found.decided_at,
    )


def tool_payload(client: Client) -> dict[str, Any]:
    (message,) = [m for m in client.conversation.session.messages if m.role == "tool"]
    payload: dict[str, Any] = json.loads(message.content)
    return payload


async def test_a_call_is_offered_approved_run_here_and_recorded(runtime: Runtime) -> None:
    client, session_id = await start(runtime, a=2, b=3)
    offered = [e for e in await client.until(ToolCallEvent) if isinstance(e, ToolCallEvent)][-1]
    assert (offered.tool_name, offered.arguments, offered.requires_approval) == (
        ADD,
        {"a": 2, "b": 3},
        True,
    )
    assert ADD in runtime.llm.tools_seen[0], "the model was offered the server's tool"
    (waiting,) = await runtime.store.pending_calls(session_id)
    assert waiting.status == "awaiting_approval"

    await client.send(ApprovalDecision(offered.call_id, "approve"))
    done = (await client.until(TurnDone))[-1]
    assert isinstance(done, TurnDone)
    assert done.status is TurnStatus.COMPLETED
    assert not [e for e in client.seen if isinstance(e, ToolCallEvent) and e is not offered], (
        "the IDE is never asked to run it"
    )
    (ran,) = runtime.executor.ran
    assert (ran.arguments, ran.owner, ran.session_id) == ({"a": 2, "b": 3}, "alice", session_id)
    assert tool_payload(client) == {"result": {"content": "5"}}
    assert runtime.llm.seen[-1][-1].tool_call_id == offered.call_id, "the model read the result"
    recorded = await _row(runtime, session_id, offered.call_id)
    assert (recorded.status, recorded.tool_name, recorded.decided_by) == ("completed", ADD, "alice")
    assert recorded.decided_at is not None

    # The IDE cannot answer it in the runtime's place.
    await client.send(ToolResult(offered.call_id, {"content": "6"}))
    (late,) = await client.until(ErrorEvent)
    assert isinstance(late, ErrorEvent)
    assert late.code == "duplicate_tool_result"


async def test_an_edit_is_checked_against_the_servers_schema_and_run_as_edited(
    runtime: Runtime,
) -> None:
    client, session_id = await start(runtime, a=2, b=3)
    offered = [e for e in await client.until(ToolCallEvent) if isinstance(e, ToolCallEvent)][-1]
    await client.send(ApprovalDecision(offered.call_id, "edit", {"a": "two", "b": 3}))
    (refused,) = await client.until(ErrorEvent)
    assert isinstance(refused, ErrorEvent)
    assert refused.code == "invalid_edit"
    assert "a: 'two' is not of type 'integer'" in refused.message
    await client.send(ApprovalDecision(offered.call_id, "edit", {"a": 10, "b": 3}))
    await client.until(TurnDone)
    assert tool_payload(client) == {
        "result": {"content": "13"},
        "edited_arguments": {"a": 10, "b": 3},
    }
    recorded = await _row(runtime, session_id, offered.call_id)
    assert (recorded.status, recorded.final_arguments) == ("completed", {"a": 10, "b": 3})


async def test_arguments_that_break_the_schema_never_reach_the_server(runtime: Runtime) -> None:
    client, _ = await start(runtime, a=2)
    await client.until(TurnDone)
    assert runtime.executor.ran == []
    assert tool_payload(client) == {
        "error": "invalid arguments: arguments: 'b' is a required property"
    }


async def test_a_rejected_call_is_not_run(runtime: Runtime) -> None:
    client, session_id = await start(runtime, a=1, b=1)
    offered = [e for e in await client.until(ToolCallEvent) if isinstance(e, ToolCallEvent)][-1]
    await client.send(ApprovalDecision(offered.call_id, "reject"))
    await client.until(TurnDone)
    assert runtime.executor.ran == []
    assert (await _row(runtime, session_id, offered.call_id)).status == "rejected"


@pytest.mark.parametrize(
    ("rules", "outcome"),
    [
        ({"allow": [ADD]}, "auto"),
        ({"deny": [ADD]}, "denied"),
        ({"allow": [ADD], "deny": [ADD]}, "denied"),
    ],
)
async def test_the_owners_rules_name_the_tool(
    runtime: Runtime, rules: dict[str, list[str]], outcome: str
) -> None:
    await runtime.store.rules.set("alice", ApprovalRules.from_json(rules))
    client, _ = await start(runtime, a=4, b=4)
    done = (await client.until(TurnDone))[-1]
    assert isinstance(done, TurnDone)
    assert done.status is TurnStatus.COMPLETED
    assert not [e for e in client.seen if isinstance(e, ToolCallEvent)], "nobody was asked"
    if outcome == "auto":
        assert tool_payload(client) == {"result": {"content": "8"}}
        assert len(runtime.executor.ran) == 1
    else:
        assert tool_payload(client) == {
            "error": f"denied by your approval rules: {ADD} matches {ADD}"
        }
        assert runtime.executor.ran == []


def test_a_rule_names_an_mcp_tool_alone() -> None:
    assert Rule.parse(ADD).covers(ADD)
    with pytest.raises(RulesInvalid, match="its name alone"):
        Rule.parse(f"{ADD}(x)")


async def test_without_approval_it_runs_at_once(database_url: str) -> None:
    runtime = Runtime(database_url, Adder(approval=False))
    try:
        client, session_id = await start(runtime, a=1, b=2)
        await client.until(TurnDone)
        assert tool_payload(client) == {"result": {"content": "3"}}
        (ran,) = runtime.executor.ran
        recorded = await _row(runtime, session_id, ran.call_id)
        assert (recorded.status, recorded.decided_by) == ("completed", None)
    finally:
        await runtime.close()


async def test_a_cancel_stops_a_running_call(database_url: str) -> None:
    runtime = Runtime(database_url, Adder(approval=False, hold=asyncio.Event()))
    try:
        client, session_id = await start(runtime, a=1, b=2)
        await runtime.executor.started.wait()
        await client.send(CancelTurn())
        done = (await client.until(TurnDone))[-1]
        assert isinstance(done, TurnDone)
        assert done.status is TurnStatus.CANCELLED
        (ran,) = runtime.executor.ran
        assert (await _row(runtime, session_id, ran.call_id)).status == "cancelled"
    finally:
        await runtime.close()


async def test_a_call_running_when_the_runtime_died_fails_and_is_not_run_again(
    database_url: str,
) -> None:
    first = Runtime(database_url, Adder(approval=False, hold=asyncio.Event()))
    second = Runtime(database_url, Adder(approval=False))
    try:
        client, session_id = await start(first, a=1, b=2)
        await first.executor.started.wait()
        (ran,) = first.executor.ran
        assert (await _row(first, session_id, ran.call_id)).status == "executing"
        # SIGKILL: the process stops where it is, writing nothing more.
        await client.conversation.abandon()

        reopened, created = await second.hub.open(session_id, "alice")
        assert not created
        again = Client(reopened, reopened.subscribe())
        done = (await again.until(TurnDone))[-1]
        assert isinstance(done, TurnDone)
        assert done.status is TurnStatus.COMPLETED
        assert second.executor.ran == [], "never run again behind the user's back"
        assert tool_payload(again) == {"error": INTERRUPTED}
        assert second.llm.seen[-1][-1].tool_call_id == ran.call_id, "the model was told"
        recorded = await _row(second, session_id, ran.call_id)
        assert recorded.status == "failed"
        assert await second.store.pending_calls(session_id) == []
    finally:
        await second.close()
        await first.engine.dispose()


@pytest.mark.parametrize("approval", [True, False])
async def test_a_client_that_approves_by_running_gets_only_tools_needing_no_approval(
    database_url: str, approval: bool
) -> None:
    runtime = Runtime(database_url, Adder(approval=approval))
    try:
        conversation, _ = await runtime.hub.open(f"s-{uuid.uuid4().hex[:8]}", "alice")
        client = Client(conversation, conversation.subscribe())
        codelab_ide = ClientOptions(approves_by_result=True, tools=frozenset({"read_file"}))
        await conversation.handle(UserMessage("hello"), client=codelab_ide)
        await client.until(TurnDone)
        # It would try to run an approved call itself, and cannot.
        assert (ADD in runtime.llm.tools_seen[0]) is not approval
    finally:
        await runtime.close()
