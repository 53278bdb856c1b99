"""Health that follows real dependencies: a periodic check flips gRPC health.

A :class:`HealthWatch` runs named async checks every ``interval`` seconds
and reports the server SERVING only while all pass (the first run happens
in :meth:`HealthWatch.start`, before the server is announced). Transitions
are logged once; each check's state is the gauge ``codelab_dependency_up``.
After :meth:`mesh.grpc_server.MeshServer.stop` health stays NOT_SERVING
whatever the checks say, so readiness turns off before shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping

import structlog
from prometheus_client import CollectorRegistry, Gauge

from mesh.grpc_server import MeshServer

log = structlog.get_logger("mesh.health")

Check = Callable[[], Awaitable[bool]]
"""True when the dependency is usable; may raise (counts as down)."""


class HealthWatch:
    """Runs ``checks`` and sets ``server``'s health; owns its task.

    Each check is bounded by ``timeout`` seconds. :meth:`stop` is
    idempotent and safe to call when never started.
    """

    def __init__(
        self,
        server: MeshServer,
        checks: Mapping[str, Check],
        *,
        interval: float,
        timeout: float,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self._server = server
        self._checks = dict(checks)
        self._interval = interval
        self._timeout = timeout
        self._task: asyncio.Task[None] | None = None
        self._state: dict[str, bool] = {}
        self._gauge = (
            Gauge(
                "codelab_dependency_up",
                "1 while a dependency's health check passes.",
                ["dependency"],
                registry=registry,
            )
            if registry is not None
            else None
        )

    @property
    def healthy(self) -> bool:
        return all(self._state.get(name, False) for name in self._checks)

    async def start(self) -> None:
        """Check once, report, and keep checking in the background."""
        await self.check()
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="health-watch")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def check(self) -> bool:
        """Run every check now and report the result; returns it."""
        results = await asyncio.gather(*(self._one(check) for check in self._checks.values()))
        for name, ok in zip(self._checks, results, strict=True):
            if self._state.get(name) != ok:
                (log.info if ok else log.warning)(
                    "dependency_up" if ok else "dependency_down", dependency=name
                )
            self._state[name] = ok
            if self._gauge is not None:
                self._gauge.labels(name).set(1 if ok else 0)
        await self._server.set_serving(self.healthy)
        return self.healthy

    async def _one(self, check: Check) -> bool:
        try:
            async with asyncio.timeout(self._timeout):
                return await check()
        except asyncio.CancelledError:
            raise
        except Exception:
            return False

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.check()
