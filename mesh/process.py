"""Running a service's main coroutine on the right event loop.

uvloop when it is installed (measured +20-37% throughput on this kind of
machine), the standard loop otherwise or when ``CODELAB_EVENT_LOOP=asyncio``
(in the environment the composition root passes to :func:`run`).

:func:`settled` is for a service to call once it has started: the objects
made at import and start-up (LiteLLM's model map, protobuf descriptors,
SQLAlchemy metadata) live until exit, and moving them out of the garbage
collector's generations spares every later collection from walking them
(measured: LiteLLM's per-chunk cost fell by about a sixth).

:data:`ENVIRONMENT` is what every service process should be started with.
C libraries read it when they load, before any Python of ours runs, so it
is the composition root's to pass (``scripts/devstack.py``, the
Dockerfile's ``ENV``; ``scripts/test`` for the tests' own processes), not
something a service can set for itself.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, TypeVar

import structlog

T = TypeVar("T")

log = structlog.get_logger("mesh.process")

ENVIRONMENT: Mapping[str, str] = {
    # glibc gives each thread (gRPC's, one per pooled SQLite connection) a
    # malloc arena of its own, up to 8 per core, and keeps what each ever
    # held: the runtime's RSS grew by that in the soak.
    "MALLOC_ARENA_MAX": "2",
    # gRPC's client channels on the poller the servers use rather than on
    # the EventEngine endpoint (an experiment of grpcio's, on by default in
    # the pinned 1.85.1): reading a streamed message costs a client about
    # half as much CPU (~70 -> ~35 us on a 2-core EPYC), and the gateway and
    # the runtime each read one message per token.
    "GRPC_EXPERIMENTS": "-event_engine_client",
    # No gRPC handlers around fork(): the services fork only to exec (the
    # runtime's MCP stdio servers, spawned by uvloop with fork()), and with
    # the handlers on, a child forked while gRPC's threads were busy could
    # lose its pipes: the MCP server's connection closed at once, its tools
    # not listed (grpc/grpc#37710; the handlers are for fork without exec).
    "GRPC_ENABLE_FORK_SUPPORT": "false",
}
"""Environment variables every service process starts with (see above)."""


def loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The loop factory for ``choice``: ``uvloop`` (when installed) or ``asyncio``."""
    choice = choice.lower()
    if choice == "asyncio":
        return None
    if choice != "uvloop":
        raise ValueError(f"CODELAB_EVENT_LOOP={choice!r}: expected uvloop or asyncio")
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T], environ: Mapping[str, str]) -> T:
    """``asyncio.run`` on the loop ``environ["CODELAB_EVENT_LOOP"]`` chooses
    (default uvloop); raises ValueError for an unknown one.

    Warns (``process_environment_incomplete``) when the process was started
    without some of :data:`ENVIRONMENT`: too late to set them then, so the
    operator is told which to pass.
    """
    missing = unset(environ)
    if missing:
        log.warning(
            "process_environment_incomplete",
            unset=missing,
            hint="start the service with these set as mesh/process.py's ENVIRONMENT says "
            "(scripts/up and the image do)",
        )
    choice = environ.get("CODELAB_EVENT_LOOP") or "uvloop"
    with asyncio.Runner(loop_factory=loop_factory(choice)) as runner:
        return runner.run(main)


def unset(environ: Mapping[str, str]) -> list[str]:
    """The names of :data:`ENVIRONMENT` that ``environ`` does not set (an
    operator's own value, even empty, counts as set)."""
    return [name for name in ENVIRONMENT if name not in environ]


def settled() -> None:
    """Exclude everything allocated so far from garbage collection scans.

    Call once, after start-up; a no-op when called again with nothing new.
    """
    gc.collect()
    gc.freeze()
