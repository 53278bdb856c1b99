"""GetApprovalRules and UpdateApprovalRules on a real loopback runtime, owner-scoped."""

from __future__ import annotations

import grpc
import pytest

from mesh.grpc_server import internal_metadata
from runtime.rules import ALWAYS_ASK
from runtime.tools import DEFAULT_APPROVAL_REQUIRED
from runtime.v1 import runtime_pb2, runtime_pb2_grpc
from tests.runtime import test_service
from tests.runtime.test_service import KEY

proxy = test_service.proxy
database_url = test_service.database_url
runtime_channel = test_service.runtime_channel
"""The fixtures: a scripted LLM proxy, a database of each kind, the runtime in this process."""


def stub(channel: grpc.aio.Channel) -> runtime_pb2_grpc.AgentRuntimeServiceStub:
    return runtime_pb2_grpc.AgentRuntimeServiceStub(channel)


def as_user(user: str) -> tuple[tuple[str, str], ...]:
    return internal_metadata(KEY, user=user)


def update(
    allow: list[str], deny: tuple[str, ...] = (), cap: int | None = None
) -> runtime_pb2.UpdateApprovalRulesRequest:
    rules = runtime_pb2.ApprovalRules(allow=allow, deny=deny)
    if cap is not None:
        rules.max_auto_approvals_per_turn = cap
    return runtime_pb2.UpdateApprovalRulesRequest(rules=rules)


async def test_a_user_without_rules_sees_none_and_the_operators_floor(
    runtime_channel: grpc.aio.Channel,
) -> None:
    reply = await stub(runtime_channel).GetApprovalRules(
        runtime_pb2.GetApprovalRulesRequest(), metadata=as_user("alice")
    )
    assert list(reply.rules.allow) == list(reply.rules.deny) == []
    assert not reply.rules.HasField("max_auto_approvals_per_turn")
    assert list(reply.operator.user_auto_approve) == sorted(DEFAULT_APPROVAL_REQUIRED)
    assert reply.operator.max_auto_approvals_per_turn == 25
    assert list(reply.always_ask) == list(ALWAYS_ASK)


async def test_rules_are_the_callers_alone(runtime_channel: grpc.aio.Channel) -> None:
    runtime = stub(runtime_channel)
    stored = await runtime.UpdateApprovalRules(
        update(["execute_command(npm run *)", "edit(src/**)"], ("read(.env)",), 5),
        metadata=as_user("alice"),
    )
    assert list(stored.rules.allow) == ["execute_command(npm run:*)", "edit(src/**)"]
    assert stored.rules.max_auto_approvals_per_turn == 5
    await runtime.UpdateApprovalRules(update(["read"]), metadata=as_user("bob"))
    mine = await runtime.GetApprovalRules(
        runtime_pb2.GetApprovalRulesRequest(), metadata=as_user("alice")
    )
    assert mine.rules == stored.rules, "bob's update did not touch alice's rules"
    theirs = await runtime.GetApprovalRules(
        runtime_pb2.GetApprovalRulesRequest(), metadata=as_user("bob")
    )
    assert list(theirs.rules.allow) == ["read"]
    assert list(theirs.rules.deny) == [], "bob never sees alice's rules"
    cleared = await runtime.UpdateApprovalRules(update([]), metadata=as_user("alice"))
    assert list(cleared.rules.allow) == list(cleared.rules.deny) == []


@pytest.mark.parametrize(
    ("request_", "details"),
    [
        (update(["read", "Bash(ls)"]), "allow[1]: 'Bash(ls)': 'Bash' is not a tool"),
        (update([], ("execute_command(a && b)",)), "deny[0]: 'execute_command(a && b)'"),
        (update([], cap=26), "max_auto_approvals_per_turn is at most 25"),
        (update(["edit"] * 201), "allow has more than 200 rules"),
    ],
)
async def test_unusable_rules_are_invalid_argument_saying_why(
    runtime_channel: grpc.aio.Channel,
    request_: runtime_pb2.UpdateApprovalRulesRequest,
    details: str,
) -> None:
    runtime = stub(runtime_channel)
    await runtime.UpdateApprovalRules(update(["read"]), metadata=as_user("carol"))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await runtime.UpdateApprovalRules(request_, metadata=as_user("carol"))
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert details in (refused.value.details() or "")
    kept = await runtime.GetApprovalRules(
        runtime_pb2.GetApprovalRulesRequest(), metadata=as_user("carol")
    )
    assert list(kept.rules.allow) == ["read"], "a refused update changes nothing"


async def test_rules_need_a_user(runtime_channel: grpc.aio.Channel) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub(runtime_channel).GetApprovalRules(
            runtime_pb2.GetApprovalRulesRequest(), metadata=internal_metadata(KEY)
        )
    assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
