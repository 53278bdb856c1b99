"""The upgrade request parser, fed strings: no socket, no server."""

from __future__ import annotations

import pytest
from websockets.datastructures import Headers
from websockets.typing import Subprotocol

from gateway.codes import refuse_handshake
from gateway.errors import BadHandshake, HandshakeProblem
from gateway.frames import MAX_SEQ
from gateway.handshake import (
    Upgrade,
    bearer_token,
    client_request_id,
    parse_upgrade,
    select_subprotocol,
)

TOKEN = "aaa.bbb.ccc"


def parse(
    path: str = "/ws/s1",
    query: str = "",
    *,
    method: str = "GET",
    headers: Headers | None = None,
    origins: tuple[str, ...] = (),
) -> Upgrade | None:
    if headers is None:
        headers = Headers([("Authorization", f"Bearer {TOKEN}")])
    return parse_upgrade(method, path, query, headers, origins)


def problem(*args: str, **kwargs: object) -> HandshakeProblem:
    with pytest.raises(BadHandshake) as refused:
        parse(*args, **kwargs)  # type: ignore[arg-type]
    return refused.value.problem


def test_an_upgrade_names_its_session_resume_point_and_token():
    assert parse("/ws/s1") == Upgrade("s1", None, TOKEN)
    assert parse("/api/v1/ws/s-2.x:y_z", "last_seq=7") == Upgrade("s-2.x:y_z", 7, TOKEN)
    assert parse("/ws/s1", f"last_seq={MAX_SEQ}") == Upgrade("s1", MAX_SEQ, TOKEN)
    assert parse("/ws/s1", "last_seq=0") == Upgrade("s1", 0, TOKEN)
    # An empty last_seq is no resume point, as before the parser existed.
    assert parse("/ws/s1", "last_seq=") == Upgrade("s1", None, TOKEN)


def test_other_paths_are_not_upgrades():
    assert parse("/api/v1/sessions") is None
    assert parse("/wss/s1") is None
    assert parse("/health") is None


@pytest.mark.parametrize(
    ("path", "query", "method", "expected"),
    [
        ("/ws/", "", "GET", HandshakeProblem.NO_SUCH_PATH),
        ("/ws/a/b", "", "GET", HandshakeProblem.NO_SUCH_PATH),
        ("/ws/a/b", "", "POST", HandshakeProblem.NO_SUCH_PATH),
        ("/ws/s1", "", "POST", HandshakeProblem.METHOD_NOT_ALLOWED),
        ("/ws/bad%20id", "", "POST", HandshakeProblem.METHOD_NOT_ALLOWED),
        ("/ws/bad%20id", "", "GET", HandshakeProblem.BAD_SESSION_ID),
        ("/ws/" + "x" * 129, "", "GET", HandshakeProblem.BAD_SESSION_ID),
        ("/ws/bad%20id", "last_seq=x", "GET", HandshakeProblem.BAD_SESSION_ID),
        ("/ws/s1", "last_seq=-1", "GET", HandshakeProblem.BAD_LAST_SEQ),
        ("/ws/s1", "last_seq=1.5", "GET", HandshakeProblem.BAD_LAST_SEQ),
        ("/ws/s1", f"last_seq={MAX_SEQ + 1}", "GET", HandshakeProblem.BAD_LAST_SEQ),
    ],
)
def test_malformed_upgrades_are_refused_in_order(
    path: str, query: str, method: str, expected: HandshakeProblem
):
    assert problem(path, query, method=method) is expected


def test_the_origin_is_checked_last_against_the_allow_list():
    origins = ("https://ide.example",)
    listed = Headers([("Origin", "https://IDE.example/")])
    assert parse(headers=listed, origins=origins) == Upgrade("s1", None, None)
    for headers in (
        Headers(),
        Headers([("Origin", "https://evil.example")]),
        Headers([("Origin", "https://ide.example"), ("Origin", "https://ide.example")]),
    ):
        assert problem(headers=headers, origins=origins) is HandshakeProblem.ORIGIN_NOT_ALLOWED
    # A bad last_seq is reported before a bad origin.
    assert problem("/ws/s1", "last_seq=x", headers=Headers(), origins=origins) is (
        HandshakeProblem.BAD_LAST_SEQ
    )
    # No allow-list: any origin, or none.
    assert parse(headers=Headers([("Origin", "https://evil.example")])) is not None


def test_a_missing_token_is_left_for_after_the_connection_limit():
    assert parse(headers=Headers()) == Upgrade("s1", None, None)


@pytest.mark.parametrize(
    ("headers", "token"),
    [
        ([("Authorization", "Bearer t1")], "t1"),
        ([("Authorization", "bearer   t1  ")], "t1"),
        ([("Authorization", "Basic dXNlcg==")], None),
        ([("Authorization", "Bearer ")], None),
        ([("Authorization", "Bearer t1"), ("Authorization", "Bearer t2")], None),
        ([("Sec-WebSocket-Protocol", "bearer, t3")], "t3"),
        ([("Sec-WebSocket-Protocol", "chat"), ("Sec-WebSocket-Protocol", "bearer,t4")], "t4"),
        ([("Sec-WebSocket-Protocol", "bearer")], None),
        # The header wins over the subprotocol, even when it carries no token.
        ([("Authorization", "Basic x"), ("Sec-WebSocket-Protocol", "bearer, t5")], None),
    ],
)
def test_the_token_comes_from_the_header_or_the_subprotocol_pair(
    headers: list[tuple[str, str]], token: str | None
):
    assert bearer_token(Headers(headers)) == token


def test_a_client_that_sets_no_header_may_put_the_token_in_the_query():
    assert parse(query=f"access_token={TOKEN}", headers=Headers()) == Upgrade("s1", None, TOKEN)
    assert parse(query=f"last_seq=3&access_token={TOKEN}", headers=Headers()).token == TOKEN  # type: ignore[union-attr]
    # One way only: a header or a subprotocol pair wins, even without a token.
    for headers in (
        Headers([("Authorization", "Basic x")]),
        Headers([("Sec-WebSocket-Protocol", "bearer")]),
    ):
        assert parse(query=f"access_token={TOKEN}", headers=headers).token is None  # type: ignore[union-attr]
    twice = f"access_token={TOKEN}&access_token=other"
    assert parse(query=twice, headers=Headers()).token is None  # type: ignore[union-attr]
    assert parse(query="access_token=", headers=Headers()).token is None  # type: ignore[union-attr]


def test_only_the_bearer_marker_is_selected_never_the_token():
    assert select_subprotocol([Subprotocol("bearer"), Subprotocol(TOKEN)]) == "bearer"
    assert select_subprotocol([Subprotocol(TOKEN)]) is None


def test_a_client_request_id_is_kept_only_when_safe_to_log():
    assert client_request_id(Headers([("X-Request-Id", "req-1")])) == "req-1"
    assert client_request_id(Headers([("X-Request-Id", "a b")])) is None
    assert client_request_id(Headers([("X-Request-Id", "x" * 129)])) is None
    assert client_request_id(Headers([("X-Request-Id", "a"), ("X-Request-Id", "b")])) is None
    assert client_request_id(Headers()) is None


def test_every_problem_has_its_http_refusal():
    statuses = {problem: refuse_handshake(problem).status_code for problem in HandshakeProblem}
    assert statuses == {
        HandshakeProblem.NO_SUCH_PATH: 404,
        HandshakeProblem.METHOD_NOT_ALLOWED: 405,
        HandshakeProblem.BAD_SESSION_ID: 400,
        HandshakeProblem.BAD_LAST_SEQ: 400,
        HandshakeProblem.ORIGIN_NOT_ALLOWED: 403,
    }
