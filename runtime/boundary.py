"""The servicer's one error boundary and the caller it serves, shared by the
modules that hold its RPCs (:mod:`runtime.service`, :mod:`runtime.branch_rpcs`).

:func:`mapped` wraps every RPC: an error of :mod:`runtime.errors` ends the
call with its gRPC status (:func:`status_code`) and message; :func:`user` is
the user the gateway vouches for.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from mesh.grpc_server import LEASE_HOLDER_HEADER, USER_HEADER, metadata_value
from runtime.errors import RuntimeServiceError, Unauthenticated, Unavailable

Context = grpc.aio.ServicerContext[Any, Any]

_STATUS: dict[str, grpc.StatusCode] = {
    "invalid_argument": grpc.StatusCode.INVALID_ARGUMENT,
    "not_found": grpc.StatusCode.NOT_FOUND,
    "permission_denied": grpc.StatusCode.PERMISSION_DENIED,
    "unauthenticated": grpc.StatusCode.UNAUTHENTICATED,
    "already_exists": grpc.StatusCode.ALREADY_EXISTS,
    "failed_precondition": grpc.StatusCode.FAILED_PRECONDITION,
    "aborted": grpc.StatusCode.ABORTED,
    "unavailable": grpc.StatusCode.UNAVAILABLE,
}


def status_code(exc: RuntimeServiceError) -> grpc.StatusCode:
    """The gRPC status an RPC ends with when it raises ``exc``."""
    return _STATUS.get(exc.code, grpc.StatusCode.INTERNAL)


_Servicer = TypeVar("_Servicer")
_Request = TypeVar("_Request")
_Response = TypeVar("_Response")


def mapped(
    method: Callable[[_Servicer, _Request, Context], Awaitable[_Response]],
) -> Callable[[_Servicer, _Request, Context], Awaitable[_Response]]:
    """The one error boundary of the servicer: an RPC that raises one of
    :mod:`runtime.errors` ends with its status (:func:`status_code`) and
    message. Anything else propagates (gRPC reports it as UNKNOWN)."""

    @functools.wraps(method)
    async def rpc(self: _Servicer, request: _Request, context: Context) -> _Response:
        try:
            return await method(self, request, context)
        except RuntimeServiceError as exc:
            if isinstance(exc, Unavailable) and exc.holder:
                # the replica holding the session's lease: the gateway goes straight there
                context.set_trailing_metadata(((LEASE_HOLDER_HEADER, exc.holder),))
            await context.abort(status_code(exc), str(exc))
            raise AssertionError("unreachable") from exc  # pragma: no cover - abort raises

    return rpc


def user(context: Context) -> str:
    """The calling user (the gateway vouches for it); raises Unauthenticated without one."""
    user = metadata_value(context, USER_HEADER)
    if not user:
        raise Unauthenticated("x-user-id metadata is required")
    return user
