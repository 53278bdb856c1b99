"""A gRPC server as every service of the mesh runs it.

Every server has the standard health service and server reflection, may
serve TLS (mTLS with a client CA, :class:`mesh.tls.TlsFiles`), and refuses any call
without the internal credential (metadata
``x-internal-auth``) with UNAUTHENTICATED. Only the health service's
``Check`` is exempt, so that orchestrators can probe it; its ``Watch``
stream and reflection need the credential like everything else (grpcurl
sends ``-H`` headers with reflection requests too).

:class:`InternalAuthInterceptor` also admits calls, in two separate pools:
calls with the credential share ``max_concurrent_rpcs`` slots, exempt calls
without it get :data:`UNAUTHENTICATED_RPC_LIMIT` of their own, and a call
beyond its pool's limit is refused with RESOURCE_EXHAUSTED. A flood of
unauthenticated calls therefore never takes a slot the mesh's own calls
need, and a refused call holds none. (gRPC's server-wide
``maximum_concurrent_rpcs`` is not used: it counts every call alike.)

Every call goes through :class:`CallInterceptor` first: it binds
``request_id``, ``user`` and ``rpc`` to the structlog context of the call
(so every line the call logs carries them, and tasks it starts inherit
them), sets :data:`mesh.caller.CALLER` (which the runtime's LLM client
forwards), makes the caller's ``traceparent`` the current trace context, and
writes one ``rpc_finished`` line per call (health checks at DEBUG) with
the status code and duration, counted in :class:`mesh.metrics.RpcMetrics`.
"""

from __future__ import annotations

import asyncio
import hmac
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeAlias, overload

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry import context as otel_context

from mesh import tracing
from mesh.caller import CALLER, Caller
from mesh.metrics import RpcMetrics
from mesh.tls import TlsFiles

INTERNAL_AUTH_HEADER = "x-internal-auth"
"""Metadata key of the shared internal credential."""
USER_HEADER = "x-user-id"
"""Metadata key of the end user's subject, vouched for by the gateway."""
REQUEST_ID_HEADER = "x-request-id"
"""Metadata key of the request id created at the edge."""
LEASE_HOLDER_HEADER = "codelab-lease-holder"
"""Trailing metadata key of an UNAVAILABLE refusal: the address of the runtime
replica that holds the session's lease (the caller may retry there)."""

HEALTH_CHECK_METHOD = "/grpc.health.v1.Health/Check"
_HEALTH_PREFIX = "/grpc.health.v1.Health/"
_EXEMPT_METHODS = frozenset({HEALTH_CHECK_METHOD})
"""Methods answered without the credential: what probes call."""

UNAUTHENTICATED_CALL_SECONDS = 5.0
"""How long a call without the credential may last, its request's arrival
included: a ``Check`` answers in milliseconds, so a prober that opens calls
and never finishes them loses them (CANCELLED) and cannot pin the pool."""

UNAUTHENTICATED_RPC_LIMIT = 32
"""Calls without the credential (health checks by probes) served at once,
apart from the slots of authenticated calls; more are refused with
RESOURCE_EXHAUSTED. A probe makes one short ``Check`` at a time, so a
handful of probers never come near it; a flood fills only this pool."""

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
    for name, value in context.invocation_metadata() or ():
        if name == key:
            return value.decode() if isinstance(value, bytes) else value
    return None


Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
Continuation: TypeAlias = "Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]]"


_NO_CREDENTIAL = "missing or invalid internal credential (metadata x-internal-auth)"


def _refusal(handler: Handler, code: grpc.StatusCode, message: str) -> Handler:
    """A handler of ``handler``'s kind that ends the call with ``code``."""

    async def refuse(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await context.abort(code, message)

    async def refuse_stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(code, message)
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


class _Slots:
    """Calls in progress in one pool, at most ``limit`` (None: no limit),
    each for at most ``call_seconds`` (None: no limit) before it is cancelled."""

    def __init__(self, limit: int | None, name: str, call_seconds: float | None = None) -> None:
        if limit is not None and limit < 1:
            raise ValueError(f"{name} must be at least 1, not {limit}")
        self.limit = limit
        self.in_use = 0
        self._call_seconds = call_seconds

    def take(self) -> bool:
        """Hold a slot until the current call's task ends; False when full.

        gRPC runs a call's interceptors, handler and status in one task,
        which ends however the call does (answered, aborted, cancelled by
        the client, cancelled by the server's stop), so its end frees the
        slot on every path; gRPC's own limiter counts the same way.
        """
        if self.limit is not None and self.in_use >= self.limit:
            return False
        task = asyncio.current_task()
        if task is None:  # pragma: no cover - interceptors run in the call's task
            raise RuntimeError("a call slot is taken outside the call's task")
        self.in_use += 1
        task.add_done_callback(self._release)
        if self._call_seconds is not None:
            expiry = asyncio.get_running_loop().call_later(self._call_seconds, task.cancel)
            task.add_done_callback(lambda _: expiry.cancel())
        return True

    def _release(self, task: object) -> None:
        self.in_use -= 1


class InternalAuthInterceptor(grpc.aio.ServerInterceptor):
    """Refuses calls that lack the internal credential (constant-time check),
    except the exempt health ``Check``, and admits calls in two pools.

    Authenticated calls (any method, health included) share
    ``max_concurrent_rpcs`` slots (None: no limit); exempt calls without
    the credential share ``max_unauthenticated_rpcs``, each for at most
    ``unauthenticated_call_seconds`` (then it is cancelled, so calls held
    open cannot pin the pool). A call beyond its pool's limit is refused
    with RESOURCE_EXHAUSTED; a call refused for its credential
    (UNAUTHENTICATED) takes no slot. Raises ValueError for an empty key or
    a limit below 1.
    """

    def __init__(
        self,
        internal_api_key: str,
        *,
        max_concurrent_rpcs: int | None = None,
        max_unauthenticated_rpcs: int = UNAUTHENTICATED_RPC_LIMIT,
        unauthenticated_call_seconds: float = UNAUTHENTICATED_CALL_SECONDS,
    ) -> None:
        if not internal_api_key:
            raise ValueError("the internal API key must not be empty")
        self._key = internal_api_key.encode()
        self._authenticated = _Slots(max_concurrent_rpcs, "max_concurrent_rpcs")
        self._unauthenticated = _Slots(
            max_unauthenticated_rpcs, "max_unauthenticated_rpcs", unauthenticated_call_seconds
        )

    @property
    def calls_in_progress(self) -> tuple[int, int]:
        """(authenticated, unauthenticated) calls holding a slot now."""
        return self._authenticated.in_use, self._unauthenticated.in_use

    async def intercept_service(
        self,
        continuation: Continuation,
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        method: str = handler_call_details.method
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        presented = b""
        for key, value in handler_call_details.invocation_metadata or ():
            if key == INTERNAL_AUTH_HEADER:
                presented = value.encode() if isinstance(value, str) else value
                break
        if presented and hmac.compare_digest(presented, self._key):
            slots, message = self._authenticated, "too many calls in progress"
        elif method in _EXEMPT_METHODS:
            slots, message = self._unauthenticated, "too many calls without a credential"
        else:
            log.warning("grpc_call_refused", method=method, reason="internal_credential")
            return _refusal(handler, grpc.StatusCode.UNAUTHENTICATED, _NO_CREDENTIAL)
        if slots.take():
            return handler
        log.warning("grpc_call_refused", method=method, reason="concurrency_limit")
        return _refusal(
            handler,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"{message} (at most {slots.limit}); retry later",
        )


def _status_of(context: grpc.aio.ServicerContext[Any, Any]) -> grpc.StatusCode:
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    if isinstance(code, int):
        return CODES_BY_NUMBER.get(code, grpc.StatusCode.UNKNOWN)
    return grpc.StatusCode.OK


CODES_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}
"""Every gRPC status code by its number."""


class CallInterceptor(grpc.aio.ServerInterceptor):
    """Request context, trace context, one summary line and metrics per call.

    The summary is ``rpc_finished`` with ``code`` and ``duration_ms`` (the
    context already holds ``rpc``, ``request_id`` and ``user``). A call the
    handler fails with an unexpected exception is reported as UNKNOWN, as
    gRPC answers it; a cancelled one as CANCELLED.
    """

    def __init__(self, metrics: RpcMetrics | None = None) -> None:
        self._metrics = metrics

    async def intercept_service(
        self,
        continuation: Continuation,
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method: str = handler_call_details.method
        wrapped: Handler = _wrap(handler, self._observe(method))
        return wrapped

    def _observe(self, method: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        quiet = method.startswith(_HEALTH_PREFIX)
        metrics = self._metrics

        def wrap(behavior: Callable[..., Any]) -> Callable[..., Any]:
            if inspect.isasyncgenfunction(behavior):

                async def streaming(request: Any, context: Any) -> AsyncIterator[Any]:
                    started, token = _enter(method, context)
                    code = grpc.StatusCode.OK
                    try:
                        async for item in behavior(request, context):
                            yield item
                        code = _status_of(context)
                    except BaseException as exc:
                        code = _failure_code(exc, context)
                        raise
                    finally:
                        _leave(method, started, token, code, quiet, metrics)

                return streaming

            async def unary(request: Any, context: Any) -> Any:
                started, token = _enter(method, context)
                code = grpc.StatusCode.OK
                try:
                    result = await behavior(request, context)
                    code = _status_of(context)
                    return result
                except BaseException as exc:
                    code = _failure_code(exc, context)
                    raise
                finally:
                    _leave(method, started, token, code, quiet, metrics)

            return unary

        return wrap


def _enter(method: str, context: Any) -> tuple[float, object]:
    caller = Caller(
        request_id=metadata_value(context, REQUEST_ID_HEADER) or None,
        user=metadata_value(context, USER_HEADER) or None,
    )
    CALLER.set(caller)
    bound = {"rpc": method, "request_id": caller.request_id, "user": caller.user}
    structlog.contextvars.bind_contextvars(**{k: v for k, v in bound.items() if v})
    traceparent = metadata_value(context, tracing.TRACEPARENT_HEADER)
    token = otel_context.attach(tracing.extract(traceparent)) if traceparent else None
    return time.monotonic(), token


def _leave(
    method: str,
    started: float,
    token: object,
    code: grpc.StatusCode,
    quiet: bool,
    metrics: RpcMetrics | None,
) -> None:
    elapsed = time.monotonic() - started
    if token is not None:
        otel_context.detach(token)  # type: ignore[arg-type]
    if metrics is not None:
        metrics.handled.labels(method, code.name).inc()
        metrics.duration.labels(method).observe(elapsed)
    emit = log.debug if quiet else log.info
    emit("rpc_finished", code=code.name, duration_ms=round(elapsed * 1000, 1))
    structlog.contextvars.unbind_contextvars("rpc", "request_id", "user")
    CALLER.set(Caller())


def _failure_code(exc: BaseException, context: Any) -> grpc.StatusCode:
    if isinstance(exc, grpc.aio.AbortError):
        return _status_of(context)
    if isinstance(exc, BaseException) and not isinstance(exc, Exception):
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.UNKNOWN


def _wrap(handler: Any, wrap: Callable[[Callable[..., Any]], Callable[..., Any]]) -> Any:
    """``handler`` with its behavior wrapped, same kind and codec."""
    codec = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(wrap(handler.stream_stream), **codec)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(wrap(handler.stream_unary), **codec)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(wrap(handler.unary_stream), **codec)
    return grpc.unary_unary_rpc_method_handler(wrap(handler.unary_unary), **codec)


def grpc_target(address: str) -> str:
    """The gRPC target for one ``host:port``, a comma list of IPv4
    ``host:port`` (replicas), or a ``dns:///name:port`` naming them all.

    Raises ValueError for a list of names (use ``dns:///``).
    """
    addresses = [a.strip() for a in address.split(",") if a.strip()]
    if len(addresses) <= 1:
        return address.strip()
    if all(a.replace(".", "").replace(":", "").isdigit() for a in addresses):
        return "ipv4:" + ",".join(addresses)
    raise ValueError("a list must be IPv4 host:port pairs; for names use dns:///name:port")


def channel_options(address: str) -> list[tuple[str, Any]]:
    """Options for a channel to ``address`` (see :func:`grpc_target`).

    A restarted peer is reached again within two seconds, not after gRPC's
    default of up to two minutes of backoff. Several replicas (a list, or
    any ``dns:`` name) are used round robin: each call goes to the next
    ready one, and one that is down is skipped.
    """
    options: list[tuple[str, Any]] = [
        ("grpc.initial_reconnect_backoff_ms", 250),
        ("grpc.max_reconnect_backoff_ms", 2000),
    ]
    target = grpc_target(address)
    if target.startswith(("ipv4:", "dns:")):
        options.append(("grpc.lb_policy_name", "round_robin"))
    return options


@overload
def health_check(
    channel: grpc.aio.Channel,
) -> grpc.aio.UnaryUnaryMultiCallable[
    health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse
]: ...
@overload
def health_check(
    channel: grpc.Channel,
) -> grpc.UnaryUnaryMultiCallable[
    health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse
]: ...
def health_check(channel: Any) -> Any:
    """The standard health service's ``Check`` on ``channel`` (async or not).

    Built here rather than through ``HealthStub``, whose type stubs declare
    no methods.
    """
    return channel.unary_unary(
        HEALTH_CHECK_METHOD,
        request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
        response_deserializer=health_pb2.HealthCheckResponse.FromString,
    )


def mesh_channel(
    address: str, tls: TlsFiles | None = None, *, server_name: str = ""
) -> grpc.aio.Channel:
    """A channel to another service of the mesh, or to its replicas (see
    :func:`grpc_target`): plaintext, or TLS/mTLS. ``server_name`` (TLS only)
    overrides the name checked in the server's certificate.

    Raises ValueError for an address list it cannot use, TlsFileError for
    unusable TLS files.
    """
    target, options = grpc_target(address), channel_options(address)
    if tls is None or not tls.enabled:
        return grpc.aio.insecure_channel(target, options=options)
    if server_name:
        options.append(("grpc.ssl_target_name_override", server_name))
    return grpc.aio.secure_channel(target, tls.channel_credentials(), options=options)


class MeshServer:
    """A ``grpc.aio`` server with health, reflection and the credential check.

    Register servicers on :attr:`server` before :meth:`start`. ``stop`` is
    idempotent: it turns health to NOT_SERVING, stops accepting calls, gives
    in-flight calls ``grace`` seconds and cancels the rest. With ``metrics``,
    every call is counted (see :class:`CallInterceptor`). At most
    ``max_concurrent_rpcs`` authenticated calls (None: no limit) and
    ``max_unauthenticated_rpcs`` health checks without the credential are
    served at once (see :class:`InternalAuthInterceptor`).
    """

    def __init__(
        self,
        *,
        address: str,
        internal_api_key: str,
        service_names: Sequence[str],
        max_concurrent_rpcs: int | None = None,
        max_unauthenticated_rpcs: int = UNAUTHENTICATED_RPC_LIMIT,
        unauthenticated_call_seconds: float = UNAUTHENTICATED_CALL_SECONDS,
        options: Sequence[tuple[str, Any]] = (),
        metrics: RpcMetrics | None = None,
        tls: TlsFiles | None = None,
    ) -> None:
        self._address = address
        self._credentials = tls.server_credentials() if tls is not None and tls.enabled else None
        self._service_names = tuple(service_names)
        self.admission = InternalAuthInterceptor(
            internal_api_key,
            max_concurrent_rpcs=max_concurrent_rpcs,
            max_unauthenticated_rpcs=max_unauthenticated_rpcs,
            unauthenticated_call_seconds=unauthenticated_call_seconds,
        )
        self.server = grpc.aio.server(
            interceptors=[CallInterceptor(metrics), self.admission], options=list(options)
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
        if self._credentials is None:
            self.port = self.server.add_insecure_port(self._address)
        else:
            self.port = self.server.add_secure_port(self._address, self._credentials)
        if self.port == 0:
            raise OSError(f"cannot bind gRPC server to {self._address}")
        await self.server.start()
        await self.set_serving(True)
        return self.port

    async def set_serving(self, serving: bool) -> None:
        """Report every service SERVING or NOT_SERVING; after :meth:`stop`,
        always NOT_SERVING."""
        serving = serving and not self._stopped
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
        await self.set_serving(False)
        self._stopped = True
        await self.server.stop(grace)
