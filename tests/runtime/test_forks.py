"""Where a fork may cut (pure), and a fork written on each database."""

from __future__ import annotations

import pytest

from runtime.errors import AlreadyExists, Deleted, InvalidArgument
from runtime.forks import fork_length, fork_title
from runtime.records import MessageRecord, Step
from runtime.store import Store


def call(call_id: str) -> dict[str, str]:
    return {"call_id": call_id, "name": "read_file", "arguments_json": '{"path": "a"}'}


HISTORY = [
    MessageRecord(0, "user", "read a and b", agent="orchestrator"),
    MessageRecord(1, "assistant", "", [call("c1"), call("c2")], agent="coder"),
    MessageRecord(2, "tool", "A", tool_call_id="c1", name="read_file", agent="coder"),
    MessageRecord(3, "tool", "B", tool_call_id="c2", name="read_file", agent="coder"),
    MessageRecord(4, "assistant", "done", agent="coder"),
    MessageRecord(5, "user", "read c", agent="coder"),
    MessageRecord(6, "assistant", "", [call("c3")], agent="coder"),
]
"""A finished turn with two calls, then a turn whose call waits for its result."""


def test_a_fork_cuts_only_where_no_tool_call_is_left_open():
    assert [fork_length(HISTORY, through) for through in (0, 3, 4, 5)] == [1, 4, 5, 6]
    with pytest.raises(InvalidArgument) as assistant:
        fork_length(HISTORY, 1)
    assert str(assistant.value) == (
        "message 1 is inside a tool exchange: a fork there would keep a tool call "
        "without its result; fork through message 0 or 3"
    )
    with pytest.raises(InvalidArgument, match=r"fork through message 0 or 3$"):
        fork_length(HISTORY, 2)
    with pytest.raises(InvalidArgument, match=r"fork through message 5$"):
        fork_length(HISTORY, 6)


def test_by_default_a_fork_leaves_out_only_a_last_exchange_still_open():
    assert fork_length(HISTORY, None) == 6
    assert fork_length(HISTORY[:5], None) == 5
    assert fork_length(HISTORY[:2], None) == 1
    assert fork_length([], None) == 0


def test_a_position_past_the_last_message_is_refused():
    with pytest.raises(InvalidArgument, match="the session's messages are 0 to 6"):
        fork_length(HISTORY, 7)
    with pytest.raises(InvalidArgument, match="no messages to fork"):
        fork_length([], 0)


def test_the_fork_title_says_so_within_the_bound():
    assert fork_title("work") == "work (fork)"
    assert fork_title("") == "(fork)"
    assert fork_title("t" * 200) == "t" * 193 + " (fork)"


async def test_a_fork_copies_the_prefix_into_a_new_session(store: Store) -> None:
    await store.create_session("src", "alice", "orchestrator", "work")
    await store.commit(
        Step(
            session_id="src",
            last_seq=9,
            agent="coder",
            state="waiting",
            message_count=len(HISTORY),
            messages=HISTORY,
        )
    )
    fork = await store.forks.fork("src", "fork-1", 4)
    assert (fork.id, fork.owner, fork.title, fork.agent) == (
        "fork-1",
        "alice",
        "work (fork)",
        "coder",
    )
    assert (fork.message_count, fork.last_seq, fork.state) == (5, 0, "idle")
    assert await store.get_session("fork-1") == fork
    source, copied = await store.history("src"), await store.history("fork-1")
    assert copied == source[:5]
    loaded = await store.load("fork-1")
    assert (loaded.pending, loaded.answered, loaded.plans) == ([], set(), {})
    assert await store.events_after("fork-1", 0) == []
    assert await store.checkpoints.of_session("fork-1") == []

    first = await store.forks.fork("src", "fork-2", 0)
    assert (first.message_count, first.agent) == (1, "orchestrator")
    whole = await store.forks.fork("src", "fork-3", None)
    assert whole.message_count == 6, "the open call and its message are left out"

    with pytest.raises(AlreadyExists):
        await store.forks.fork("src", "fork-1", 0)
    with pytest.raises(InvalidArgument):
        await store.forks.fork("src", "fork-4", 1)
    assert await store.get_session("fork-4") is None, "a refused fork writes nothing"
    await store.delete_session("src")
    with pytest.raises(Deleted):
        await store.forks.fork("src", "fork-5", None)
    assert await store.history("fork-1") == source[:5], "a fork outlives its source"
