"""LiteLLM exceptions become the status codes the contract promises."""

from __future__ import annotations

import grpc
import httpx
import litellm
import pytest

from llmproxy import errors

REQUEST = httpx.Request("POST", "http://provider.invalid/v1/chat/completions")


@pytest.mark.parametrize(
    ("exc", "code", "reason"),
    [
        (
            litellm.RateLimitError("slow down", "openai", "gpt-4o"),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "rate-limited",
        ),
        (
            litellm.ContextWindowExceededError("too long", "gpt-4o", "openai"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "context window",
        ),
        (
            litellm.BadRequestError("bad", "gpt-4o", "openai"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "rejected",
        ),
        (
            litellm.AuthenticationError("no", "openai", "gpt-4o"),
            grpc.StatusCode.FAILED_PRECONDITION,
            "upstream authentication failed",
        ),
        (
            litellm.Timeout("late", "gpt-4o", "openai"),
            grpc.StatusCode.DEADLINE_EXCEEDED,
            "timed out",
        ),
        (
            litellm.APIConnectionError("down", "openai", "gpt-4o", request=REQUEST),
            grpc.StatusCode.UNAVAILABLE,
            "unreachable",
        ),
        (
            litellm.ServiceUnavailableError("down", "openai", "gpt-4o"),
            grpc.StatusCode.UNAVAILABLE,
            "unavailable",
        ),
        (
            litellm.InternalServerError("boom", "openai", "gpt-4o"),
            grpc.StatusCode.UNAVAILABLE,
            "failed",
        ),
    ],
)
def test_litellm_exceptions_map_to_status_codes(
    exc: Exception, code: grpc.StatusCode, reason: str
) -> None:
    error = errors.from_litellm(exc)

    assert error is not None
    assert errors.grpc_status(error) == code
    assert reason in str(error)


def test_unknown_exceptions_are_not_mapped() -> None:
    assert errors.from_litellm(KeyError("x")) is None


def test_proxy_errors_map_to_themselves() -> None:
    error = errors.NotFound("model 'x' is not configured")

    assert errors.from_litellm(error) is error
    assert errors.grpc_status(error) == grpc.StatusCode.NOT_FOUND
