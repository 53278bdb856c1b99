"""The RPCs of a session's branches: ``RetryTurn``, ``EditUserMessage``,
``ListBranches``, ``RestoreBranch``.

:class:`BranchRpcs` is a part of :class:`runtime.service.AgentRuntimeServicer`
(which inherits it), kept apart because each is one concept: a retry or an
edit asked by REST runs on the live session like the ``retry`` and
``edit_message`` frames (:mod:`runtime.reruns`), through the IDE connected
to it, as an undo does.
"""

from __future__ import annotations

from runtime.boundary import Context, mapped, user
from runtime.commands import EditMessage, Retry
from runtime.conversation import Conversation
from runtime.errors import Precondition
from runtime.hub import SessionHub
from runtime.v1 import runtime_pb2
from runtime.wire import change_proto, history_protos


class BranchRpcs:
    """RPCs of the servicer that branch a session's history or list its branches."""

    _hub: SessionHub

    @mapped
    async def RetryTurn(
        self, request: runtime_pb2.RetryTurnRequest, context: Context
    ) -> runtime_pb2.RetryTurnResponse:
        live = await self._connected(request.session_id, context)
        change = await live.rerun(Retry(request.keep_changes), None, live.client)
        return runtime_pb2.RetryTurnResponse(change=change_proto(change))

    @mapped
    async def EditUserMessage(
        self, request: runtime_pb2.EditUserMessageRequest, context: Context
    ) -> runtime_pb2.EditUserMessageResponse:
        live = await self._connected(request.session_id, context)
        edit = EditMessage(request.index, request.content, request.keep_changes)
        change = await live.rerun(edit, None, live.client)
        return runtime_pb2.EditUserMessageResponse(change=change_proto(change))

    @mapped
    async def ListBranches(
        self, request: runtime_pb2.ListBranchesRequest, context: Context
    ) -> runtime_pb2.ListBranchesResponse:
        row = await self._hub.owned(request.session_id, user(context))
        response = runtime_pb2.ListBranchesResponse(session_id=row.id)
        for branch in await self._hub.store.branches.of_session(row.id):
            entry = response.branches.add(
                branch=branch.branch,
                reason=branch.reason,
                from_message=branch.from_position,
                messages=history_protos(branch.messages, []),
            )
            entry.created_at.FromDatetime(branch.created_at)
        return response

    @mapped
    async def RestoreBranch(
        self, request: runtime_pb2.RestoreBranchRequest, context: Context
    ) -> runtime_pb2.RestoreBranchResponse:
        change = await self._hub.restore_branch(
            request.session_id, user(context), request.branch, request.keep_changes
        )
        return runtime_pb2.RestoreBranchResponse(change=change_proto(change))

    async def _connected(self, session_id: str, context: Context) -> Conversation:
        """The live session an IDE is connected to here; raises Precondition otherwise."""
        row = await self._hub.owned(session_id, user(context))
        live = self._hub.live(row.id)
        if live is None or not live.stream.attached:
            raise Precondition(
                "no IDE is connected to this session here: a re-run runs through the "
                "IDE's tool calls; connect the IDE and retry"
            )
        return live
