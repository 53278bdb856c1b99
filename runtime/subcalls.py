"""The calls the runtime issues to the IDE on its own behalf, over a
:class:`~runtime.dispatch.Dispatcher`.

A model's change to the workspace (:mod:`runtime.changes`) and a user's undo
(:mod:`runtime.undo`) are planned without I/O as a sequence of IDE calls;
these functions carry the plans out like :mod:`runtime.answers` does the
answers: each offers the next sub-call (a :class:`~runtime.state.PendingCall`
naming its ``parent`` and carrying its ``job``) or, when the plan is done,
answers the call it served and records its checkpoints. The parent waits as
a :attr:`~runtime.state.CallState.RUNNING` call: never offered to the IDE,
it keeps the turn waiting until its work is done.
"""

from __future__ import annotations

import dataclasses
import hashlib
import uuid
from typing import TYPE_CHECKING, Any

from runtime import changes, listing, policy, project, undo
from runtime.agents import DEFAULT_AGENT
from runtime.commands import ClientOptions
from runtime.events import AssistantText, TurnStatus
from runtime.llm import ChatMessage, ToolCallRequest
from runtime.records import Checkpoint
from runtime.state import CallState, PendingCall
from runtime.turn import Next

if TYPE_CHECKING:
    from runtime.dispatch import Dispatcher


def sub_call_id(parent: str, number: int) -> str:
    """The id of the ``number``-th call the runtime issues on ``parent``'s behalf."""
    suffix = f".{number}"
    if len(parent) + len(suffix) > 64:  # the column's width
        parent = "rt-" + hashlib.sha256(parent.encode()).hexdigest()[:40]
    return parent + suffix


def start_change(
    d: Dispatcher, call: ToolCallRequest, arguments: dict[str, Any], approval: bool, reason: str
) -> None:
    """Run a model's change to the workspace as IDE calls: reads, then the change."""
    parent = PendingCall(
        call.call_id,
        call.name,
        arguments,
        CallState.RUNNING,
        reason,
        agent=d.session.agent,
        original_arguments=arguments,
    )
    d.session.pending[call.call_id] = parent
    d.record_call(parent, parent.state.value)
    planned = changes.begin(
        call.name, arguments, requires_approval=approval, reason=reason, turn=d.turn_position
    )
    _carry_out(d, parent, planned)


def start_undo(
    d: Dispatcher,
    checkpoints: list[Checkpoint],
    turn_id: str,
    request_id: str | None,
    client: ClientOptions,
) -> tuple[Next, int]:
    """Begin an undo turn; returns what comes next and the first turn it undoes.

    Raises :class:`undo.NothingToUndo` (and starts nothing) with nothing to undo.
    """
    first, files = undo.plan(checkpoints, turn_id)
    d.begin(f"/undo {first}", request_id, client, view=False)
    parent = PendingCall(
        f"undo-{uuid.uuid4().hex}",
        "undo",
        {"turn_id": str(first)},
        CallState.RUNNING,
        f"undo the changes of turn {first} and later",
        agent=d.session.agent,
        job={"kind": "undo-plan", "tool": "undo", "files": files},
    )
    d.session.pending[parent.call_id] = parent
    d.record_call(parent, parent.state.value)
    tools = client.tools
    planned = undo.begin(
        files,
        approval="write_file" in d.approval_required,
        can_delete=tools is None or "delete_file" in tools,
    )
    next_ = _carry_out(d, parent, planned)
    if next_ is Next.WAIT:
        # Like a model's turn waiting on its calls: a session reopened now
        # offers them again, where a "running" one would be taken for a
        # turn a restart cut off, and failed.
        d.session.state = "waiting"
    return next_, first


VIEW_JOB = {"kind": "view", "tool": "workspace_view"}
PROJECT_JOB = "project"
_LISTING = {"path": ".", "recursive": True, "include_hidden": True}


def fetch_view(d: Dispatcher, client: ClientOptions) -> Next:
    """At a turn's start: list the workspace for the prompt if nobody has yet,
    and read the project's files (:mod:`runtime.project`) it names or the IDE
    saw change since.

    Once per live session, for a client that asked (``workspace_view``) or
    reported its environment, and implements ``list_files``: the model is
    called once the listing and the reads are in (:data:`Next.WAIT` till then).
    """
    session = d.session
    wanted = client.workspace_view or session.environment is not None
    can_list = client.tools is None or "list_files" in client.tools
    if not wanted or not can_list:
        return Next.MODEL
    if session.workspace_view is None:
        d.offer(
            PendingCall(
                f"view-{uuid.uuid4().hex[:24]}",
                "list_files",
                dict(_LISTING),
                CallState.AWAITING_RESULT,
                "the workspace's files, for the agents' prompt",
                agent=session.agent,
                original_arguments=dict(_LISTING),
                job=VIEW_JOB,
            )
        )
    read_project(d, client)
    if not session.pending:
        return Next.MODEL
    session.state = "waiting"
    return Next.WAIT


def read_project(d: Dispatcher, client: ClientOptions) -> None:
    """Offer a ``read_file`` of each project file to read (none for a client
    that does not implement it); the turn waits for them."""
    files = d.session.project
    if client.tools is not None and "read_file" not in client.tools:
        files.stale.clear()
        return
    for path in sorted(files.stale, key=project.order):
        d.offer(
            PendingCall(
                f"project-{uuid.uuid4().hex[:24]}",
                "read_file",
                {"path": path},
                CallState.AWAITING_RESULT,
                "the project's rules and agents, for the agents' prompt",
                agent=d.session.agent,
                original_arguments={"path": path},
                job={"kind": PROJECT_JOB, "tool": "read_file", "path": path},
            )
        )
    files.stale.clear()


def _project_read(d: Dispatcher, call: PendingCall, payload: dict[str, Any], status: str) -> None:
    assert call.job is not None
    result = payload.get("result")
    content = result.get("content") if isinstance(result, dict) else None
    ok = status == "completed" and isinstance(content, str)
    d.session.project.read(call.job["path"], content if ok else None)


def _settled(d: Dispatcher) -> Next:
    """Every read of a turn's start is in: compose the project's rules and
    agents (a bad agents file is reported, the operator's agents stay), then
    call the model."""
    session, files = d.session, d.session.project
    problem = files.compose()
    if problem is not None:
        d.refuse("invalid_project_agents", problem)
    if session.agent not in files.agents:
        d.switch(DEFAULT_AGENT, f"the {session.agent} agent is not defined now", 1.0)
    session.state = "running"
    return Next.MODEL


def answered(d: Dispatcher, call: PendingCall, payload: dict[str, Any], status: str) -> Next:
    """A sub-call was answered (already recorded): take the next step of its work."""
    assert call.job is not None
    if call.job["kind"] in ("view", PROJECT_JOB):
        if call.job["kind"] == PROJECT_JOB:
            _project_read(d, call, payload, status)
        else:
            result = payload.get("result")
            d.session.workspace_view = (
                listing.summarize_listing(result)
                if status == "completed" and isinstance(result, dict)
                else f"(the IDE could not list the workspace: {str(payload.get('error'))[:200]})"
            )
            if status == "completed" and isinstance(result, dict):
                d.session.project.stale.update(project.discover(result))
                read_project(d, d.turn.client)
        if d.session.pending:
            return Next.WAIT
        return _settled(d)
    parent = d.session.pending[call.parent]
    if call.job["kind"] == "undo":
        assert parent.job is not None
        return _carry_out(d, parent, undo.advance(parent.job["files"], call.job, payload, status))
    return _carry_out(d, parent, changes.advance(call.job, payload, status))


def _ruled_restore(d: Dispatcher, parent: PendingCall, planned: changes.SubCall) -> changes.Planned:
    """An undo's restore under the owner's approval rules, like any write: a
    deny rule fails it, an allow rule runs it unasked, except a restore over
    changes made since the agent's, which a human always approves."""
    if planned.job["changed_since"]:
        return planned
    decision = d.approval_for(planned.tool_name, planned.arguments, planned.requires_approval)
    if isinstance(decision, policy.Refused):
        assert parent.job is not None
        refusal = {"error": decision.to_model()}
        return undo.advance(parent.job["files"], planned.job, refusal, "rejected")
    return dataclasses.replace(
        planned, requires_approval=decision.ask, reason=decision.reason(planned.reason)
    )


def _carry_out(d: Dispatcher, parent: PendingCall, planned: changes.Planned) -> Next:
    """Offer a planned sub-call of ``parent``, or answer ``parent`` as planned."""
    if isinstance(planned, changes.SubCall) and planned.job.get("step") == "restore":
        ruled = _ruled_restore(d, parent, planned)
        if not isinstance(ruled, changes.SubCall):
            return _carry_out(d, parent, ruled)
        planned = ruled
    if isinstance(planned, changes.SubCall):
        number = planned.job.get("n", 0) + 1
        d.offer(
            PendingCall(
                sub_call_id(parent.call_id, number),
                planned.tool_name,
                planned.arguments,
                CallState.AWAITING_APPROVAL
                if planned.requires_approval
                else CallState.AWAITING_RESULT,
                planned.reason,
                agent=parent.agent,
                original_arguments=planned.arguments,
                parent=parent.call_id,
                job={**planned.job, "n": number},
            )
        )
        return Next.WAIT
    d.stream.step().checkpoints.extend(planned.checkpoints)
    if parent.tool_name != "undo":
        return d.resolve(parent, planned.payload, planned.status)
    # The undo's own call is no model's: nothing answers it in the history,
    # the turn ends with what was restored.
    del d.session.pending[parent.call_id]
    d.session.answered.add(parent.call_id)
    d.record_call(parent, "completed")
    d.stream.step().undone.extend(planned.payload["undone_ids"])
    text = undo.summary(planned.payload)
    d.append_message(ChatMessage("assistant", text))
    d.stream.durable(AssistantText(text))
    return d.finish(TurnStatus.COMPLETED)
