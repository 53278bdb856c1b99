"""Each user's custom instructions: text every system prompt of their sessions carries.

Like Roo Code's and Cline's global custom instructions: a user's standing
wishes ("answer in German", "prefer pytest"), stored per user in the
``user_instructions`` table (:mod:`runtime.schema`), set and read over REST
(``GET``/``PUT /api/v1/instructions``), and read at each turn's start with
the user's approval rules (:mod:`runtime.owner_reads`), so a change holds
from the next turn (:meth:`runtime.conversation.Conversation.load_rules`).
They inform the model only; they change no policy or approval. Reached as
:attr:`runtime.store.Store.instructions`; SQLite and PostgreSQL.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from runtime.errors import InvalidArgument
from runtime.records import now
from runtime.schema import user_instructions

MAX_CHARS = 8000
"""Characters a user's instructions may have (about 2,000 tokens of every prompt)."""


def checked(text: str) -> str:
    """``text`` as stored: line ends normalised, outer blank space removed;
    raises InvalidArgument when it is longer than :data:`MAX_CHARS` or holds a NUL."""
    text = text.replace("\r\n", "\n").strip()
    if len(text) > MAX_CHARS:
        raise InvalidArgument(f"instructions are at most {MAX_CHARS} characters, not {len(text)}")
    if "\x00" in text:
        raise InvalidArgument("instructions must not contain a NUL character")
    return text


class InstructionsStore:
    """Get and replace a user's instructions; each call one short transaction,
    safe to cancel."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def get(self, owner: str) -> str:
        """``owner``'s instructions; "" when they have none."""
        query = sa.select(user_instructions.c.text).where(user_instructions.c.owner == owner)
        async with self._engine.connect() as conn:
            text = (await conn.execute(query)).scalar_one_or_none()
        return text or ""

    async def set(self, owner: str, text: str) -> str:
        """Replace ``owner``'s instructions (:func:`checked`); returns them as stored."""
        text = checked(text)
        update = (
            user_instructions.update()
            .where(user_instructions.c.owner == owner)
            .values(text=text, updated_at=now())
        )
        insert = user_instructions.insert().values(owner=owner, text=text, updated_at=now())
        try:
            async with self._engine.begin() as conn:
                if (await conn.execute(update)).rowcount == 0:
                    await conn.execute(insert)
        except IntegrityError:
            # Someone stored this user's first instructions meanwhile: now there is a row.
            async with self._engine.begin() as conn:
                await conn.execute(update)
        return text
