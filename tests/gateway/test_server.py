"""The real gateway on loopback, in front of a scripted gRPC runtime.

This tests the gateway in isolation: the runtime here is a small fake
servicer on a real gRPC server (with the mesh's credential check), so every
byte crosses a real WebSocket and a real HTTP/2 connection.
"""

from __future__ import annotations

import asyncio
import json
import time
from contextlib import AsyncExitStack
from typing import Any

import grpc
import httpx
import pytest
import structlog
from structlog.testing import capture_logs
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from gateway.__main__ import running_gateway
from runtime.v1 import runtime_pb2 as pb
from tests.conftest import free_port
from tests.gateway.conftest import (
    INTERNAL_KEY,
    TIMEOUT,
    Edge,
    FakeRuntime,
    JwksEndpoint,
    PingCounter,
    SigningKey,
    close_code,
    make_config,
    mint,
    opened,
    receive,
)
from tests.support import eventually

# -- streaming -----------------------------------------------------------


async def test_user_message_streams_assistant_frames(edge: Edge):
    async with edge.connect() as ws:
        info = await opened(ws)
        assert info["metadata"]["session_id"] == "session-1"
        assert info["metadata"]["agent"] == "orchestrator"
        await ws.send(json.dumps({"type": "user_message", "content": "hi"}))
        frames = [await receive(ws) for _ in range(4)]
    assert [f["content"] for f in frames] == ["echo: ", "hi", "!", ""]
    assert [f["is_final"] for f in frames] == [False, False, False, True]
    assert all(f["type"] == "assistant_message" and f["token"] == f["content"] for f in frames)
    assert [f["seq"] for f in frames] == [1, 2, 3, 4]
    assert frames[-1]["metadata"]["status"] == "completed"
    assert (await edge.fake.next_request()).open.session_id == "session-1"
    message = (await edge.fake.next_request()).user_message
    assert (message.content, message.role) == ("hi", "user")


async def test_gateway_vouches_for_the_user(edge: Edge):
    token = mint(edge.key, sub="alice")
    async with edge.connect(token=token, headers={"X-Request-Id": "req-42"}) as ws:
        await opened(ws)
    metadata = edge.fake.metadata[0]
    assert metadata["x-user-id"] == "alice"
    assert metadata["x-internal-auth"] == INTERNAL_KEY
    assert metadata["x-request-id"] == "req-42"


async def test_api_v1_path_and_resume_from_last_seq(edge: Edge):
    async with edge.connect("/api/v1/ws/s.2:x-y?last_seq=17") as ws:
        await opened(ws)
    request = await edge.fake.next_request()
    assert request.open.session_id == "s.2:x-y"
    assert request.open.HasField("resume_after_seq")
    assert request.open.resume_after_seq == 17


async def test_the_largest_last_seq_the_database_holds_is_resumed(edge: Edge):
    async with edge.connect(f"/ws/s?last_seq={2**63 - 1}") as ws:
        await opened(ws)
    assert (await edge.fake.next_request()).open.resume_after_seq == 2**63 - 1


@pytest.mark.parametrize(
    "last_seq",
    [str(2**63), str(2**64 - 1), "9" * 5000, "-1", "1.5", "true", "abc", "%C2%B2", "%D9%A3"],
)
async def test_a_last_seq_no_session_can_have_is_400_at_the_handshake(edge: Edge, last_seq: str):
    response = await refused_status(edge, path=f"/ws/s?last_seq={last_seq}")
    assert response.status_code == 400
    assert json.loads(response.body) == {
        "error": "invalid_last_seq",
        "error_description": f"last_seq must be an integer from 0 to {2**63 - 1}",
    }
    assert edge.fake.metadata == []
    assert edge.fake.unary_metadata == []


async def test_without_last_seq_resume_is_unset(edge: Edge):
    async with edge.connect() as ws:
        await opened(ws)
    assert not (await edge.fake.next_request()).open.HasField("resume_after_seq")


async def test_token_in_subprotocol(edge: Edge):
    async with connect(edge.url(), subprotocols=["bearer", mint(edge.key)]) as ws:
        assert ws.subprotocol == "bearer"
        await opened(ws)
        await ws.send(json.dumps({"type": "user_message", "content": "x"}))
        assert (await receive(ws))["content"] == "echo: "


# -- refused handshakes --------------------------------------------------


async def refused_status(edge: Edge, **kwargs: Any) -> Any:
    with pytest.raises(InvalidStatus) as caught:
        async with connect(edge.url(kwargs.pop("path", "/ws/session-1")), **kwargs):
            pass
    return caught.value.response


@pytest.mark.parametrize(
    ("headers", "description"),
    [
        ({}, "missing bearer token"),
        ({"Authorization": "Bearer nonsense"}, "malformed token"),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, "missing bearer token"),
    ],
)
async def test_handshake_without_valid_token_is_401(
    edge: Edge, headers: dict[str, str], description: str
):
    response = await refused_status(edge, additional_headers=headers)
    assert response.status_code == 401
    assert json.loads(response.body) == {
        "error": "invalid_token",
        "error_description": description,
    }
    assert response.headers["WWW-Authenticate"].startswith('Bearer error="invalid_token"')
    assert edge.fake.metadata == []


async def test_expired_token_is_401(edge: Edge):
    token = mint(edge.key, exp=int(time.time()) - 3600)
    response = await refused_status(edge, additional_headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401
    assert json.loads(response.body)["error_description"] == "token expired"
    assert token.encode() not in response.body


async def _agents_view_status(edge: Edge, token: str) -> int:
    async with httpx.AsyncClient() as client:
        reply = await client.get(
            edge.http("/api/v1/agents"), headers={"Authorization": f"Bearer {token}"}
        )
    return reply.status_code


@pytest.mark.parametrize("typ", ["JWT", None, "id+jwt"])
async def test_tokens_not_typed_at_jwt_are_401_by_default(edge: Edge, typ: str | None):
    # Signed by the issuer, every claim right: only the typ header is wrong.
    token = mint(edge.key, headers={"typ": typ})
    response = await refused_status(edge, additional_headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401
    assert json.loads(response.body)["error_description"] == "not an access token"
    assert await _agents_view_status(edge, token) == 401
    assert edge.fake.metadata == []
    assert edge.fake.unary_metadata == []


async def test_at_jwt_tokens_open_the_socket_and_the_views(edge: Edge):
    token = mint(edge.key, headers={"typ": "at+jwt"})
    async with edge.connect(token=token) as ws:
        await opened(ws)
    assert await _agents_view_status(edge, token) == 200


@pytest.mark.parametrize("typ", ["JWT", None])
async def test_without_require_at_jwt_untyped_tokens_are_accepted(
    edge_factory: Any, typ: str | None
):
    async with edge_factory(jwt_require_at_jwt=False) as edge:
        token = mint(edge.key, headers={"typ": typ})
        async with edge.connect(token=token) as ws:
            await opened(ws)
        assert await _agents_view_status(edge, token) == 200
        other = mint(edge.key, headers={"typ": "id+jwt"})
        assert await _agents_view_status(edge, other) == 401


async def test_unreachable_issuer_is_503(edge: Edge):
    edge.jwks.status = 500
    token = mint(edge.key)
    response = await refused_status(edge, additional_headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 503


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/ws/bad%20id", 400),
        ("/ws/" + "x" * 129, 400),
        ("/ws/", 404),
        ("/ws/a/b", 404),
        ("/ws/s?last_seq=-1", 400),
        ("/ws/s?last_seq=18446744073709551616", 400),
    ],
)
async def test_bad_session_paths(edge: Edge, path: str, status: int):
    token = mint(edge.key)
    response = await refused_status(
        edge, path=path, additional_headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == status


async def test_health_and_unknown_paths(edge: Edge):
    async with httpx.AsyncClient() as client:
        for path in ("/health", "/api/v1/health"):
            response = await client.get(edge.http(path))
            assert response.status_code == 200
            assert response.headers["content-type"] == "application/json"
            assert response.json() == {"status": "ok"}
        missing = await client.get(edge.http("/nope"))
        assert missing.status_code == 404
        assert missing.json()["error"] == "not_found"


async def test_metrics_are_served_on_their_own_port_not_the_public_one(edge_factory: Any):
    metrics_port = free_port()
    async with edge_factory(metrics_port=metrics_port) as edge, httpx.AsyncClient() as client:
        public = await client.get(edge.http("/metrics"))
        assert public.status_code == 404
        assert public.json()["error"] == "not_found"
        scraped = await client.get(f"http://127.0.0.1:{metrics_port}/metrics")
        assert scraped.status_code == 200
        assert scraped.headers["content-type"].startswith("text/plain")
        # The public 404 above is counted, so these are this gateway's series.
        assert 'codelab_gateway_handshakes_refused_total{status="404"} 1.0' in scraped.text
        assert "codelab_gateway_connections_open 0.0" in scraped.text
        assert (await client.get(f"http://127.0.0.1:{metrics_port}/health")).status_code == 404


# -- frames --------------------------------------------------------------


async def test_invalid_frames_get_error_frames_and_the_connection_survives(edge: Edge):
    async with edge.connect() as ws:
        await opened(ws)
        for text, code in [
            ("{oops", "invalid_json"),
            ('{"type": "teleport"}', "unknown_type"),
            ('{"type": "user_message"}', "missing_field"),
            ('{"type": "tool_result", "call_id": 1, "result": {}}', "invalid_field"),
        ]:
            await ws.send(text)
            frame = await receive(ws)
            assert (frame["type"], frame["code"], frame["seq"]) == ("error", code, None)
            assert frame["content"] == frame["error"]
        await ws.send(b"\x00\x01")
        frame = await receive(ws)
        assert frame["content"] == "binary frames are not supported"
        await ws.send(json.dumps({"type": "user_message", "content": "still here"}))
        assert (await receive(ws))["content"] == "echo: "
    await edge.fake.next_request()  # open
    assert (await edge.fake.next_request()).user_message.content == "still here"


async def test_overlong_fields_get_error_frames_and_are_not_forwarded(edge: Edge):
    async with edge.connect() as ws:
        await opened(ws)
        for frame in [
            {"type": "file_changed", "path": "a" * 100_000, "timestamp": 1_700_000_000},
            {"type": "switch_agent", "agent_type": "coder", "reason": "r" * 100_000},
            {"type": "hitl_decision", "call_id": "c" * 100_000, "decision": "approve"},
        ]:
            await ws.send(json.dumps(frame))
            error = await receive(ws)
            assert (error["type"], error["code"]) == ("error", "invalid_field")
            assert "is longer than" in error["content"]
        await ws.send(json.dumps({"type": "file_changed", "path": "src/a.py", "timestamp": 1}))
        await edge.fake.next_request()  # open
        # The first thing the runtime hears after open is the valid frame.
        assert (await edge.fake.next_request()).file_changed.path == "src/a.py"


async def test_other_frames_are_forwarded(edge: Edge):
    async with edge.connect() as ws:
        await opened(ws)
        await ws.send(json.dumps({"type": "cancel"}))
        await ws.send(json.dumps({"type": "tool_result", "call_id": "c", "result": {"n": 1}}))
        await edge.fake.next_request()  # open
        assert (await edge.fake.next_request()).HasField("cancel")
        assert (await edge.fake.next_request()).tool_result.result["n"] == 1


async def test_oversized_frame_closes_with_1009(
    runtime: tuple[FakeRuntime, int], jwks_endpoint: JwksEndpoint, rsa_key: SigningKey
):
    config = make_config(jwks_endpoint, runtime[1], max_frame_bytes=1024)
    async with running_gateway(config) as gateway:
        url = f"ws://127.0.0.1:{gateway.port}/ws/s"
        headers = {"Authorization": f"Bearer {mint(rsa_key)}"}
        async with connect(url, additional_headers=headers) as ws:
            await opened(ws)
            await ws.send(json.dumps({"type": "user_message", "content": "x" * 2048}))
            assert (await close_code(ws))[0] == 1009


async def _answer(ws: Any) -> str:
    """The text of one answer, streamed (strict) or whole (codelab-ide)."""
    parts = []
    while True:
        frame = await receive(ws)
        assert frame["type"] == "assistant_message", frame
        parts.append(frame["content"])
        if frame["is_final"]:
            return "".join(parts)


@pytest.mark.parametrize("client_id", ["ide", "codelab-flutter-app"], ids=["strict", "codelab"])
async def test_a_tool_result_too_large_for_the_runtime_fails_that_call_only(
    edge: Edge, client_id: str
):
    # read_file of a 1.5 MB file: more than the runtime takes (1 MiB), less
    # than the socket does (4 MiB). The call fails, the connection lives.
    content = "x" * 1_500_000
    async with edge.connect(token=mint(edge.key, client_id=client_id)) as ws:
        if client_id == "ide":
            await opened(ws)  # the CodeLab IDE is not sent session_info
        await ws.send(
            json.dumps(
                {
                    "type": "tool_result",
                    "call_id": "call_big",
                    "result": {"path": "big.log", "content": content},
                }
            )
        )
        assert (await edge.fake.next_request()).HasField("open")
        result = (await edge.fake.next_request()).tool_result
        assert (result.call_id, result.WhichOneof("outcome")) == ("call_big", "error")
        size = int(result.error.split()[4])
        assert size > len(content)
        assert result.error.startswith(
            f"the tool result was {size} bytes, more than the limit of 1048576 bytes"
        )
        assert "a line range of a file" in result.error
        # A result within the limit still passes whole, and the session goes on.
        await ws.send(
            json.dumps({"type": "tool_result", "call_id": "call_small", "result": {"n": 1}})
        )
        assert (await edge.fake.next_request()).tool_result.result["n"] == 1
        await ws.send(json.dumps({"type": "user_message", "content": "still here"}))
        assert await _answer(ws) == "echo: still here!"
        assert ws.close_code is None


async def test_a_message_over_its_limit_gets_an_error_frame_and_the_socket_lives(edge: Edge):
    async with edge.connect() as ws:
        await opened(ws)
        await ws.send(json.dumps({"type": "user_message", "content": "x" * 1_500_000}))
        error = await receive(ws)
        assert (error["type"], error["code"]) == ("error", "invalid_field")
        assert error["content"] == "'content' is longer than 1048576 bytes"
        await ws.send(json.dumps({"type": "user_message", "content": "after"}))
        assert await _answer(ws) == "echo: after!"
    assert (await edge.fake.next_request()).HasField("open")
    assert (await edge.fake.next_request()).user_message.content == "after"


# -- lifetime ------------------------------------------------------------


async def test_closing_the_websocket_cancels_the_runtime_call(edge: Edge):
    async with edge.connect() as ws:
        await opened(ws)
        await ws.send(json.dumps({"type": "user_message", "content": "hang"}))
        await edge.fake.next_request()  # open
        assert (await edge.fake.next_request()).user_message.content == "hang"
    async with asyncio.timeout(TIMEOUT):
        await edge.fake.cancelled.wait()


@pytest.mark.parametrize(
    ("status", "code", "error_frame"),
    [
        ("UNAVAILABLE", 1013, False),
        ("PERMISSION_DENIED", 1008, False),
        ("UNAUTHENTICATED", 1011, False),
        ("INTERNAL", 1011, True),
    ],
)
async def test_runtime_failures_map_to_close_codes(
    edge: Edge, status: str, code: int, error_frame: bool
):
    async with edge.connect() as ws:
        await opened(ws)
        await ws.send(json.dumps({"type": "user_message", "content": f"abort:{status}"}))
        if error_frame:
            frame = await receive(ws)
            assert (frame["type"], frame["code"]) == ("error", "runtime_error")
        with pytest.raises(ConnectionClosed):
            await receive(ws)
        assert (await close_code(ws))[0] == code


async def test_runtime_down_refuses_the_upgrade_with_503(
    jwks_endpoint: JwksEndpoint, rsa_key: SigningKey
):
    # The ownership check is the first runtime call; it fails before the
    # upgrade, so the IDE gets a retryable 503 rather than an open socket.
    config = make_config(jwks_endpoint, free_port(), view_timeout=2)
    async with running_gateway(config) as gateway:
        url = f"ws://127.0.0.1:{gateway.port}/ws/s"
        headers = {"Authorization": f"Bearer {mint(rsa_key)}"}
        with pytest.raises(InvalidStatus) as caught:
            async with connect(url, additional_headers=headers):
                pass
        assert caught.value.response.status_code == 503
        assert caught.value.response.headers["Retry-After"] == "2"


async def test_runtime_going_down_mid_stream_closes_with_try_again_later(edge: Edge):
    async with edge.connect() as ws:
        await opened(ws)
        await ws.send(json.dumps({"type": "user_message", "content": "abort:UNAVAILABLE"}))
        assert await close_code(ws) == (1013, "runtime unavailable")


async def test_runtime_with_other_credential_is_bad_gateway(
    runtime: tuple[FakeRuntime, int], jwks_endpoint: JwksEndpoint, rsa_key: SigningKey
):
    config = make_config(jwks_endpoint, runtime[1], internal_api_key="wrong")
    async with running_gateway(config) as gateway:
        url = f"ws://127.0.0.1:{gateway.port}/ws/s"
        with pytest.raises(InvalidStatus) as caught:
            async with connect(
                url, additional_headers={"Authorization": f"Bearer {mint(rsa_key)}"}
            ):
                pass
        assert caught.value.response.status_code == 502
    assert runtime[0].metadata == []


# -- someone else's session ---------------------------------------------


async def test_someone_elses_session_is_403_before_the_upgrade(edge: Edge):
    edge.fake.own("bobs", "bob")
    response = await refused_status(
        edge,
        path="/ws/bobs",
        additional_headers={"Authorization": f"Bearer {mint(edge.key, sub='alice')}"},
    )
    assert response.status_code == 403
    assert json.loads(response.body)["error"] == "forbidden"
    assert edge.fake.metadata == []  # no Converse was opened
    method, metadata = edge.fake.unary_metadata[-1]
    assert (method, metadata["x-user-id"]) == ("GetCurrentAgent", "alice")
    # The owner gets in, and a new session id is let through to be created.
    async with edge.connect("/ws/bobs", token=mint(edge.key, sub="bob")) as ws:
        await opened(ws)
    async with edge.connect("/ws/brand-new", token=mint(edge.key, sub="alice")) as ws:
        await opened(ws)


async def test_runtime_without_unary_reads_falls_back_to_close_1008(edge: Edge):
    edge.fake.own("bobs", "bob")
    edge.fake.failures["GetCurrentAgent"] = grpc.StatusCode.UNIMPLEMENTED
    async with edge.connect("/ws/bobs", token=mint(edge.key, sub="alice")) as ws:
        assert await close_code(ws) == (1008, "not yours")


# -- resume --------------------------------------------------------------


async def test_resume_frame_asks_the_runtime_to_replay(edge: Edge):
    async with edge.connect() as ws:
        await opened(ws)
        await ws.send(json.dumps({"type": "resume", "last_seq": 41}))
        frame = await receive(ws)
        assert (frame["content"], frame["seq"]) == ("replayed", 42)
        for bad in (-1, 2**63, 2**64, 1.5, "7", True):
            await ws.send(json.dumps({"type": "resume", "last_seq": bad}))
            error = await receive(ws)
            assert (error["type"], error["code"]) == ("error", "invalid_field")
        # The connection is still up and still resumes.
        await ws.send(json.dumps({"type": "resume", "last_seq": 2**63 - 2}))
        assert (await receive(ws))["seq"] == 2**63 - 1
    await edge.fake.next_request()  # open
    assert (await edge.fake.next_request()).resume.after_seq == 41
    assert (await edge.fake.next_request()).resume.after_seq == 2**63 - 2


async def test_stop_closes_connections_with_service_restart(edge: Edge):
    async with edge.connect() as ws:
        await opened(ws)
        await edge.gateway.stop()
        assert (await close_code(ws))[0] == 1012
        await edge.gateway.stop()  # idempotent


# -- re-authentication and expiry ---------------------------------------


async def test_auth_frame_refreshes_the_same_user(edge: Edge):
    async with edge.connect() as ws:
        await opened(ws)
        await ws.send(json.dumps({"type": "auth", "token": mint(edge.key)}))
        await ws.send(json.dumps({"type": "auth", "token": "garbage"}))
        frame = await receive(ws)
        assert (frame["code"], frame["content"]) == ("invalid_token", "malformed token")
        await ws.send(json.dumps({"type": "user_message", "content": "ok"}))
        assert (await receive(ws))["content"] == "echo: "


async def test_auth_frame_for_another_user_closes(edge: Edge):
    async with edge.connect() as ws:
        await opened(ws)
        await ws.send(json.dumps({"type": "auth", "token": mint(edge.key, sub="mallory")}))
        assert await close_code(ws) == (1008, "token is for another user")


async def test_expired_connection_is_closed_unless_refreshed(
    runtime: tuple[FakeRuntime, int], jwks_endpoint: JwksEndpoint, rsa_key: SigningKey
):
    config = make_config(jwks_endpoint, runtime[1], jwt_leeway=0)
    async with running_gateway(config) as gateway:
        url = f"ws://127.0.0.1:{gateway.port}/ws/s"
        token = mint(rsa_key, exp=int(time.time()) + 3)  # 2-3 s: the handshake passes first
        async with connect(url, additional_headers={"Authorization": f"Bearer {token}"}) as ws:
            await opened(ws)
            assert await close_code(ws) == (1008, "token expired")


async def test_a_token_in_the_query_opens_the_socket_and_is_never_logged(edge: Edge):
    token = mint(edge.key, sub="alice")
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        async with connect(edge.url(f"/ws/query-token?access_token={token}")) as ws:
            await opened(ws)
        refused = await refused_status(edge, path="/ws/query-token?access_token=x.y.z")
        assert refused.status_code == 401
        await edge.gateway.stop()
    assert token not in repr(logs)
    assert "x.y.z" not in repr(logs)


async def test_one_summary_line_per_connection_and_no_token_in_logs(edge: Edge):
    token = mint(edge.key, sub="alice")
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        refused = await refused_status(edge, additional_headers={"Authorization": "Bearer x.y.z"})
        assert refused.status_code == 401
        async with edge.connect("/ws/logged", token=token) as ws:
            await opened(ws)
            await ws.send(json.dumps({"type": "user_message", "content": "hi"}))
            for _ in range(4):
                await receive(ws)
        await edge.gateway.stop()  # returns once every handler has returned
    summaries = [entry for entry in logs if entry["event"] == "connection_closed"]
    assert len(summaries) == 1
    summary = summaries[0]
    assert (summary["session_id"], summary["user"]) == ("logged", "alice")
    assert (summary["frames_in"], summary["frames_out"], summary["close_code"]) == (1, 5, 1000)
    assert summary["duration"] >= 0
    assert token not in repr(logs)
    assert "x.y.z" not in repr(logs)


# -- attaching on the first frame ---------------------------------------------


async def test_a_new_session_is_created_and_attached_on_its_first_frame(edge_factory: Any):
    """An idle connection holds no runtime stream: the session is created at
    the handshake, session_info comes from the gateway, and Converse opens
    (resuming after the announced seq) with the first frame, which follows."""
    async with edge_factory(attach_on_first_frame=True) as edge:
        async with edge.connect("/ws/fresh") as ws:
            info = await opened(ws)
            assert info["metadata"] == {
                "session_id": "fresh",
                "agent": "orchestrator",
                "created": True,
                "recovered": True,
                "last_seq": 0,
            }
            # Attached at connect, this session_info would have come from a
            # Converse the fake had already recorded.
            assert edge.fake.metadata == []
            assert "fresh" in edge.fake.sessions  # but the session exists
            await ws.send(json.dumps({"type": "user_message", "content": "hi"}))
            frames = [await receive(ws) for _ in range(4)]
        opening = (await edge.fake.next_request()).open
        assert (opening.session_id, opening.resume_after_seq) == ("fresh", 0)
        assert opening.HasField("resume_after_seq")
        assert (await edge.fake.next_request()).user_message.content == "hi"
    # The runtime's own session_opened (recovered) is not shown twice.
    assert [f["type"] for f in frames] == ["assistant_message"] * 4
    assert [f["content"] for f in frames] == ["echo: ", "hi", "!", ""]


ENVIRONMENT = {"type": "environment", "os": "Linux", "shell": "/bin/sh", "workspace_root": "/w"}


async def test_an_environment_is_forwarded(edge: Edge):
    async with edge.connect() as ws:
        await opened(ws)
        await ws.send(json.dumps(ENVIRONMENT))
        await edge.fake.next_request()  # open
        reported = (await edge.fake.next_request()).environment
        assert (reported.os, reported.shell, reported.workspace_root) == ("Linux", "/bin/sh", "/w")


async def test_an_environment_keeps_a_connection_quiet_and_goes_first_when_it_attaches(
    edge_factory: Any,
):
    async with edge_factory(attach_on_first_frame=True) as edge:
        async with edge.connect("/ws/reporting") as ws:
            await opened(ws)
            await ws.send(json.dumps(ENVIRONMENT))
            await ws.send("not json")  # answered after the environment was read
            assert (await receive(ws))["code"] == "invalid_json"
            assert edge.fake.metadata == [], "no runtime stream for a report"
            await ws.send(json.dumps({"type": "user_message", "content": "hi"}))
            await receive(ws)
        assert (await edge.fake.next_request()).open.session_id == "reporting"
        assert (await edge.fake.next_request()).environment.os == "Linux"
        assert (await edge.fake.next_request()).user_message.content == "hi"


async def test_an_idle_session_resumes_where_the_announcement_left_off(edge_factory: Any):
    async with edge_factory(attach_on_first_frame=True) as edge:
        token = mint(edge.key, sub="carol")
        edge.fake.own("quiet", "carol")
        edge.fake.states["quiet"] = (41, True)
        async with edge.connect("/ws/quiet?last_seq=41", token=token) as ws:
            info = await opened(ws)
            assert info["metadata"]["last_seq"] == 41
            assert info["metadata"]["created"] is False
            await ws.send(json.dumps({"type": "cancel"}))
            assert (await edge.fake.next_request()).open.resume_after_seq == 41
            assert (await edge.fake.next_request()).WhichOneof("event") == "cancel"
        # Errors and re-authentication are answered without attaching.
        async with edge.connect("/ws/quiet", token=token) as ws:
            await opened(ws)
            await ws.send("not json")
            assert (await receive(ws))["type"] == "error"
        assert len(edge.fake.metadata) == 1


async def test_a_busy_session_or_a_replay_attaches_at_connect(edge_factory: Any):
    async with edge_factory(attach_on_first_frame=True) as edge:
        token = mint(edge.key, sub="dave")
        edge.fake.own("busy", "dave")
        edge.fake.states["busy"] = (7, False)  # a turn is running
        async with edge.connect("/ws/busy", token=token) as ws:
            await opened(ws)
            assert (await edge.fake.next_request()).open.session_id == "busy"
        edge.fake.own("behind", "dave")
        edge.fake.states["behind"] = (9, True)
        async with edge.connect("/ws/behind?last_seq=5", token=token) as ws:
            await opened(ws)  # events 6-9 are to be replayed
            assert (await edge.fake.next_request()).open.resume_after_seq == 5


async def test_an_idle_connection_still_times_out(edge_factory: Any):
    async with edge_factory(attach_on_first_frame=True, idle_timeout=0.3) as edge:
        async with edge.connect("/ws/sleepy") as ws:
            await opened(ws)
            code, _ = await close_code(ws)
        assert code == 1001
        assert edge.fake.metadata == []


# -- every window sees its session live -----------------------------------------


async def until_final(ws: Any) -> list[dict[str, Any]]:
    """Frames up to and including the turn's final assistant_message."""
    frames = []
    while not frames or not frames[-1].get("is_final"):
        frames.append(await receive(ws))
    return frames


def converse_calls(edge: Edge, request_id: str) -> int:
    return sum(1 for metadata in edge.fake.metadata if metadata["x-request-id"] == request_id)


def window(edge: Edge, session_id: str, name: str) -> Any:
    return edge.connect(f"/ws/{session_id}", headers={"X-Request-Id": name})


@pytest.mark.parametrize("count", [2, 3])
async def test_quiet_windows_see_the_turn_another_starts_live(edge_factory: Any, count: int):
    """Every window on an idle session is quiet; the first to speak attaches,
    and its turn's first event wakes the others, which attach after the seq
    they were told and get the whole turn, numbered alike, without a frame."""
    async with edge_factory(attach_on_first_frame=True) as edge, AsyncExitStack() as stack:
        edge.fake.own("shared", "user-1")
        edge.fake.states["shared"] = (0, True)
        names = [f"w{n}" for n in range(count)]
        sockets = [await stack.enter_async_context(window(edge, "shared", n)) for n in names]
        for ws in sockets:
            assert (await opened(ws))["metadata"]["last_seq"] == 0
        speaker, *others = sockets
        # An action that makes no event attaches the speaker only.
        await speaker.send(json.dumps({"type": "cancel"}))
        assert (await edge.fake.next_request()).open.resume_after_seq == 0
        assert (await edge.fake.next_request()).WhichOneof("event") == "cancel"
        assert [converse_calls(edge, name) for name in names] == [1] + [0] * len(others)
        await speaker.send(json.dumps({"type": "user_message", "content": "pause"}))
        first = await receive(speaker)
        # The turn is still running: what the others get now is live.
        for ws in others:
            assert await receive(ws) == first
        edge.fake.go.set()
        turn = [first, *await until_final(speaker)]
        for ws in others:
            assert [first, *await until_final(ws)] == turn
        assert [converse_calls(edge, name) for name in names] == [1] * count
    assert [f["seq"] for f in turn] == [1, 2, 3, 4]
    assert [f["content"] for f in turn] == ["echo: ", "pause", "!", ""]
    openings = [r.open for r in drain(edge.fake) if r.WhichOneof("event") == "open"]
    assert len(openings) == count - 1
    assert all(o.HasField("resume_after_seq") and o.resume_after_seq == 0 for o in openings)


def drain(fake: FakeRuntime) -> list[Any]:
    requests = []
    while not fake.requests.empty():
        requests.append(fake.requests.get_nowait())
    return requests


async def test_a_window_that_connects_beside_an_attached_one_is_woken_by_its_next_turn(
    edge_factory: Any,
):
    async with edge_factory(attach_on_first_frame=True) as edge:
        edge.fake.own("shared", "user-1")
        edge.fake.states["shared"] = (0, True)
        async with window(edge, "shared", "a") as a:
            await opened(a)
            await a.send(json.dumps({"type": "user_message", "content": "one"}))
            assert [f["seq"] for f in await until_final(a)] == [1, 2, 3, 4]
            # A stays attached; the session is idle again.
            async with window(edge, "shared", "b") as b:
                assert (await opened(b))["metadata"]["last_seq"] == 4
                assert converse_calls(edge, "b") == 0  # quiet
                await a.send(json.dumps({"type": "user_message", "content": "two"}))
                seen_by_a = await until_final(a)
                seen_by_b = await until_final(b)
                assert converse_calls(edge, "b") == 1
    assert seen_by_b == seen_by_a  # nothing of "one" again, all of "two"
    assert [f["seq"] for f in seen_by_b] == [5, 6, 7, 8]
    assert [f["content"] for f in seen_by_b] == ["echo: ", "two", "!", ""]


async def test_a_window_told_an_older_seq_than_its_peers_attaches_at_once(edge_factory: Any):
    """The handshake's read of the session may be older than what a window
    here has already been sent (a turn ran in between): the new window must
    not wait for the next event to get those."""
    async with edge_factory(attach_on_first_frame=True) as edge:
        edge.fake.own("shared", "user-1")
        edge.fake.states["shared"] = (0, True)
        async with window(edge, "shared", "a") as a:
            await opened(a)
            await a.send(json.dumps({"type": "user_message", "content": "one"}))
            turn = await until_final(a)
            edge.fake.states["shared"] = (2, True)  # read in the middle of that turn
            async with window(edge, "shared", "b") as b:
                assert (await opened(b))["metadata"]["last_seq"] == 2
                assert [await receive(b) for _ in range(2)] == turn[2:]


async def test_a_newer_announcement_wakes_a_window_told_an_older_one(edge_factory: Any):
    """A window quiet since seq 4 learns, from a window that connects told
    6 (events another gateway's window caused), that it is behind."""
    async with edge_factory(attach_on_first_frame=True) as edge:
        edge.fake.own("shared", "user-1")
        edge.fake.states["shared"] = (4, True)
        async with window(edge, "shared", "old") as old:
            await opened(old)
            edge.fake.publish("shared", assistant_delta=pb.AssistantDelta(text="elsewhere"))
            edge.fake.publish("shared", turn_done=pb.TurnDone(status=pb.TURN_STATUS_COMPLETED))
            async with window(edge, "shared", "new") as new:
                assert (await opened(new))["metadata"]["last_seq"] == 6
                missed = await until_final(old)
                assert converse_calls(edge, "new") == 0  # it has nothing to catch up on
    assert [(f["seq"], f["content"]) for f in missed] == [(5, "elsewhere"), (6, "")]


async def test_a_window_that_closes_while_being_woken_leaves_nothing_behind(edge_factory: Any):
    async with edge_factory(attach_on_first_frame=True) as edge:
        edge.fake.own("shared", "user-1")
        edge.fake.states["shared"] = (0, True)
        edge.fake.held["b"] = held = asyncio.Event()
        async with window(edge, "shared", "a") as a:
            await opened(a)
            async with window(edge, "shared", "b") as b:
                await opened(b)
                await a.send(json.dumps({"type": "user_message", "content": "one"}))
                await until_final(a)
                await eventually(lambda: converse_calls(edge, "b") == 1)  # being woken
            held.set()  # b is gone; its attach completes now
            await eventually(lambda: edge.gateway.open_connections == 1)
            await eventually(lambda: len(edge.fake.streams["shared"]) == 1)
            await a.send(json.dumps({"type": "user_message", "content": "two"}))
            assert [f["seq"] for f in await until_final(a)] == [5, 6, 7, 8]


async def test_a_window_whose_stream_fails_does_not_take_the_woken_ones_with_it(
    edge_factory: Any,
):
    async with edge_factory(attach_on_first_frame=True) as edge:
        edge.fake.own("shared", "user-1")
        edge.fake.states["shared"] = (0, True)
        async with window(edge, "shared", "a") as a, window(edge, "shared", "b") as b:
            await opened(a)
            await opened(b)
            await a.send(json.dumps({"type": "user_message", "content": "partial:INTERNAL"}))
            first = await receive(a)
            assert (first["seq"], first["content"]) == (1, "echo: ")
            assert (await receive(a))["code"] == "runtime_error"
            assert (await close_code(a))[0] == 1011
            assert await receive(b) == first  # woken by that first event
            await b.send(json.dumps({"type": "user_message", "content": "still here"}))
            frames = await until_final(b)
    assert [(f["seq"], f["content"]) for f in frames][:2] == [(2, "echo: "), (3, "still here")]


# -- keepalive ------------------------------------------------------------------


async def test_keepalive_pings_are_answered_and_the_connection_stays(edge_factory: Any):
    async with (
        edge_factory(ping_interval=0.1, ping_timeout=0.3) as edge,
        edge.connect(create_connection=PingCounter) as ws,
    ):
        await opened(ws)
        await eventually(lambda: ws.pings >= 5)  # each answered by the client
        await ws.send(json.dumps({"type": "user_message", "content": "still here"}))
        assert (await receive(ws))["content"] == "echo: "


async def test_a_client_that_answers_no_ping_is_closed_1011(edge_factory: Any):
    async with edge_factory(ping_interval=0.1, ping_timeout=0.3) as edge, edge.connect() as ws:
        await opened(ws)
        with capture_logs() as logs:
            ws.transport.pause_reading()  # pings go unanswered
            await eventually(lambda: any(e["event"] == "keepalive_timeout" for e in logs))
            ws.transport.resume_reading()
        code, reason = await close_code(ws)
    assert (code, reason) == (1011, "keepalive ping timeout")
