"""Run the auth service: ``python -m auth`` or ``codelab-auth``.

Environment (all optional; defaults in brackets):

- ``AUTH_SERVICE__HOST`` [127.0.0.1] — address to listen on.
- ``AUTH_SERVICE__PORT`` [8003] — TCP port; 0 picks a free one. Public: it
  serves no metrics (``/metrics`` there is a 404).
- ``AUTH_SERVICE__METRICS_PORT`` [0] — Prometheus ``GET /metrics`` on this
  port of HOST, apart from the public one (0: no metrics endpoint); keep it
  where only Prometheus reaches it.
- ``AUTH_SERVICE__DATABASE_URL`` [sqlite+aiosqlite:///.codelab/auth.db] —
  SQLAlchemy async URL; ``postgresql+asyncpg://...`` for PostgreSQL.
- ``AUTH_SERVICE__KEYS_DIR`` [.codelab/keys] — signing keys (``*.pem``); an
  RSA-2048 key is generated on first start.
- ``AUTH_SERVICE__ISSUER`` [http://127.0.0.1:8003] — ``iss`` of every token and
  the base of the URLs in the discovery document.
- ``AUTH_SERVICE__AUDIENCE`` [codelab-api] — ``aud`` of every token.
- ``AUTH_SERVICE__ACCESS_TOKEN_TTL`` [900] — access token lifetime, seconds.
- ``AUTH_SERVICE__CLIENT_ID`` [codelab-ide] — the first-party public client
  allowed to use the password grant.
- ``AUTH_SERVICE__SCOPES`` [codelab] — comma-separated scopes the client may
  request; all of them are granted when the request names none.
- ``AUTH_SERVICE__REFRESH_TOKEN_TTL`` [2592000] — refresh token lifetime,
  seconds (30 days); every use rotates it and restarts the clock.
- ``AUTH_SERVICE__TRUSTED_PROXIES`` [] — comma list of IPs/CIDRs whose
  ``X-Forwarded-For`` is believed (rightmost untrusted hop is the client).
- ``AUTH_SERVICE__INTERNAL_API_KEY`` [] — key the gateway sends as
  ``X-Internal-Auth`` to read ``/internal/revocations``; unset: 404.
- ``AUTH_SERVICE__KEYS_RELOAD_INTERVAL`` [30] — seconds between re-reads of
  the keys directory (0: never; restart to pick up keys).
- ``AUTH_SERVICE__KEYS_PUBLISH_AHEAD`` [600] — seconds a staged key is
  published before it signs (> the gateway's JWKS cache + reload interval).
- ``AUTH_SERVICE__KEYS_RETIRE_LEEWAY`` [300] — a replaced key stays published
  for ACCESS_TOKEN_TTL plus this many seconds.
- ``AUTH_SERVICE__LOCKOUT_THRESHOLD`` [10] — failed logins of one account from
  one address before it is locked there (address-wide: three times as many).
- ``AUTH_SERVICE__LOCKOUT_DURATION`` [900] — seconds a lockout lasts.
- ``AUTH_SERVICE__MIGRATE_ON_START`` [true] — apply pending migrations before
  serving (serialised across replicas on PostgreSQL); set false to leave it to
  ``codelab-auth-admin migrate``.
- ``AUTH_SERVICE__SHUTDOWN_GRACE`` [10] — seconds in-flight requests get after
  SIGTERM/SIGINT before they are cancelled.
- ``AUTH_SERVICE__LOG_LEVEL`` [INFO].

Exit status: 0 after a signal-initiated shutdown, 2 on a configuration error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import Callable, Generator

import structlog
import uvicorn
from prometheus_client import CollectorRegistry

from auth.app import create_app
from auth.config import ENV_PREFIX, AuthConfig
from auth.keys import KeyFileError, KeyRing
from auth.passwords import Passwords
from auth.store import create_engine, migrate
from mesh.env import ConfigError, Env
from mesh.logs import configure_logging
from mesh.metrics import MetricsServer
from mesh.process import run
from mesh.signals import wait_for_stop_signal

log = structlog.get_logger("auth")


class _Server(uvicorn.Server):
    """uvicorn's server without its own signal handling; :func:`serve` owns signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


async def serve(config: AuthConfig, *, on_listening: Callable[[int], None] | None = None) -> None:
    """Build everything, serve until SIGTERM/SIGINT, then shut down gracefully.

    ``on_listening`` is called with the bound port once the socket accepts.
    The app's request metrics are served on ``metrics_port`` when it is set,
    never on the public port.
    """
    if config.migrate_on_start:
        await migrate(config.database_url)
    keys = KeyRing.load_or_create(
        config.keys_dir,
        publish_ahead=config.keys_publish_ahead,
        retire_after=config.key_retire_after,
    )
    passwords = Passwords()
    async with contextlib.AsyncExitStack() as stack:
        engine = create_engine(config.database_url)
        stack.push_async_callback(engine.dispose)
        if config.keys_reload_interval > 0:
            reloading = asyncio.create_task(
                reload_keys(keys, config.keys_reload_interval), name="auth-keys-reload"
            )
            stack.push_async_callback(_cancel, reloading)
        registry = CollectorRegistry()
        app = create_app(config, keys=keys, engine=engine, passwords=passwords, registry=registry)
        if config.metrics_port:
            exporter = MetricsServer(registry, config.host, config.metrics_port)
            await exporter.start()
            stack.push_async_callback(exporter.stop)
        server = _Server(
            uvicorn.Config(
                app,
                host=config.host,
                port=config.port,
                log_config=None,
                lifespan="on",
                access_log=False,
                # The client address decides throttling; auth.addresses alone
                # reads X-Forwarded-For, and only from trusted proxies.
                proxy_headers=False,
                server_header=False,
                timeout_graceful_shutdown=int(config.shutdown_grace),
            )
        )
        serving = asyncio.create_task(server.serve(), name="auth-http")
        stop = asyncio.create_task(wait_for_stop_signal(), name="auth-stop-signal")
        try:
            while not server.started:
                if serving.done() or stop.done():
                    break
                await asyncio.sleep(0.01)
            if server.started:
                port = server.servers[0].sockets[0].getsockname()[1]
                log.info("auth_listening", host=config.host, port=port, issuer=config.issuer)
                if on_listening is not None:
                    on_listening(port)
            await asyncio.wait({serving, stop}, return_when=asyncio.FIRST_COMPLETED)
            if stop.done():
                log.info("auth_stopping", signal=stop.result().name)
            server.should_exit = True
            await serving
            if not server.started:
                raise OSError(f"cannot listen on {config.host}:{config.port}")
        finally:
            stop.cancel()
            server.should_exit = True
            with contextlib.suppress(asyncio.CancelledError):
                await stop
            if not serving.done():
                serving.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await serving
    log.info("auth_stopped")


async def reload_keys(keys: KeyRing, interval: float) -> None:
    """Re-read the keys directory every ``interval`` seconds until cancelled.

    A broken directory is logged and the keys already loaded stay in use.
    """
    while True:
        await asyncio.sleep(interval)
        try:
            changed = await asyncio.to_thread(keys.reload)
        except (KeyFileError, ValueError, OSError) as exc:
            log.warning("signing_keys_reload_failed", error=str(exc))
            continue
        if changed:
            log.info("signing_keys_reloaded", count=len(keys.keys), current_kid=keys.current.kid)


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def main() -> None:
    """Console entry point."""
    try:
        config = AuthConfig.from_env(Env(ENV_PREFIX))
    except ConfigError as exc:
        print(f"codelab-auth: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    configure_logging(config.log_level)
    # Alembic narrates every migration step at INFO; we log our own summary.
    logging.getLogger("alembic").setLevel(max(logging.WARNING, logging.getLogger().level))
    run(serve(config))


if __name__ == "__main__":
    main()
