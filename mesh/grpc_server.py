"""A gRPC server as every service of the mesh runs it.

Every server has the standard health service and server reflection, and
refuses any call without the internal credential (metadata
``x-internal-auth``) with UNAUTHENTICATED. Only the health service is exempt,
so that orchestrators can probe it; reflection needs the credential like
everything else (grpcurl sends ``-H`` headers with reflection requests too).
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

INTERNAL_AUTH_HEADER = "x-internal-auth"
"""Metadata key of the shared internal credential."""
USER_HEADER = "x-user-id"
"""Metadata key of the end user's subject, vouched for by the gateway."""
REQUEST_ID_HEADER = "x-request-id"
"""Metadata key of the request id created at the edge."""

_EXEMPT_PREFIX = "/grpc.health.v1.Health/"

log = structlog.get_logger("mesh.grpc")


def internal_metadata(
    internal_api_key: str, *, user: str | None = None, request_id: str | None = None
) -> tuple[tuple[str, str], ...]:
    """Metadata for a call inside the mesh, optionally on behalf of ``user``."""
    pairs = [(INTERNAL_AUTH_HEADER, internal_api_key)]
    if user is not None:
        pairs.append((USER_HEADER, user))
    if request_id is not None:
        pairs.append((REQUEST_ID_HEADER, request_id))
    return tuple(pairs)


def metadata_value(context: grpc.aio.ServicerContext[Any, Any], key: str) -> str | None:
    """The first value of ``key`` in the call's metadata, or None."""
    for item in context.invocation_metadata() or ():
        if item.key == key:
            value = item.value
            return value.decode() if isinstance(value, bytes) else value
    return None


def _refusal(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    message = "missing or invalid internal credential (metadata x-internal-auth)"

    async def refuse(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    async def refuse_stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
        yield  # pragma: no cover - makes this an async generator

    codec = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse_stream, **codec)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(refuse, **codec)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(refuse_stream, **codec)
    return grpc.unary_unary_rpc_method_handler(refuse, **codec)


class InternalAuthInterceptor(grpc.aio.ServerInterceptor):
    """Refuses calls that lack the internal credential (constant-time check)."""

    def __init__(self, internal_api_key: str) -> None:
        if not internal_api_key:
            raise ValueError("the internal API key must not be empty")
        self._key = internal_api_key.encode()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method: str = handler_call_details.method  # type: ignore[attr-defined]
        handler = await continuation(handler_call_details)
        if handler is None or method.startswith(_EXEMPT_PREFIX):
            return handler
        presented = b""
        for key, value in handler_call_details.invocation_metadata or ():  # type: ignore[attr-defined]
            if key == INTERNAL_AUTH_HEADER:
                presented = value.encode() if isinstance(value, str) else value
                break
        if presented and hmac.compare_digest(presented, self._key):
            return handler
        log.warning("grpc_call_refused", method=method, reason="internal_credential")
        return _refusal(handler)


class MeshServer:
    """A ``grpc.aio`` server with health, reflection and the credential check.

    Register servicers on :attr:`server` before :meth:`start`. ``stop`` is
    idempotent: it turns health to NOT_SERVING, stops accepting calls, gives
    in-flight calls ``grace`` seconds and cancels the rest.
    """

    def __init__(
        self,
        *,
        address: str,
        internal_api_key: str,
        service_names: Sequence[str],
        max_concurrent_rpcs: int | None = None,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        self._address = address
        self._service_names = tuple(service_names)
        self.server = grpc.aio.server(
            interceptors=[InternalAuthInterceptor(internal_api_key)],
            maximum_concurrent_rpcs=max_concurrent_rpcs,
            options=list(options),
        )
        self._health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self.server)
        reflection.enable_server_reflection(
            (*self._service_names, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server
        )
        self.port = 0
        self._stopped = False

    async def start(self) -> int:
        """Bind, start and report SERVING; returns the bound port."""
        self.port = self.server.add_insecure_port(self._address)
        if self.port == 0:
            raise OSError(f"cannot bind gRPC server to {self._address}")
        await self.server.start()
        await self.set_serving(True)
        return self.port

    async def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", *self._service_names):
            await self._health.set(name, status)

    async def stop(self, grace: float) -> None:
        if self._stopped:
            return
        self._stopped = True
        await self.set_serving(False)
        await self.server.stop(grace)
