"""The REST requests of retry, edit and branches, built without I/O, and their routes."""

from __future__ import annotations

from typing import Any

import pytest

from gateway import rest, views
from gateway.errors import InvalidQuery
from gateway.requests import Params, edit_message, restore_branch, retry
from runtime.v1 import runtime_pb2 as pb


def params(body: dict[str, Any] | None = None, **query: str) -> Params:
    return Params("s1", {name: [value] for name, value in query.items()}, body)


def test_the_routes() -> None:
    assert rest.match("POST", "/api/v1/sessions/s1/retry") == rest.Route("retry", "s1")
    assert rest.match("POST", "/api/v1/sessions/s1/edit") == rest.Route("edit_message", "s1")
    assert rest.match("GET", "/api/v1/sessions/s1/branches") == rest.Route("branches", "s1")
    assert rest.match("POST", "/api/v1/sessions/s1/branches") == rest.Route("restore_branch", "s1")
    assert rest.match("GET", "/api/v1/sessions/s1/retry") == 405
    assert rest.VIEWS["edit_message"].reads_body


def test_retry_and_restore_read_keep_changes() -> None:
    assert retry(params()) == pb.RetryTurnRequest(session_id="s1")
    assert retry(params(keep_changes="true")).keep_changes
    with pytest.raises(InvalidQuery) as bad:
        retry(params(keep_changes="yes"))
    assert bad.value.error == "invalid_keep_changes"
    assert restore_branch(params(branch="2", keep_changes="true")) == pb.RestoreBranchRequest(
        session_id="s1", branch=2, keep_changes=True
    )
    for query in ({}, {"branch": "x"}, {"branch": "-1"}):
        with pytest.raises(InvalidQuery) as refused:
            restore_branch(params(**query))
        assert refused.value.error == "invalid_branch"


def test_an_edit_needs_a_position_and_a_body_with_content() -> None:
    assert edit_message(params({"content": "again"}, message="2")) == pb.EditUserMessageRequest(
        session_id="s1", index=2, content="again"
    )
    kept = edit_message(params({"content": "again", "keep_changes": True}, message="0"))
    assert kept.keep_changes
    for body, query, code in (
        ({"content": "x"}, {}, "invalid_message"),
        ({"content": "x"}, {"message": "a"}, "invalid_message"),
        (None, {"message": "1"}, "invalid_body"),
        ({"content": " "}, {"message": "1"}, "invalid_body"),
        ({"content": 3}, {"message": "1"}, "invalid_body"),
        ({"content": "x", "role": "system"}, {"message": "1"}, "invalid_body"),
        ({"content": "x", "keep_changes": "no"}, {"message": "1"}, "invalid_body"),
    ):
        with pytest.raises(InvalidQuery) as refused:
            edit_message(params(body, **query))
        assert refused.value.error == code


def test_the_branches_view_lists_messages_as_the_history_does() -> None:
    response = pb.ListBranchesResponse(session_id="s1")
    branch = response.branches.add(branch=2, reason="edit", from_message=4)
    branch.messages.add(role="user", content="old")
    body = views.branches(response)
    assert body["session_id"] == "s1"
    (listed,) = body["branches"]
    assert (listed["branch"], listed["reason"], listed["from_message"]) == (2, "edit", 4)
    assert listed["messages"] == [views.history_message(branch.messages[0])]
    assert listed["created_at"] is None
