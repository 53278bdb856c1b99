"""Forking a session: a new session of the same owner that starts with a
copy of the first messages of another.

:func:`fork_length` is the rule, without I/O, of where a fork may cut: never
between an assistant message's tool calls and their results, since a model
shown a call without its result is given a conversation no model produced
(providers refuse it). :class:`Forks` writes a fork in one transaction,
reached as :attr:`runtime.store.Store.forks`.

What a fork holds: the source's committed messages up to the cut, copied
(with their agents and times), under a new id; the title with `` (fork)``;
the agent that wrote or received the last copied message. What it does not:
tool calls waiting (a cut never leaves one open), plans, agent switches,
checkpoints (the workspace is not forked, so nothing of it can be undone
from the fork) and events (its log starts empty, ``last_seq`` 0). A turn in
flight in the source contributes only the steps it has committed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from runtime.errors import AlreadyExists, Deleted, InvalidArgument
from runtime.records import MessageRecord, SessionRow, now
from runtime.schema import messages, sessions

FORK_SUFFIX = " (fork)"
_MAX_TITLE_CHARS = 200


def _closed(history: Sequence[MessageRecord]) -> list[bool]:
    """Per position: whether every tool call made up to it has its result by it."""
    open_calls: set[str] = set()
    closed = []
    for message in history:
        if message.role == "assistant":
            open_calls.update(call["call_id"] for call in message.tool_calls or ())
        elif message.role == "tool":
            open_calls.discard(message.tool_call_id)
        closed.append(not open_calls)
    return closed


def fork_length(history: Sequence[MessageRecord], through: int | None) -> int:
    """How many of ``history``'s first messages a fork copies.

    ``through`` is the position of the last message to copy. None copies
    every message up to the last one that leaves no tool call open: all of
    them, unless the last assistant message's calls still wait for results
    (then it and the results it has are left out). Raises InvalidArgument
    for a position past the last message, and for one inside a tool
    exchange (between an assistant message with tool calls and its last
    result), naming the positions around it that can be used.
    """
    closed = _closed(history)
    if through is None:
        return next((index + 1 for index in reversed(range(len(closed))) if closed[index]), 0)
    if through >= len(history):
        if not history:
            raise InvalidArgument("the session has no messages to fork")
        raise InvalidArgument(
            f"message {through} does not exist: the session's messages are 0 to {len(history) - 1}"
        )
    if closed[through]:
        return through + 1
    before = next((i for i in reversed(range(through)) if closed[i]), None)
    after = next((i for i in range(through + 1, len(closed)) if closed[i]), None)
    usable = " or ".join(str(i) for i in (before, after) if i is not None)
    hint = f"; fork through message {usable}" if usable else ""
    raise InvalidArgument(
        f"message {through} is inside a tool exchange: a fork there would keep a tool call "
        f"without its result{hint}"
    )


def fork_title(title: str) -> str:
    """The fork's title: the source's with `` (fork)``, within the title's bound."""
    return (title[: _MAX_TITLE_CHARS - len(FORK_SUFFIX)] + FORK_SUFFIX).strip()


class Forks:
    """Writes forks; each :meth:`fork` is one short transaction, safe to cancel."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def fork(self, source_id: str, fork_id: str, through: int | None) -> SessionRow:
        """Create ``fork_id``, the fork of ``source_id`` through message ``through``
        (:func:`fork_length`), owned by the source's owner; returns its row.

        Reads the source's committed messages and writes the fork in one
        transaction, so a step the source commits meanwhile is either wholly
        in what the cut sees or not at all. Raises what :func:`fork_length`
        raises, Deleted when the source is gone, and AlreadyExists when
        ``fork_id`` is taken.
        """
        stamp = now()
        try:
            async with self._engine.begin() as conn:
                source = (
                    await conn.execute(sessions.select().where(sessions.c.id == source_id))
                ).first()
                if source is None or source.deleted_at is not None:
                    raise Deleted(f"session {source_id!r} was deleted")
                rows = list(
                    await conn.execute(
                        messages.select()
                        .where(messages.c.session_id == source_id)
                        .order_by(messages.c.position)
                    )
                )
                history = [
                    MessageRecord(
                        position=row.position,
                        role=row.role,
                        content="",
                        tool_calls=json.loads(row.tool_calls) if row.tool_calls else None,
                        tool_call_id=row.tool_call_id,
                    )
                    for row in rows
                ]
                copied = rows[: fork_length(history, through)]
                values = {
                    "id": fork_id,
                    "owner": source.owner,
                    "title": fork_title(source.title),
                    "agent": (copied[-1].agent if copied else "") or source.agent,
                    "state": "idle",
                    "last_seq": 0,
                    "message_count": len(copied),
                    "created_at": stamp,
                    "updated_at": stamp,
                }
                await conn.execute(sessions.insert().values(**values))
                if copied:
                    await conn.execute(
                        messages.insert(),
                        [{**row._mapping, "session_id": fork_id} for row in copied],
                    )
        except IntegrityError:
            raise AlreadyExists(f"session id {fork_id!r} is taken") from None
        return SessionRow(**values)
