"""A turn's decisions, without I/O: tool calls dispatched and answered, the turn ended.

:class:`Dispatcher` is the sans-I/O core of a live session's turn, as
websockets' protocol is to its connection. It changes the session's state
and queues what the change writes in the stream's open step; it never
awaits. Each step returns what comes :class:`Next`, and the shell,
:class:`~runtime.conversation.Conversation`, writes the step
(:meth:`~runtime.stream.EventStream.flush`) and makes the model call that
follows. Decided here:

- a model reply's tool calls, each checked by the one gate
  (:func:`runtime.policy.check`): refused back to the model, offered to the
  IDE (or first to a human), or run here: the runtime's tools
  ``switch_mode`` (a switch that widens the agent's rights waits for a
  human), ``attempt_completion``, ``ask_followup_question``, ``update_plan``;
- the answers to waiting calls (:mod:`runtime.answers`); the last one lets
  the turn go on (:meth:`Dispatcher.resolve`);
- the ends of a turn: no tool calls, a tool that ends it, the model-call
  limit, a failure, a cancel.

A client's answer that does not fit is refused at once (seq 0, not logged)
and changes nothing. History never holds a tool call without its result.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Mapping
from typing import Any

import structlog

from runtime import changes, executions, plans, policy, subcalls
from runtime.agents import Agent
from runtime.commands import STRICT, ClientOptions
from runtime.events import (
    AgentSwitched,
    AssistantText,
    ErrorEvent,
    Sequenced,
    ToolCallEvent,
    TurnDone,
    TurnStatus,
)
from runtime.executors import Executors
from runtime.llm import ChatMessage, ToolCallRequest
from runtime.metrics import RuntimeMetrics
from runtime.records import CallRecord, now
from runtime.records import SwitchRecord as StoredSwitch
from runtime.rules import (
    DEFAULT_LIMITS,
    Approval,
    ApprovalRules,
    OperatorLimits,
    Outcome,
    decide,
)
from runtime.state import CallState, PendingCall, Session, SwitchRecord, message_to_record
from runtime.stream import EventStream
from runtime.tools import Side, Tool
from runtime.turn import MAX_MODEL_CALLS_PER_TURN, MAX_SWITCHES_PER_TURN, ModelReply, Next, Turn

log = structlog.get_logger("runtime.dispatch")

DEFAULT_MAX_MISTAKES = 3
"""Failed tool calls in a row after which a turn stops and asks the user (Roo
Code's ``consecutiveMistakeLimit`` default); ``MAX_CONSECUTIVE_MISTAKES``."""

_TERMINAL_CALL_STATUSES = frozenset({"completed", "failed", "rejected", "cancelled"})


def _implemented(tool: Tool, implemented: frozenset[str]) -> bool:
    """Whether a client implementing the IDE tools ``implemented`` can serve ``tool``."""
    match tool.side:
        case Side.RUNTIME | Side.EXECUTOR:
            return True
        case Side.COMPOSED:
            return all(name in implemented for name in tool.made_of)
    return tool.name in implemented


def switched(agent: str) -> dict[str, Any]:
    return {"result": f"switched to {agent}; continue the request as {agent}"}


def tool_message(call_id: str, name: str, payload: dict[str, Any]) -> ChatMessage:
    content = json.dumps(payload, ensure_ascii=False)
    return ChatMessage(role="tool", content=content, tool_call_id=call_id, name=name)


class Dispatcher:
    """The decisions of one live session's turns; the changes go to ``stream``'s open step.

    ``approval_required`` names the tools a human approves before the IDE
    runs them, unless the session owner's :attr:`rules` auto-approve a call
    within the operator's ``limits`` (:meth:`approval_for`). :attr:`turn` is
    the current turn's counters (a new one per :meth:`begin`). No method
    awaits or writes: the caller flushes ``stream`` when a method returns
    anything but :attr:`Next.NOTHING`.
    """

    def __init__(
        self,
        session: Session,
        stream: EventStream,
        *,
        approval_required: frozenset[str],
        metrics: RuntimeMetrics,
        limits: OperatorLimits = DEFAULT_LIMITS,
        max_mistakes: int = DEFAULT_MAX_MISTAKES,
        executors: Executors | None = None,
    ) -> None:
        self.session = session
        self.stream = stream
        self.approval_required = approval_required
        self.metrics = metrics
        self._limits = limits
        self.executors = executors if executors is not None else Executors()
        self.executions: list[PendingCall] = []
        """Calls the runtime may now run itself: the shell starts them once the step is written."""
        self.rules = ApprovalRules()
        """The session owner's approval rules, as the shell loaded them for this turn."""
        self.max_mistakes = max_mistakes
        self.turn = Turn()

    @property
    def agent(self) -> Agent:
        """The session's agent as the turn's client may use it: with only the
        IDE-side tools that client implements (what the model is offered, and
        what the gate lets through)."""
        by_result = self.turn.client.approves_by_result
        agent = self.executors.equip(
            self.session.project.agents.resolve(self.session.agent), unapproved_only=by_result
        )
        implemented = self.turn.client.tools
        if implemented is None:
            return agent
        known = self.tools
        tools = frozenset(n for n in agent.tools if _implemented(known[n], implemented))
        return agent if tools == agent.tools else dataclasses.replace(agent, tools=tools)

    @property
    def tools(self) -> Mapping[str, Tool]:
        """The tools a call may name: :data:`~runtime.tools.TOOLS` and the executors'."""
        return self.executors.tools

    @property
    def limits(self) -> OperatorLimits:
        """The operator's floor, with the executors' tools users' rules may auto-approve."""
        return self.executors.widen(self._limits)

    # -- recording -------------------------------------------------------------

    def refuse(self, code: str, message: str, retryable: bool = False) -> None:
        """Answer one client's bad request: sent now, not logged (seq 0)."""
        self.stream.publish(Sequenced(0, ErrorEvent(code, message, retryable)))

    def append_message(self, message: ChatMessage) -> None:
        """Add ``message`` to the history, said by the current agent."""
        session = self.session
        step = self.stream.step()
        step.messages.append(message_to_record(len(session.messages), message, session.agent))
        session.messages.append(message)
        session.message_agents.append(session.agent)

    def file_changed(self, path: str) -> None:
        """The IDE saw ``path`` change: the project's rules and the executors forget it."""
        self.session.project.changed(path)
        self.executors.changed(self.session.session_id, path)

    def switch(self, to_agent: str, reason: str, confidence: float) -> None:
        """Make ``to_agent`` the session's agent (routing, the user, or an approved tool)."""
        session = self.session
        from_agent = session.agent
        session.agent = to_agent
        session.switches.append(SwitchRecord(from_agent, to_agent, reason, confidence, time.time()))
        self.stream.step().switches.append(StoredSwitch(from_agent, to_agent, reason, confidence))
        self.stream.durable(AgentSwitched(from_agent, to_agent, reason, confidence))

    def record_call(
        self,
        call: PendingCall,
        status: str,
        decided: bool = False,
        ran: dict[str, Any] | None = None,
    ) -> None:
        """Queue ``call``'s row; ``ran``: the arguments a client ran without
        being sent them again (approval by result), kept as the final ones."""
        if status in _TERMINAL_CALL_STATUSES:
            self.metrics.tool_calls.labels(call.tool_name, status).inc()
        self.stream.step().calls.append(
            CallRecord(
                call_id=call.call_id,
                tool_name=call.tool_name,
                agent=call.agent or self.session.agent,
                status=status,
                arguments=call.original_arguments or call.arguments,
                final_arguments=call.arguments if call.edited else ran,
                reason=call.reason,
                plan_id=call.plan_id,
                offered_seq=call.offered_seq,
                decided_by=self.session.owner if decided else None,
                decided_at=now() if decided else None,
                parent_call_id=call.parent,
                job=call.job,
            )
        )

    # -- the turn ----------------------------------------------------------------

    def begin(
        self,
        content: str,
        request_id: str | None,
        client: ClientOptions = STRICT,
        *,
        view: bool = True,
    ) -> Next:
        """Start a turn on the user's ``content`` for ``client``: the model is
        called next, or once the workspace is listed for its prompt
        (:func:`runtime.subcalls.fetch_view`; not with ``view`` False)."""
        session = self.session
        self.append_message(ChatMessage(role="user", content=content))
        if not session.title:
            session.title = content.strip().splitlines()[0][:80]
        self.turn = Turn(request_id=request_id, started=time.monotonic(), client=client)
        session.state = "running"
        return subcalls.fetch_view(self, client) if view else Next.MODEL

    def take_model_call(self) -> bool:
        """Count one more model call; at the turn's limits, end the turn instead.

        Returns False once ``MAX_MODEL_CALLS_PER_TURN`` calls were made: the
        turn then fails with ``turn_limit``. Also False after ``max_mistakes``
        failed tool calls in a row (0: no such limit): the turn then ends
        with a message that asks the user how to go on. Either end is
        queued, for the caller to write.
        """
        turn = self.turn
        if self.max_mistakes and turn.mistakes >= self.max_mistakes:
            text = turn.stuck_message()
            log.info(
                "turn_stopped_after_mistakes", mistakes=turn.mistakes, tool=turn.last_failure[0]
            )
            self.stream.durable(AssistantText(text))
            self.append_message(ChatMessage("assistant", text))
            self.finish(TurnStatus.COMPLETED)
            return False
        if self.turn.take_model_call():
            return True
        limit = f"the turn stopped after {MAX_MODEL_CALLS_PER_TURN} model calls"
        self.stream.durable(ErrorEvent("turn_limit", limit))
        self.finish(TurnStatus.FAILED)
        return False

    def after_reply(self, reply: ModelReply) -> Next:
        """Take in a model reply: dispatch its tool calls, then decide how the turn goes on.

        :attr:`Next.MODEL` when every call was answered here; :attr:`Next.WAIT`
        while calls wait for the IDE or a human; :attr:`Next.DONE` when the
        reply has no tool calls or a tool ended the turn.
        """
        self.turn.add_usage(reply.usage)
        if not reply.calls:
            self.append_message(ChatMessage("assistant", reply.text))
            return self.finish(TurnStatus.COMPLETED)
        self.append_message(ChatMessage("assistant", reply.text, tool_calls=tuple(reply.calls)))
        ends_turn = False
        for call in reply.calls:
            ends_turn |= self._dispatch(call)
        if self.session.pending:
            self.turn.ends_after_results = ends_turn
            self.session.state = "waiting"
            return Next.WAIT
        if ends_turn:
            return self.finish(TurnStatus.COMPLETED)
        return Next.MODEL

    def fail(self, error: ErrorEvent, reason: str) -> Next:
        """End the turn as failed with ``error``; open calls are answered with ``reason``."""
        self._close_open_calls(reason)
        self.stream.durable(error)
        return self.finish(TurnStatus.FAILED)

    def cancel(self, reason: str) -> Next:
        """End the turn as cancelled; open calls are answered with ``reason``."""
        self._close_open_calls(reason)
        return self.finish(TurnStatus.CANCELLED)

    def finish(self, status: TurnStatus) -> Next:
        """Queue the turn's TurnDone; count it and log its summary line."""
        turn, usage = self.turn, self.turn.usage
        self.stream.durable(TurnDone(status, usage, turn.context))
        self.session.state = "idle"
        metrics = self.metrics
        metrics.turns.labels(status.value).inc()
        metrics.usage_tokens.labels("prompt").inc(usage.prompt_tokens)
        metrics.usage_tokens.labels("completion").inc(usage.completion_tokens)
        duration = None
        if turn.started is not None:
            duration = time.monotonic() - turn.started
            metrics.turn_duration.labels(status.value).observe(duration)
            turn.started = None
        log.info(
            "turn_finished",
            session_id=self.session.session_id,
            agent=self.session.agent,
            status=status.value,
            model_calls=turn.model_calls,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            duration_ms=None if duration is None else round(duration * 1000, 1),
        )
        return Next.DONE

    def _close_open_calls(self, reason: str) -> None:
        session = self.session
        for pending in list(session.pending.values()):
            self.record_call(pending, "cancelled")
        session.answered.update(session.pending)  # sub-calls: a late result is a duplicate
        session.pending.clear()
        answered = {m.tool_call_id for m in session.messages if m.role == "tool"}
        for message in reversed(session.messages):
            if message.role == "assistant" and message.tool_calls:
                for call in message.tool_calls:
                    if call.call_id not in answered:
                        session.answered.add(call.call_id)
                        self.append_message(
                            tool_message(call.call_id, call.name, {"error": reason})
                        )
                break
            if message.role == "user":
                break

    # -- dispatching a model's calls -------------------------------------------

    def _dispatch(self, call: ToolCallRequest) -> bool:
        """Check and start one tool call; True if it ends the turn."""
        verdict = policy.check(
            self.agent,
            call.name,
            call.arguments_json,
            approval_required=self.approval_required | self.executors.approval_required,
            tools=self.tools,
        )
        if isinstance(verdict, policy.Refused):
            if verdict.grounds is policy.Grounds.DENIED:
                log.info("tool_call_refused", tool=call.name, agent=self.session.agent)
            self.metrics.tool_calls.labels(
                call.name if call.name in self.tools else "unknown", "refused"
            ).inc()
            self.answer(call, {"error": verdict.to_model()})
            return False
        side = self.tools[call.name].side
        if side is Side.RUNTIME:
            self.metrics.tool_calls.labels(call.name, "runtime").inc()
            return self._run_runtime_tool(call, verdict.arguments)
        approval = self.approval_for(call.name, verdict.arguments, verdict.requires_approval)
        if isinstance(approval, policy.Refused):
            self.metrics.tool_calls.labels(call.name, "refused").inc()
            self.answer(call, {"error": approval.to_model()})
            return False
        if not approval.ask and verdict.requires_approval and call.name in self.agent.always_ask:
            approval = Approval(True, f"the {self.session.agent} agent's calls are always asked")
        reason = approval.reason(verdict.reason)
        if side is Side.EXECUTOR:
            executions.start(self, call, verdict.arguments, approval)
            return False
        if call.name in changes.CHANGE_TOOLS:
            subcalls.start_change(self, call, verdict.arguments, approval.ask, reason)
            return False
        state = CallState.AWAITING_APPROVAL if approval.ask else CallState.AWAITING_RESULT
        self._offer(call, verdict.arguments, state, reason)
        return False

    def approval_for(
        self, tool_name: str, arguments: dict[str, Any], requires_approval: bool
    ) -> Approval | policy.Refused:
        """Whether a call the policy let through waits for a human: the owner's
        :attr:`rules` (:func:`runtime.rules.decide`) over the operator's floor
        (:meth:`runtime.rules.OperatorLimits.approval`). Refused when a deny
        rule matches, any tool. An auto-approval uses up one of the turn's
        (so: once per call), and is logged with its rule.
        """
        decision = decide(self.rules, tool_name, arguments)
        where = {"session_id": self.session.session_id, "tool": tool_name, "rule": decision.rule}
        if decision.outcome is Outcome.DENY:
            log.info("tool_call_denied_by_rule", **where)
            return policy.Refused(decision.reason, policy.Grounds.RULE)
        approval = self.limits.approval(
            self.rules, decision, tool_name, requires_approval, self.turn.take_auto_approval
        )
        if requires_approval and not approval.ask:
            self.metrics.approvals.labels(tool_name, "auto").inc()
            log.info("tool_call_auto_approved", **where)
        return approval

    def _offer(
        self, call: ToolCallRequest, arguments: dict[str, Any], state: CallState, reason: str
    ) -> None:
        """Send a call to the IDE (or for approval) and wait for its answer."""
        pending = PendingCall(
            call.call_id,
            call.name,
            arguments,
            state,
            reason,
            agent=self.session.agent,
            original_arguments=arguments,
        )
        self.offer(pending)

    def offer(self, pending: PendingCall) -> None:
        """Send ``pending`` to the IDE (or for approval) and wait for its answer."""
        approval = pending.state is CallState.AWAITING_APPROVAL
        pending.offered_seq = self.stream.durable(
            ToolCallEvent(
                pending.call_id,
                pending.tool_name,
                pending.arguments,
                approval,
                pending.reason,
                pending.metadata,
            )
        )
        self.session.pending[pending.call_id] = pending
        self.record_call(pending, pending.state.value)

    @property
    def turn_position(self) -> int:
        """The position of the user message that began the current turn: its id."""
        messages = self.session.messages
        return next((i for i in range(len(messages) - 1, -1, -1) if messages[i].role == "user"), 0)

    def answer(self, call: ToolCallRequest, payload: dict[str, Any]) -> None:
        """Answer a model's call at once (no IDE involved): its tool message."""
        self.turn.note_outcome(call.name, payload)
        self.session.answered.add(call.call_id)
        self.append_message(tool_message(call.call_id, call.name, payload))

    def _run_runtime_tool(self, call: ToolCallRequest, arguments: dict[str, Any]) -> bool:
        match call.name:
            case "switch_mode":
                target = arguments["agent"]
                agents = self.session.project.agents
                if target not in agents:
                    known = ", ".join(agents)
                    self.answer(call, {"error": f"unknown agent {target!r}; one of {known}"})
                elif target == self.session.agent:
                    self.answer(call, {"result": f"{target} is already the current agent"})
                elif not self.turn.take_switch():
                    self.answer(
                        call,
                        {"error": f"no more than {MAX_SWITCHES_PER_TURN} switches per turn"},
                    )
                else:
                    gain = policy.widening(agents.resolve(self.session.agent), agents[target])
                    if gain is None:
                        self.switch(target, arguments["reason"], 1.0)
                        self.answer(call, switched(target))
                    else:
                        # A model could be talked into widening its own
                        # rights (prompt injection): a human decides, and
                        # the call runs here once approved (runtime.answers).
                        reason = f"{gain}: {arguments['reason']}"
                        self._offer(call, arguments, CallState.AWAITING_APPROVAL, reason)
                return False
            case "attempt_completion":
                self.stream.durable(AssistantText(arguments["result"]))
                self.answer(call, {"result": "the result was shown to the user"})
                return True
            case "ask_followup_question":
                self.stream.durable(AssistantText(arguments["question"]))
                self.answer(call, {"result": "asked; the answer is the next user message"})
                return True
            case "update_plan":
                plans.update(self, call, arguments)
                return False
        self.answer(call, {"error": f"{call.name} is not a runtime tool"})
        return False

    def resolve(
        self,
        call: PendingCall,
        payload: dict[str, Any],
        status: str,
        decided: bool = False,
        ran: dict[str, Any] | None = None,
    ) -> Next:
        """Answer a waiting call; the last answer of a set lets the turn go on.

        A call the runtime issued itself answers the step of its work instead
        (:mod:`runtime.changes`): the next sub-call, or the model's call.
        """
        session = self.session
        del session.pending[call.call_id]
        self.executors.saw(session.session_id, call, payload, status)  # runtime.search indexes
        if call.job is not None:
            session.answered.add(call.call_id)
            self.record_call(call, status, decided, ran)
            return subcalls.answered(self, call, payload, status)
        session.answered.add(call.call_id)
        if status != "rejected":  # the user's decision is no mistake of the model's
            self.turn.note_outcome(call.tool_name, payload)
        self.append_message(tool_message(call.call_id, call.tool_name, payload))
        self.record_call(call, status, decided, ran)
        if session.pending:
            return Next.WAIT
        if self.turn.ends_after_results:
            return self.finish(TurnStatus.COMPLETED)
        session.state = "running"
        return Next.MODEL
