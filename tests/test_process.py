"""mesh.process: the environment every service process starts with."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mesh import process

ROOT = Path(__file__).resolve().parents[1]

# A gRPC server and a client channel to it in one process, on uvloop as the
# services run; ``use(stub)`` (each script's own) does the rest and its
# result is printed.
_WITH_A_CHANNEL = """
import asyncio, grpc, uvloop
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

async def main():
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        print(await use(health_pb2_grpc.HealthStub(channel)))
    await server.stop(None)
"""

# One call: enough for grpcio to read GRPC_EXPERIMENTS and apply it to both sides.
_ONE_CALL = (
    _WITH_A_CHANNEL
    + """
async def use(stub):
    reply = await stub.Check(health_pb2.HealthCheckRequest())
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

uvloop.run(main())
"""
)

# As the runtime starts an MCP stdio server: uvloop forks (and execs) while
# gRPC's threads are busy with calls. Prints how many of the children exited 0.
_SPAWN_WHILE_BUSY = (
    _WITH_A_CHANNEL
    + """
async def use(stub):
    stop = asyncio.Event()
    async def busy():
        while not stop.is_set():
            await stub.Check(health_pb2.HealthCheckRequest())
    callers = [asyncio.create_task(busy()) for _ in range(4)]
    codes = []
    for _ in range(20):
        child = await asyncio.create_subprocess_exec("true")
        codes.append(await child.wait())
    stop.set()
    await asyncio.gather(*callers)
    return codes.count(0)

uvloop.run(main())
"""
)
_FORK_HANDLERS_RAN = "fork_posix.cc"


def _one_call_with(experiments: str) -> subprocess.CompletedProcess[str]:
    return _run(_ONE_CALL, GRPC_EXPERIMENTS=experiments)


def _run(script: str, **environment: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **environment}
    return subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )


def test_the_grpc_experiments_set_are_ones_the_installed_grpcio_knows() -> None:
    """An experiment grpcio no longer has is ignored with a line on stderr:
    after an upgrade the setting would quietly stop doing anything."""
    done = _one_call_with(process.ENVIRONMENT["GRPC_EXPERIMENTS"])
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "SERVING"
    assert "Unknown experiment" not in done.stderr


def test_an_experiment_grpcio_does_not_know_is_reported_on_stderr() -> None:
    # What the test above relies on to notice a stale name.
    done = _one_call_with("-no_such_experiment")
    assert done.returncode == 0, done.stderr
    assert "Unknown experiment: no_such_experiment" in done.stderr


def test_children_are_forked_without_grpcs_fork_handlers() -> None:
    """With the handlers on, a child forked while gRPC's threads were busy
    could lose its pipes (the runtime's MCP stdio server closed at once,
    a flaky CI failure); grpcio says on stderr each time they run."""
    done = _run(_SPAWN_WHILE_BUSY, **process.ENVIRONMENT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "20"
    assert _FORK_HANDLERS_RAN not in done.stderr


def test_grpcs_fork_handlers_do_run_when_left_on() -> None:
    # What the test above relies on to notice them. With them on, the script
    # may fail too: once here a gRPC call's own socket was closed under it
    # ("Stream removed (Socket closed)"), the same bug from the other side.
    done = _run(_SPAWN_WHILE_BUSY, GRPC_ENABLE_FORK_SUPPORT="true")
    assert _FORK_HANDLERS_RAN in done.stderr


def test_the_image_and_the_dev_stack_start_services_with_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    monkeypatch.setenv("CODELAB_HOME", str(tmp_path))
    for name in process.ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    spec = importlib.util.spec_from_file_location("devstack", ROOT / "scripts" / "devstack.py")
    assert spec is not None
    assert spec.loader is not None
    devstack = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(devstack)
    environment = devstack.environment()
    for name, value in process.ENVIRONMENT.items():
        assert f"ENV {name}={value}\n" in dockerfile
        assert environment[name] == value


_RUN_NOTHING = """
import asyncio, os
from mesh.logs import configure_logging
from mesh.process import run
configure_logging("INFO")
run(asyncio.sleep(0), os.environ)
"""


def _warnings_of_run(environment: dict[str, str]) -> list[dict[str, object]]:
    env = {k: v for k, v in os.environ.items() if k not in process.ENVIRONMENT}
    done = subprocess.run(
        [sys.executable, "-c", _RUN_NOTHING],
        env={**env, **environment, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    return [line for line in lines if line["event"] == "process_environment_incomplete"]


def test_a_service_started_without_the_environment_says_what_is_unset() -> None:
    """Too late to set them once the service runs; the operator is told."""
    (warning,) = _warnings_of_run({"GRPC_EXPERIMENTS": ""})  # the operator's own, kept
    assert warning["unset"] == [n for n in process.ENVIRONMENT if n != "GRPC_EXPERIMENTS"]
    assert warning["level"] == "warning"
    assert _warnings_of_run(dict(process.ENVIRONMENT)) == []
