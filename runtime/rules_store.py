"""Each user's approval rules (:mod:`runtime.rules`) in SQL: one row per user.

The ``approval_rules`` table (:mod:`runtime.schema`) holds a user's rules as
the JSON :meth:`~runtime.rules.ApprovalRules.to_json` writes; only rules
that parsed are written, so reading them back cannot fail on a rule.
Reached as :attr:`runtime.store.Store.rules`. Works on SQLite and
PostgreSQL.

Every turn reads its owner's rules (so a change holds from the next turn,
whichever replica made it); the reads many sessions ask for at once are one
query (:meth:`RulesStore.get`).
"""

from __future__ import annotations

import asyncio
import json

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from runtime.errors import Unavailable
from runtime.records import now
from runtime.rules import ApprovalRules, Rule
from runtime.schema import approval_rules

ADD_ATTEMPTS = 5
"""Tries of :meth:`RulesStore.add_rule` against writes of the same user's rules."""
MAX_READ_OWNERS = 256
"""Most users whose rules one query reads (see :meth:`RulesStore.get`)."""


class RulesStore:
    """Get, replace and add to a user's rules; each method is one short
    transaction (retried when it races another write of the same user's
    rules), safe to cancel."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._wanted: dict[str, list[asyncio.Future[str | None]]] = {}
        """Owners asked for since the read in flight began, and who waits."""
        self._reader: asyncio.Task[None] | None = None

    async def get(self, owner: str) -> ApprovalRules:
        """``owner``'s rules; none stored: no rules (everything is asked).

        What the database holds when this is called, or later: a call that
        finds a read in flight waits for the next one, which also answers
        every other call made meanwhile (one query for all of them, however
        many sessions start a turn at once). Safe to cancel.
        """
        done: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._wanted.setdefault(owner, []).append(done)
        if self._reader is None:
            self._reader = asyncio.create_task(self._read_wanted())
        text = await done
        return ApprovalRules() if text is None else ApprovalRules.from_json(json.loads(text))

    async def _read_wanted(self) -> None:
        """Read the rules of every owner asked for, a query at a time, until none is."""
        wanted: dict[str, list[asyncio.Future[str | None]]] = {}
        try:
            while self._wanted:
                owners = list(self._wanted)[:MAX_READ_OWNERS]
                wanted = {owner: self._wanted.pop(owner) for owner in owners}
                query = sa.select(approval_rules.c.owner, approval_rules.c.rules).where(
                    approval_rules.c.owner.in_(owners)
                )
                try:
                    async with self._engine.connect() as conn:
                        texts = {row.owner: row.rules for row in await conn.execute(query)}
                except Exception as exc:
                    for futures in wanted.values():
                        for done in futures:
                            if not done.done():
                                done.set_exception(exc)
                    continue
                for owner, futures in wanted.items():
                    for done in futures:
                        if not done.done():  # not cancelled meanwhile
                            done.set_result(texts.get(owner))
        except BaseException:
            # Cancelled (the loop is closing): nobody waits forever.
            for futures in (*wanted.values(), *self._wanted.values()):
                for done in futures:
                    done.cancel()
            self._wanted = {}
            raise
        finally:
            self._reader = None

    async def set(self, owner: str, rules: ApprovalRules) -> ApprovalRules:
        """Replace ``owner``'s rules with ``rules``; returns them."""
        text = _encoded(rules)
        try:
            async with self._engine.begin() as conn:
                if not await self._replace(conn, owner, text):
                    await self._insert(conn, owner, text)
        except IntegrityError:
            # Someone stored this user's first rules meanwhile: now there is a row.
            async with self._engine.begin() as conn:
                await self._replace(conn, owner, text)
        return rules

    async def add_rule(self, owner: str, rule: Rule) -> ApprovalRules:
        """Add ``rule`` to ``owner``'s allow list (nothing if it is there); returns the rules.

        A compare-and-swap on the stored text, so a concurrent change of the
        same user's rules (another session, a REST update) is never lost;
        raises RulesInvalid when the list is full and Unavailable after
        :data:`ADD_ATTEMPTS` lost races.
        """
        for _ in range(ADD_ATTEMPTS):
            try:
                async with self._engine.begin() as conn:
                    before = await self._text(conn, owner)
                    current = (
                        ApprovalRules()
                        if before is None
                        else ApprovalRules.from_json(json.loads(before))
                    )
                    updated = current.allowing(rule)
                    if updated is current:
                        return current
                    if before is None:
                        await self._insert(conn, owner, _encoded(updated))
                        return updated
                    if await self._replace(conn, owner, _encoded(updated), before):
                        return updated
            except IntegrityError:
                continue  # someone stored this user's first rules meanwhile
        raise Unavailable("the approval rules kept changing while a rule was added; try again")

    @staticmethod
    async def _text(conn: AsyncConnection, owner: str) -> str | None:
        query = sa.select(approval_rules.c.rules).where(approval_rules.c.owner == owner)
        return (await conn.execute(query)).scalar_one_or_none()

    @staticmethod
    async def _replace(
        conn: AsyncConnection, owner: str, text: str, before: str | None = None
    ) -> bool:
        update = approval_rules.update().where(approval_rules.c.owner == owner)
        if before is not None:
            update = update.where(approval_rules.c.rules == before)
        result = await conn.execute(update.values(rules=text, updated_at=now()))
        return bool(result.rowcount == 1)

    @staticmethod
    async def _insert(conn: AsyncConnection, owner: str, text: str) -> None:
        await conn.execute(
            approval_rules.insert().values(owner=owner, rules=text, updated_at=now())
        )


def _encoded(rules: ApprovalRules) -> str:
    return json.dumps(rules.to_json(), ensure_ascii=False)
