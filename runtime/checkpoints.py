"""The checkpoints of a session's changes to the workspace, in SQL.

A :class:`~runtime.records.Checkpoint` row is written in the same
transaction as the step that completed the change (:func:`write`, called by
:meth:`runtime.store.Store.commit`); an undo marks the rows it restored.
Reached as :attr:`runtime.store.Store.checkpoints`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from runtime.records import Checkpoint, Step
from runtime.schema import checkpoints


def _checkpoint(row: sa.Row[Any]) -> Checkpoint:
    created: datetime = row.created_at
    return Checkpoint(
        turn=row.turn,
        path=row.path,
        before=row.before,
        after=row.after,
        id=row.id,
        undone=row.undone,
        created_at=created if created.tzinfo else created.replace(tzinfo=UTC),
    )


def write(conn: sa.Connection, step: Step, stamp: datetime) -> None:
    """Write a step's new checkpoints and mark the ones its undo restored
    (within a step's transaction: :func:`runtime.commits.write_steps`)."""
    if step.checkpoints:
        conn.execute(
            checkpoints.insert(),
            [
                {
                    "session_id": step.session_id,
                    "turn": c.turn,
                    "path": c.path,
                    "before": c.before,
                    "after": c.after,
                    "created_at": stamp,
                }
                for c in step.checkpoints
            ],
        )
    if step.undone:
        conn.execute(
            checkpoints.update()
            .where(checkpoints.c.session_id == step.session_id, checkpoints.c.id.in_(step.undone))
            .values(undone=True)
        )


class Checkpoints:
    """Reads of the checkpoints table; each method is one short transaction."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def of_session(self, session_id: str) -> list[Checkpoint]:
        """The checkpoints of the session's active history, oldest first (not
        those of the branches a retry or an edit replaced: :mod:`runtime.branches`)."""
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                checkpoints.select()
                .where(checkpoints.c.session_id == session_id, checkpoints.c.branch.is_(None))
                .order_by(checkpoints.c.id)
            )
            return [_checkpoint(row) for row in rows]
