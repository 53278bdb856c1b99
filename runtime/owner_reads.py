"""What every turn reads of its owner at its start: approval rules and instructions.

A turn reads its owner's approval rules (:mod:`runtime.rules_store`) and
custom instructions (:mod:`runtime.instructions`) when it starts, so a
change made meanwhile holds from the next turn, whichever replica made it.
Many sessions starting turns at once would each take a connection for
those two reads; :class:`OwnerReads` answers every owner asked for
meanwhile with one query on one connection instead. Works on SQLite and
PostgreSQL.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from runtime.rules import ApprovalRules
from runtime.schema import approval_rules, user_instructions

MAX_READ_OWNERS = 256
"""Most users whose rules and instructions one query reads (see :meth:`OwnerReads.get`)."""

_RULES, _INSTRUCTIONS = "r", "i"

_OWNERS: sa.BindParameter[str] = sa.bindparam("owners", expanding=True)
_READ = sa.union_all(
    sa.select(
        approval_rules.c.owner, sa.literal(_RULES).label("kind"), approval_rules.c.rules
    ).where(approval_rules.c.owner.in_(_OWNERS)),
    sa.select(
        user_instructions.c.owner,
        sa.literal(_INSTRUCTIONS).label("kind"),
        user_instructions.c.text,
    ).where(user_instructions.c.owner.in_(_OWNERS)),
)
"""Both texts of the owners bound to ``owners``: built once (building it per
read cost more than SQLite answering it), its compiled form cached."""


@dataclass(frozen=True, slots=True)
class OwnerSettings:
    """A user's approval rules and instructions, as a turn starting now reads them."""

    rules: ApprovalRules
    instructions: str
    """The user's custom instructions; "" when they have none."""


@dataclass(slots=True)
class _Texts:
    rules: str | None = None
    instructions: str = ""


class OwnerReads:
    """Reads users' rules and instructions, grouping the reads asked for at once.

    One reader task at a time, started by the first read that finds none and
    ending when nothing is asked for; it belongs to this object.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._wanted: dict[str, list[asyncio.Future[_Texts]]] = {}
        """Owners asked for since the read in flight began, and who waits."""
        self._reader: asyncio.Task[None] | None = None

    async def get(self, owner: str) -> OwnerSettings:
        """``owner``'s rules (none stored: no rules, everything is asked) and instructions.

        What the database holds when this is called, or later: a call that
        finds a read in flight waits for the next one, which also answers
        every other call made meanwhile (one query for all of them, however
        many sessions start a turn at once). Raises what the query raised.
        Safe to cancel.
        """
        done: asyncio.Future[_Texts] = asyncio.get_running_loop().create_future()
        self._wanted.setdefault(owner, []).append(done)
        if self._reader is None:
            self._reader = asyncio.create_task(self._read_wanted())
        texts = await done
        if texts.rules is None:
            return OwnerSettings(ApprovalRules(), texts.instructions)
        return OwnerSettings(ApprovalRules.from_json(json.loads(texts.rules)), texts.instructions)

    async def _read_wanted(self) -> None:
        """Read what every owner asked for has, a query at a time, until none is."""
        wanted: dict[str, list[asyncio.Future[_Texts]]] = {}
        try:
            while self._wanted:
                owners = list(self._wanted)[:MAX_READ_OWNERS]
                wanted = {owner: self._wanted.pop(owner) for owner in owners}
                try:
                    found = await self._read(owners)
                except Exception as exc:
                    for futures in wanted.values():
                        for done in futures:
                            if not done.done():
                                done.set_exception(exc)
                    continue
                for owner, futures in wanted.items():
                    texts = found.get(owner, _Texts())
                    for done in futures:
                        if not done.done():  # not cancelled meanwhile
                            done.set_result(texts)
        except BaseException:
            # Cancelled (the loop is closing): nobody waits forever.
            for futures in (*wanted.values(), *self._wanted.values()):
                for done in futures:
                    done.cancel()
            self._wanted = {}
            raise
        finally:
            self._reader = None

    async def _read(self, owners: list[str]) -> dict[str, _Texts]:
        found: dict[str, _Texts] = {}
        async with self._engine.connect() as conn:
            for owner, kind, text in await conn.execute(_READ, {"owners": owners}):
                texts = found.setdefault(owner, _Texts())
                if kind == _RULES:
                    texts.rules = text
                else:
                    texts.instructions = text
        return found
