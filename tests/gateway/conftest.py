"""Gateway test harness: keys, a real JWKS endpoint on loopback, a token
minter, and a scripted fake runtime on a real gRPC server in front of which
the real gateway runs (every byte crosses a real WebSocket and HTTP/2)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import grpc
import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from google.protobuf import struct_pb2, timestamp_pb2
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from websockets.asyncio.client import ClientConnection, connect
from websockets.frames import Frame, Opcode

from gateway.__main__ import running_gateway
from gateway.config import GatewayConfig
from gateway.jwks import JwksCache, TokenVerifier
from gateway.rest import SESSION_ID
from gateway.server import Gateway
from mesh.grpc_server import MeshServer
from runtime.v1 import runtime_pb2 as pb
from runtime.v1 import runtime_pb2_grpc

ISSUER = "http://issuer.test"
AUDIENCE = "codelab-api"


@dataclass
class SigningKey:
    kid: str
    alg: str
    private: Any

    def public_jwk(self) -> dict[str, Any]:
        algorithm = RSAAlgorithm if self.alg == "RS256" else ECAlgorithm
        jwk: dict[str, Any] = json.loads(algorithm.to_jwk(self.private.public_key()))
        jwk.update(kid=self.kid, use="sig", alg=self.alg)
        return jwk


@pytest.fixture(scope="session")
def rsa_key() -> SigningKey:
    return SigningKey(
        "rsa-1", "RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )


@pytest.fixture(scope="session")
def ec_key() -> SigningKey:
    return SigningKey("ec-1", "ES256", ec.generate_private_key(ec.SECP256R1()))


@dataclass
class JwksEndpoint:
    """A JWKS document served over real HTTP; tests mutate ``keys``."""

    keys: list[dict[str, Any]] = field(default_factory=list)
    status: int = 200
    hits: int = 0
    url: str = ""


@pytest.fixture
def jwks_endpoint(rsa_key: SigningKey, ec_key: SigningKey) -> Iterator[JwksEndpoint]:
    endpoint = JwksEndpoint(keys=[rsa_key.public_jwk(), ec_key.public_jwk()])

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            endpoint.hits += 1
            body = json.dumps({"keys": endpoint.keys}).encode()
            self.send_response(endpoint.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    endpoint.url = f"http://127.0.0.1:{server.server_address[1]}/.well-known/jwks.json"
    try:
        yield endpoint
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@dataclass
class Feed:
    """A revocation feed over real HTTP; tests append to ``entries``."""

    entries: list[dict[str, Any]] = field(default_factory=list)
    requests: list[tuple[str | None, str | None]] = field(default_factory=list)
    status: int = 200
    url: str = ""

    def revoke(self, sub: str, not_before: float) -> None:
        self.entries.append(
            {"id": len(self.entries) + 1, "sub": sub, "not_before": not_before, "reason": "test"}
        )


@pytest.fixture
def feed() -> Iterator[Feed]:
    state = Feed()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            after = parse_qs(urlsplit(self.path).query).get("after", [None])[0]
            state.requests.append((after, self.headers.get("X-Internal-Auth")))
            start = int(after or 0)
            page = [entry for entry in state.entries if entry["id"] > start]
            body = json.dumps(
                {"revocations": page, "next": page[-1]["id"] if page else start}
            ).encode()
            self.send_response(state.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/internal/revocations"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
async def http_client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=5) as client:
        yield client


@pytest.fixture
def verifier(http_client: httpx.AsyncClient, jwks_endpoint: JwksEndpoint) -> TokenVerifier:
    return TokenVerifier(
        JwksCache(http_client, jwks_endpoint.url), issuer=ISSUER, audience=AUDIENCE, leeway=5
    )


def mint(
    key: SigningKey,
    *,
    headers: dict[str, Any] | None = None,
    algorithm: str | None = None,
    **claims: Any,
) -> str:
    """A signed token; ``claims`` override the defaults, ``None`` removes one."""
    now = int(time.time())
    payload: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "user-1",
        "iat": now,
        "exp": now + 300,
        "scope": "chat tools",
        "client_id": "ide",
        "jti": uuid.uuid4().hex,
    }
    payload.update(claims)
    payload = {name: value for name, value in payload.items() if value is not None}
    header = {"kid": key.kid, "typ": "at+jwt", **(headers or {})}
    return jwt.encode(payload, key.private, algorithm=algorithm or key.alg, headers=header)


# ---------------------------------------------------------------------------
# The scripted runtime and the gateway in front of it

INTERNAL_KEY = "internal-test-key"
_DELETED = object()
"""Put in the inboxes of a deleted session's streams: they end FAILED_PRECONDITION."""
TIMEOUT = 10
CREATED = timestamp_pb2.Timestamp(seconds=1_700_000_000)


class FakeRuntime(runtime_pb2_grpc.AgentRuntimeServiceServicer):
    """Answers open, echoes user messages as three deltas, obeys scripts.

    ``abort:<STATUS>`` ends the stream with that status; ``partial:<STATUS>``
    sends the first delta, then ends the stream with that status; ``pause``
    sends the first delta and waits for ``go`` before the rest; ``hang``
    blocks the turn until the call is cancelled; ``flood`` streams 16 KiB
    deltas until cancelled (``flooded`` counts the bytes); ``write <path>``
    proposes a ``write_file`` that waits for approval (listed by
    ListPendingApprovals, as are ``approvals`` a test sets). ``failures``
    makes a unary method abort with a status.

    What the gateway relies on behaves as in the real runtime, which
    tests/contract/test_runtime_contract.py checks by running the same cases
    against both: sessions have owners (``open`` of an unknown session
    creates it for the caller; another user's is PERMISSION_DENIED, an
    unknown one NOT_FOUND for the unary reads); a session's events are
    numbered per session and go to every stream attached to it (the stream
    whose message started the turn first); ``session_opened`` carries seq 0,
    ``created`` when this open made the session, and ``recovered`` unless
    the resume point is past the session's last seq; ``open`` with
    ``resume_after_seq`` first replays the events after it; CreateSession
    refuses a malformed id (INVALID_ARGUMENT) and a taken one
    (ALREADY_EXISTS); ListSessions lists newest first, caps ``page_size`` at
    100 and pages with opaque tokens (INVALID_ARGUMENT for one it did not
    issue) and reports the user's ``total``; GetSession, UpdateSession
    (title) and DeleteSession are owner-scoped like the reads; a deleted
    session's id stays taken, and every call naming it (``open`` included,
    and the streams attached when it is deleted) is FAILED_PRECONDITION.
    ``held`` makes the opens of a request id wait for its event.
    """

    def __init__(self) -> None:
        self.requests: asyncio.Queue[pb.ConverseRequest] = asyncio.Queue()
        self.metadata: list[dict[str, str]] = []
        self.unary_metadata: list[tuple[str, dict[str, str]]] = []
        self.cancelled = asyncio.Event()
        self.ended = asyncio.Event()
        """Set when any Converse call has ended, however."""
        self.sessions: dict[str, tuple[str, pb.Session]] = {}
        self.deleted: set[str] = set()
        """Ids of deleted sessions (taken for good)."""
        self.failures: dict[str, grpc.StatusCode] = {}
        self.states: dict[str, tuple[int, bool]] = {}
        """(last_seq, idle) GetCurrentAgent reports; default (0, idle).
        Events a session numbers move its last_seq."""
        self.current_requests: list[pb.GetCurrentAgentRequest] = []
        """Every GetCurrentAgent request, in order."""
        self.approvals: dict[str, list[pb.PendingApproval]] = {}
        """Each session's tool calls waiting for a human decision."""
        self.page_tokens: dict[str, str] = {}
        """The opaque page tokens given out: token → the last session id of its page."""
        self.flooded = 0
        self.events: dict[str, list[pb.ConverseResponse]] = {}
        """Each session's numbered events, for replays."""
        self.streams: dict[str, list[asyncio.Queue[Any]]] = {}
        """The inboxes of the streams attached to each session."""
        self.held: dict[str, asyncio.Event] = {}
        self.go = asyncio.Event()
        self.forks: list[pb.ForkSessionRequest] = []
        """Every ForkSession request, in order."""

    def own(
        self, session_id: str, user: str, title: str = "", agent: str = "orchestrator"
    ) -> pb.Session:
        session = pb.Session(
            session_id=session_id,
            title=title,
            agent=agent,
            created_at=CREATED,
            updated_at=CREATED,
        )
        self.sessions[session_id] = (user, session)
        return session

    def publish(
        self, session_id: str, source: asyncio.Queue[Any] | None = None, **event: Any
    ) -> pb.ConverseResponse:
        """Number an event of ``session_id`` and send it to every stream
        attached to it but ``source`` (the stream whose turn made it, which
        sends it itself); returns it."""
        last_seq, idle = self.states.get(session_id, (0, True))
        response = pb.ConverseResponse(seq=last_seq + 1, **event)
        self.states[session_id] = (response.seq, idle)
        self.events.setdefault(session_id, []).append(response)
        for inbox in self.streams.get(session_id, ()):
            if inbox is not source:
                inbox.put_nowait(response)
        return response

    async def _read(self, requests: Any, inbox: asyncio.Queue[Any]) -> None:
        try:
            async for request in requests:
                await self.requests.put(request)
                inbox.put_nowait(request)
        finally:
            inbox.put_nowait(None)  # the client half-closed (or is gone)

    async def Converse(self, request_iterator: Any, context: Any) -> AsyncIterator[Any]:
        metadata = {item.key: item.value for item in context.invocation_metadata()}
        self.metadata.append(metadata)
        # A call cancelled while the handler is blocked in a write ends it
        # without a CancelledError, so watch the call itself.
        context.add_done_callback(lambda call: self.ended.set())
        # The client's requests and the events of turns other streams run.
        inbox: asyncio.Queue[Any] = asyncio.Queue()
        reader = asyncio.create_task(self._read(request_iterator, inbox))
        reader.add_done_callback(lambda task: task.cancelled() or task.exception())
        session_id = ""
        try:
            while True:
                item = await inbox.get()
                if item is None:
                    return
                if item is _DELETED:
                    await context.abort(
                        grpc.StatusCode.FAILED_PRECONDITION, "the session was deleted"
                    )
                if isinstance(item, pb.ConverseResponse):
                    yield item
                    continue
                request = item
                kind = request.WhichOneof("event")
                if kind == "open":
                    user = metadata.get("x-user-id", "")
                    if request.open.session_id in self.deleted:
                        await context.abort(
                            grpc.StatusCode.FAILED_PRECONDITION, "the session was deleted"
                        )
                    owner = self.sessions.get(request.open.session_id)
                    if owner is not None and owner[0] != user:
                        await context.abort(grpc.StatusCode.PERMISSION_DENIED, "not yours")
                    held = self.held.get(metadata.get("x-request-id", ""))
                    if held is not None:
                        await held.wait()
                    session_id = request.open.session_id
                    owner = self.sessions.get(session_id)
                    created = owner is None
                    session = self.own(session_id, user) if owner is None else owner[1]
                    last_seq = self.states.get(session_id, (0, True))[0]
                    resumed = request.open.HasField("resume_after_seq")
                    after = request.open.resume_after_seq
                    recovered = not resumed or after <= last_seq
                    replay = [
                        e
                        for e in self.events.get(session_id, ())
                        if resumed and recovered and e.seq > after
                    ]
                    self.streams.setdefault(session_id, []).append(inbox)
                    yield pb.ConverseResponse(
                        session_opened=pb.SessionOpened(
                            session_id=session_id,
                            agent=session.agent,
                            created=created,
                            recovered=recovered,
                            last_seq=last_seq,
                        ),
                    )
                    for event in replay:
                        yield event
                elif kind == "resume":
                    yield pb.ConverseResponse(
                        seq=request.resume.after_seq + 1,
                        assistant_delta=pb.AssistantDelta(text="replayed"),
                    )
                elif kind == "user_message":
                    text = request.user_message.content
                    if text.startswith("abort:"):
                        await context.abort(grpc.StatusCode[text[6:]], "scripted failure")
                    if text == "hang":
                        await asyncio.Event().wait()
                    if text.startswith("write "):
                        yield self._propose_write(session_id, inbox, text.split()[1])
                        continue
                    if text == "flood":
                        chunk = "x" * 16384
                        while True:
                            self.flooded += len(chunk)
                            yield self.publish(
                                session_id, inbox, assistant_delta=pb.AssistantDelta(text=chunk)
                            )
                    for piece in ("echo: ", text, "!"):
                        yield self.publish(
                            session_id, inbox, assistant_delta=pb.AssistantDelta(text=piece)
                        )
                        if text.startswith("partial:"):
                            await context.abort(grpc.StatusCode[text[8:]], "scripted failure")
                        if text == "pause":
                            await self.go.wait()
                    yield self.publish(
                        session_id,
                        inbox,
                        turn_done=pb.TurnDone(
                            status=pb.TURN_STATUS_COMPLETED,
                            usage=pb.Usage(prompt_tokens=3, completion_tokens=3),
                        ),
                    )
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        finally:
            reader.cancel()
            streams = self.streams.get(session_id, [])
            if inbox in streams:
                streams.remove(inbox)

    def _propose_write(
        self, session_id: str, source: asyncio.Queue[Any], path: str
    ) -> pb.ConverseResponse:
        """A ``write_file`` that waits for a human: published and pending."""
        arguments = struct_pb2.Struct()
        arguments.update({"path": path, "content": "x"})
        approval = pb.PendingApproval(
            call_id=f"w{len(self.approvals.get(session_id, ())) + 1}",
            tool_name="write_file",
            arguments=arguments,
            reason="writes a file",
            created_at=CREATED,
        )
        self.approvals.setdefault(session_id, []).append(approval)
        return self.publish(
            session_id,
            source,
            tool_call=pb.ToolCall(
                call_id=approval.call_id,
                tool_name=approval.tool_name,
                arguments=arguments,
                requires_approval=True,
                reason=approval.reason,
            ),
        )

    async def next_request(self) -> pb.ConverseRequest:
        async with asyncio.timeout(TIMEOUT):
            return await self.requests.get()

    # -- unary reads -------------------------------------------------------

    async def _enter(self, method: str, context: Any) -> str:
        metadata = {item.key: item.value for item in context.invocation_metadata()}
        self.unary_metadata.append((method, metadata))
        failure = self.failures.get(method)
        if failure is not None:
            await context.abort(failure, f"scripted {failure.name}")
        return metadata.get("x-user-id", "")

    async def _owned(self, session_id: str, user: str, context: Any) -> pb.Session:
        if session_id in self.deleted:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "the session was deleted")
        found = self.sessions.get(session_id)
        if found is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such session")
        assert found is not None
        if found[0] != user:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "not yours")
        return found[1]

    async def ListAgents(self, request: Any, context: Any) -> pb.ListAgentsResponse:
        await self._enter("ListAgents", context)
        return pb.ListAgentsResponse(
            agents=[
                pb.Agent(name="coder", description="writes code", allowed_tools=["read_file"]),
                pb.Agent(
                    name="architect",
                    description="designs",
                    allowed_tools=["read_file", "write_file"],
                    writable_paths=["*.md"],
                ),
                pb.Agent(name="ask", description="answers", allowed_tools=[]),
            ]
        )

    async def GetCurrentAgent(self, request: Any, context: Any) -> pb.GetCurrentAgentResponse:
        self.current_requests.append(request)
        user = await self._enter("GetCurrentAgent", context)
        session = await self._owned(request.session_id, user, context)
        last_seq, idle = self.states.get(request.session_id, (0, True))
        return pb.GetCurrentAgentResponse(
            session_id=session.session_id,
            agent=session.agent,
            last_seq=last_seq,
            idle=idle,
            agent_switches=_switches(session) if request.include_agent_switches else [],
        )

    async def CreateSession(self, request: Any, context: Any) -> pb.CreateSessionResponse:
        user = await self._enter("CreateSession", context)
        if request.session_id and not SESSION_ID.fullmatch(request.session_id):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "malformed session_id")
        if request.session_id in self.sessions or request.session_id in self.deleted:
            await context.abort(grpc.StatusCode.ALREADY_EXISTS, "taken")
        session_id = request.session_id or f"s-{len(self.sessions) + 1}"
        return pb.CreateSessionResponse(session=self.own(session_id, user, request.title))

    async def ListSessions(self, request: Any, context: Any) -> pb.ListSessionsResponse:
        user = await self._enter("ListSessions", context)
        mine = [session for owner, session in reversed(self.sessions.values()) if owner == user]
        start = 0
        if request.page_token:
            ids = [session.session_id for session in mine]
            after = self.page_tokens.get(request.page_token)
            if after is None:
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT, "page_token is not one this service issued"
                )
            start = ids.index(after) + 1 if after in ids else len(ids)
        size = min(request.page_size or 20, 100)
        page = mine[start : start + size]
        token = ""
        if start + size < len(mine):
            token = uuid.uuid5(uuid.NAMESPACE_OID, page[-1].session_id).hex
            self.page_tokens[token] = page[-1].session_id
        return pb.ListSessionsResponse(sessions=page, next_page_token=token, total=len(mine))

    async def GetSession(self, request: Any, context: Any) -> pb.GetSessionResponse:
        user = await self._enter("GetSession", context)
        return pb.GetSessionResponse(session=await self._owned(request.session_id, user, context))

    async def UpdateSession(self, request: Any, context: Any) -> pb.UpdateSessionResponse:
        user = await self._enter("UpdateSession", context)
        session = await self._owned(request.session_id, user, context)
        if request.HasField("title"):
            if len(request.title) > 200:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "title is too long")
            session.title = request.title
        return pb.UpdateSessionResponse(session=session)

    async def DeleteSession(self, request: Any, context: Any) -> pb.DeleteSessionResponse:
        user = await self._enter("DeleteSession", context)
        await self._owned(request.session_id, user, context)
        del self.sessions[request.session_id]
        self.deleted.add(request.session_id)
        self.approvals.pop(request.session_id, None)
        self.events.pop(request.session_id, None)
        for inbox in self.streams.pop(request.session_id, []):
            inbox.put_nowait(_DELETED)
        return pb.DeleteSessionResponse(session_id=request.session_id)

    async def GetSessionHistory(self, request: Any, context: Any) -> pb.GetSessionHistoryResponse:
        user = await self._enter("GetSessionHistory", context)
        session = await self._owned(request.session_id, user, context)
        arguments = struct_pb2.Struct()
        arguments.update({"path": "a.py", "start_line": 3})
        return pb.GetSessionHistoryResponse(
            session_id=session.session_id,
            message_count=3,
            current_agent=session.agent,
            last_activity=session.updated_at,
            agent_switches=_switches(session),
            messages=[
                pb.HistoryMessage(role="user", content="read a.py", agent="coder"),
                pb.HistoryMessage(
                    role="assistant",
                    agent="coder",
                    tool_calls=[
                        pb.HistoryToolCall(call_id="c1", tool_name="read_file", arguments=arguments)
                    ],
                    created_at=CREATED,
                ),
                pb.HistoryMessage(
                    role="tool", content="print()", tool_call_id="c1", name="read_file"
                ),
            ],
        )

    async def ExportSession(self, request: Any, context: Any) -> pb.ExportSessionResponse:
        user = await self._enter("ExportSession", context)
        session = await self._owned(request.session_id, user, context)
        history = await self.GetSessionHistory(request, context)
        return pb.ExportSessionResponse(
            session=session,
            messages=history.messages,
            agent_switches=history.agent_switches,
            turns=[
                pb.TurnCheckpoint(
                    turn_id="0",
                    message="read a.py",
                    files=[pb.FileCheckpoint(path="a.py", change="modified")],
                )
            ],
        )

    async def ForkSession(self, request: Any, context: Any) -> pb.ForkSessionResponse:
        user = await self._enter("ForkSession", context)
        self.forks.append(request)
        session = await self._owned(request.session_id, user, context)
        if request.HasField("through_message") and request.through_message > 2:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "message 3 does not exist")
        fork = self.own(f"s-{len(self.sessions) + 1}", user, f"{session.title} (fork)")
        return pb.ForkSessionResponse(session=fork)

    async def ListCheckpoints(self, request: Any, context: Any) -> pb.ListCheckpointsResponse:
        user = await self._enter("ListCheckpoints", context)
        session = await self._owned(request.session_id, user, context)
        return pb.ListCheckpointsResponse(session_id=session.session_id)

    async def UndoTurn(self, request: Any, context: Any) -> pb.UndoTurnResponse:
        """No IDE is ever connected to a fake session: the runtime's answer then."""
        user = await self._enter("UndoTurn", context)
        await self._owned(request.session_id, user, context)
        await context.abort(grpc.StatusCode.ABORTED, "no IDE is connected to this session here")
        raise AssertionError("unreachable")

    async def ListPendingApprovals(
        self, request: Any, context: Any
    ) -> pb.ListPendingApprovalsResponse:
        user = await self._enter("ListPendingApprovals", context)
        session = await self._owned(request.session_id, user, context)
        return pb.ListPendingApprovalsResponse(
            session_id=session.session_id, approvals=self.approvals.get(request.session_id, [])
        )


def _switches(session: pb.Session) -> list[pb.AgentSwitchRecord]:
    """A session's agent switches: one from the orchestrator to the agent
    a test gave it, if any."""
    if session.agent == "orchestrator":
        return []
    return [
        pb.AgentSwitchRecord(
            from_agent="orchestrator", to_agent=session.agent, reason="routed", created_at=CREATED
        )
    ]


@pytest.fixture
async def runtime() -> AsyncIterator[tuple[FakeRuntime, int]]:
    fake = FakeRuntime()
    server = MeshServer(
        address="127.0.0.1:0",
        internal_api_key=INTERNAL_KEY,
        service_names=[pb.DESCRIPTOR.services_by_name["AgentRuntimeService"].full_name],
    )
    runtime_pb2_grpc.add_AgentRuntimeServiceServicer_to_server(fake, server.server)
    port = await server.start()
    try:
        yield fake, port
    finally:
        await server.stop(0)


def make_config(jwks: JwksEndpoint, runtime_port: int, **overrides: Any) -> GatewayConfig:
    settings: dict[str, Any] = {
        "internal_api_key": INTERNAL_KEY,
        "port": 0,
        "runtime_address": f"127.0.0.1:{runtime_port}",
        "jwks_url": jwks.url,
        "jwt_issuer": ISSUER,
        "jwt_audience": AUDIENCE,
        "shutdown_grace": 5,
        # Most tests script the stream from the connect on; the lazy attach
        # of idle sessions has its own tests (test_server.py).
        "attach_on_first_frame": False,
    }
    settings.update(overrides)
    return GatewayConfig(**settings)


@dataclass
class Edge:
    gateway: Gateway
    fake: FakeRuntime
    key: SigningKey
    jwks: JwksEndpoint

    def url(self, path: str = "/ws/session-1") -> str:
        return f"ws://127.0.0.1:{self.gateway.port}{path}"

    def http(self, path: str) -> str:
        return f"http://127.0.0.1:{self.gateway.port}{path}"

    def connect(self, path: str = "/ws/session-1", token: str | None = None, **kwargs: Any) -> Any:
        headers = {"Authorization": f"Bearer {token or mint(self.key)}"}
        headers.update(kwargs.pop("headers", {}))
        return connect(self.url(path), additional_headers=headers, **kwargs)


@pytest.fixture
def edge_factory(
    runtime: tuple[FakeRuntime, int], jwks_endpoint: JwksEndpoint, rsa_key: SigningKey
) -> Any:
    """``async with edge_factory(**config overrides) as edge``."""
    fake, port = runtime

    def build(**overrides: Any) -> Any:
        @asynccontextmanager
        async def running() -> AsyncIterator[Edge]:
            async with running_gateway(make_config(jwks_endpoint, port, **overrides)) as gateway:
                yield Edge(gateway, fake, rsa_key, jwks_endpoint)

        return running()

    return build


@pytest.fixture
async def edge(edge_factory: Any) -> AsyncIterator[Edge]:
    async with edge_factory() as running:
        yield running


async def receive(ws: ClientConnection) -> dict[str, Any]:
    async with asyncio.timeout(TIMEOUT):
        message = await ws.recv()
    assert isinstance(message, str)
    frame: dict[str, Any] = json.loads(message)
    return frame


class PingCounter(ClientConnection):
    """A client connection that counts the keepalive pings it receives."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pings = 0

    def process_event(self, event: Any) -> None:
        if isinstance(event, Frame) and event.opcode is Opcode.PING:
            self.pings += 1
        super().process_event(event)


async def close_code(ws: ClientConnection) -> tuple[int | None, str | None]:
    async with asyncio.timeout(TIMEOUT):
        await ws.wait_closed()
    return ws.close_code, ws.close_reason


async def opened(ws: ClientConnection) -> dict[str, Any]:
    frame = await receive(ws)
    assert frame["type"] == "session_info"
    return frame
