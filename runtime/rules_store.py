"""Each user's approval rules (:mod:`runtime.rules`) in SQL: one row per user.

The ``approval_rules`` table (:mod:`runtime.schema`) holds a user's rules as
the JSON :meth:`~runtime.rules.ApprovalRules.to_json` writes; only rules
that parsed are written, so reading them back cannot fail on a rule.
Reached as :attr:`runtime.store.Store.rules`. Works on SQLite and
PostgreSQL.

Every turn reads its owner's rules (so a change holds from the next turn,
whichever replica made it), with the owner's instructions, in a query many
sessions' reads share (:mod:`runtime.owner_reads`).
"""

from __future__ import annotations

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


class RulesStore:
    """Get, replace and add to a user's rules; each method is one short
    transaction (retried when it races another write of the same user's
    rules), safe to cancel."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def get(self, owner: str) -> ApprovalRules:
        """``owner``'s rules; none stored: no rules (everything is asked).

        A turn reads them with the owner's instructions instead
        (:class:`runtime.owner_reads.OwnerReads`).
        """
        async with self._engine.connect() as conn:
            text = await self._text(conn, owner)
        return ApprovalRules() if text is None else ApprovalRules.from_json(json.loads(text))

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
