"""Who a call inside the mesh is for: the request id and the user.

:class:`mesh.grpc_server.CallInterceptor` sets :data:`CALLER` from the
call's metadata for the length of each call (tasks the call starts inherit
it); clients that call further (the runtime's LLM client) read it to forward
both, so every service's logs of one request carry the same id.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Caller:
    request_id: str | None = None
    user: str | None = None


CALLER: ContextVar[Caller] = ContextVar("mesh_caller", default=Caller())  # noqa: B039 - frozen
"""The caller of the gRPC call being served; empty outside one."""
