"""What a client that attaches to a live session is offered again: the tool
calls and plans that still wait for it (:meth:`runtime.conversation.Conversation.attach`)."""

from __future__ import annotations

from runtime.events import PlanUpdate, Sequenced, ToolCallEvent
from runtime.state import CallState, Session


def again(session: Session, after_seq: int | None) -> list[Sequenced]:
    """The tool calls and plans still waiting for the client, offered again
    (seq 0) to a stream that attaches; with ``after_seq``, those its replay
    of the events after it does not already hold."""
    items: list[Sequenced] = []
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
                call.call_id,
                call.tool_name,
                call.arguments,
                approval,
                call.reason,
                call.metadata,
            )
            items.append(Sequenced(0, event))
    return items
