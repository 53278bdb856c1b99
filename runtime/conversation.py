"""One live session's asyncio shell: client events in, session events out.

:class:`Conversation` has no transport: the gRPC servicer feeds it client
events (:mod:`runtime.commands`) and drains the queues of its subscribers
(one per attached stream). A turn routes a new session's first request,
streams the model's answer, dispatches its tool calls, and calls the model
again once every result is in, until the model answers without tools or a
tool ends the turn.

The decisions are not made here. :class:`~runtime.dispatch.Dispatcher`
decides without I/O what a step changes (a model reply's tool calls checked
by the one gate and offered, the runtime's own tools run, waiting calls
answered, the turn ended) and says what comes next; this shell writes the
step (:meth:`runtime.stream.EventStream.flush`), makes the model call that
follows (:func:`runtime.turn.request_reply`), and owns what has a lifetime:
the task of the running model call, the detach grace, cancel, close, a
restart's interruption and a lost lease.

The turn is event-driven: while tool calls wait for the IDE or a human,
nothing runs; the answer that completes the set starts the next model call.
So a turn that waits survives a runtime restart: its calls are in the
database and are offered again when the IDE reconnects. Between turns, the
history may leave memory and come back at the next event (:mod:`runtime.resting`).

Durability: every durable event is written (with the rest of its step)
before it is sent, in one transaction per step; text deltas are sent at once
and written as one row when the model call ends (both by the session's
:class:`~runtime.stream.EventStream`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog

from mesh import tracing
from runtime import answers, notices, offers, policy, reruns, resting, routing, subcalls, undo
from runtime.commands import (
    STRICT,
    ApprovalDecision,
    CancelTurn,
    ClientEvent,
    ClientOptions,
    Condense,
    EditMessage,
    Environment,
    FileChanged,
    Fork,
    PlanApproval,
    Retry,
    SetModel,
    SwitchAgent,
    ToolResult,
    Undo,
    UserMessage,
)
from runtime.condense import Condenser
from runtime.dispatch import Dispatcher
from runtime.errors import Precondition, Unavailable, UpstreamError
from runtime.events import ErrorEvent, Sequenced, SessionChanged
from runtime.executions import Executions
from runtime.executors import Executors
from runtime.llm import ChatModel
from runtime.metrics import RuntimeMetrics
from runtime.models import UnknownModel, check_choice
from runtime.project import ProjectFiles
from runtime.rules import RulesInvalid
from runtime.settings import ConversationSettings
from runtime.state import Session
from runtime.store import Store
from runtime.stream import EventStream, Subscriber
from runtime.turn import ModelReply, Next, request_reply

log = structlog.get_logger("runtime.conversation")
_tracer = tracing.tracer("runtime.conversation")


class Conversation:
    """The live side of one session: its turn, its subscribers, its writes.

    One per live session (see :class:`runtime.hub.SessionHub`), shared
    by every stream attached to it. ``close`` cancels the turn; idempotent.
    """

    def __init__(
        self,
        session: Session,
        llm: ChatModel,
        store: Store,
        settings: ConversationSettings,
        *,
        on_idle: Callable[[Conversation], None] | None = None,
        metrics: RuntimeMetrics | None = None,
        executors: Executors | None = None,
    ) -> None:
        self.session = session
        session.project = ProjectFiles(settings.agents, settings.project_limits)
        self._llm = llm
        self._store = store
        self._settings = settings
        self._on_idle = on_idle
        metrics = metrics if metrics is not None else RuntimeMetrics()
        self.stream = EventStream(
            session,
            store,
            subscriber_queue=settings.subscriber_queue,
            max_replay=settings.max_replay,
            metrics=metrics,
        )
        self._dispatcher = Dispatcher(
            session,
            self.stream,
            approval_required=settings.approval_required,
            metrics=metrics,
            max_mistakes=settings.max_consecutive_mistakes,
            limits=settings.rule_limits,
            executors=executors,
        )
        self.executions = Executions(self._dispatcher, self._go_on)
        self._rules = store.rules
        self.context = Condenser(llm, settings.condense_threshold)
        self._task: asyncio.Task[None] | None = None
        self._detach_timer: asyncio.TimerHandle | None = None
        self._detach_task: asyncio.Task[None] | None = None
        self.history = resting.Keeper(session, store, metrics.histories_recalled.inc)

    # -- subscribers -----------------------------------------------------------

    @property
    def turn_running(self) -> bool:
        """A model call runs, or tool calls wait: a new message must wait."""
        return (self._task is not None and not self._task.done()) or bool(self.session.pending)

    @property
    def _task_running(self) -> bool:
        """A model call or a call the runtime runs itself (:mod:`runtime.executions`)."""
        return (self._task is not None and not self._task.done()) or self.executions.running

    @property
    def can_rest(self) -> bool:
        """No turn runs or waits, no event is handled, all is written, the history is in memory."""
        busy = self.history.held or self.turn_running or self._task_running
        return not busy and self.stream.settled and not self.history.rested

    def rest(self, *, doze: bool = False) -> None:
        """Let the history (``doze``: its objects) go; :mod:`runtime.resting`."""
        lent = self.context.forget(self.session.messages if doze else None)
        self.history.doze(lent, self.context.window.woke) if doze else self.history.forget()

    def subscribe(self) -> Subscriber:
        """Attach a stream to the session's events (a detached turn goes on)."""
        subscriber = self.stream.subscribe()
        if self._detach_timer is not None:
            self._detach_timer.cancel()
            self._detach_timer = None
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        """Detach a stream; with nobody left, a streaming turn gets ``detach_grace``."""
        self.stream.unsubscribe(subscriber)
        if self.stream.attached:
            return
        if self._task_running:
            loop = asyncio.get_running_loop()
            self._detach_timer = loop.call_later(
                self._settings.detach_grace, self._start_unattended_cancel
            )
        elif self._on_idle is not None:
            self._on_idle(self)

    def _start_unattended_cancel(self) -> None:
        self._detach_timer = None
        self._detach_task = asyncio.create_task(self._cancel_unattended())

    async def _cancel_unattended(self) -> None:
        if self.stream.attached or not self._task_running:
            return
        log.info("turn_cancelled_unattended", session_id=self.session.session_id)
        await self._cancel_turn("cancelled: the IDE went away")
        if not self.stream.attached and self._on_idle is not None:
            self._on_idle(self)

    async def attach(self, after_seq: int | None) -> tuple[Subscriber, list[Sequenced], bool]:
        """Subscribe a stream; returns it, what it must be sent first, and ``recovered``.

        With ``after_seq``, the first items are exactly the events after it
        (``recovered`` is False when that is impossible: too far behind, or
        ahead of the log after a restart). Tool calls and plans still waiting
        for this client are offered again (with seq 0).
        """
        subscriber = self.subscribe()
        items, recovered = await self.stream.events_after(after_seq)
        items.extend(offers.again(self.session, after_seq if recovered else None))
        return subscriber, items, recovered

    # -- client events -------------------------------------------------------

    async def handle(
        self,
        event: ClientEvent,
        *,
        request_id: str | None = None,
        client: ClientOptions = STRICT,
    ) -> None:
        """React to one client event of a stream whose client is ``client``;
        returns without waiting for a model call."""
        async with self.history.hold():
            dispatcher = self._dispatcher
            match event:
                case UserMessage():
                    await self._on_user_message(event, request_id, client)
                case CancelTurn():
                    await self._on_cancel()
                case ToolResult():
                    await self._go_on(answers.on_tool_result(dispatcher, event, client))
                case ApprovalDecision():
                    await self._on_approval(event, client)
                case SwitchAgent():
                    await self._on_switch_agent(event, request_id, client)
                case PlanApproval():
                    await self._go_on(answers.on_plan_approval(dispatcher, event))
                case FileChanged():
                    self._on_file_changed(event)
                case Undo():
                    await self._on_undo(event, request_id, client)
                case SetModel():
                    await self._on_set_model(event.model)
                case Retry() | EditMessage() | Fork():
                    await reruns.on_event(self, self._store, event, request_id, client)
                case Condense() if self.turn_running:
                    dispatcher.refuse("turn_in_progress", "cannot condense during a turn", True)
                case Condense():
                    condensing = self.context.on_request(
                        dispatcher, self.stream, self._model(), request_id
                    )
                    self._task = asyncio.create_task(condensing)
                case Environment():
                    # The model calls from now on are told (runtime.prompts).
                    self.session.environment = event

    async def _go_on(self, next_: Next) -> None:
        """Write what a step changed; start the model call that follows, if one does."""
        if next_ is Next.NOTHING:
            return
        await self.stream.flush()
        self.executions.start()
        if next_ is Next.MODEL:
            self._task = asyncio.create_task(self._advance())

    async def _on_approval(self, event: ApprovalDecision, client: ClientOptions) -> None:
        """A human's decision; with ``always_allow``, the rule it adds is stored
        once the decision is written, and holds for the rest of the turn too."""
        dispatcher = self._dispatcher
        rule = answers.always_allow(dispatcher, event)
        next_ = answers.on_approval(dispatcher, event, client)
        await self._go_on(next_)
        if rule is None or next_ is Next.NOTHING:
            return
        try:
            dispatcher.rules = await self._rules.add_rule(self.session.owner, rule)
            log.info("approval_rule_added", session_id=self.session.session_id, rule=rule.text)
        except (RulesInvalid, Unavailable) as exc:  # the allow list is full; a race
            dispatcher.refuse("rule_not_added", f"no rule was added: {exc}", exc.retryable)

    async def _on_user_message(
        self, event: UserMessage, request_id: str | None, client: ClientOptions
    ) -> None:
        refuse = self._dispatcher.refuse
        if self.turn_running:
            pending = bool(self.session.pending)
            refuse(
                "tool_calls_pending" if pending else "turn_in_progress",
                "tool calls are waiting for results or approval; answer them or cancel"
                if pending
                else "a turn is already running; cancel it or wait for is_final",
                retryable=True,
            )
            return
        if event.role != "user":
            refuse("invalid_frame", f"role must be user, not {event.role!r}")
            return
        if not event.content.strip():
            refuse("invalid_frame", "content must not be empty")
            return
        await self.begin_turn(event.content, request_id, client)

    async def _on_set_model(self, model: str) -> None:
        """Record the session's model choice; refused (``unknown_model``) when
        the operator does not offer that group. The next model call uses it."""
        try:
            check_choice(model, self._settings.user_models or (self._settings.model,))
        except UnknownModel as exc:
            self._dispatcher.refuse("unknown_model", str(exc))
            return
        self.session.model = model
        await self._store.models.choose(self.session.session_id, model)
        log.info("session_model_chosen", session_id=self.session.session_id, model=model)

    async def _on_undo(self, event: Undo, request_id: str | None, client: ClientOptions) -> None:
        try:
            await self.undo(event.turn_id, request_id, client)
        except Precondition as exc:
            code = "nothing_to_undo" if isinstance(exc, undo.NothingToUndo) else "turn_in_progress"
            self._dispatcher.refuse(code, str(exc), retryable=code == "turn_in_progress")

    async def undo(self, turn_id: str, request_id: str | None, client: ClientOptions) -> int:
        """Start an undo turn from ``turn_id`` on (empty: the last turn that
        changed files): the IDE restores the files through tool calls.

        Returns the first turn undone. Raises :class:`~runtime.errors.Precondition`
        while a turn runs, :class:`~runtime.undo.NothingToUndo` with nothing to undo.
        """
        if self.turn_running:
            raise Precondition("cannot undo during a turn; cancel it or wait for it to end")
        async with self.history.hold():
            checkpoints = await self._store.checkpoints.of_session(self.session.session_id)
            next_, first = subcalls.start_undo(
                self._dispatcher, checkpoints, turn_id, request_id, client
            )
            await self._go_on(next_)
        return first

    async def rerun(
        self, event: Retry | EditMessage, request_id: str | None, client: ClientOptions
    ) -> SessionChanged:
        """Branch the history and run again (:func:`runtime.reruns.rerun`, which says what
        it raises)."""
        async with self.history.hold():
            return await reruns.rerun(self, self._store, event, request_id, client)

    @property
    def client(self) -> ClientOptions:
        """The client the last turn ran for (an undo asked by REST runs for it)."""
        return self._dispatcher.turn.client

    async def begin_turn(self, content: str, request_id: str | None, client: ClientOptions) -> None:
        """Start a turn on ``content`` (the caller checked that none runs)."""
        await self.load_rules()
        notice = notices.take(self.session)
        if notice is not None:
            self._dispatcher.append_message(notice)
        await self._go_on(self._dispatcher.begin(content, request_id, client))

    async def load_rules(self) -> None:
        """Read the owner's approval rules and instructions: at each turn's start,
        so a change made meanwhile (``UpdateApprovalRules``, ``UpdateInstructions``)
        holds from the next turn."""
        settings = await self._store.owner_reads.get(self.session.owner)
        self._dispatcher.rules = settings.rules
        self.session.project.set_user(settings.instructions)

    def _on_file_changed(self, event: FileChanged) -> None:
        try:
            notices.remember(self.session, event.path, event.timestamp)
            self._dispatcher.file_changed(event.path)
        except policy.PathRefused as exc:
            self._dispatcher.refuse("invalid_path", str(exc))

    async def _on_cancel(self) -> None:
        if not self.turn_running:
            self._dispatcher.refuse("no_turn_running", "there is no turn to cancel")
            return
        await self._cancel_turn("cancelled by the user before it finished")

    async def _cancel_turn(self, reason: str) -> None:
        turn, self._task = self._task, None
        if turn is not None and not turn.done():
            turn.cancel()
            # asyncio.wait, not await: the turn's CancelledError stays inside
            # it, while a cancellation of the caller still propagates.
            await asyncio.wait([turn])
        await self.executions.cancel()
        self._dispatcher.cancel(reason)
        await self.stream.flush()

    async def _on_switch_agent(
        self, event: SwitchAgent, request_id: str | None, client: ClientOptions
    ) -> None:
        if self.turn_running:
            self._dispatcher.refuse(
                "turn_in_progress", "cannot switch agents during a turn; cancel it first", True
            )
            return
        if event.agent_type not in self.session.project.agents:
            known = ", ".join(self.session.project.agents)
            self._dispatcher.refuse(
                "unknown_agent", f"unknown agent {event.agent_type!r}; one of {known}"
            )
            return
        self._dispatcher.switch(event.agent_type, event.reason or "requested by the user", 1.0)
        if event.content.strip():
            await self.begin_turn(event.content, request_id, client)
        else:
            await self.stream.flush()

    # -- lifecycle ------------------------------------------------------------

    async def wait_idle(self) -> None:
        """Wait for the running model call, if any, to finish."""
        if self._task is not None:
            await asyncio.wait([self._task])

    async def mark_interrupted(self) -> None:
        """The turn in the log was cut off by a restart: close it so the user can retry."""
        error = ErrorEvent(
            "turn_interrupted",
            "the runtime restarted during this turn; send the message again to retry",
            retryable=True,
        )
        self._dispatcher.fail(error, "the runtime restarted before this call finished")
        await self.stream.flush()

    async def abandon(self, *, deleted: bool = False) -> None:
        """Another replica took the session (or it was deleted): stop without
        writing anything more.

        The running model call is cancelled, nothing is flushed (the other
        replica owns the log now), and every attached stream ends retryably
        so its client reconnects to the session's new home; for a deleted
        session, for good.
        """
        if self._detach_timer is not None:
            self._detach_timer.cancel()
            self._detach_timer = None
        turn, self._task = self._task, None
        if turn is not None and not turn.done():
            turn.cancel()
            await asyncio.wait([turn])
        await self.executions.cancel()
        self.stream.moved(deleted=deleted)

    async def close(self) -> None:
        """Cancel the running model call (the turn is marked cancelled); idempotent.

        Returns once nothing of this conversation touches the database.
        """
        if self._detach_timer is not None:
            self._detach_timer.cancel()
            self._detach_timer = None
        if self._detach_task is not None:
            await asyncio.wait([self._detach_task])
        if self._task_running:
            await self._cancel_turn("cancelled: the runtime is shutting down")
        await self.stream.drain()  # a shielded commit still in flight finishes first

    # -- the turn ---------------------------------------------------------------

    async def _advance(self) -> None:
        """Model calls until the turn ends or waits for tool results."""
        attributes = {"session.id": self.session.session_id, "agent": self.session.agent}
        with _tracer.start_as_current_span("turn", attributes=attributes):
            try:
                await self._advance_traced()
            finally:
                self.history.touch()

    async def _advance_traced(self) -> None:
        dispatcher = self._dispatcher
        try:
            if self.session.agent == "orchestrator":
                await self._route()
            await self.context.condense_if_due(
                dispatcher, self.stream, self._model(), dispatcher.turn.request_id
            )
            while dispatcher.take_model_call():
                reply = await self._call_model()
                next_ = dispatcher.after_reply(reply)
                await self.stream.flush()
                self.executions.start()
                if next_ is not Next.MODEL:
                    return
            await self.stream.flush()  # the turn hit its model-call limit
        except UpstreamError as exc:
            log.warning("turn_failed", code=exc.code, error=str(exc))
            dispatcher.fail(ErrorEvent(exc.code, str(exc), exc.retryable), "the turn failed")
            await self.stream.flush()

    async def _route(self) -> None:
        request = next((m.content for m in reversed(self.session.messages) if m.role == "user"), "")
        route = await routing.classify(
            self._llm,
            self._settings.routing_model or self._settings.model,
            request,
            roster=self.session.project.agents,
            request_id=self._dispatcher.turn.request_id,
        )
        self._dispatcher.switch(route.agent, route.rationale, route.confidence)

    def _model(self) -> str:
        agent = self._dispatcher.agent
        default = agent.model or self._settings.model
        return self.session.model or self._settings.agent_models.get(agent.name, default)

    async def _call_model(self) -> ModelReply:
        await self._dispatcher.executors.prepare(self.session.agent)  # lazily, once a server
        # Durable events queued before this call (a routing switch) go out first.
        if self.stream.pending_output:
            await self.stream.flush()
        history, summary = self.context.view(self.session.messages)
        reply = await request_reply(
            self._llm,
            self._model(),
            self._dispatcher.agent,
            history,
            on_text=self.stream.text,
            request_id=self._dispatcher.turn.request_id,
            environment=self.session.environment,
            workspace_view=self.session.workspace_view,
            roster=self.session.project.agents,
            guidance=self.session.project.guidance,
            tools=self._dispatcher.tools,
            context=self.context.window,
            summary=summary,
        )
        self._dispatcher.turn.context = self.context.window.meter
        return reply
