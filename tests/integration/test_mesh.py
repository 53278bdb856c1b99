"""Issue 2's promises, checked on the real mesh started like ``./scripts/up``."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import grpc
import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from grpc_health.v1 import health_pb2, health_pb2_grpc
from websockets.exceptions import InvalidStatus

from auth.keys import KeyRing
from auth.tokens import Subject, TokenIssuer
from ide.connection import IdeConnection
from llmproxy.v1 import llmproxy_pb2, llmproxy_pb2_grpc
from mesh.grpc_server import internal_metadata
from runtime.v1 import runtime_pb2_grpc
from tests.integration.conftest import ROOT, Mesh

GRPCURL = str(Path(ROOT, ".venv", "bin", "grpcurl"))


def forged(mesh: Mesh, *, typ: str = "at+jwt", **overrides: Any) -> str:
    """A token signed with the mesh's real key, with some claims (or the
    ``typ`` header) changed."""
    key = KeyRing.load(mesh.home / "keys").current
    now = int(time.time())
    claims = {
        "iss": mesh.auth_url,
        "sub": "someone",
        "aud": "codelab-api",
        "iat": now,
        "nbf": now,
        "exp": now + 300,
        "jti": "x",
    } | overrides
    return jwt.encode(
        claims, key.private_key, algorithm=key.alg, headers={"kid": key.kid, "typ": typ}
    )


async def test_user_message_streams_the_offline_answer(mesh: Mesh) -> None:
    async with IdeConnection(mesh.ws_url, "e2e-stream", mesh.token) as ide:
        info = await ide.next_frame()
        assert info["type"] == "session_info"
        await ide.send_message("hello mesh")
        text, frames = await ide.answer()
    deltas = [f for f in frames if f["type"] == "assistant_message" and not f["is_final"]]
    # Token by token when the stream keeps up; deltas that queue up behind a
    # slow hop are merged (test_providers shows a paced model's tokens one by one).
    assert deltas
    assert all(f["token"] == f["content"] for f in deltas)
    assert frames[-1]["is_final"] is True
    seqs = [f["seq"] for f in frames]
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == len(seqs)
    assert text.startswith("You said: hello mesh")


async def test_a_second_turn_sees_the_conversation(mesh: Mesh) -> None:
    async with IdeConnection(mesh.ws_url, "e2e-two-turns", mesh.token) as ide:
        await ide.next_frame()
        await ide.send_message("first")
        first, _ = await ide.answer()
        await ide.send_message("second")
        second, _ = await ide.answer()
    assert first.startswith("You said: first")
    assert second.startswith("You said: second")


@pytest.mark.parametrize(
    "make_token",
    [
        pytest.param(lambda mesh: forged(mesh, exp=int(time.time()) - 120), id="expired"),
        pytest.param(lambda mesh: forged(mesh, aud="another-api"), id="wrong-audience"),
        pytest.param(lambda mesh: forged(mesh, iss="http://evil.example"), id="wrong-issuer"),
        pytest.param(lambda mesh: forged(mesh, nbf=int(time.time()) + 3600), id="not-yet-valid"),
        pytest.param(
            lambda mesh: jwt.encode(
                {"sub": "x", "aud": "codelab-api", "iss": mesh.auth_url}, None, algorithm="none"
            ),
            id="unsigned",
        ),
        pytest.param(
            lambda mesh: jwt.encode(
                {"sub": "x", "aud": "codelab-api", "iss": mesh.auth_url, "exp": time.time() + 60},
                rsa.generate_private_key(public_exponent=65537, key_size=2048),
                algorithm="RS256",
                headers={"kid": KeyRing.load(mesh.home / "keys").current.kid, "typ": "at+jwt"},
            ),
            id="signed-by-another-key",
        ),
        pytest.param(lambda mesh: forged(mesh, typ="JWT"), id="typ-JWT-not-at+jwt"),
        pytest.param(lambda mesh: mesh.token[:-4] + "AAAA", id="altered-signature"),
        pytest.param(lambda mesh: "not-a-jwt", id="garbage"),
    ],
)
async def test_bad_tokens_are_refused_at_the_handshake(mesh: Mesh, make_token: Any) -> None:
    with pytest.raises(InvalidStatus) as refused:
        async with IdeConnection(mesh.ws_url, "e2e-bad-token", make_token(mesh)):
            pass
    assert refused.value.response.status_code == 401


async def test_no_token_is_refused_at_the_handshake(mesh: Mesh) -> None:
    from websockets.asyncio.client import connect

    with pytest.raises(InvalidStatus) as refused:
        async with connect(f"{mesh.ws_url}/ws/e2e-anon"):
            pass
    assert refused.value.response.status_code == 401


async def test_a_token_from_the_real_issuer_with_a_past_clock_is_expired(mesh: Mesh) -> None:
    issuer = TokenIssuer(
        KeyRing.load(mesh.home / "keys"),
        issuer=mesh.auth_url,
        audience="codelab-api",
        ttl=60,
        clock=lambda: time.time() - 3600,
    )
    token = issuer.issue(Subject("u1", "dev"), client_id="codelab-ide", scope=()).token
    with pytest.raises(InvalidStatus) as refused:
        async with IdeConnection(mesh.ws_url, "e2e-old", token):
            pass
    assert refused.value.response.status_code == 401


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("{not json", "invalid_json"),
        ("[1, 2]", "not_an_object"),
        (json.dumps({"type": "teleport"}), "unknown_type"),
        (json.dumps({"type": "user_message"}), "missing_field"),
        (json.dumps({"type": "user_message", "content": 42}), "invalid_field"),
    ],
)
async def test_malformed_frames_get_error_frames_and_the_connection_survives(
    mesh: Mesh, raw: str, code: str
) -> None:
    async with IdeConnection(mesh.ws_url, f"e2e-bad-{code}", mesh.token) as ide:
        await ide.next_frame()
        await ide.ws.send(raw)
        error = await ide.next_frame()
        assert error["type"] == "error"
        assert error["code"] == code
        assert error["content"] == error["error"]
        assert error["content"]
        await ide.send_message("still there?")
        text, _ = await ide.answer()
    assert text.startswith("You said: still there?")


async def test_health_is_answered_on_the_gateway_port(mesh: Mesh) -> None:
    async with httpx.AsyncClient() as client:
        for path in ("/health", "/api/v1/health"):
            reply = await client.get(f"http://127.0.0.1:{mesh.gateway_port}{path}")
            assert reply.status_code == 200
            assert reply.json()["status"] == "ok"


@pytest.mark.parametrize("service", ["runtime", "llmproxy"])
async def test_grpc_calls_without_the_internal_credential_are_refused(
    mesh: Mesh, service: str
) -> None:
    port = mesh.runtime_port if service == "runtime" else mesh.llmproxy_port
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.SERVING

        if service == "runtime":
            # The refusal comes before any message: no write, just the status.
            stub = runtime_pb2_grpc.AgentRuntimeServiceStub(channel)
            call = stub.Converse(metadata=(("x-user-id", "dev"),))
            assert await call.code() == grpc.StatusCode.UNAUTHENTICATED
            return
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await llmproxy_pb2_grpc.LlmProxyServiceStub(channel).ListModels(
                llmproxy_pb2.ListModelsRequest(), metadata=(("x-internal-auth", "wrong"),)
            )
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_llmproxy_streams_with_the_credential(mesh: Mesh) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{mesh.llmproxy_port}") as channel:
        stub = llmproxy_pb2_grpc.LlmProxyServiceStub(channel)
        request = llmproxy_pb2.StreamChatRequest(
            model="offline", messages=[llmproxy_pb2.ChatMessage(role="user", content="ping")]
        )
        kinds = [
            r.WhichOneof("chunk")
            async for r in stub.StreamChat(request, metadata=internal_metadata(mesh.internal_key))
        ]
    assert kinds.count("text") > 1
    assert kinds[-1] == "end"


def grpcurl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [GRPCURL, "-plaintext", *args], capture_output=True, text=True, timeout=30, check=False
    )


@pytest.mark.parametrize(
    ("service", "name"),
    [("runtime", "runtime.v1.AgentRuntimeService"), ("llmproxy", "llmproxy.v1.LlmProxyService")],
)
async def test_grpcurl_lists_describes_checks_health_and_is_refused_without_credential(
    mesh: Mesh, service: str, name: str
) -> None:
    port = mesh.runtime_port if service == "runtime" else mesh.llmproxy_port
    address = f"127.0.0.1:{port}"
    header = f"x-internal-auth: {mesh.internal_key}"
    listed = await asyncio.to_thread(grpcurl, "-H", header, address, "list")
    assert listed.returncode == 0, listed.stderr
    assert name in listed.stdout.split()
    described = await asyncio.to_thread(grpcurl, "-H", header, address, "describe", name)
    assert described.returncode == 0, described.stderr
    assert "rpc " in described.stdout
    health = await asyncio.to_thread(grpcurl, "-H", header, address, "grpc.health.v1.Health/Check")
    assert health.returncode == 0, health.stderr
    assert "SERVING" in health.stdout
    refused = await asyncio.to_thread(grpcurl, address, "list")
    assert refused.returncode != 0
    assert "Unauthenticated" in refused.stderr


async def test_grpcurl_calls_a_method(mesh: Mesh) -> None:
    result = await asyncio.to_thread(
        grpcurl,
        "-H",
        f"x-internal-auth: {mesh.internal_key}",
        f"127.0.0.1:{mesh.llmproxy_port}",
        "llmproxy.v1.LlmProxyService/ListModels",
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["models"][0]["name"] == "offline"


async def test_grpcurl_runs_two_calls_on_one_stream_chats_stream(mesh: Mesh) -> None:
    """README's StreamChats example: two calls, each answered in full."""
    requests = "\n".join(
        json.dumps(
            {
                "id": i,
                "start": {"model": "offline", "messages": [{"role": "user", "content": text}]},
            }
        )
        for i, text in ((1, "hi"), (2, "bye"))
    )
    result = await asyncio.to_thread(
        grpcurl,
        "-H",
        f"x-internal-auth: {mesh.internal_key}",
        "-d",
        requests,
        f"127.0.0.1:{mesh.llmproxy_port}",
        "llmproxy.v1.LlmProxyService/StreamChats",
    )
    assert result.returncode == 0, result.stderr
    responses, text, decoder = [], result.stdout.strip(), json.JSONDecoder()
    while text:  # grpcurl prints one JSON object per response
        response, end = decoder.raw_decode(text)
        responses.append(response)
        text = text[end:].strip()
    for call, text in (("1", "hi"), ("2", "bye")):
        mine = [r["chunk"] for r in responses if r["id"] == call]
        answer = "".join(c["text"]["text"] for c in mine if "text" in c)
        assert answer.startswith(f"You said: {text} ")
        assert "end" in mine[-1]


async def test_token_endpoint_and_jwks(mesh: Mesh) -> None:
    async with httpx.AsyncClient(base_url=mesh.auth_url) as client:
        jwks = (await client.get("/.well-known/jwks.json")).json()
        granted = await client.post(
            "/oauth/token",
            data={
                "grant_type": "password",
                "username": mesh.dev_user["username"],
                "password": mesh.dev_user["password"],
                "client_id": "codelab-ide",
            },
        )
        wrong = await client.post(
            "/oauth/token",
            data={
                "grant_type": "password",
                "username": mesh.dev_user["username"],
                "password": "wrong-password",
                "client_id": "codelab-ide",
            },
        )
    assert granted.status_code == 200
    token = granted.json()["access_token"]
    header = jwt.get_unverified_header(token)
    key = next(k for k in jwks["keys"] if k["kid"] == header["kid"])
    claims = jwt.decode(
        token,
        jwt.PyJWK(key).key,
        algorithms=["RS256", "ES256"],
        audience="codelab-api",
        issuer=mesh.auth_url,
    )
    assert claims["preferred_username"] == mesh.dev_user["username"]
    assert wrong.status_code == 400
    assert wrong.json()["error"] == "invalid_grant"
    # The token the endpoint just issued opens a WebSocket.
    async with IdeConnection(mesh.ws_url, "e2e-fresh-token", token) as ide:
        assert (await ide.next_frame())["type"] == "session_info"


@pytest.mark.parametrize("service", ["runtime", "llmproxy", "auth", "gateway"])
async def test_the_container_probe_sees_each_service_healthy(mesh: Mesh, service: str) -> None:
    from mesh.probe import main as probe

    target = {
        "runtime": ("grpc", f"127.0.0.1:{mesh.runtime_port}"),
        "llmproxy": ("grpc", f"127.0.0.1:{mesh.llmproxy_port}"),
        "auth": ("http", f"{mesh.auth_url}/health"),
        "gateway": ("http", f"http://127.0.0.1:{mesh.gateway_port}/ready"),
    }[service]
    assert await asyncio.to_thread(probe, list(target)) == 0
    assert await asyncio.to_thread(probe, [target[0], "127.0.0.1:1", "--timeout", "0.5"]) == 1


def readme_grpcurl_commands() -> list[str]:
    """The README's grpcurl examples, continuation lines joined."""
    text = (Path(ROOT) / "README.md").read_text()
    section = text.split("## Calling the services with grpcurl", 1)[1]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    return [line for line in block.replace("\\\n", " ").splitlines() if line.strip()]


async def test_the_readme_grpcurl_examples_work(mesh: Mesh) -> None:
    commands = readme_grpcurl_commands()
    assert len(commands) >= 8
    script = "\n".join(
        line.replace(".codelab/", f"{mesh.home}/")
        .replace("127.0.0.1:50051", f"127.0.0.1:{mesh.runtime_port}")
        .replace("127.0.0.1:50052", f"127.0.0.1:{mesh.llmproxy_port}")
        + ("" if "# refused" in line else ' || { echo "FAILED: $LINENO"; exit 1; }')
        for line in commands
    )
    result = await asyncio.to_thread(
        subprocess.run,
        ["bash", "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert "FAILED" not in result.stdout, result.stdout + result.stderr
    assert "Unauthenticated" in result.stderr, "the last example is refused, as it says"
    assert '"text"' in result.stdout, "StreamChat streamed"


def test_a_mesh_whose_port_was_taken_meanwhile_starts_on_fresh_ports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process bound a port between free_port and the service's bind
    (pytest's workers start meshes side by side): the start is tried again."""
    from tests.integration import conftest

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        chosen = iter([port])  # the first port asked for, the gateway's
        real = conftest.free_port
        monkeypatch.setattr(conftest, "free_port", lambda: next(chosen, None) or real())
        with conftest.launch(tmp_path / "home") as mesh:
            assert mesh.gateway_port != port
            response = httpx.get(f"http://127.0.0.1:{mesh.gateway_port}/health", timeout=10)
            assert response.status_code == 200
        gateway_log = (tmp_path / "home" / "logs" / "gateway.log").read_text()
        assert "address already in use" in gateway_log.lower(), "the first start met the port"


async def test_a_mesh_whose_runtime_multiplexes_its_model_calls_answers_every_session(
    tmp_path: Path,
) -> None:
    """AGENT_RUNTIME__LLM_PROXY_MULTIPLEX=true end to end: sessions at once,
    two turns each, every answer whole and its own."""
    from tests.integration import conftest

    with conftest.launch(tmp_path / "home", AGENT_RUNTIME__LLM_PROXY_MULTIPLEX="true") as mesh:

        async def session(name: str) -> list[str]:
            async with IdeConnection(mesh.ws_url, name, mesh.token) as ide:
                await ide.next_frame()
                answers = []
                for turn in ("first", "second"):
                    await ide.send_message(f"{turn} of {name}")
                    answers.append((await ide.answer())[0])
                return answers

        names = [f"mux-{i}" for i in range(6)]
        results = await asyncio.gather(*(session(name) for name in names))
        llmproxy_log = (tmp_path / "home" / "logs" / "llmproxy.log").read_text()

    for name, answers in zip(names, results, strict=True):
        assert answers[0].startswith(f"You said: first of {name} ")
        assert answers[1].startswith(f"You said: second of {name} ")
    # The model calls went over StreamChats streams, none as a StreamChat call.
    lines = [json.loads(line) for line in llmproxy_log.splitlines() if line.startswith("{")]
    calls = [line["rpc"] for line in lines if line["event"] == "stream_chat_finished"]
    assert len(calls) >= 2 * len(names)  # and the orchestrator routing each first message
    assert set(calls) == {"/llmproxy.v1.LlmProxyService/StreamChats"}
