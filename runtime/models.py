"""The model groups a user may choose for a session, and the durable choice.

The operator names the groups (``AGENT_RUNTIME__USER_MODELS``, default:
just ``LLM_MODEL``); a session's choice is its row's ``model`` column and
replaces each agent's default group for every model call of the session
(routing keeps the routing model). The choice is visible in history as
the session's ``model`` field (GetSession, GetSessionHistory, the REST
session views) and in the ``session_model_chosen`` log line.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncEngine

from runtime.errors import InvalidArgument
from runtime.records import now
from runtime.schema import sessions


class UnknownModel(InvalidArgument):
    """A model group the operator does not let users choose (the IDE's
    error code: ``unknown_model``)."""


def check_choice(model: str, allowed: Sequence[str]) -> str:
    """``model`` when it is one of ``allowed``; raises :class:`UnknownModel` otherwise."""
    if model not in allowed:
        raise UnknownModel(
            f"model group {model!r} is not offered here; choose one of: {', '.join(allowed)}"
        )
    return model


class ModelChoices:
    """Writes sessions' model choices (the ``sessions.model`` column)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def choose(self, session_id: str, model: str) -> bool:
        """Record ``model`` as the choice of a session that is not deleted;
        False when there is none. Idempotent."""
        async with self._engine.begin() as conn:
            result = await conn.execute(
                sessions.update()
                .where(sessions.c.id == session_id, sessions.c.deleted_at.is_(None))
                .values(model=model, updated_at=now())
            )
        return bool(result.rowcount == 1)
