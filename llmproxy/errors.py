"""The proxy's errors, and the one place they become gRPC status codes.

LiteLLM raises OpenAI-shaped exceptions; :func:`from_litellm` turns them into
this small transport-neutral hierarchy, and :data:`GRPC_STATUS` says which
status code each one is on the wire. The servicer is the only caller of
both.
"""

from __future__ import annotations

import grpc
from litellm import exceptions as litellm


class ProxyError(Exception):
    """Base of the errors a caller can act on; the message is safe to show."""


class InvalidRequest(ProxyError):
    """The request itself is wrong (empty messages, bad JSON, context too long)."""


class NotFound(ProxyError):
    """The model group is not configured."""


class QuotaExceeded(ProxyError):
    """The provider rate-limited us."""


class UpstreamAuthFailed(ProxyError):
    """The provider refused our credentials: an operator must fix the config."""


class UpstreamTimeout(ProxyError):
    """The provider did not answer in time."""


class UpstreamUnavailable(ProxyError):
    """The provider could not be reached or failed."""


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
    (litellm.ContextWindowExceededError, InvalidRequest, "the prompt exceeds the context window"),
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
    """
    if isinstance(exc, ProxyError):
        return exc
    for litellm_type, proxy_type, reason in _LITELLM_ERRORS:
        if isinstance(exc, litellm_type):
            detail = _first_line(getattr(exc, "message", None) or str(exc))
            return proxy_type(f"{reason}: {detail}" if detail else reason)
    return None


def grpc_status(error: ProxyError) -> grpc.StatusCode:
    """The status code for ``error`` (its nearest mapped class)."""
    for cls in type(error).__mro__:
        if cls in GRPC_STATUS:
            return GRPC_STATUS[cls]
    return grpc.StatusCode.INTERNAL


def _first_line(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= 500 else line[:497] + "..."
