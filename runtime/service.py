"""The gRPC face of the runtime: ``runtime.v1.AgentRuntimeService``.

This module serves the RPCs (:mod:`runtime.wire` converts between protobuf
and the runtime's dataclasses) and maps :mod:`runtime.errors` to gRPC status
codes, in one place (:func:`_mapped`,
around every RPC; the codes each RPC returns are listed in
``proto/runtime/v1/runtime.proto``); nothing else in the runtime knows about
gRPC. Callers are authenticated by the internal credential
(:class:`mesh.grpc_server.InternalAuthInterceptor`) before they get here, so
the user named in ``x-user-id`` is the one the gateway vouches for.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace

import grpc
import structlog

from mesh import tracing
from mesh.grpc_server import REQUEST_ID_HEADER, metadata_value
from runtime import instructions
from runtime.boundary import Context
from runtime.boundary import mapped as _mapped
from runtime.boundary import user as _user
from runtime.branch_rpcs import BranchRpcs
from runtime.errors import InvalidArgument, Precondition
from runtime.events import (
    AssistantText,
    ErrorEvent,
    Sequenced,
    SessionOpened,
)
from runtime.hub import SessionHub
from runtime.records import AWAITING_DECISION, SessionRow, call_metadata
from runtime.stream import (
    END_OF_STREAM,
    Control,
    EndOfStream,
    EventStream,
    Resend,
    SessionDeleted,
    SessionMoved,
    Subscriber,
)
from runtime.v1 import runtime_pb2, runtime_pb2_grpc
from runtime.wire import (
    agent_proto,
    fill_rules,
    history_protos,
    rules_from_proto,
    session_proto,
    switch_proto,
    to_client_event,
    to_client_options,
    to_proto,
    turn_protos,
)

log = structlog.get_logger("runtime.service")


class AgentRuntimeServicer(BranchRpcs, runtime_pb2_grpc.AgentRuntimeServiceServicer):
    """Serves Converse streams and the owner-scoped reads from a SessionHub."""

    def __init__(self, hub: SessionHub, *, open_timeout: float) -> None:
        self._hub = hub
        self._open_timeout = open_timeout

    @_mapped
    async def Converse(  # type: ignore[override]  # writes with context.write
        self,
        request_iterator: AsyncIterator[runtime_pb2.ConverseRequest],
        context: Context,
    ) -> None:
        started = time.monotonic()
        user = _user(context)
        request_id = metadata_value(context, REQUEST_ID_HEADER)
        try:
            async with asyncio.timeout(self._open_timeout):
                first = await anext(aiter(request_iterator), None)
        except TimeoutError:
            raise InvalidArgument("no open event within the open timeout") from None
        if first is None or first.WhichOneof("event") != "open":
            raise InvalidArgument("the first event must be open")
        after = first.open.resume_after_seq if first.open.HasField("resume_after_seq") else None
        client = to_client_options(first.open)
        conversation, created = await self._hub.open(first.open.session_id, user)
        session = conversation.session
        # In the call's log context (mesh.grpc_server.CallInterceptor bound
        # request_id and user): the turns this stream starts inherit it.
        structlog.contextvars.bind_contextvars(session_id=session.session_id)
        subscriber, first_items, recovered = await conversation.attach(after)
        opened = SessionOpened(session.session_id, session.agent, created, session.last_seq)
        # What the client has once the first items are out: the replay's
        # start, or (live only, or told to reload) what was already published.
        seen = after if after is not None and recovered else conversation.stream.published_seq
        events_in = 0
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(
                    self._pump(
                        conversation.stream,
                        subscriber,
                        [Sequenced(0, replace(opened, recovered=recovered)), *first_items],
                        seen,
                        context,
                    )
                )
                async for request in request_iterator:
                    events_in += 1
                    if request.WhichOneof("event") == "resume":
                        subscriber.offer(Resend(request.resume.after_seq))
                        continue
                    try:
                        event = to_client_event(request)
                    except InvalidArgument as exc:
                        subscriber.offer(Sequenced(0, ErrorEvent("invalid_frame", str(exc))))
                        continue
                    # The IDE frame's trace (the gateway's ws.message span)
                    # becomes the parent of the turn this event may start.
                    with tracing.continued_from(request.traceparent):
                        await conversation.handle(event, request_id=request_id, client=client)
                # The client half-closed: let the model call finish, flush, end.
                await conversation.wait_idle()
                subscriber.offer(END_OF_STREAM)
        finally:
            conversation.unsubscribe(subscriber)
            log.info(
                "converse_finished",
                events_in=events_in,
                last_seq=session.last_seq,
                duration_ms=round((time.monotonic() - started) * 1000, 1),
                cancelled=context.cancelled(),
            )

    @staticmethod
    async def _pump(
        stream: EventStream,
        subscriber: Subscriber,
        first_items: list[Sequenced],
        seen: int,
        context: Context,
    ) -> None:
        """Write the stream: first items, then the session's events as they come.

        Adaptive coalescing: text deltas that queued up while the previous
        write was in flight go out as one message carrying the last seq (a
        client resuming after it has them all). When the stream keeps up,
        every delta goes out alone, at once. Nothing is merged across another
        kind of event, and order is kept. ``seen`` is the seq the client is
        known to have everything up to once ``first_items`` are written.
        """
        high = seen
        for opening in first_items:
            await context.write(to_proto(opening))
            high = max(high, opening.seq)
        queue = subscriber.queue
        carried: Sequenced | Control | None = None
        item: Sequenced | Control
        while True:
            if subscriber.overflowed:
                # It fell a whole queue behind: its queued events were
                # dropped, and what it missed is in the log (or in memory
                # until written). Catch up from there, then go on live.
                subscriber.overflowed = False
                replay, recovered = await stream.events_after(high)
                if not recovered:
                    await context.abort(
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                        "this stream fell too far behind the session; "
                        "reconnect with the last seq seen",
                    )
                for replayed in replay:
                    await context.write(to_proto(replayed))
                    high = max(high, replayed.seq)
                continue
            if carried is None:
                item = await queue.get()
                if subscriber.overflowed:
                    carried = item  # only control items survive an overflow
                    continue
            else:
                item, carried = carried, None
            if isinstance(item, EndOfStream):
                return
            if isinstance(item, SessionMoved):
                await context.abort(
                    grpc.StatusCode.UNAVAILABLE,
                    "the session moved to another runtime replica; reconnect and resume",
                )
            if isinstance(item, SessionDeleted):
                await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "the session was deleted")
            if isinstance(item, Resend):
                replay, recovered = await stream.events_after(item.after_seq)
                session = stream.session
                notice = SessionOpened(
                    session.session_id, session.agent, False, session.last_seq, recovered
                )
                await context.write(to_proto(Sequenced(0, notice)))
                # Not recovered: the client reloads; live events go on from here.
                high = item.after_seq if recovered else stream.published_seq
                for replayed in replay:
                    await context.write(to_proto(replayed))
                    high = max(high, replayed.seq)
                continue
            if item.seq and item.seq <= high:
                continue  # already sent by the replay
            if isinstance(item.event, AssistantText) and not queue.empty():
                parts, last = [item.event.text], item.seq
                while not queue.empty():
                    following = queue.get_nowait()
                    if (
                        isinstance(following, Sequenced)
                        and isinstance(following.event, AssistantText)
                        and following.seq > last
                    ):
                        parts.append(following.event.text)
                        last = following.seq
                    else:
                        carried = following
                        break
                item = Sequenced(last, AssistantText("".join(parts)))
            await context.write(to_proto(item))
            high = max(high, item.seq)

    @_mapped
    async def ListAgents(
        self, request: runtime_pb2.ListAgentsRequest, context: Context
    ) -> runtime_pb2.ListAgentsResponse:
        roster = await self._hub.agents(request.session_id, _user(context))
        return runtime_pb2.ListAgentsResponse(agents=[agent_proto(a) for a in roster.agents])

    @_mapped
    async def GetCurrentAgent(
        self, request: runtime_pb2.GetCurrentAgentRequest, context: Context
    ) -> runtime_pb2.GetCurrentAgentResponse:
        row = await self._owned(request.session_id, context)
        live = self._hub.live(row.id)
        if live is None:
            agent, last_seq, idle = row.agent, row.last_seq, row.state == "idle"
        else:
            session = live.session
            agent, last_seq = session.agent, session.last_seq
            idle = session.state == "idle" and not session.pending
        response = runtime_pb2.GetCurrentAgentResponse(
            session_id=row.id, agent=agent, last_seq=last_seq, idle=idle
        )
        if request.include_agent_switches:
            response.agent_switches.extend(
                switch_proto(switch) for switch in await self._hub.store.agent_switches(row.id)
            )
        return response

    @_mapped
    async def CreateSession(
        self, request: runtime_pb2.CreateSessionRequest, context: Context
    ) -> runtime_pb2.CreateSessionResponse:
        user = _user(context)
        session_id = request.session_id or f"s-{uuid.uuid4().hex}"
        row = await self._hub.create(session_id, user, request.title)
        return runtime_pb2.CreateSessionResponse(session=session_proto(row))

    @_mapped
    async def ListSessions(
        self, request: runtime_pb2.ListSessionsRequest, context: Context
    ) -> runtime_pb2.ListSessionsResponse:
        user = _user(context)
        size = min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        rows, token = await self._hub.store.list_sessions(
            user, limit=size, page_token=request.page_token
        )
        total = await self._hub.store.count_sessions(user)
        return runtime_pb2.ListSessionsResponse(
            sessions=[session_proto(row) for row in rows], next_page_token=token, total=total
        )

    @_mapped
    async def GetSession(
        self, request: runtime_pb2.GetSessionRequest, context: Context
    ) -> runtime_pb2.GetSessionResponse:
        row = await self._owned(request.session_id, context)
        live = self._hub.live(row.id)
        if live is not None:
            # The row's agent and count trail a turn in flight by one step.
            session = live.session
            row = replace(row, agent=session.agent, message_count=session.message_count)
        return runtime_pb2.GetSessionResponse(session=session_proto(row))

    @_mapped
    async def UpdateSession(
        self, request: runtime_pb2.UpdateSessionRequest, context: Context
    ) -> runtime_pb2.UpdateSessionResponse:
        user = _user(context)
        row = await self._hub.owned(request.session_id, user)
        if request.HasField("model"):
            row = await self._hub.choose_model(request.session_id, user, request.model)
        if request.HasField("title"):
            row = await self._hub.rename(request.session_id, user, request.title)
        return runtime_pb2.UpdateSessionResponse(session=session_proto(row))

    @_mapped
    async def DeleteSession(
        self, request: runtime_pb2.DeleteSessionRequest, context: Context
    ) -> runtime_pb2.DeleteSessionResponse:
        await self._hub.delete(request.session_id, _user(context))
        log.info("session_deleted", session_id=request.session_id)
        return runtime_pb2.DeleteSessionResponse(session_id=request.session_id)

    @_mapped
    async def GetSessionHistory(
        self, request: runtime_pb2.GetSessionHistoryRequest, context: Context
    ) -> runtime_pb2.GetSessionHistoryResponse:
        row = await self._owned(request.session_id, context)
        live = self._hub.live(row.id)
        response = runtime_pb2.GetSessionHistoryResponse(
            session_id=row.id,
            current_agent=live.session.agent if live else row.agent,
            model=row.model,
        )
        response.last_activity.FromDatetime(row.updated_at)
        response.agent_switches.extend(
            switch_proto(switch) for switch in await self._hub.store.agent_switches(row.id)
        )
        history = await self._hub.store.history(row.id)
        checkpoints = await self._hub.store.checkpoints.of_session(row.id)
        response.message_count = len(history)
        response.messages.extend(history_protos(history, checkpoints))
        return response

    @_mapped
    async def ListPendingApprovals(
        self, request: runtime_pb2.ListPendingApprovalsRequest, context: Context
    ) -> runtime_pb2.ListPendingApprovalsResponse:
        row = await self._owned(request.session_id, context)
        response = runtime_pb2.ListPendingApprovalsResponse(session_id=row.id)
        for call in await self._hub.store.pending_calls(row.id):
            if call.status not in AWAITING_DECISION:
                continue  # approved, or needing no approval: it waits for the IDE
            approval = response.approvals.add(
                call_id=call.call_id, tool_name=call.tool_name, reason=call.reason
            )
            approval.arguments.update(call.final_arguments or call.arguments)
            metadata = call_metadata(call.parent_call_id, call.job)
            if metadata:
                approval.metadata.CopyFrom(runtime_pb2.ToolCallMetadata(**metadata))
            if call.created_at is not None:
                approval.created_at.FromDatetime(call.created_at)
        return response

    @_mapped
    async def ListCheckpoints(
        self, request: runtime_pb2.ListCheckpointsRequest, context: Context
    ) -> runtime_pb2.ListCheckpointsResponse:
        row = await self._owned(request.session_id, context)
        store = self._hub.store
        history = await store.history(row.id)
        checkpoints = await store.checkpoints.of_session(row.id)
        return runtime_pb2.ListCheckpointsResponse(
            session_id=row.id, turns=turn_protos(history, checkpoints)
        )

    @_mapped
    async def UndoTurn(
        self, request: runtime_pb2.UndoTurnRequest, context: Context
    ) -> runtime_pb2.UndoTurnResponse:
        row = await self._owned(request.session_id, context)
        live = self._hub.live(row.id)
        if live is None or not live.stream.attached:
            raise Precondition(
                "no IDE is connected to this session here: an undo runs through the "
                "IDE's tool calls; connect the IDE and retry"
            )
        first = await live.undo(request.turn_id, None, live.client)
        return runtime_pb2.UndoTurnResponse(session_id=row.id, turn_id=str(first))

    @_mapped
    async def GetApprovalRules(
        self, request: runtime_pb2.GetApprovalRulesRequest, context: Context
    ) -> runtime_pb2.GetApprovalRulesResponse:
        rules = await self._hub.store.rules.get(_user(context))
        response = runtime_pb2.GetApprovalRulesResponse()
        fill_rules(response, rules, self._hub.rule_limits)
        return response

    @_mapped
    async def UpdateApprovalRules(
        self, request: runtime_pb2.UpdateApprovalRulesRequest, context: Context
    ) -> runtime_pb2.UpdateApprovalRulesResponse:
        user = _user(context)
        rules = rules_from_proto(request.rules)
        self._hub.rule_limits.check(rules)
        await self._hub.store.rules.set(user, rules)
        log.info("approval_rules_updated", allow=len(rules.allow), deny=len(rules.deny))
        response = runtime_pb2.UpdateApprovalRulesResponse()
        fill_rules(response, rules, self._hub.rule_limits)
        return response

    @_mapped
    async def ExportSession(
        self, request: runtime_pb2.ExportSessionRequest, context: Context
    ) -> runtime_pb2.ExportSessionResponse:
        row = await self._owned(request.session_id, context)
        store = self._hub.store
        history = await store.history(row.id)
        checkpoints = await store.checkpoints.of_session(row.id)
        live = self._hub.live(row.id)
        agent = live.session.agent if live else row.agent
        return runtime_pb2.ExportSessionResponse(
            session=session_proto(replace(row, agent=agent, message_count=len(history))),
            messages=history_protos(history, checkpoints),
            agent_switches=[switch_proto(s) for s in await store.agent_switches(row.id)],
            turns=turn_protos(history, checkpoints),
        )

    @_mapped
    async def ForkSession(
        self, request: runtime_pb2.ForkSessionRequest, context: Context
    ) -> runtime_pb2.ForkSessionResponse:
        row = await self._owned(request.session_id, context)
        through = request.through_message if request.HasField("through_message") else None
        fork = await self._hub.store.forks.fork(row.id, f"s-{uuid.uuid4().hex}", through)
        log.info("session_forked", fork_id=fork.id, messages=fork.message_count)
        return runtime_pb2.ForkSessionResponse(session=session_proto(fork))

    @_mapped
    async def ListModels(
        self, request: runtime_pb2.ListModelsRequest, context: Context
    ) -> runtime_pb2.ListModelsResponse:
        user = _user(context)
        response = runtime_pb2.ListModelsResponse(default_model=self._hub.default_model)
        if request.session_id:
            response.session_model = (await self._hub.owned(request.session_id, user)).model
        for name, window in await self._hub.model_windows():
            response.models.add(name=name, context_window=window)
        return response

    @_mapped
    async def GetInstructions(
        self, request: runtime_pb2.GetInstructionsRequest, context: Context
    ) -> runtime_pb2.GetInstructionsResponse:
        text = await self._hub.store.instructions.get(_user(context))
        return runtime_pb2.GetInstructionsResponse(text=text, max_chars=instructions.MAX_CHARS)

    @_mapped
    async def UpdateInstructions(
        self, request: runtime_pb2.UpdateInstructionsRequest, context: Context
    ) -> runtime_pb2.UpdateInstructionsResponse:
        text = await self._hub.store.instructions.set(_user(context), request.text)
        log.info("instructions_updated", chars=len(text))
        return runtime_pb2.UpdateInstructionsResponse(text=text, max_chars=instructions.MAX_CHARS)

    async def _owned(self, session_id: str, context: Context) -> SessionRow:
        return await self._hub.owned(session_id, _user(context))


DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100
