"""The whole mesh, started the way ``./scripts/up`` starts it.

``scripts/devstack.py`` (what ``scripts/up`` runs after installing) starts
llmproxy, runtime, auth and gateway as subprocesses on free loopback ports,
with a fresh ``CODELAB_HOME``; the fixture runs it as a
:class:`tests.support.Service`, waits for its "up" line and stops it with
SIGTERM at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import free_port, fresh_postgres_sync
from tests.support import NotReady, Service, grpc_healthy, http_healthy, start_all

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Mesh:
    home: Path
    gateway_port: int
    gateway_rest_port: int
    runtime_port: int
    llmproxy_port: int
    auth_port: int
    gateway_metrics_port: int
    runtime_metrics_port: int
    llmproxy_metrics_port: int
    auth_metrics_port: int
    front_port: int
    internal_key: str
    token: str
    dev_user: dict[str, str]

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.gateway_port}"

    @property
    def auth_url(self) -> str:
        return f"http://127.0.0.1:{self.auth_port}"

    @property
    def front_url(self) -> str:
        """The front door: one base URL for auth and the gateway."""
        return f"http://127.0.0.1:{self.front_port}"


@pytest.fixture(scope="package")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    with launch(tmp_path_factory.mktemp("codelab-home")) as started:
        yield started


PORT_ATTEMPTS = 3
"""Starts of the mesh on fresh ports when a chosen port was taken meanwhile."""


@contextlib.contextmanager
def launch(home: Path, **overrides: str) -> Iterator[Mesh]:
    """Run ``scripts/devstack.py`` with ``overrides`` added to its environment.

    Its ports are chosen free (:func:`free_port`), but another process may
    bind one before the service does (pytest's workers start meshes side by
    side): a start that failed with a port in use is tried again on fresh
    ports, up to :data:`PORT_ATTEMPTS` starts in all.
    """
    for attempt in range(1, PORT_ATTEMPTS + 1):
        ports = {
            name: free_port()
            for name in (
                "gateway",
                "gateway_rest",
                "runtime",
                "llmproxy",
                "auth",
                "gateway_metrics",
                "runtime_metrics",
                "llm_metrics",
                "auth_metrics",
                "front",
            )
        }
        env = {
            **os.environ,
            **overrides,
            "CODELAB_HOME": str(home),
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "GATEWAY__PORT": str(ports["gateway"]),
            "GATEWAY__REST_PORT": str(ports["gateway_rest"]),
            "AGENT_RUNTIME__PORT": str(ports["runtime"]),
            "LLM_PROXY__PORT": str(ports["llmproxy"]),
            "AUTH_SERVICE__PORT": str(ports["auth"]),
            "GATEWAY__METRICS_PORT": str(ports["gateway_metrics"]),
            "AGENT_RUNTIME__METRICS_PORT": str(ports["runtime_metrics"]),
            "LLM_PROXY__METRICS_PORT": str(ports["llm_metrics"]),
            "AUTH_SERVICE__METRICS_PORT": str(ports["auth_metrics"]),
            "CODELAB_FRONT_PORT": str(ports["front"]),
        }
        devstack = Service(
            [sys.executable, str(ROOT / "scripts" / "devstack.py")],
            env=env,
            cwd=ROOT,
            ready="Ctrl-C stops everything",
            start_timeout=90,
        )
        logs_before = _log_sizes(home)
        try:
            devstack.start()
            break
        except NotReady as failed:
            logs = _logs_since(home, logs_before)
            if attempt < PORT_ATTEMPTS and "address already in use" in logs + str(failed):
                continue
            pytest.fail(f"scripts/up did not come up: {failed}\n{logs}")
    mesh = Mesh(
        home=home,
        gateway_port=ports["gateway"],
        gateway_rest_port=ports["gateway_rest"],
        runtime_port=ports["runtime"],
        llmproxy_port=ports["llmproxy"],
        auth_port=ports["auth"],
        gateway_metrics_port=ports["gateway_metrics"],
        runtime_metrics_port=ports["runtime_metrics"],
        llmproxy_metrics_port=ports["llm_metrics"],
        auth_metrics_port=ports["auth_metrics"],
        front_port=ports["front"],
        internal_key=(home / "internal-api-key").read_text().strip(),
        token=(home / "token").read_text().strip(),
        dev_user=json.loads((home / "dev-user.json").read_text()),
    )
    try:
        yield mesh
    finally:
        code = devstack.stop(signal.SIGTERM, timeout=30)
    assert code == 0, devstack.output


def _log_sizes(home: Path) -> dict[Path, int]:
    return {path: path.stat().st_size for path in (home / "logs").glob("*.log")}


def _logs_since(home: Path, sizes: dict[Path, int]) -> str:
    """What each service wrote to its log (they append) since ``sizes``; the last 3,000
    characters of each."""
    parts = []
    for path in sorted((home / "logs").glob("*.log")):
        with path.open("rb") as log:
            log.seek(sizes.get(path, 0))
            text = log.read().decode(errors="replace")
        parts.append(f"--- {path.name}\n{text[-3000:]}")
    return "".join(parts)


def add_user(mesh: Mesh) -> dict[str, str]:
    """A new user of the mesh's auth service, made with the admin CLI."""
    name = f"user{uuid.uuid4().hex[:8]}"
    password = uuid.uuid4().hex
    env = {
        **os.environ,
        "AUTH_SERVICE__DATABASE_URL": f"sqlite+aiosqlite:///{mesh.home / 'auth.db'}",
    }
    subprocess.run(
        [sys.executable, "-m", "auth.admin", "add-user", name, "--password-stdin"],
        input=password + "\n",
        text=True,
        env=env,
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    return {"username": name, "password": password}


def migrate_runtime(database: str, internal_key: str) -> None:
    """Apply the runtime's schema to ``database`` the way operators do."""
    subprocess.run(
        [sys.executable, "-m", "runtime", "migrate"],
        env={
            **os.environ,
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "AGENT_RUNTIME__INTERNAL_API_KEY": internal_key,
            "AGENT_RUNTIME__DATABASE_URL": database,
        },
        cwd=ROOT,
        check=True,
        capture_output=True,
    )


IDE_CLIENT = "codelab-flutter-app"
"""The OAuth client id the CodeLab IDE logs in with (its auth datasource)."""


async def ide_login(mesh: Mesh, user: dict[str, str] | None = None) -> dict[str, str]:
    """The CodeLab IDE's password grant at the front door, as ``user`` (the
    dev user by default); the token response (access and refresh token)."""
    user = user or mesh.dev_user
    async with httpx.AsyncClient(base_url=mesh.front_url, timeout=10) as http:
        reply = await http.post(
            "/oauth/token",
            data={
                "grant_type": "password",
                "username": user["username"],
                "password": user["password"],
                "client_id": IDE_CLIENT,
            },
        )
    assert reply.status_code == 200, reply.text
    tokens: dict[str, str] = reply.json()
    return tokens


def module_service(module: str, env: dict[str, str], ready: Callable[[], bool]) -> Service:
    """``python -m module``, restartable on the same port."""
    return Service([sys.executable, "-m", module], env=env, cwd=ROOT, ready=ready)


STACK_MODELS = {
    "model_list": [
        {"model_name": "offline", "litellm_params": {"model": "offline/echo"}},
        {
            "model_name": "offline-slow",
            "litellm_params": {"model": "offline/echo", "reply_tokens": 5000, "token_delay": 0.01},
        },
    ]
}
"""The stacks' llmproxy models: ``offline``, and ``offline-slow`` (5,000
tokens 10 ms apart: a turn long enough to be cut by a kill)."""


@pytest.fixture(scope="package")
def shared_llmproxy(mesh: Mesh, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One llmproxy serving :data:`STACK_MODELS` for every :class:`Stack` of
    the package: it keeps no state of its own, and importing LiteLLM is most
    of a stack's start. Its address."""
    port = free_port()
    config = tmp_path_factory.mktemp("stack-llmproxy") / "litellm.yaml"
    config.write_text(yaml.safe_dump(STACK_MODELS))
    proxy = module_service(
        "llmproxy",
        {
            **os.environ,
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "LLM_PROXY__PORT": str(port),
            "LLM_PROXY__INTERNAL_API_KEY": mesh.internal_key,
            "LLM_PROXY__CONFIG": str(config),
        },
        grpc_healthy(f"127.0.0.1:{port}"),
    )
    proxy.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        proxy.stop()


class Stack:
    """A runtime and a gateway of our own, wired to the mesh's auth and to
    the llmproxy at ``llmproxy`` (:func:`shared_llmproxy`'s)."""

    def __init__(
        self,
        mesh: Mesh,
        database: str,
        llmproxy: str,
        runtime_env: dict[str, str] | None = None,
    ) -> None:
        self.database = database
        self.gateway_port, self.runtime_port = free_port(), free_port()
        runtime_port = self.runtime_port
        self._key = key = mesh.internal_key
        base = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
        self.runtime = module_service(
            "runtime",
            {
                **base,
                "AGENT_RUNTIME__PORT": str(runtime_port),
                "AGENT_RUNTIME__INTERNAL_API_KEY": key,
                "AGENT_RUNTIME__LLM_PROXY_ADDRESS": llmproxy,
                "AGENT_RUNTIME__DATABASE_URL": database,
                "AGENT_RUNTIME__AGENT_MODELS": "ask=offline-slow",
                **(runtime_env or {}),
            },
            grpc_healthy(f"127.0.0.1:{runtime_port}"),
        )
        self.gateway = module_service(
            "gateway",
            {
                **base,
                "GATEWAY__PORT": str(self.gateway_port),
                "GATEWAY__INTERNAL_API_KEY": key,
                "GATEWAY__RUNTIME_ADDRESS": f"127.0.0.1:{runtime_port}",
                "GATEWAY__JWKS_URL": f"{mesh.auth_url}/.well-known/jwks.json",
                "GATEWAY__JWT_ISSUER": mesh.auth_url,
            },
            http_healthy(f"http://127.0.0.1:{self.gateway_port}/health"),
        )

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.gateway_port}"

    def start(self) -> None:
        """Migrate the database the way operators do, then start the runtime
        and the gateway side by side."""
        migrate_runtime(self.database, self._key)
        start_all(self.runtime, self.gateway)

    def stop(self) -> None:
        for service in (self.gateway, self.runtime):
            if service.running:
                service.stop()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def stack(
    request: pytest.FixtureRequest, mesh: Mesh, shared_llmproxy: str, tmp_path: Path
) -> Iterator[Stack]:
    """A runtime and a gateway of our own, on each database backend."""
    with contextlib.ExitStack() as cleanup:
        if request.param == "sqlite":
            database = f"sqlite+aiosqlite:///{tmp_path / 'runtime.db'}"
        else:
            database = cleanup.enter_context(fresh_postgres_sync("test_persist"))
        own = Stack(mesh, database, shared_llmproxy)
        cleanup.callback(own.stop)
        own.start()
        yield own


@pytest.fixture
async def dev_front(mesh: Mesh) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client at the front door, as the dev user (``scripts/up``'s token)."""
    async with httpx.AsyncClient(
        base_url=mesh.front_url, headers={"Authorization": f"Bearer {mesh.token}"}, timeout=20
    ) as client:
        yield client
