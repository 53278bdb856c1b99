"""The REST views on the gateway port, against the scripted runtime."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf import struct_pb2
from websockets.exceptions import InvalidStatus

from gateway import rest
from runtime.v1 import runtime_pb2 as pb
from tests import codelab_ide_rest as ide
from tests.conftest import free_port
from tests.gateway.conftest import CREATED, INTERNAL_KEY, Edge, close_code, mint, opened


@pytest.fixture
async def client(edge: Edge) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=edge.http(""), timeout=10) as http_client:
        yield http_client


IDE_CLIENT = "codelab-flutter-app"


def bearer(edge: Edge, sub: str = "alice") -> dict[str, str]:
    return {"Authorization": f"Bearer {mint(edge.key, sub=sub)}"}


async def test_agents(edge: Edge, client: httpx.AsyncClient):
    response = await client.get("/api/v1/agents", headers=bearer(edge))
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json()["agents"][0] == {
        "name": "coder",
        "description": "writes code",
        "allowed_tools": ["read_file"],
        "writable_paths": [],
        "origin": "",
        "model": "",
        "keywords": [],
        "type": "coder",
        "has_file_restrictions": False,
    }
    method, metadata = edge.fake.unary_metadata[-1]
    assert (method, metadata["x-user-id"], metadata["x-internal-auth"]) == (
        "ListAgents",
        "alice",
        INTERNAL_KEY,
    )


async def test_create_then_read_own_session(edge: Edge, client: httpx.AsyncClient):
    created = await client.post(
        "/api/v1/sessions", params={"title": "my work"}, headers=bearer(edge)
    )
    assert created.status_code == 201
    body = created.json()
    assert (body["title"], body["agent"], body["message_count"]) == ("my work", "orchestrator", 0)
    assert body["created_at"] == "2023-11-14T22:13:20Z"
    sid = body["session_id"]

    current = await client.get(f"/api/v1/agents/{sid}/current", headers=bearer(edge))
    assert current.json() == {
        "session_id": sid,
        "current_agent": "orchestrator",
        "agent_history": [],
        "switch_count": 0,
    }

    history = (await client.get(f"/api/v1/sessions/{sid}/history", headers=bearer(edge))).json()
    assert history["session_id"] == sid
    assert [m["role"] for m in history["messages"]] == ["user", "assistant", "tool"]
    assert history["messages"][1]["tool_calls"][0]["arguments"] == {
        "path": "a.py",
        "start_line": 3,
    }

    arguments = struct_pb2.Struct()
    arguments.update({"command": "ls"})
    edge.fake.approvals[sid] = [
        pb.PendingApproval(
            call_id="c9",
            tool_name="execute_command",
            arguments=arguments,
            reason="runs a command",
            created_at=CREATED,
        )
    ]
    pending = await client.get(f"/api/v1/sessions/{sid}/pending-approvals", headers=bearer(edge))
    assert pending.json()["pending_approvals"][0] == {
        "call_id": "c9",
        "tool_name": "execute_command",
        "arguments": {"command": "ls"},
        "reason": "runs a command",
        "created_at": "2023-11-14T22:13:20Z",
    }


async def test_session_listing_pages_and_is_owner_scoped(edge: Edge, client: httpx.AsyncClient):
    for index in range(3):
        edge.fake.own(f"a{index}", "alice")
    edge.fake.own("b0", "bob")
    first = await client.get("/api/v1/sessions", params={"page_size": "2"}, headers=bearer(edge))
    page = first.json()
    # Newest first, as the runtime lists them; the token is opaque.
    assert [s["session_id"] for s in page["sessions"]] == ["a2", "a1"]
    assert page["next_page_token"]
    second = await client.get(
        "/api/v1/sessions",
        params={"page_size": "2", "page_token": page["next_page_token"]},
        headers=bearer(edge),
    )
    assert [s["session_id"] for s in second.json()["sessions"]] == ["a0"]
    assert second.json()["next_page_token"] is None


async def test_foreign_and_missing_sessions_are_both_404(edge: Edge, client: httpx.AsyncClient):
    edge.fake.own("bobs", "bob")
    foreign = await client.get("/api/v1/sessions/bobs/history", headers=bearer(edge))
    missing = await client.get("/api/v1/sessions/nobody/history", headers=bearer(edge))
    assert foreign.status_code == missing.status_code == 404
    assert (
        foreign.json()
        == missing.json()
        == {
            "error": "not_found",
            "error_description": "no such session",
        }
    )


@pytest.mark.parametrize(
    ("status", "http_status", "retry_after"),
    [
        (grpc.StatusCode.UNAVAILABLE, 503, "2"),
        (grpc.StatusCode.UNIMPLEMENTED, 501, None),
        (grpc.StatusCode.INVALID_ARGUMENT, 400, None),
        (grpc.StatusCode.INTERNAL, 502, None),
    ],
)
async def test_runtime_failures_map_to_statuses(
    edge: Edge,
    client: httpx.AsyncClient,
    status: grpc.StatusCode,
    http_status: int,
    retry_after: str | None,
):
    edge.fake.failures["ListAgents"] = status
    response = await client.get("/api/v1/agents", headers=bearer(edge))
    assert response.status_code == http_status
    assert response.headers.get("Retry-After") == retry_after
    assert "error" in response.json()


async def test_invalid_argument_from_the_runtime_is_400(edge: Edge, client: httpx.AsyncClient):
    response = await client.get(
        "/api/v1/sessions", params={"page_token": "not-issued"}, headers=bearer(edge)
    )
    assert response.status_code == 400
    assert response.json()["error_description"] == "page_token is not one this service issued"


@pytest.mark.parametrize(
    ("method", "path", "params", "status"),
    [
        ("GET", "/api/v1/sessions", {"page_size": "x"}, 400),
        ("GET", "/api/v1/sessions", {"page_token": "t" * 2000}, 400),
        ("POST", "/api/v1/sessions", {"title": "t" * 201}, 400),
        ("POST", "/api/v1/sessions", {"session_id": "bad id"}, 400),
        ("POST", "/api/v1/sessions", {"session_id": "mine"}, 400),
        ("POST", "/api/v1/sessions", {"id": "mine"}, 400),
        ("GET", "/api/v1/sessions/bad%20id/history", {}, 400),
        ("DELETE", "/api/v1/sessions", {}, 405),
        ("PUT", "/api/v1/sessions/s1", {}, 405),
        ("POST", "/api/v1/agents", {}, 405),
        ("GET", "/api/v1/nothing", {}, 404),
    ],
)
async def test_bad_requests(
    edge: Edge,
    client: httpx.AsyncClient,
    method: str,
    path: str,
    params: dict[str, Any],
    status: int,
):
    response = await client.request(method, path, params=params, headers=bearer(edge))
    assert response.status_code == status


async def test_views_need_a_valid_token(edge: Edge, client: httpx.AsyncClient):
    for headers in ({}, {"Authorization": "Bearer nonsense"}):
        response = await client.get("/api/v1/agents", headers=headers)
        assert response.status_code == 401
        assert response.json()["error"] == "invalid_token"
    assert edge.fake.unary_metadata == []


async def test_a_view_request_with_a_body_is_refused_by_the_library(
    edge: Edge, client: httpx.AsyncClient
):
    # websockets does not read request bodies: it drops the connection.
    with pytest.raises(httpx.RemoteProtocolError):
        await client.post("/api/v1/sessions", content=b"{}", headers=bearer(edge))
    assert edge.fake.unary_metadata == []
    response = await client.post("/api/v1/sessions", headers=bearer(edge))
    assert response.status_code == 201


def test_route_matching():
    assert rest.match("GET", "/api/v1/sessions/s1/history") == rest.Route("history", "s1")
    assert rest.match("POST", "/api/v1/sessions") == rest.Route("create_session", None)
    assert rest.match("PUT", "/api/v1/sessions") == 405
    assert rest.match("GET", "/api/v1/sessions/a/b/history") is None
    assert rest.match("GET", "/api/v1/sessions/s1") == rest.Route("session", "s1")
    assert rest.match("PATCH", "/api/v1/sessions/s1") == rest.Route("rename_session", "s1")
    assert rest.match("DELETE", "/api/v1/sessions/s1") == rest.Route("delete_session", "s1")
    assert rest.match("GET", "/api/v1/models") == rest.Route("list_models", None)


# ---------------------------------------------------------------------------
# the agents views as the CodeLab IDE reads them (its client profile)


def ide_bearer(edge: Edge, sub: str = "alice") -> dict[str, str]:
    return {"Authorization": f"Bearer {mint(edge.key, sub=sub, client_id=IDE_CLIENT)}"}


async def test_the_ide_reads_the_agents_as_a_bare_list_of_agent_info(
    edge: Edge, client: httpx.AsyncClient
):
    response = await client.get("/api/v1/agents", headers=ide_bearer(edge))
    assert response.status_code == 200
    agents = ide.list_agents(response.json())  # GatewayApi.listAgents
    assert [(a["type"], a["hasFileRestrictions"]) for a in agents] == [
        ("coder", False),
        ("architect", True),
        ("ask", False),
    ]
    assert agents[1]["allowedTools"] == ["read_file", "write_file"]
    # Our own clients keep the object: the shape is the profile's, not the path's.
    ours = (await client.get("/api/v1/agents", headers=bearer(edge))).json()
    assert [agent["name"] for agent in ours["agents"]] == ["coder", "architect", "ask"]
    with pytest.raises(ide.DartDecodeError):
        ide.list_agents(ours)


async def test_the_ide_reads_the_current_agent_with_its_switches(
    edge: Edge, client: httpx.AsyncClient
):
    edge.fake.own("routed", "alice", agent="coder")
    edge.fake.own("fresh", "alice")
    for headers in (ide_bearer(edge), bearer(edge)):  # additive: one shape for both
        response = await client.get("/api/v1/agents/routed/current", headers=headers)
        assert response.status_code == 200
        current = ide.current_agent_info(response.json())  # GatewayApi.getCurrentAgent
        assert (current["sessionId"], current["currentAgent"], current["switchCount"]) == (
            "routed",
            "coder",
            1,
        )
        assert current["agentHistory"] == [
            {
                "from": "orchestrator",
                "to": "coder",
                "reason": "routed",
                "timestamp": "2023-11-14T22:13:20Z",
            }
        ]
        fresh = ide.current_agent_info(
            (await client.get("/api/v1/agents/fresh/current", headers=headers)).json()
        )
        assert (fresh["agentHistory"], fresh["switchCount"]) == ([], 0)
    # The handshake's own read does not ask for the switches.
    async with edge.connect("/ws/routed", token=mint(edge.key, sub="alice")):
        pass
    assert edge.fake.current_requests[-1].include_agent_switches is False


async def test_the_rest_port_answers_the_ide_its_shape_too(
    rest_edge: Edge, rest_client: httpx.AsyncClient
):
    response = await rest_client.get("/api/v1/agents", headers=ide_bearer(rest_edge))
    assert [a["type"] for a in ide.list_agents(response.json())] == ["coder", "architect", "ask"]
    ours = await rest_client.get("/api/v1/agents", headers=bearer(rest_edge))
    assert [agent["type"] for agent in ours.json()["agents"]] == ["coder", "architect", "ask"]


# ---------------------------------------------------------------------------
# one session: GET, PATCH (a body: the REST port), DELETE


@pytest.fixture
async def rest_edge(edge_factory: Any) -> AsyncIterator[Edge]:
    async with edge_factory(rest_port=free_port()) as running:
        yield running


@pytest.fixture
async def rest_client(rest_edge: Edge) -> AsyncIterator[httpx.AsyncClient]:
    base = f"http://127.0.0.1:{rest_edge.gateway.rest_port}"
    async with httpx.AsyncClient(base_url=base, timeout=10) as http_client:
        yield http_client


async def test_the_rest_port_reads_a_patch_body_and_renames(
    rest_edge: Edge, rest_client: httpx.AsyncClient
):
    created = await rest_client.post("/api/v1/sessions", headers=bearer(rest_edge))
    assert created.status_code == 201
    sid = created.json()["id"]
    renamed = await rest_client.patch(
        f"/api/v1/sessions/{sid}", json={"title": "Über den Plan"}, headers=bearer(rest_edge)
    )
    assert renamed.status_code == 200, renamed.text
    assert renamed.headers["content-type"] == "application/json"
    assert (renamed.json()["id"], renamed.json()["title"]) == (sid, "Über den Plan")
    got = await rest_client.get(f"/api/v1/sessions/{sid}", headers=bearer(rest_edge))
    assert got.json()["title"] == "Über den Plan"
    method, metadata = rest_edge.fake.unary_metadata[-2]
    assert (method, metadata["x-user-id"]) == ("UpdateSession", "alice")
    # Someone else's session, or none, is a 404 like on the other views.
    foreign = await rest_client.patch(
        f"/api/v1/sessions/{sid}", json={"title": "mine"}, headers=bearer(rest_edge, "bob")
    )
    missing = await rest_client.patch(
        "/api/v1/sessions/nobody", json={"title": "x"}, headers=bearer(rest_edge)
    )
    assert foreign.status_code == missing.status_code == 404
    assert rest_edge.fake.sessions[sid][1].title == "Über den Plan"


@pytest.mark.parametrize(
    ("content", "error"),
    [
        (b"", "invalid_body"),
        (b"not json", "invalid_body"),
        (b'["title"]', "invalid_body"),
        (b'{"title": 5}', "invalid_title"),
        (b'{"title": "x", "owner": "bob"}', "invalid_body"),
        ('{"title": "%s"}' % ("t" * 201), "invalid_title"),
        (b'{"model": 5}', "invalid_model"),
        (b'{"model": ""}', "invalid_model"),
    ],
)
async def test_a_bad_patch_body_is_a_400(
    rest_edge: Edge, rest_client: httpx.AsyncClient, content: bytes | str, error: str
):
    rest_edge.fake.own("mine", "alice")
    response = await rest_client.patch(
        "/api/v1/sessions/mine",
        content=content,
        headers={**bearer(rest_edge), "Content-Type": "application/json"},
    )
    assert response.status_code == 400
    assert response.json()["error"] == error
    assert [m for m, _ in rest_edge.fake.unary_metadata] == []


async def test_the_rest_port_bounds_bodies_and_checks_tokens(
    rest_edge: Edge, rest_client: httpx.AsyncClient
):
    rest_edge.fake.own("mine", "alice")
    huge = await rest_client.patch(
        "/api/v1/sessions/mine",
        json={"title": "x" * (rest.MAX_BODY_BYTES + 1)},
        headers=bearer(rest_edge),
    )
    assert huge.status_code == 413

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(rest.MAX_BODY_BYTES // 1024 + 1):
            yield b" " * 1024

    streamed = await rest_client.patch(
        "/api/v1/sessions/mine", content=chunks(), headers=bearer(rest_edge)
    )
    assert streamed.status_code == 413, "a chunked body is bounded as it arrives"
    for headers in ({}, {"Authorization": "Bearer nonsense"}):
        refused = await rest_client.patch(
            "/api/v1/sessions/mine", json={"title": "x"}, headers=headers
        )
        assert refused.status_code == 401
        assert refused.json()["error"] == "invalid_token"
    body_on_get = await rest_client.request(
        "GET", "/api/v1/sessions/mine", content=b"{}", headers=bearer(rest_edge)
    )
    assert body_on_get.status_code == 400
    assert (await rest_client.get("/metrics")).status_code == 404
    assert (
        await rest_client.put("/api/v1/sessions/mine", headers=bearer(rest_edge))
    ).status_code == 405
    assert rest_edge.fake.unary_metadata == []


async def test_every_view_answers_the_same_on_both_ports(
    rest_edge: Edge, rest_client: httpx.AsyncClient
):
    rest_edge.fake.own("mine", "alice", title="t")
    async with httpx.AsyncClient(base_url=rest_edge.http(""), timeout=10) as socket_port:
        for path in (
            "/api/v1/agents",
            "/api/v1/agents/mine/current",
            "/api/v1/sessions",
            "/api/v1/sessions/mine",
            "/api/v1/sessions/mine/history",
            "/api/v1/sessions/mine/pending-approvals",
            "/api/v1/sessions/nobody",
        ):
            here = await rest_client.get(path, headers=bearer(rest_edge))
            there = await socket_port.get(path, headers=bearer(rest_edge))
            assert (here.status_code, here.json()) == (there.status_code, there.json()), path


async def test_a_patch_on_the_websocket_port_says_where_bodies_go(
    edge: Edge, client: httpx.AsyncClient
):
    edge.fake.own("mine", "alice")
    response = await client.patch("/api/v1/sessions/mine", headers=bearer(edge))
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_body"
    assert "REST port" in response.json()["error_description"]


async def test_a_deleted_session_is_404_everywhere_and_cannot_be_opened(
    edge: Edge, client: httpx.AsyncClient
):
    edge.fake.own("doomed", "alice")
    assert (
        await client.delete("/api/v1/sessions/doomed", headers=bearer(edge, "bob"))
    ).status_code == 404
    deleted = await client.delete("/api/v1/sessions/doomed", headers=bearer(edge))
    assert deleted.status_code == 200
    assert deleted.json() == {"session_id": "doomed", "id": "doomed", "deleted": True}
    for path in (
        "/api/v1/sessions/doomed",
        "/api/v1/sessions/doomed/history",
        "/api/v1/sessions/doomed/pending-approvals",
        "/api/v1/agents/doomed/current",
    ):
        response = await client.get(path, headers=bearer(edge))
        assert response.status_code == 404, path
        assert response.json()["error"] == "not_found"
    again = await client.delete("/api/v1/sessions/doomed", headers=bearer(edge))
    assert again.status_code == 404
    # No one resurrects it by connecting: the handshake refuses it.
    for user in ("alice", "bob"):
        with pytest.raises(InvalidStatus) as refused:
            async with edge.connect("/ws/doomed", token=mint(edge.key, sub=user)):
                pass
        assert refused.value.response.status_code == 404
    assert "doomed" not in edge.fake.sessions


async def test_a_socket_on_a_session_being_deleted_closes_for_good(
    edge: Edge, client: httpx.AsyncClient
):
    async with edge.connect("/ws/live", token=mint(edge.key, sub="alice")) as ws:
        await opened(ws)
        response = await client.delete("/api/v1/sessions/live", headers=bearer(edge))
        assert response.status_code == 200
        code, reason = await close_code(ws)
    assert (code, reason) == (1008, "the session was deleted")


async def test_an_export_answers_json_or_markdown_on_both_ports(
    rest_edge: Edge, rest_client: httpx.AsyncClient
):
    rest_edge.fake.own("mine", "alice", title="my work")
    rest_edge.fake.own("bobs", "bob", title="secret")
    async with httpx.AsyncClient(base_url=rest_edge.http(""), timeout=10) as socket_port:
        for port in (rest_client, socket_port):
            path = "/api/v1/sessions/mine/export"
            as_json = await port.get(path, headers=bearer(rest_edge))
            assert as_json.status_code == 200
            assert as_json.headers["content-type"] == "application/json"
            assert as_json.json()["session"]["title"] == "my work"
            assert [m["role"] for m in as_json.json()["messages"]] == ["user", "assistant", "tool"]
            assert as_json.json()["checkpoints"][0]["files"] == [
                {"path": "a.py", "change": "modified"}
            ]
            explicit = await port.get(path, params={"format": "json"}, headers=bearer(rest_edge))
            assert explicit.json() == as_json.json()
            markdown = await port.get(
                path, params={"format": "markdown"}, headers=bearer(rest_edge)
            )
            assert markdown.status_code == 200
            assert markdown.headers["content-type"] == "text/markdown; charset=utf-8"
            assert markdown.headers["content-length"] == str(len(markdown.content))
            assert markdown.text.startswith("# my work\n")
            assert "Tool call `read_file` (`c1`)" in markdown.text
            unknown = await port.get(path, params={"format": "pdf"}, headers=bearer(rest_edge))
            assert unknown.status_code == 400
            assert unknown.json() == {
                "error": "invalid_format",
                "error_description": "format is one of json, markdown",
            }
            foreign = await port.get(
                "/api/v1/sessions/bobs/export",
                params={"format": "markdown"},
                headers=bearer(rest_edge),
            )
            assert foreign.status_code == 404
            assert "secret" not in foreign.text
    exports = [method for method, _ in rest_edge.fake.unary_metadata if method == "ExportSession"]
    assert len(exports) == 8, "a bad format is refused before the runtime is asked"


async def test_a_fork_is_a_new_session_and_bad_positions_are_400(
    edge: Edge, client: httpx.AsyncClient
):
    edge.fake.own("mine", "alice", title="my work")
    edge.fake.own("bobs", "bob")
    forked = await client.post(
        "/api/v1/sessions/mine/fork", params={"message": "1"}, headers=bearer(edge)
    )
    assert forked.status_code == 201
    body = forked.json()
    assert (body["title"], body["id"] == body["session_id"]) == ("my work (fork)", True)
    assert body["session_id"] != "mine"
    assert (
        await client.get(f"/api/v1/sessions/{body['id']}", headers=bearer(edge))
    ).status_code == 200
    whole = await client.post("/api/v1/sessions/mine/fork", headers=bearer(edge))
    assert whole.status_code == 201
    first, second = edge.fake.forks
    assert (first.HasField("through_message"), first.through_message) == (True, 1)
    assert not second.HasField("through_message"), "no message: the whole session"
    for message in ("x", "-1", "1" * 12):
        bad = await client.post(
            "/api/v1/sessions/mine/fork", params={"message": message}, headers=bearer(edge)
        )
        assert (bad.status_code, bad.json()["error"]) == (400, "invalid_message")
    past = await client.post(
        "/api/v1/sessions/mine/fork", params={"message": "3"}, headers=bearer(edge)
    )
    assert (past.status_code, past.json()["error_description"]) == (
        400,
        "message 3 does not exist",
    )
    foreign = await client.post("/api/v1/sessions/bobs/fork", headers=bearer(edge))
    assert foreign.status_code == 404
    assert (await client.get("/api/v1/sessions/mine/fork", headers=bearer(edge))).status_code == 405
