"""The IDE's REST views, answered on the WebSocket port; thin I/O.

Each view is one owner-scoped unary call to the runtime (``x-user-id`` = the
token's ``sub``), bounded by ``timeout``; :mod:`gateway.views` builds the
JSON and :mod:`gateway.codes` maps failures to statuses. websockets hands
``process_request`` every bodiless request whatever its method, so the
bodiless ``POST /api/v1/sessions`` the IDE sends works here too; a request
with a body is refused by the library before it reaches us.

Routes (``{sid}`` is a session id)::

    GET  /api/v1/agents                          → views.agents
    GET  /api/v1/agents/{sid}/current            → views.current_agent
    GET  /api/v1/sessions?page_size=&page_token= → views.sessions
    POST /api/v1/sessions?title=                 → 201 views.created_session
    GET  /api/v1/sessions/{sid}/history          → views.history
    GET  /api/v1/sessions/{sid}/pending-approvals → views.pending_approvals
"""

from __future__ import annotations

import http
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import grpc
import structlog
from google.protobuf.message import Message
from websockets.http11 import Response

from gateway import views
from gateway.codes import json_response, refuse, response_for_status
from mesh.grpc_server import internal_metadata
from mesh.ids import SESSION_ID
from runtime.v1 import runtime_pb2

if TYPE_CHECKING:
    from runtime.v1.runtime_pb2_grpc import AgentRuntimeServiceAsyncStub

log = structlog.get_logger("gateway.rest")

_MAX_TITLE_CHARS = 200
_MAX_PAGE_TOKEN_CHARS = 1024
_MAX_PAGE_SIZE_DIGITS = 4

_ROUTES: tuple[tuple[str, re.Pattern[str], str], ...] = (
    ("GET", re.compile(r"/api/v1/agents"), "list_agents"),
    ("GET", re.compile(r"/api/v1/agents/(?P<sid>[^/]+)/current"), "current_agent"),
    ("GET", re.compile(r"/api/v1/sessions"), "list_sessions"),
    ("POST", re.compile(r"/api/v1/sessions"), "create_session"),
    ("GET", re.compile(r"/api/v1/sessions/(?P<sid>[^/]+)/history"), "history"),
    ("GET", re.compile(r"/api/v1/sessions/(?P<sid>[^/]+)/pending-approvals"), "approvals"),
)


@dataclass(frozen=True, slots=True)
class Route:
    """A matched view: its name and the session id in the path, if any."""

    name: str
    session_id: str | None


class BadRequest(Exception):
    """A path or query parameter is unusable; becomes a 400."""

    def __init__(self, error: str, description: str) -> None:
        super().__init__(description)
        self.error = error
        self.description = description


def match(method: str, path: str) -> Route | http.HTTPStatus | None:
    """The view for ``method`` and ``path``; 405 when only the method is
    wrong; None when no view has that path."""
    wrong_method = False
    for route_method, pattern, name in _ROUTES:
        found = pattern.fullmatch(path)
        if found is None:
            continue
        if route_method != method:
            wrong_method = True
            continue
        return Route(name, found.groupdict().get("sid"))
    return http.HTTPStatus.METHOD_NOT_ALLOWED if wrong_method else None


def is_view_path(path: str) -> bool:
    return any(pattern.fullmatch(path) for _, pattern, _ in _ROUTES)


class RestViews:
    """Answers matched routes by calling the runtime as ``user``."""

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

    async def answer(self, route: Route, query: str, *, user: str, request_id: str) -> Response:
        """The HTTP response of one view; never raises for runtime failures."""
        try:
            request = _build_request(route, parse_qs(query, max_num_fields=16))
        except BadRequest as exc:
            return refuse(http.HTTPStatus.BAD_REQUEST, exc.error, exc.description)
        except ValueError:
            return refuse(http.HTTPStatus.BAD_REQUEST, "invalid_request", "unusable query")
        method, build, status = _CALLS[route.name]
        try:
            reply = await self.call(method, request, user=user, request_id=request_id)
        except grpc.aio.AioRpcError as exc:
            log.info("view_failed", view=route.name, status=exc.code().name)
            return response_for_status(exc.code(), exc.details())
        return json_response(status, build(reply))

    async def call(self, method: str, request: Message, *, user: str, request_id: str) -> Any:
        """One unary runtime call on behalf of ``user``, bounded by the
        timeout; raises grpc.aio.AioRpcError (DEADLINE_EXCEEDED on timeout)."""
        stub: Callable[..., Awaitable[Any]] = getattr(self._runtime, method)
        return await stub(
            request,
            metadata=internal_metadata(self._key, user=user, request_id=request_id),
            timeout=self._timeout,
        )


def _build_request(route: Route, query: Mapping[str, list[str]]) -> Message:
    if route.session_id is not None and not SESSION_ID.fullmatch(route.session_id):
        raise BadRequest(
            "invalid_session_id", "session ids are 1-128 characters of A-Z a-z 0-9 . _ : -"
        )
    sid = route.session_id or ""
    if route.name == "list_agents":
        return runtime_pb2.ListAgentsRequest()
    if route.name == "current_agent":
        return runtime_pb2.GetCurrentAgentRequest(session_id=sid)
    if route.name == "history":
        return runtime_pb2.GetSessionHistoryRequest(session_id=sid)
    if route.name == "approvals":
        return runtime_pb2.ListPendingApprovalsRequest(session_id=sid)
    if route.name == "list_sessions":
        size = _single(query, "page_size") or "0"
        if not size.isdigit() or len(size) > _MAX_PAGE_SIZE_DIGITS:
            raise BadRequest("invalid_page_size", "page_size must be a non-negative integer")
        token = _single(query, "page_token") or ""
        if len(token) > _MAX_PAGE_TOKEN_CHARS:
            raise BadRequest("invalid_page_token", "page_token is too long")
        return runtime_pb2.ListSessionsRequest(page_size=int(size), page_token=token)
    assert route.name == "create_session"
    title = _single(query, "title") or ""
    if len(title) > _MAX_TITLE_CHARS:
        raise BadRequest("invalid_title", f"title is longer than {_MAX_TITLE_CHARS} characters")
    if "session_id" in query or "id" in query:
        # The server picks the id (128 random bits): a client-chosen one
        # would have to be refused when taken, and so would tell whoever
        # asks that someone else's session has it.
        raise BadRequest(
            "invalid_request", "the server chooses a new session's id; send only title"
        )
    return runtime_pb2.CreateSessionRequest(title=title)


def _single(query: Mapping[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise BadRequest("invalid_request", f"{name} is given more than once")
    return values[0]


_CALLS: Mapping[str, tuple[str, Callable[[Any], views.Body], http.HTTPStatus]] = {
    "list_agents": ("ListAgents", views.agents, http.HTTPStatus.OK),
    "current_agent": ("GetCurrentAgent", views.current_agent, http.HTTPStatus.OK),
    "list_sessions": ("ListSessions", views.sessions, http.HTTPStatus.OK),
    "create_session": ("CreateSession", views.created_session, http.HTTPStatus.CREATED),
    "history": ("GetSessionHistory", views.history, http.HTTPStatus.OK),
    "approvals": ("ListPendingApprovals", views.pending_approvals, http.HTTPStatus.OK),
}
