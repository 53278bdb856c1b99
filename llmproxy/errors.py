"""The proxy's errors, and the one place they become gRPC status codes.

LiteLLM raises OpenAI-shaped exceptions; :func:`from_litellm` turns them into
this small transport-neutral hierarchy. Each error names a machine-readable
``reason`` (sent as the trailing metadata ``x-error-reason``) and
:data:`GRPC_STATUS` says which status code it is on the wire.
:func:`grpc_boundary` applies both: every RPC of the servicer runs inside it,
as httpx runs its transport inside ``map_httpcore_exceptions``, so the
status codes the proto documents are decided here and nowhere else.
"""

from __future__ import annotations

import contextlib
import email.utils
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any, TypeAlias

import grpc
import structlog
from litellm import exceptions as litellm
from litellm.types.router import RouterRateLimitError

ERROR_REASON_KEY = "x-error-reason"
RETRY_AFTER_KEY = "x-retry-after"

INTERNAL_MESSAGE = "internal error in llmproxy"
"""What a caller reads for a bug in the proxy (the details go to the log)."""

Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"

log = structlog.get_logger("llmproxy")


class ProxyError(Exception):
    """Base of the errors a caller can act on; the message is safe to show.

    ``reason`` is one of the words the proto documents; ``retry_after`` is
    how many seconds the provider asked us to wait, when it said.
    """

    reason = "unavailable"

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class InvalidRequest(ProxyError):
    """The request itself is wrong (empty messages, bad JSON, rejected upstream)."""

    reason = "bad_request"


class ContextTooLong(InvalidRequest):
    """The prompt does not fit the model's context window."""

    reason = "context_too_long"


class NotFound(ProxyError):
    """The model group is not configured, or the provider does not know it."""

    reason = "model_not_found"


class QuotaExceeded(ProxyError):
    """The provider rate-limited us."""

    reason = "rate_limited"


class UpstreamAuthFailed(ProxyError):
    """The provider refused our credentials: an operator must fix the config."""

    reason = "upstream_auth_failed"


class UpstreamTimeout(ProxyError):
    """The provider did not answer (or did not start answering) in time."""

    reason = "timed_out"


class UpstreamUnavailable(ProxyError):
    """The provider could not be reached or failed."""

    reason = "unavailable"


class StreamInterrupted(UpstreamUnavailable):
    """The provider failed after deltas were already sent: the answer is partial."""

    reason = "interrupted"


GRPC_STATUS: dict[type[ProxyError], grpc.StatusCode] = {
    InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    QuotaExceeded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    UpstreamAuthFailed: grpc.StatusCode.FAILED_PRECONDITION,
    UpstreamTimeout: grpc.StatusCode.DEADLINE_EXCEEDED,
    UpstreamUnavailable: grpc.StatusCode.UNAVAILABLE,
}

# Most specific first: ContextWindowExceededError is a BadRequestError, and
# LiteLLM's Timeout is an APIConnectionError in the OpenAI SDK's hierarchy.
_LITELLM_ERRORS: tuple[tuple[type[BaseException], type[ProxyError], str], ...] = (
    (litellm.ContextWindowExceededError, ContextTooLong, "the prompt exceeds the context window"),
    (litellm.RateLimitError, QuotaExceeded, "the provider rate-limited the request"),
    (litellm.AuthenticationError, UpstreamAuthFailed, "upstream authentication failed"),
    (litellm.PermissionDeniedError, UpstreamAuthFailed, "upstream authentication failed"),
    (litellm.Timeout, UpstreamTimeout, "the provider timed out"),
    (litellm.NotFoundError, NotFound, "the provider does not know the model"),
    (litellm.BadRequestError, InvalidRequest, "the provider rejected the request"),
    (litellm.UnprocessableEntityError, InvalidRequest, "the provider rejected the request"),
    (litellm.APIConnectionError, UpstreamUnavailable, "the provider is unreachable"),
    (litellm.ServiceUnavailableError, UpstreamUnavailable, "the provider is unavailable"),
    (litellm.InternalServerError, UpstreamUnavailable, "the provider failed"),
    (litellm.BadGatewayError, UpstreamUnavailable, "the provider failed"),
    (litellm.APIError, UpstreamUnavailable, "the provider failed"),
)


def from_litellm(exc: BaseException) -> ProxyError | None:
    """The proxy error for a LiteLLM exception, or None when it is not one.

    The message keeps a short reason and the provider's own first line, which
    names the model and the cause; LiteLLM's multi-line hints are dropped.
    A Retry-After header on the provider's answer becomes ``retry_after``.
    """
    if isinstance(exc, ProxyError):
        return exc
    original = getattr(exc, "original_exception", None)
    if isinstance(exc, litellm.MidStreamFallbackError) and isinstance(original, Exception):
        # The Router's envelope for a stream that failed; judge the cause.
        return from_litellm(original)
    if isinstance(exc, RouterRateLimitError):
        # Every deployment of the group is cooling down (breakers open).
        return UpstreamUnavailable(
            f"no deployment of {exc.model!r} is available (all cooling down)",
            retry_after=float(exc.cooldown_time) if exc.cooldown_time else None,
        )
    for litellm_type, proxy_type, reason in _LITELLM_ERRORS:
        if isinstance(exc, litellm_type):
            detail = _first_line(getattr(exc, "message", None) or str(exc))
            return proxy_type(
                f"{reason}: {detail}" if detail else reason, retry_after=retry_after_of(exc)
            )
    return None


def reason_of(exc: BaseException) -> str:
    """The reason a call failed with ``exc``, ``internal`` for a bug (metrics)."""
    mapped = from_litellm(exc)
    return "internal" if mapped is None else mapped.reason


@contextlib.asynccontextmanager
async def grpc_boundary(context: Context) -> AsyncIterator[None]:
    """End the RPC with the status for any exception raised inside.

    A :class:`ProxyError` or a LiteLLM exception ends it with its status
    code (:data:`GRPC_STATUS`), its message and ``x-error-reason`` (and
    ``x-retry-after``); any other exception is a bug: INTERNAL with
    :data:`INTERNAL_MESSAGE`, logged with its traceback. Cancellation
    passes through.
    """
    try:
        yield
    except grpc.aio.AbortError:
        raise  # already a status
    except Exception as exc:
        code, message, error = failure(exc)
        await context.abort(
            code, message, trailing_metadata=() if error is None else trailing_metadata(error)
        )


def failure(exc: Exception) -> tuple[grpc.StatusCode, str, ProxyError | None]:
    """The status code and message a call failed with ``exc`` ends with, and
    the proxy error behind them (None for a bug: INTERNAL with
    :data:`INTERNAL_MESSAGE`, logged with its traceback); logs the failure."""
    error = from_litellm(exc)
    if error is None:
        log.error("llmproxy_internal_error", error_type=type(exc).__name__, exc_info=exc)
        return grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE, None
    code = grpc_status(error)
    log.info(
        "llmproxy_call_failed", code=code.name, reason=error.reason, error_type=type(exc).__name__
    )
    return code, str(error), error


def grpc_status(error: ProxyError) -> grpc.StatusCode:
    """The status code for ``error`` (its nearest mapped class)."""
    for cls in type(error).__mro__:
        if cls in GRPC_STATUS:
            return GRPC_STATUS[cls]
    return grpc.StatusCode.INTERNAL


def trailing_metadata(error: ProxyError) -> tuple[tuple[str, str], ...]:
    """``x-error-reason`` and, when known, ``x-retry-after`` (whole seconds)."""
    metadata = [(ERROR_REASON_KEY, error.reason)]
    if error.retry_after is not None and error.retry_after >= 0:
        metadata.append((RETRY_AFTER_KEY, str(max(0, round(error.retry_after)))))
    return tuple(metadata)


def retry_after_of(exc: BaseException) -> float | None:
    """Seconds from the provider's ``Retry-After`` header, or None."""
    headers: Any = getattr(exc, "litellm_response_headers", None)
    if headers is None:
        response = getattr(exc, "response", None)
        headers = getattr(response, "headers", None)
    if not isinstance(headers, Mapping) and not hasattr(headers, "get"):
        return None
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        moment = email.utils.parsedate_tz(str(value))
        if moment is None:
            return None
        return max(0.0, email.utils.mktime_tz(moment) - time.time())


def _first_line(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= 500 else line[:497] + "..."
