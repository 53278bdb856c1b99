"""Plans an agent publishes with ``update_plan``, over a
:class:`~runtime.dispatch.Dispatcher` like :mod:`runtime.answers`: a new plan
(approved by a human first when it asks for it), or its steps' progress.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from runtime.events import PlanProgress, PlanStep, PlanUpdate
from runtime.llm import ToolCallRequest
from runtime.state import CallState, PendingCall

if TYPE_CHECKING:
    from runtime.dispatch import Dispatcher


def update(d: Dispatcher, call: ToolCallRequest, arguments: dict[str, Any]) -> None:
    """Run ``update_plan``: publish a plan, or its steps' progress; a new plan
    that asks for approval waits for the human (not from a client that approves
    by running calls: it is shown the plan, and the turn goes on)."""
    plan_id = arguments["plan_id"]
    steps = tuple(
        PlanStep(s["id"], s.get("description", ""), s["status"]) for s in arguments["steps"]
    )
    before = {step.id: step for step in d.session.plans.get(plan_id, ())}
    if before:
        # Updating an existing plan: each changed step is progress.
        for step in steps:
            old = before.get(step.id)
            if old is None or old.status != step.status:
                d.stream.durable(PlanProgress(plan_id, step.id, step.status, step.description))
    d.session.plans[plan_id] = steps
    d.stream.step().plans[plan_id] = [[s.id, s.description, s.status] for s in steps]
    current = next((s.id for s in steps if s.status == "in_progress"), "")
    # A client that approves by running calls has no way to approve a
    # plan: it is shown the plan, and the turn goes on.
    needs_approval = (
        bool(arguments.get("requires_approval"))
        and not before
        and not d.turn.client.approves_by_result
    )
    offered = d.stream.durable(PlanUpdate(plan_id, steps, current, needs_approval))
    if needs_approval:
        pending = PendingCall(
            call.call_id,
            call.name,
            arguments,
            CallState.AWAITING_PLAN_APPROVAL,
            "the plan needs approval",
            agent=d.session.agent,
            plan_id=plan_id,
            offered_seq=offered,
        )
        d.session.pending[call.call_id] = pending
        d.record_call(pending, pending.state.value)
    else:
        d.answer(call, {"result": "plan published"})
