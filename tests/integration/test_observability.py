"""One log story across hops, metrics after a session, no secret in any log.

The mesh is started like ``./scripts/up`` (JSON logs under
``mesh.home/'logs'``, every service's metrics on its own port).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import grpc
import httpx
import jwt
import websockets
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import Mesh

SERVICES = ("gateway", "runtime", "llmproxy")


async def converse(
    mesh: Mesh, session_id: str, request_id: str, content: str
) -> list[dict[str, Any]]:
    """One message on a new connection with ``X-Request-Id``; rejects any
    tool call that waits for approval, answers any other as an empty workspace
    would (not found), and returns every frame up to the end of the turn."""
    frames = []
    async with websockets.connect(
        f"{mesh.ws_url}/ws/{session_id}",
        additional_headers={"Authorization": f"Bearer {mesh.token}", "X-Request-Id": request_id},
    ) as ws:
        await ws.recv()  # session_info
        await ws.send(json.dumps({"type": "user_message", "content": content}))
        while True:
            frame = json.loads(await asyncio.wait_for(ws.recv(), 20))
            frames.append(frame)
            if frame["type"] == "tool_call" and frame["requires_approval"]:
                await ws.send(
                    json.dumps(
                        {"type": "hitl_decision", "call_id": frame["call_id"], "decision": "reject"}
                    )
                )
            elif frame["type"] == "tool_call":
                path = frame["arguments"].get("path", "")
                error = f"File not found: {path}"
                await ws.send(
                    json.dumps({"type": "tool_result", "call_id": frame["call_id"], "error": error})
                )
            if frame["type"] == "assistant_message" and frame["is_final"]:
                return frames


def log_lines(mesh: Mesh, service: str) -> list[dict[str, Any]]:
    lines = (mesh.home / "logs" / f"{service}.log").read_text().splitlines()
    return [json.loads(line) for line in lines if line.startswith("{")]


async def wait_for_lines(
    mesh: Mesh, service: str, request_id: str, event: str, rpc: str | None = None
) -> list[dict[str, Any]]:
    """The service's lines with ``request_id``, once one is ``event`` (of ``rpc``)."""
    for _ in range(100):
        found = [line for line in log_lines(mesh, service) if line.get("request_id") == request_id]
        if any(line["event"] == event and rpc in (None, line.get("rpc")) for line in found):
            return found
        await asyncio.sleep(0.05)
    raise AssertionError(f"no {event} line with request_id={request_id} in {service}.log")


async def test_one_request_id_through_gateway_runtime_and_llmproxy_logs(mesh: Mesh) -> None:
    request_id = f"obs-{uuid.uuid4().hex}"
    await converse(mesh, "obs-story", request_id, "hello logs")
    gateway = await wait_for_lines(mesh, "gateway", request_id, "connection_closed")
    converse_rpc = "/runtime.v1.AgentRuntimeService/Converse"
    runtime = await wait_for_lines(mesh, "runtime", request_id, "rpc_finished", converse_rpc)
    llmproxy = await wait_for_lines(mesh, "llmproxy", request_id, "stream_chat_finished")
    user = jwt.decode(mesh.token, options={"verify_signature": False})["sub"]
    assert {line.get("session_id") for line in gateway} == {"obs-story"}
    assert all(line.get("user") == user for line in gateway)
    turn = next(line for line in runtime if line["event"] == "turn_finished")
    assert (turn["session_id"], turn["user"], turn["status"]) == ("obs-story", user, "completed")
    summary = next(
        line for line in runtime if line["event"] == "rpc_finished" and line["rpc"] == converse_rpc
    )
    assert (summary["session_id"], summary["user"]) == ("obs-story", user)
    assert {"code", "duration_ms"} <= set(summary)
    # The runtime's model calls share StreamChats streams: each call's own
    # summary line is llmproxy's stream_chat_finished, with the call's user.
    calls = [line for line in llmproxy if line["event"] == "stream_chat_finished"]
    assert calls
    assert all(line.get("user") == user for line in calls)
    assert all(line["outcome"] == "ok" and line["model"] for line in calls)
    # No per-token lines at INFO: a 20-odd delta answer logs a handful of lines.
    assert len(runtime) < 15
    assert len(llmproxy) < 15


def scrape(url: str) -> dict[str, float]:
    """Every sample as ``name{label="value",...}`` → value (labels sorted)."""
    reply = httpx.get(url, timeout=5)
    assert reply.status_code == 200
    samples = {}
    for family in text_string_to_metric_families(reply.text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return samples


def total(samples: dict[str, float], name: str, **labels: str) -> float:
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    return sum(
        value
        for key, value in samples.items()
        if key.split("{")[0] == name and all(w in key for w in wanted)
    )


async def test_metrics_endpoints_expose_the_session(mesh: Mesh) -> None:
    await converse(mesh, "obs-metrics", f"m-{uuid.uuid4().hex}", "write notes.md: hello")
    await converse(mesh, "obs-metrics", f"m-{uuid.uuid4().hex}", "hello metrics")
    base = "http://127.0.0.1"
    for _ in range(50):  # the connection's close is counted when its handler ends
        gateway = await asyncio.to_thread(scrape, f"{base}:{mesh.gateway_metrics_port}/metrics")
        if total(gateway, "codelab_gateway_connections_closed_total") >= 2:
            break
        await asyncio.sleep(0.05)
    assert total(gateway, "codelab_gateway_connections_closed_total") >= 2
    assert total(gateway, "codelab_gateway_frames_received_total") >= 3
    assert total(gateway, "codelab_gateway_frames_sent_total") > 10
    assert "codelab_gateway_connections_open{}" in gateway
    public = await asyncio.to_thread(httpx.get, f"{base}:{mesh.gateway_port}/metrics", timeout=5)
    assert public.status_code == 404, "the public port serves no metrics"

    runtime = await asyncio.to_thread(scrape, f"{base}:{mesh.runtime_metrics_port}/metrics")
    assert total(runtime, "codelab_runtime_turns_total", status="completed") >= 2
    assert total(runtime, "codelab_runtime_turn_duration_seconds_count") >= 2
    assert total(runtime, "codelab_runtime_time_to_first_token_seconds_count") >= 2
    assert total(runtime, "codelab_runtime_tokens_streamed_total", model="offline") > 10
    assert total(runtime, "codelab_runtime_tool_calls_total", tool="write_file") >= 1
    assert total(runtime, "codelab_runtime_approvals_total", decision="reject") >= 1
    assert total(runtime, "codelab_runtime_db_commit_seconds_count") > 0
    assert total(runtime, "codelab_dependency_up", dependency="database") == 1
    assert total(runtime, "codelab_dependency_up", dependency="llmproxy") == 1
    converse_calls = "/runtime.v1.AgentRuntimeService/Converse"
    assert total(runtime, "grpc_server_handled_total", method=converse_calls) >= 2

    llmproxy = await asyncio.to_thread(scrape, f"{base}:{mesh.llmproxy_metrics_port}/metrics")
    assert total(llmproxy, "codelab_llmproxy_calls_total", model="offline", status="ok") >= 2
    assert total(llmproxy, "codelab_llmproxy_call_duration_seconds_count") >= 2
    assert (
        'codelab_llmproxy_deployment_cooling_down{deployment="offline/echo"' in "".join(llmproxy)
        or total(llmproxy, "codelab_llmproxy_deployment_cooling_down") == 0
    )
    assert any(k.startswith("codelab_llmproxy_deployment_cooling_down") for k in llmproxy)

    auth = await asyncio.to_thread(scrape, f"{base}:{mesh.auth_metrics_port}/metrics")
    assert total(auth, "codelab_auth_http_requests_total", path="/.well-known/jwks.json") >= 1
    assert total(auth, "codelab_auth_http_requests_total", path="/oauth/token", status="200") >= 1
    public = await asyncio.to_thread(httpx.get, f"{base}:{mesh.auth_port}/metrics", timeout=5)
    assert public.status_code == 404, "auth's public port serves no metrics"


async def test_health_and_readiness(mesh: Mesh) -> None:
    async with httpx.AsyncClient() as client:
        ready = await client.get(f"http://127.0.0.1:{mesh.gateway_port}/ready")
        live = await client.get(f"http://127.0.0.1:{mesh.gateway_port}/health")
    assert (live.status_code, ready.status_code) == (200, 200)
    assert ready.json() == {"status": "ready", "failing": []}
    for port in (mesh.runtime_port, mesh.llmproxy_port):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def pem_bodies(keys_dir: Path) -> list[str]:
    """The base64 lines of every private key PEM (any of them would leak it)."""
    bodies = []
    for path in keys_dir.glob("*.pem"):
        lines = path.read_text().splitlines()
        bodies += [line for line in lines if line and not line.startswith("-----")]
    return bodies


async def test_no_secret_reaches_any_log(mesh: Mesh) -> None:
    token_url = f"{mesh.auth_url}/oauth/token"
    async with httpx.AsyncClient() as client:
        issued = (
            await client.post(
                token_url,
                data={"grant_type": "password", "client_id": "codelab-ide", **mesh.dev_user},
            )
        ).json()
        rotated = (
            await client.post(
                token_url,
                data={
                    "grant_type": "refresh_token",
                    "client_id": "codelab-ide",
                    "refresh_token": issued["refresh_token"],
                },
            )
        ).json()
    await converse(mesh, "obs-secrets", f"s-{uuid.uuid4().hex}", "hello secrets")
    secrets = {
        "access token": mesh.token,
        "fresh access token": issued["access_token"],
        "refresh token": issued["refresh_token"],
        "rotated refresh token": rotated["refresh_token"],
        "dev password": mesh.dev_user["password"],
        "internal key": mesh.internal_key,
    }
    secrets |= {
        f"private key line {i}": line for i, line in enumerate(pem_bodies(mesh.home / "keys"))
    }
    logs = list((mesh.home / "logs").glob("*.log"))
    assert {path.stem for path in logs} >= {*SERVICES, "auth"}
    for path in logs:
        text = path.read_text()
        leaked = [name for name, value in secrets.items() if value and value in text]
        assert leaked == [], f"{path.name} contains {leaked}"
