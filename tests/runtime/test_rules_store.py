"""Each user's approval rules in SQL, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from mesh.database import create_engine
from runtime.rules import ApprovalRules, Rule, RulesInvalid
from runtime.rules_store import RulesStore
from runtime.store import migrate
from tests.runtime import test_store

empty_url = test_store.empty_url
"""A database of each kind: a SQLite file, a fresh PostgreSQL one (the fixture)."""


@pytest.fixture
async def store(empty_url: str) -> AsyncIterator[RulesStore]:
    await migrate(empty_url)
    engine = create_engine(empty_url)
    yield RulesStore(engine)
    await engine.dispose()


PYTEST = Rule.parse("execute_command(pytest:*)")
LS = Rule.parse("execute_command(ls:*)")


async def test_a_user_without_rules_has_none(store: RulesStore) -> None:
    assert await store.get("alice") == ApprovalRules()


async def test_rules_are_replaced_whole_and_kept_per_user(store: RulesStore) -> None:
    mine = ApprovalRules.from_json(
        {
            "allow": ["execute_command(pytest:*)"],
            "deny": ["read(.env)"],
            "max_auto_approvals_per_turn": 3,
        }
    )
    assert await store.set("alice", mine) == mine
    assert await store.get("alice") == mine
    assert await store.get("bob") == ApprovalRules(), "one user's rules are theirs alone"
    fewer = ApprovalRules.from_json({"deny": ["edit"]})
    await store.set("alice", fewer)
    assert await store.get("alice") == fewer


async def test_adding_a_rule_keeps_the_others_and_happens_once(store: RulesStore) -> None:
    await store.set("alice", ApprovalRules.from_json({"deny": ["read(.env)"]}))
    added = await store.add_rule("alice", PYTEST)
    assert [r.text for r in added.allow] == ["execute_command(pytest:*)"]
    assert [r.text for r in added.deny] == ["read(.env)"]
    assert await store.add_rule("alice", PYTEST) == added
    assert await store.get("alice") == added
    first = await store.add_rule("bob", LS)  # bob had no row yet
    assert [r.text for r in first.allow] == ["execute_command(ls:*)"]


async def test_rules_added_at_once_are_all_kept(store: RulesStore) -> None:
    rules = [Rule.parse(f"edit(dir{i}/**)") for i in range(8)]
    await asyncio.gather(*(store.add_rule("carol", rule) for rule in rules[:4]))
    await asyncio.gather(*(store.add_rule("carol", rule) for rule in rules[4:]))
    stored = await store.get("carol")
    assert sorted(r.text for r in stored.allow) == sorted(r.text for r in rules)


async def test_a_full_allow_list_refuses_one_more(store: RulesStore) -> None:
    await store.set("dave", ApprovalRules.from_json({"allow": [f"edit(f{i})" for i in range(200)]}))
    with pytest.raises(RulesInvalid, match="the most there can be"):
        await store.add_rule("dave", PYTEST)
