"""Answers to a turn's waiting calls: the IDE's results and the human's decisions.

Functions over a :class:`~runtime.dispatch.Dispatcher`, without I/O like it:
each changes the session's state, queues the change in the stream's open
step and returns what comes :class:`~runtime.dispatch.Next`. An answer that
does not fit is refused at once (seq 0, not logged) and changes nothing.
"""

from __future__ import annotations

from typing import Any

import structlog

from runtime import changes, executions, policy
from runtime.commands import STRICT, ApprovalDecision, ClientOptions, PlanApproval, ToolResult
from runtime.dispatch import Dispatcher, switched
from runtime.events import PlanUpdate, Sequenced, ToolCallEvent
from runtime.rules import Rule, suggest_rule, why_no_rule
from runtime.state import CallState, PendingCall, Session
from runtime.tools import TOOLS, Side
from runtime.turn import Next

log = structlog.get_logger("runtime.answers")

_NOT_THE_IDES = (CallState.AWAITING_PLAN_APPROVAL, CallState.RUNNING, CallState.EXECUTING)


def on_tool_result(d: Dispatcher, event: ToolResult, client: ClientOptions = STRICT) -> Next:
    """The IDE's result of a call it was sent.

    For a call still awaiting approval it is refused, unless ``client``
    approves by result (:func:`_approved_by_result`).
    """
    call = d.session.pending.get(event.call_id)
    # A plan is answered by a decision, a call the runtime runs through
    # calls of its own (a change, RUNNING) by their results, and one it runs
    # itself (EXECUTING) by its executor: the IDE was sent none to run.
    if call is None or call.state in _NOT_THE_IDES:
        if event.call_id in d.session.answered:
            d.refuse("duplicate_tool_result", f"tool call {event.call_id!r} was already answered")
        else:
            d.refuse("unknown_call_id", f"this session issued no tool call {event.call_id!r}")
        return Next.NOTHING
    if call.state is CallState.AWAITING_APPROVAL and client.approves_by_result:
        d.turn.client = client
        return _approved_by_result(d, call, event)
    if call.state is CallState.AWAITING_APPROVAL:
        d.refuse(
            "approval_required",
            f"tool call {event.call_id!r} has not been approved; send hitl_decision first",
        )
        return Next.NOTHING
    if event.error is not None:
        payload: dict[str, Any] = {"error": event.error}
        status = "failed"
    else:
        payload = {"result": event.result if event.result is not None else {}}
        status = "completed"
    if call.edited:
        payload["edited_arguments"] = call.arguments
    d.turn.client = client
    return d.resolve(call, payload, status)


def _approved_by_result(d: Dispatcher, call: PendingCall, event: ToolResult) -> Next:
    """A client that approves by running answered a call awaiting approval.

    A result means its human approved the call as offered and it ran:
    recorded as decided by the session's user, with those arguments as
    the ones run. An error means it did not run or failed (a rejection
    the client's profile recognises arrives as an ``approval_decision``
    instead); the model gets the error either way. A runtime tool
    (a widening ``switch_mode``) runs here on a result.
    """
    if event.error is not None:
        return d.resolve(call, {"error": event.error}, "failed")
    d.metrics.approvals.labels(call.tool_name, "approve").inc()
    log.info("approved_by_tool_result", call_id=call.call_id, tool=call.tool_name)
    if executions.runs_here(d, call.tool_name):
        return executions.approved(d, call, call.arguments)
    if TOOLS[call.tool_name].side is Side.RUNTIME:
        return _run_approved(d, call, call.arguments)
    payload = {"result": event.result if event.result is not None else {}}
    return d.resolve(call, payload, "completed", decided=True, ran=call.arguments)


def always_allow(d: Dispatcher, event: ApprovalDecision) -> Rule | None:
    """The allow rule an approval with ``always_allow`` adds to the owner's
    rules (:func:`runtime.rules.suggest_rule` of the call as offered), read
    before :func:`on_approval` decides the call; the caller stores it.

    None when the event adds no rule: without ``always_allow``, or for a
    call :func:`on_approval` refuses. Also None, with a ``rule_not_added``
    error sent at once, when it cannot add one: a decision other than
    approve, a call no rule may allow (a compound or always-asked command,
    a move), a tool the operator lets no rule auto-approve. The decision is
    applied either way.
    """
    call = d.session.pending.get(event.call_id)
    if not event.always_allow or call is None or call.state is not CallState.AWAITING_APPROVAL:
        return None
    if event.decision != "approve":
        d.refuse("rule_not_added", "always_allow goes with approve: no rule was added")
        return None
    text = suggest_rule(call.tool_name, call.arguments)
    if text is None:
        why = why_no_rule(call.tool_name, call.arguments)
        d.refuse("rule_not_added", f"no rule was added ({why}); the call is approved this once")
        return None
    if call.tool_name not in d.limits.user_auto_approve:
        d.refuse(
            "rule_not_added",
            f"no rule was added: the operator lets no rule auto-approve {call.tool_name}",
        )
        return None
    return Rule.parse(text)


def on_approval(d: Dispatcher, event: ApprovalDecision, client: ClientOptions = STRICT) -> Next:
    """A human's decision on a call: approve, edit (checked again) or reject."""
    call = d.session.pending.get(event.call_id)
    if call is None or call.state is not CallState.AWAITING_APPROVAL:
        d.refuse("unknown_call_id", f"no tool call {event.call_id!r} is waiting for approval")
        return Next.NOTHING
    d.turn.client = client
    if event.decision in ("approve", "edit", "reject"):
        d.metrics.approvals.labels(call.tool_name, event.decision).inc()
    if event.decision == "reject":
        payload: dict[str, Any] = {"error": "the user rejected this tool call"}
        if event.feedback:
            payload["feedback"] = event.feedback
        return d.resolve(call, payload, "rejected", decided=True)
    arguments = call.arguments
    if event.decision == "edit":
        if event.modified_arguments is None:
            d.refuse("invalid_edit", "edit needs modified_arguments")
            return Next.NOTHING
        # Checked against the agent that made the call: the session may
        # have switched since, to one with other rights.
        verdict = policy.check(
            d.executors.equip(d.session.project.agents.resolve(call.agent or d.session.agent)),
            call.tool_name,
            event.modified_arguments,
            approval_required=d.approval_required,
            tools=d.tools,
        )
        if isinstance(verdict, policy.Refused):
            d.refuse("invalid_edit", verdict.to_editor())
            return Next.NOTHING
        arguments = verdict.arguments
        if call.job is not None:
            job = changes.edited(call.job, call.arguments, arguments)
            if isinstance(job, str):
                d.refuse("invalid_edit", job)
                return Next.NOTHING
            call.job = job
        call.edited = True
    elif event.decision != "approve":
        d.refuse("invalid_frame", "decision must be approve, edit or reject")
        return Next.NOTHING
    if executions.runs_here(d, call.tool_name):
        return executions.approved(d, call, arguments)
    if TOOLS[call.tool_name].side is Side.RUNTIME:
        return _run_approved(d, call, arguments)
    call.arguments = arguments
    call.state = CallState.AWAITING_RESULT
    decided = "edited" if call.edited else "approved"
    call.offered_seq = d.stream.durable(
        ToolCallEvent(call.call_id, call.tool_name, arguments, False, decided, call.metadata)
    )
    d.record_call(call, decided, decided=True)
    return Next.WAIT


def _run_approved(d: Dispatcher, call: PendingCall, arguments: dict[str, Any]) -> Next:
    """Run an approved runtime tool call (a widening ``switch_mode``) and answer it."""
    call.arguments = arguments
    payload: dict[str, Any]
    target = arguments["agent"]
    if target == d.session.agent:
        payload = {"result": f"{target} is already the current agent"}
    else:
        d.switch(target, arguments["reason"], 1.0)
        payload = switched(target)
    if call.edited:
        payload["edited_arguments"] = arguments
    return d.resolve(call, payload, "completed", decided=True)


def on_plan_approval(d: Dispatcher, event: PlanApproval) -> Next:
    """A human's decision on a plan that waits for approval."""
    call = d.session.pending_plan(event.plan_id)
    if call is None:
        d.refuse("unknown_plan", f"no plan {event.plan_id!r} is waiting for approval")
        return Next.NOTHING
    if event.decision in ("approve", "reject"):
        d.metrics.approvals.labels(call.tool_name, event.decision).inc()
    if event.decision == "approve":
        return d.resolve(
            call, {"result": "the user approved the plan; execute it"}, "approved", True
        )
    if event.decision == "reject":
        payload: dict[str, Any] = {"error": "the user rejected the plan"}
        if event.feedback:
            payload["feedback"] = event.feedback
        return d.resolve(call, payload, "rejected", decided=True)
    d.refuse("invalid_frame", "decision must be approve or reject")
    return Next.NOTHING


def reoffers(session: Session, after_seq: int | None) -> list[Sequenced]:
    """What a client that attaches is offered again (seq 0): the calls and plans
    still waiting for a client, but those the replay after ``after_seq`` holds."""
    items = []
    for call in session.pending.values():
        if call.state in (CallState.RUNNING, CallState.EXECUTING):
            continue  # the runtime runs it (a change: its own calls are offered instead)
        if after_seq is not None and call.offered_seq > after_seq:
            continue  # the replay holds it
        if call.state is CallState.AWAITING_PLAN_APPROVAL:
            steps = session.plans.get(call.plan_id, ())
            items.append(Sequenced(0, PlanUpdate(call.plan_id, steps, "", True)))
        else:
            approval = call.state is CallState.AWAITING_APPROVAL
            event = ToolCallEvent(
                call.call_id, call.tool_name, call.arguments, approval, call.reason, call.metadata
            )
            items.append(Sequenced(0, event))
    return items
