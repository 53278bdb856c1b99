"""The IDE's REST views: one typed table (:data:`VIEWS`), served on two ports; thin I/O.

Each view is one owner-scoped unary call to the runtime (``x-user-id`` = the
token's ``sub``), bounded by ``timeout``; :mod:`gateway.views` builds the
JSON, the client's profile (:meth:`gateway.profiles.ClientProfile.rest_body`)
reshapes it where its shape clashes with ours, and :mod:`gateway.codes`
maps failures to statuses.

The same table answers on the WebSocket port (``process_request``) and on
the REST port (:mod:`gateway.rest_server`, ``GATEWAY__REST_PORT``). websockets
hands ``process_request`` every bodiless request whatever its method and
refuses any request with a body before it reaches us, which keeps the edge
pure; so a view that reads a body (``PATCH``, ``PUT``) is usable only on the REST
port, where starlette reads it, and the front door routes every REST path
there. On the WebSocket port such a view answers 400, saying where to go.

Routes (``{sid}`` is a session id), one :class:`View` each in :data:`VIEWS`::

    GET    /api/v1/agents?session_id=              → views.agents
    GET    /api/v1/agents/{sid}/current            → views.current_agent
    GET    /api/v1/sessions?page_size=&page_token= → views.sessions
    POST   /api/v1/sessions?title=                 → 201 views.created_session
    GET    /api/v1/sessions/{sid}                  → views.one_session
    PATCH  /api/v1/sessions/{sid}  {"title", "model"} → views.updated_session
    DELETE /api/v1/sessions/{sid}                  → views.deleted_session
    GET    /api/v1/sessions/{sid}/history          → views.history
    GET    /api/v1/sessions/{sid}/pending-approvals → views.pending_approvals
    GET    /api/v1/sessions/{sid}/checkpoints      → views.checkpoints
    POST   /api/v1/sessions/{sid}/undo?turn_id=    → 202 views.undo_started
    GET    /api/v1/sessions/{sid}/export?format=   → exports.as_json / as_markdown
    POST   /api/v1/sessions/{sid}/fork?message=    → 201 views.forked_session
    POST   /api/v1/sessions/{sid}/retry?keep_changes= → 202 views.retry_started
    POST   /api/v1/sessions/{sid}/edit?message= {"content", …} → 202 views.edit_started
    GET    /api/v1/sessions/{sid}/branches         → views.branches
    POST   /api/v1/sessions/{sid}/branches?branch=N&keep_changes= → views.branch_restored
    GET    /api/v1/approval-rules                  → views.approval_rules
    GET    /api/v1/models?session_id=              → views.models
    PUT    /api/v1/approval-rules  {"allow": …}    → views.approval_rules
    GET    /api/v1/instructions                    → views.instructions
    PUT    /api/v1/instructions    {"text": …}     → views.instructions

:class:`RuntimeReads` also makes the two reads the handshake needs
(``GetCurrentAgent``, ``CreateSession``) through the same typed calls.
"""

from __future__ import annotations

import http
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar
from urllib.parse import parse_qs

import grpc
import structlog
from google.protobuf.message import Message
from websockets.http11 import Response

from gateway import exports, requests, views
from gateway.codes import json_response, refuse_query, response_for_status, text_response
from gateway.errors import InvalidQuery
from gateway.profiles import STRICT, ClientProfile
from gateway.requests import Params, Query
from mesh.grpc_server import internal_metadata
from mesh.ids import SESSION_ID, SESSION_ID_RULE
from runtime.v1 import runtime_pb2

if TYPE_CHECKING:
    from runtime.v1.runtime_pb2_grpc import AgentRuntimeServiceAsyncStub

log = structlog.get_logger("gateway.rest")

"""What a session id may look like, in paths and queries."""

MAX_BODY_BYTES = 64 * 1024
"""The largest request body a view reads: a title is at most 200 characters,
a user's approval rules a few kilobytes."""

RequestT = TypeVar("RequestT", bound=Message)
ResponseT = TypeVar("ResponseT", bound=Message)


@dataclass(frozen=True, slots=True)
class Route:
    """A matched view: its name and the session id in the path, if any."""

    name: str
    session_id: str | None


Render = Callable[[ResponseT], views.Body | views.Document]


@dataclass(frozen=True, slots=True)
class View(Generic[RequestT, ResponseT]):
    """One REST view: its route, the runtime read it makes and its answer.

    ``request`` builds the read's request from the :class:`Params`, raising
    :class:`InvalidQuery`; ``reads_body`` views take a JSON object body (the
    REST port only), the others refuse one;
    ``rpc`` picks the stub's method (typed, so a renamed RPC fails mypy, not
    a request); ``body`` renders the reply (:mod:`gateway.views`): a JSON
    body, or a :class:`~gateway.views.Document` answered with its media
    type. A view with ``formats`` renders with the one its ``?format=``
    names (absent: ``body``).
    """

    method: str
    path: re.Pattern[str]
    request: Callable[[Params], RequestT]
    rpc: Callable[
        [AgentRuntimeServiceAsyncStub], grpc.aio.UnaryUnaryMultiCallable[RequestT, ResponseT]
    ]
    body: Render[ResponseT]
    status: http.HTTPStatus = http.HTTPStatus.OK
    reads_body: bool = False
    formats: Mapping[str, Render[ResponseT]] = field(default_factory=dict)

    def renderer(self, query: Query) -> Render[ResponseT]:
        """The rendering ``?format=`` asks for; raises InvalidQuery for one it has not."""
        name = requests.single(query, "format") if self.formats else None
        if name is None:
            return self.body
        if name not in self.formats:
            raise InvalidQuery("invalid_format", f"format is one of {', '.join(self.formats)}")
        return self.formats[name]


def match(method: str, path: str) -> Route | http.HTTPStatus | None:
    """The view for ``method`` and ``path``; 405 when only the method is
    wrong; None when no view has that path."""
    wrong_method = False
    for name, view in VIEWS.items():
        found = view.path.fullmatch(path)
        if found is None:
            continue
        if view.method != method:
            wrong_method = True
            continue
        return Route(name, found.groupdict().get("sid"))
    return http.HTTPStatus.METHOD_NOT_ALLOWED if wrong_method else None


class RuntimeReads:
    """Unary runtime calls on behalf of a user: the REST views
    (:meth:`answer`) and the handshake's reads.

    Every call is bounded by ``timeout`` and raises grpc.aio.AioRpcError
    (DEADLINE_EXCEEDED on timeout) except :meth:`answer`, which maps
    failures to HTTP statuses.
    """

    def __init__(
        self,
        runtime: AgentRuntimeServiceAsyncStub,
        *,
        internal_api_key: str,
        timeout: float,
    ) -> None:
        self._runtime = runtime
        self._key = internal_api_key
        self._timeout = timeout

    async def answer(
        self,
        route: Route,
        query: str,
        *,
        user: str,
        request_id: str,
        body: bytes | None = None,
        profile: ClientProfile = STRICT,
    ) -> Response:
        """The HTTP response of one view; never raises for runtime failures.

        ``body`` is the request's body as read by the REST port (None on the
        WebSocket port, where no request has one): a JSON object for a view
        that reads one, absent or empty for any other (else 400).
        ``profile`` is the client's (by its token's ``client_id``), which
        shapes the answer where its shape clashes with ours.
        """
        view = VIEWS[route.name]
        try:
            if route.session_id is not None and not SESSION_ID.fullmatch(route.session_id):
                raise InvalidQuery("invalid_session_id", _SESSION_ID_RULE)
            params = Params(
                route.session_id or "",
                parse_qs(query, max_num_fields=16),
                _json_object(body) if view.reads_body else _no_body(body),
            )
            request = view.request(params)
            render = view.renderer(params.query)
        except InvalidQuery as exc:
            return refuse_query(exc)
        except ValueError:
            return refuse_query(InvalidQuery("invalid_request", "unusable query"))
        try:
            reply = await self._call(view.rpc(self._runtime), request, user, request_id)
        except grpc.aio.AioRpcError as exc:
            log.info("view_failed", view=route.name, status=exc.code().name)
            return response_for_status(exc.code(), exc.details())
        answer = render(reply)
        if isinstance(answer, views.Document):
            return text_response(view.status, answer.media_type, answer.text)
        return json_response(view.status, profile.rest_body(route.name, answer))

    async def current_agent(
        self, session_id: str, *, user: str, request_id: str
    ) -> runtime_pb2.GetCurrentAgentResponse:
        """``GetCurrentAgent``: the session's agent, ``last_seq`` and ``idle``."""
        request = runtime_pb2.GetCurrentAgentRequest(session_id=session_id)
        return await self._call(self._runtime.GetCurrentAgent, request, user, request_id)

    async def create_session(
        self, session_id: str, *, user: str, request_id: str
    ) -> runtime_pb2.CreateSessionResponse:
        """``CreateSession`` with this id, owned by ``user``."""
        request = runtime_pb2.CreateSessionRequest(session_id=session_id)
        return await self._call(self._runtime.CreateSession, request, user, request_id)

    async def _call(
        self,
        rpc: grpc.aio.UnaryUnaryMultiCallable[RequestT, ResponseT],
        request: RequestT,
        user: str,
        request_id: str,
    ) -> ResponseT:
        return await rpc(
            request,
            metadata=internal_metadata(self._key, user=user, request_id=request_id),
            timeout=self._timeout,
        )


_SESSION_ID_RULE = f"session ids are {SESSION_ID_RULE}"


def _json_object(body: bytes | None) -> Mapping[str, Any] | None:
    if not body:
        return None
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise InvalidQuery("invalid_body", "the body is not JSON") from None
    if not isinstance(value, dict):
        raise InvalidQuery("invalid_body", "the body must be a JSON object")
    return value


def _no_body(body: bytes | None) -> Mapping[str, Any] | None:
    if body:
        raise InvalidQuery("invalid_body", "this view takes no request body")
    return None


# Each view is built on its own (not inside the mapping's ``View[Any, Any]``)
# so that mypy checks its request, stub method and body against each other.
_AGENTS = View(
    "GET",
    re.compile(r"/api/v1/agents"),
    requests.list_agents,
    lambda stub: stub.ListAgents,
    views.agents,
)
_CURRENT_AGENT = View(
    "GET",
    re.compile(r"/api/v1/agents/(?P<sid>[^/]+)/current"),
    lambda params: runtime_pb2.GetCurrentAgentRequest(
        session_id=params.session_id, include_agent_switches=True
    ),
    lambda stub: stub.GetCurrentAgent,
    views.current_agent,
)
_SESSIONS = View(
    "GET",
    re.compile(r"/api/v1/sessions"),
    requests.list_sessions,
    lambda stub: stub.ListSessions,
    views.sessions,
)
_NEW_SESSION = View(
    "POST",
    re.compile(r"/api/v1/sessions"),
    requests.create_session,
    lambda stub: stub.CreateSession,
    views.created_session,
    http.HTTPStatus.CREATED,
)
_SESSION_PATH = re.compile(r"/api/v1/sessions/(?P<sid>[^/]+)")
_SESSION = View(
    "GET",
    _SESSION_PATH,
    lambda params: runtime_pb2.GetSessionRequest(session_id=params.session_id),
    lambda stub: stub.GetSession,
    views.one_session,
)
_RENAME = View(
    "PATCH",
    _SESSION_PATH,
    requests.update_session,
    lambda stub: stub.UpdateSession,
    views.updated_session,
    reads_body=True,
)
_DELETE = View(
    "DELETE",
    _SESSION_PATH,
    lambda params: runtime_pb2.DeleteSessionRequest(session_id=params.session_id),
    lambda stub: stub.DeleteSession,
    views.deleted_session,
)
_HISTORY = View(
    "GET",
    re.compile(r"/api/v1/sessions/(?P<sid>[^/]+)/history"),
    lambda params: runtime_pb2.GetSessionHistoryRequest(session_id=params.session_id),
    lambda stub: stub.GetSessionHistory,
    views.history,
)
_APPROVALS = View(
    "GET",
    re.compile(r"/api/v1/sessions/(?P<sid>[^/]+)/pending-approvals"),
    lambda params: runtime_pb2.ListPendingApprovalsRequest(session_id=params.session_id),
    lambda stub: stub.ListPendingApprovals,
    views.pending_approvals,
)

_CHECKPOINTS = View(
    "GET",
    re.compile(r"/api/v1/sessions/(?P<sid>[^/]+)/checkpoints"),
    lambda params: runtime_pb2.ListCheckpointsRequest(session_id=params.session_id),
    lambda stub: stub.ListCheckpoints,
    views.checkpoints,
)
_UNDO = View(
    "POST",
    re.compile(r"/api/v1/sessions/(?P<sid>[^/]+)/undo"),
    requests.undo,
    lambda stub: stub.UndoTurn,
    views.undo_started,
    http.HTTPStatus.ACCEPTED,
)
_EXPORT = View(
    "GET",
    re.compile(r"/api/v1/sessions/(?P<sid>[^/]+)/export"),
    lambda params: runtime_pb2.ExportSessionRequest(session_id=params.session_id),
    lambda stub: stub.ExportSession,
    exports.as_json,
    formats={"json": exports.as_json, "markdown": exports.as_markdown},
)
_FORK = View(
    "POST",
    re.compile(r"/api/v1/sessions/(?P<sid>[^/]+)/fork"),
    requests.fork,
    lambda stub: stub.ForkSession,
    views.forked_session,
    http.HTTPStatus.CREATED,
)
_RETRY = View(
    "POST",
    re.compile(r"/api/v1/sessions/(?P<sid>[^/]+)/retry"),
    requests.retry,
    lambda stub: stub.RetryTurn,
    views.retry_started,
    http.HTTPStatus.ACCEPTED,
)
_EDIT = View(
    "POST",
    re.compile(r"/api/v1/sessions/(?P<sid>[^/]+)/edit"),
    requests.edit_message,
    lambda stub: stub.EditUserMessage,
    views.edit_started,
    http.HTTPStatus.ACCEPTED,
    reads_body=True,
)
_BRANCHES_PATH = re.compile(r"/api/v1/sessions/(?P<sid>[^/]+)/branches")
_BRANCHES = View(
    "GET",
    _BRANCHES_PATH,
    lambda params: runtime_pb2.ListBranchesRequest(session_id=params.session_id),
    lambda stub: stub.ListBranches,
    views.branches,
)
_RESTORE = View(
    "POST",
    _BRANCHES_PATH,
    requests.restore_branch,
    lambda stub: stub.RestoreBranch,
    views.branch_restored,
)
_RULES_PATH = re.compile(r"/api/v1/approval-rules")
_RULES = View(
    "GET",
    _RULES_PATH,
    lambda params: runtime_pb2.GetApprovalRulesRequest(),
    lambda stub: stub.GetApprovalRules,
    views.approval_rules,
)
_UPDATE_RULES = View(
    "PUT",
    _RULES_PATH,
    requests.update_rules,
    lambda stub: stub.UpdateApprovalRules,
    views.approval_rules,
    reads_body=True,
)
_INSTRUCTIONS_PATH = re.compile(r"/api/v1/instructions")
_INSTRUCTIONS = View(
    "GET",
    _INSTRUCTIONS_PATH,
    lambda params: runtime_pb2.GetInstructionsRequest(),
    lambda stub: stub.GetInstructions,
    views.instructions,
)
_UPDATE_INSTRUCTIONS = View(
    "PUT",
    _INSTRUCTIONS_PATH,
    requests.update_instructions,
    lambda stub: stub.UpdateInstructions,
    views.instructions,
    reads_body=True,
)

_MODELS = View(
    "GET",
    re.compile(r"/api/v1/models"),
    requests.list_models,
    lambda stub: stub.ListModels,
    views.models,
)

VIEWS: Mapping[str, View[Any, Any]] = {
    "list_agents": _AGENTS,
    "current_agent": _CURRENT_AGENT,
    "list_sessions": _SESSIONS,
    "create_session": _NEW_SESSION,
    "session": _SESSION,
    "rename_session": _RENAME,
    "delete_session": _DELETE,
    "history": _HISTORY,
    "approvals": _APPROVALS,
    "checkpoints": _CHECKPOINTS,
    "undo": _UNDO,
    "export": _EXPORT,
    "fork": _FORK,
    "retry": _RETRY,
    "edit_message": _EDIT,
    "branches": _BRANCHES,
    "restore_branch": _RESTORE,
    "approval_rules": _RULES,
    "update_approval_rules": _UPDATE_RULES,
    "list_models": _MODELS,
    "instructions": _INSTRUCTIONS,
    "update_instructions": _UPDATE_INSTRUCTIONS,
}
"""Every REST view by the name its :class:`Route` carries, in matching order."""
