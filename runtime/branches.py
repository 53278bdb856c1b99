"""Branches of a session's history: what a retry or an edit replaced, kept.

A retry runs the last user message again; an edit replaces a user message
and runs from it. Either way the message at that position and everything
after it leave the active history (``messages``) for a new *branch*
(``branch_messages``, numbered per session from 1), with the checkpoints of
their turns, so nothing is destroyed: :meth:`Branches.of_session` lists
them, and a fork or an export reads only the active history.

The rules, without I/O: :func:`retry_position` and :func:`edit_position`
say where a re-run starts; :func:`check_changes` refuses one whose replaced
turns changed files that are not undone (the workspace would otherwise hold
changes the new answer knows nothing of), unless the user keeps them.
:class:`Branches` writes a branch in one transaction, reached as
:attr:`runtime.store.Store.branches`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from runtime import undo
from runtime.errors import InvalidArgument, Precondition
from runtime.llm import ChatMessage
from runtime.prompts import NOTICE_MARK
from runtime.records import Checkpoint, MessageRecord, aware, message_from_row, now
from runtime.schema import branch_messages, branches, checkpoints, messages, sessions

BRANCH_DATA = (branch_messages, branches)
"""The tables holding a session's branches (deleted with the session)."""

_UNDO_PREFIX = "/undo "
"""An undo turn's user message (:func:`runtime.subcalls.start_undo`)."""


class NothingToRerun(Precondition):
    """The session has no user message a retry could run again."""


class ChangesNotUndone(Precondition):
    """The turns a re-run replaces changed files that are not undone; the message says which."""


def _typed(message: ChatMessage) -> bool:
    """Whether ``message`` is one the user typed (not a notice, not an undo's)."""
    if message.role != "user" or message.content.startswith(NOTICE_MARK):
        return False
    rest = message.content.removeprefix(_UNDO_PREFIX)
    return not (rest != message.content and rest.isdigit())


def retry_position(history: Sequence[ChatMessage]) -> int:
    """The position of the last message the user typed; raises NothingToRerun."""
    for position in reversed(range(len(history))):
        if _typed(history[position]):
            return position
    raise NothingToRerun("the session has no message of yours to retry")


def edit_position(history: Sequence[ChatMessage], index: int) -> int:
    """``index``, when it is the position of a message the user typed;
    raises InvalidArgument naming the positions that can be edited."""
    if 0 <= index < len(history) and _typed(history[index]):
        return index
    typed = [str(i) for i, message in enumerate(history) if _typed(message)]
    usable = f"; yours are at {', '.join(typed[-20:])}" if typed else "; it has none yet"
    raise InvalidArgument(f"message {index} is not a message you typed{usable}")


def check_changes(checkpoints_: list[Checkpoint], position: int) -> None:
    """Raise ChangesNotUndone when the turns from ``position`` on changed files
    not undone, naming the first such turn (what to undo) and its files."""
    left = [c for c in checkpoints_ if c.turn >= position and not c.undone]
    if not left:
        return
    first = min(c.turn for c in left)
    files = ", ".join(f"{path} ({change})" for path, change in undo.file_changes(left)[:20])
    raise ChangesNotUndone(
        f"the turns this replaces changed files that are not undone: {files}; "
        f"undo them first (undo with turn_id {first}), or run again with "
        "keep_changes to keep them as they are"
    )


@dataclass(frozen=True, slots=True)
class Branch:
    """A replaced part of a session's history."""

    branch: int
    reason: str
    from_position: int
    created_at: datetime
    messages: list[MessageRecord] = field(default_factory=list)


async def _split(conn: AsyncConnection, session_id: str, position: int, reason: str) -> int:
    """In ``conn``'s transaction: the messages from ``position`` on, and the
    active checkpoints of their turns, to a new branch; returns its number."""
    number = (
        await conn.execute(
            sa.select(sa.func.coalesce(sa.func.max(branches.c.branch), 0)).where(
                branches.c.session_id == session_id
            )
        )
    ).scalar_one() + 1
    moved = list(
        await conn.execute(
            messages.select().where(
                messages.c.session_id == session_id, messages.c.position >= position
            )
        )
    )
    await conn.execute(
        branches.insert().values(
            session_id=session_id,
            branch=number,
            reason=reason,
            from_position=position,
            created_at=now(),
        )
    )
    if moved:
        await conn.execute(
            branch_messages.insert(), [{**row._mapping, "branch": number} for row in moved]
        )
    await conn.execute(
        messages.delete().where(
            messages.c.session_id == session_id, messages.c.position >= position
        )
    )
    await conn.execute(
        checkpoints.update()
        .where(
            checkpoints.c.session_id == session_id,
            checkpoints.c.branch.is_(None),
            checkpoints.c.turn >= position,
        )
        .values(branch=number)
    )
    return int(number)


async def _count(conn: AsyncConnection, session_id: str, message_count: int) -> None:
    await conn.execute(
        sessions.update()
        .where(sessions.c.id == session_id)
        .values(message_count=message_count, updated_at=now())
    )


class Branches:
    """Writes and reads of branches; each method is one short transaction."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def split(self, session_id: str, position: int, reason: str) -> int:
        """Move the session's messages from ``position`` on, and the
        checkpoints of their turns, to a new branch; returns its number.

        One transaction: the history is either whole or split. Not safe
        against a concurrent write of the session's messages: the caller
        holds the session (no turn runs, no step is in flight).
        """
        async with self._engine.begin() as conn:
            number = await _split(conn, session_id, position, reason)
            await _count(conn, session_id, position)
        return number

    async def restore(
        self, session_id: str, branch: int, *, keep_changes: bool
    ) -> tuple[int, int, list[MessageRecord]]:
        """Make ``branch`` the active history again from its position on; the
        messages it replaces (and their checkpoints) become a new branch,
        and the branch's checkpoints are active again.

        Returns the new branch's number, the position and the messages
        restored. One transaction; the caller holds the session, as for
        :meth:`split`. Raises InvalidArgument for a branch the session has
        not, or one that starts past the end of the active history, and
        (unless ``keep_changes``) ChangesNotUndone as :func:`check_changes`.
        """
        async with self._engine.begin() as conn:
            head = (
                await conn.execute(
                    branches.select().where(
                        branches.c.session_id == session_id, branches.c.branch == branch
                    )
                )
            ).first()
            if head is None:
                raise InvalidArgument(f"the session has no branch {branch} (see its branches)")
            position = head.from_position
            active = (
                await conn.execute(
                    sa.select(sa.func.count()).where(messages.c.session_id == session_id)
                )
            ).scalar_one()
            if position > active:
                raise InvalidArgument(
                    f"branch {branch} starts at message {position}, past the end of the "
                    f"history ({active} messages): restore the branch that replaced it first"
                )
            rows = list(
                await conn.execute(
                    branch_messages.select()
                    .where(
                        branch_messages.c.session_id == session_id,
                        branch_messages.c.branch == branch,
                    )
                    .order_by(branch_messages.c.position)
                )
            )
            if not keep_changes:
                kept = await conn.execute(
                    checkpoints.select().where(
                        checkpoints.c.session_id == session_id, checkpoints.c.branch.is_(None)
                    )
                )
                check_changes(
                    [Checkpoint(c.turn, c.path, c.before, c.after, undone=c.undone) for c in kept],
                    position,
                )
            number = await _split(conn, session_id, position, "switch")
            if rows:
                columns = [c.name for c in messages.columns]
                await conn.execute(
                    messages.insert(), [{c: row._mapping[c] for c in columns} for row in rows]
                )
            await conn.execute(
                checkpoints.update()
                .where(checkpoints.c.session_id == session_id, checkpoints.c.branch == branch)
                .values(branch=None)
            )
            for table in BRANCH_DATA:
                await conn.execute(
                    table.delete().where(table.c.session_id == session_id, table.c.branch == branch)
                )
            await _count(conn, session_id, position + len(rows))
        return number, position, [message_from_row(row) for row in rows]

    async def of_session(self, session_id: str) -> list[Branch]:
        """The session's branches with their messages, newest first."""
        async with self._engine.connect() as conn:
            heads = list(
                await conn.execute(
                    branches.select()
                    .where(branches.c.session_id == session_id)
                    .order_by(branches.c.branch.desc())
                )
            )
            rows = list(
                await conn.execute(
                    branch_messages.select()
                    .where(branch_messages.c.session_id == session_id)
                    .order_by(branch_messages.c.branch, branch_messages.c.position)
                )
            )
        by_branch: dict[int, list[MessageRecord]] = {}
        for row in rows:
            by_branch.setdefault(row.branch, []).append(message_from_row(row))
        return [
            Branch(
                head.branch,
                head.reason,
                head.from_position,
                aware(head.created_at),
                by_branch.get(head.branch, []),
            )
            for head in heads
        ]
