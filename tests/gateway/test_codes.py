"""The edge's one error contract: failures to close codes, frames, statuses."""

from __future__ import annotations

import json

import grpc
import pytest

from gateway.codes import (
    closing_for_status,
    error_frame_for,
    refuse_overload,
    refuse_session_access,
    response_for_status,
)
from gateway.errors import FrameError, InvalidToken, KeysUnavailable

S = grpc.StatusCode


@pytest.mark.parametrize(
    ("code", "status"),
    [
        (S.NOT_FOUND, None),
        (S.UNIMPLEMENTED, None),
        (S.PERMISSION_DENIED, 403),
        (S.UNAVAILABLE, 503),
        (S.DEADLINE_EXCEEDED, 503),
        (S.RESOURCE_EXHAUSTED, 503),
        (S.UNAUTHENTICATED, 502),
        (S.INTERNAL, 502),
    ],
)
def test_the_ownership_probe_refuses_or_lets_through(code: grpc.StatusCode, status: int | None):
    refusal = refuse_session_access(code, "details")
    assert (refusal.status_code if refusal is not None else None) == status


def test_a_view_hides_whether_a_foreign_session_exists():
    mine, theirs = (
        response_for_status(S.NOT_FOUND, "a"),
        response_for_status(S.PERMISSION_DENIED, "b"),
    )
    assert (mine.status_code, mine.body) == (theirs.status_code, theirs.body) == (404, mine.body)
    assert response_for_status(S.ALREADY_EXISTS, "taken").status_code == 409
    invalid = response_for_status(S.INVALID_ARGUMENT, "page_size is at most 100")
    assert (invalid.status_code, json.loads(invalid.body)["error_description"]) == (
        400,
        "page_size is at most 100",
    )


def test_a_stream_ending_closes_terminally_or_retryably():
    assert closing_for_status(S.OK, None).code == 1000
    assert closing_for_status(S.UNAVAILABLE, None).retryable
    denied = closing_for_status(S.PERMISSION_DENIED, "é" * 100)
    assert (denied.code, denied.retryable, len(denied.reason.encode()) <= 123) == (
        1008,
        False,
        True,
    )
    failed = closing_for_status(S.DATA_LOSS, "x")
    assert failed.code == 1011
    assert failed.frame is not None
    assert failed.frame["code"] == "runtime_error"


def test_refused_frames_keep_the_connection_and_say_why():
    assert error_frame_for(FrameError("invalid_field", "bad"))["code"] == "invalid_field"
    assert error_frame_for(InvalidToken("token expired"))["content"] == "token expired"
    keys = error_frame_for(KeysUnavailable())
    assert (keys["code"], keys["metadata"]["retryable"]) == ("keys_unavailable", True)
    assert error_frame_for(RuntimeError("parser bug"))["code"] == "invalid_frame"


def test_overload_is_429_for_a_user_and_503_for_the_process():
    assert refuse_overload("user").status_code == 429
    assert refuse_overload("process").status_code == 503
    assert refuse_overload("process").headers["Retry-After"] == "5"
