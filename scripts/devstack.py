"""Start the whole mesh on this machine, offline; run by ``scripts/up``.

On first run it creates, under ``.codelab/`` (or ``$CODELAB_HOME``): the
internal credential, the auth service's signing key and database, the
runtime's database, and a dev user whose password and a fresh access token
are written next to them. Every run applies pending schema migrations and
registers the CodeLab IDE's OAuth client (``codelab-flutter-app``), the two
services' in parallel, while llmproxy (which needs no database) starts. Then
it starts runtime, auth and gateway, and the front door (Caddy, from the
``caddyserver`` package, with the repository's ``Caddyfile``) on
``CODELAB_FRONT_PORT`` (8080; 0: none): one base URL for the IDE, all side
by side. It waits until each is healthy, prints how to connect, and stops
them all on Ctrl-C or SIGTERM (one during the migrations stops them once
they are done).

Any ``GATEWAY__*``, ``AGENT_RUNTIME__*``, ``LLM_PROXY__*`` or
``AUTH_SERVICE__*`` variable already set in the environment wins over the
defaults below (that is how the tests run it on free ports).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mesh import probe, process  # noqa: E402

HOME = Path(os.environ.get("CODELAB_HOME", ROOT / ".codelab")).resolve()
PYTHON = sys.executable
DEV_USER = "dev"
START_TIMEOUT = 60.0
IDE_CLIENT = "codelab-flutter-app"
"""The CodeLab IDE's OAuth client id: a first-party public client."""
CADDY = Path(sys.executable).parent / "caddy"


def secret_file(path: Path, make: Callable[[], str]) -> str:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(make())
    return path.read_text().strip()


def environment() -> dict[str, str]:
    key = secret_file(HOME / "internal-api-key", lambda: secrets.token_urlsafe(32))
    defaults = {
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        # As in the image (the Dockerfile's ENV): see mesh/process.py.
        **process.ENVIRONMENT,
        "LLM_PROXY__INTERNAL_API_KEY": key,
        "LLM_PROXY__PORT": "50052",
        "AGENT_RUNTIME__INTERNAL_API_KEY": key,
        "AGENT_RUNTIME__PORT": "50051",
        "AGENT_RUNTIME__DATABASE_URL": f"sqlite+aiosqlite:///{HOME / 'runtime.db'}",
        "AUTH_SERVICE__PORT": "8003",
        "AUTH_SERVICE__DATABASE_URL": f"sqlite+aiosqlite:///{HOME / 'auth.db'}",
        "AUTH_SERVICE__KEYS_DIR": str(HOME / "keys"),
        "AUTH_SERVICE__INTERNAL_API_KEY": key,
        "GATEWAY__INTERNAL_API_KEY": key,
        "GATEWAY__PORT": "8000",
        # The REST views with request bodies (PATCH); the front door sends
        # every REST path there.
        "GATEWAY__REST_PORT": "8001",
        # Prometheus GET /metrics, on a port of its own for every service
        # (never on the public ports of the gateway and auth).
        "GATEWAY__METRICS_PORT": "9100",
        "AGENT_RUNTIME__METRICS_PORT": "9101",
        "LLM_PROXY__METRICS_PORT": "9102",
        "AUTH_SERVICE__METRICS_PORT": "9103",
        # The front door forwards from 127.0.0.1 and says who the client is
        # in X-Forwarded-For; auth and the gateway believe it only from there.
        "AUTH_SERVICE__TRUSTED_PROXIES": "127.0.0.1",
        "GATEWAY__TRUSTED_PROXIES": "127.0.0.1",
        "CODELAB_FRONT_PORT": "8080",
    }
    env = {**defaults, **os.environ}
    env.setdefault(
        "AGENT_RUNTIME__LLM_PROXY_ADDRESS",
        ",".join(f"127.0.0.1:{port}" for port in llmproxy_ports(env)),
    )
    auth = f"http://127.0.0.1:{env['AUTH_SERVICE__PORT']}"
    env.setdefault("AUTH_SERVICE__ISSUER", auth)
    env.setdefault("GATEWAY__RUNTIME_ADDRESS", f"127.0.0.1:{env['AGENT_RUNTIME__PORT']}")
    env.setdefault("GATEWAY__JWKS_URL", f"{auth}/.well-known/jwks.json")
    env.setdefault("GATEWAY__JWT_ISSUER", env["AUTH_SERVICE__ISSUER"])
    # Logout and refresh-token reuse reach open WebSockets through this feed.
    env.setdefault("GATEWAY__REVOCATIONS_URL", f"{auth}/internal/revocations")
    return env


def llmproxy_ports(env: dict[str, str]) -> list[int]:
    """llmproxy's ports: ``CODELAB_LLMPROXY_REPLICAS`` (default 1) processes
    from ``LLM_PROXY__PORT`` up; the runtime balances over them."""
    try:
        replicas = int(env.get("CODELAB_LLMPROXY_REPLICAS") or 1)
    except ValueError:
        raise SystemExit("CODELAB_LLMPROXY_REPLICAS must be a whole number") from None
    if replicas < 1:
        raise SystemExit("CODELAB_LLMPROXY_REPLICAS must be at least 1")
    first = int(env["LLM_PROXY__PORT"])
    return [first + i for i in range(replicas)]


def run_admin(env: dict[str, str], *args: str, stdin: str | None = None) -> None:
    subprocess.run([PYTHON, "-m", "auth.admin", *args], env=env, input=stdin, text=True, check=True)


def ensure_dev_user(env: dict[str, str]) -> dict[str, str]:
    path = HOME / "dev-user.json"
    if path.exists():
        return dict(json.loads(path.read_text()))
    password = secrets.token_urlsafe(18)
    run_admin(env, "add-user", DEV_USER, "--password-stdin", stdin=password + "\n")
    secret_file(path, lambda: json.dumps({"username": DEV_USER, "password": password}))
    return {"username": DEV_USER, "password": password}


def start(name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    logs = HOME / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log = (logs / f"{name}.log").open("ab")
    return subprocess.Popen(argv, env=env, stdout=log, stderr=log, cwd=ROOT)


def service(module: str) -> list[str]:
    return [PYTHON, "-m", module]


def front_door(env: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """Caddy with the repository's Caddyfile, on 127.0.0.1:``CODELAB_FRONT_PORT``,
    in front of this auth and gateway; its state stays under ``CODELAB_HOME``."""
    front = {
        **env,
        "CODELAB_SITE": f":{env['CODELAB_FRONT_PORT']}",
        "CODELAB_FRONT_BIND": "127.0.0.1",
        "CODELAB_AUTH_UPSTREAM": f"127.0.0.1:{env['AUTH_SERVICE__PORT']}",
        "CODELAB_GATEWAY_UPSTREAMS": f"to 127.0.0.1:{env['GATEWAY__PORT']}",
        "CODELAB_GATEWAY_REST_UPSTREAMS": f"to 127.0.0.1:{env['GATEWAY__REST_PORT']}",
        "XDG_DATA_HOME": str(HOME / "caddy"),
        "XDG_CONFIG_HOME": str(HOME / "caddy"),
    }
    argv = [str(CADDY), "run", "--config", str(ROOT / "Caddyfile"), "--adapter", "caddyfile"]
    return argv, front


Plan = list[tuple[str, list[str], dict[str, str], Callable[[], bool]]]
"""What to start, in order: name, command, environment, health check."""


def llmproxy_plan(env: dict[str, str]) -> Plan:
    """One llmproxy process per port of :func:`llmproxy_ports`; replicas
    after the first are named ``llmproxy-2``... and put their metrics on the
    next ports that no other service's ``*__METRICS_PORT`` names."""
    plan = []
    metrics = int(env.get("LLM_PROXY__METRICS_PORT") or 0)
    taken = {
        int(value)
        for name, value in env.items()
        if name.endswith("__METRICS_PORT") and name != "LLM_PROXY__METRICS_PORT" and value
    }
    for index, port in enumerate(llmproxy_ports(env)):
        name = "llmproxy" if index == 0 else f"llmproxy-{index + 1}"
        replica = {**env, "LLM_PROXY__PORT": str(port)}
        if metrics:
            while index and metrics in taken:
                metrics += 1
            replica["LLM_PROXY__METRICS_PORT"] = str(metrics)
            metrics += 1
        plan.append((name, service("llmproxy"), replica, lambda p=str(port): grpc_serving(p)))
    return plan


def grpc_serving(port: str) -> bool:
    return probe.grpc_serving(f"127.0.0.1:{port}", timeout=1) is None


def http_healthy(port: str) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def wait_healthy(name: str, proc: subprocess.Popen[bytes], check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{name} exited with {proc.returncode}; see {HOME / 'logs'}")
        if check():
            return
        time.sleep(0.1)
    raise SystemExit(f"{name} did not become healthy in {START_TIMEOUT:.0f}s")


def fetch_token(env: dict[str, str], user: dict[str, str]) -> str:
    reply = httpx.post(
        f"http://127.0.0.1:{env['AUTH_SERVICE__PORT']}/oauth/token",
        data={
            "grant_type": "password",
            "username": user["username"],
            "password": user["password"],
            "client_id": env.get("AUTH_SERVICE__CLIENT_ID", "codelab-ide"),
        },
        timeout=10,
    )
    reply.raise_for_status()
    token = str(reply.json()["access_token"])
    path = HOME / "token"
    path.unlink(missing_ok=True)
    secret_file(path, lambda: token)
    return token


def stop_all(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in reversed(procs):
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 15
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def prepare_auth(env: dict[str, str]) -> dict[str, str]:
    """Auth's schema, the IDE's client and the dev user; the dev user."""
    run_admin(env, "migrate")
    run_admin(env, "add-client", IDE_CLIENT, "--public", "--exist-ok")
    return ensure_dev_user(env)


def migrate_runtime(env: dict[str, str]) -> None:
    subprocess.run([PYTHON, "-m", "runtime", "migrate"], env=env, check=True)


def main() -> int:
    HOME.mkdir(parents=True, exist_ok=True, mode=0o700)
    env = environment()
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        plan: Plan = [
            *llmproxy_plan(env),
            ("runtime", service("runtime"), env, lambda: grpc_serving(env["AGENT_RUNTIME__PORT"])),
            ("auth", service("auth"), env, lambda: http_healthy(env["AUTH_SERVICE__PORT"])),
            ("gateway", service("gateway"), env, lambda: http_healthy(env["GATEWAY__PORT"])),
        ]
        front_port = env["CODELAB_FRONT_PORT"]
        if front_port != "0":
            argv, front_env = front_door(env)
            plan.append(("front door", argv, front_env, lambda: http_healthy(front_port)))
        # Everything starts side by side: llmproxy needs no database, so it
        # starts while both schemas are migrated (each service's start is
        # mostly its imports); the rest once the migrations are done.
        started: list[tuple[str, subprocess.Popen[bytes], Callable[[], bool]]] = []

        def launch(
            name: str, argv: list[str], service_env: dict[str, str], check: Callable[[], bool]
        ) -> None:
            proc = start(name.replace(" ", "-"), argv, service_env)
            procs.append(proc)
            started.append((name, proc, check))

        proxies = [step for step in plan if step[0].startswith("llmproxy")]
        for step in proxies:
            launch(*step)
        with ThreadPoolExecutor(2) as pool:
            auth_ready = pool.submit(prepare_auth, env)
            pool.submit(migrate_runtime, env).result()
            user = auth_ready.result()
        for step in plan[len(proxies) :]:
            launch(*step)
        for name, proc, check in started:
            wait_healthy(name, proc, check)
            print(f"up: {name} healthy", flush=True)
        fetch_token(env, user)
        gateway = f"ws://127.0.0.1:{env['GATEWAY__PORT']}/ws/<session_id>"
        base = f"http://127.0.0.1:{front_port}" if front_port != "0" else "(no front door)"
        print(
            "\nCodeLab mesh is up (offline model).\n"
            f"  IDE base URL {base}   (the CodeLab IDE: client {IDE_CLIENT})\n"
            f"  WebSocket   {gateway}\n"
            f"  token       {HOME / 'token'}   (dev user: {HOME / 'dev-user.json'})\n"
            f"  logs        {HOME / 'logs'}\n"
            f"  metrics     http://127.0.0.1:{env['GATEWAY__METRICS_PORT']}/metrics (gateway), "
            f":{env['AGENT_RUNTIME__METRICS_PORT']}/metrics (runtime), "
            f":{env['LLM_PROXY__METRICS_PORT']}/metrics (llmproxy"
            + (", its replicas on the next free ports" if len(llmproxy_ports(env)) > 1 else "")
            + f"), :{env['AUTH_SERVICE__METRICS_PORT']}/metrics (auth)\n"
            '  try         scripts/chat "hello"\n'
            "Ctrl-C stops everything.",
            flush=True,
        )
        while not stopping:
            for proc in procs:
                if proc.poll() is not None:
                    print(f"up: a service exited with {proc.returncode}", file=sys.stderr)
                    return 1
            time.sleep(0.2)
        return 0
    finally:
        stop_all(procs)
        print("up: stopped", flush=True)


if __name__ == "__main__":
    sys.exit(main())
