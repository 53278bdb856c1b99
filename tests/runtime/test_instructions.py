"""A user's custom instructions: stored per user, served by GetInstructions and
UpdateInstructions on a real loopback runtime, and carried by every prompt."""

from __future__ import annotations

import grpc
import pytest

from mesh.grpc_server import internal_metadata
from runtime.commands import UserMessage
from runtime.events import TurnDone
from runtime.instructions import MAX_CHARS
from runtime.llm import TextChunk
from runtime.store import Store
from runtime.v1 import runtime_pb2, runtime_pb2_grpc
from tests.runtime import test_service
from tests.runtime.test_conversation import ScriptedLlm, make, until
from tests.runtime.test_service import KEY

proxy = test_service.proxy
database_url = test_service.database_url
runtime_channel = test_service.runtime_channel


def as_user(user: str) -> tuple[tuple[str, str], ...]:
    return internal_metadata(KEY, user=user)


async def test_instructions_are_the_callers_alone(runtime_channel: grpc.aio.Channel) -> None:
    stub = runtime_pb2_grpc.AgentRuntimeServiceStub(runtime_channel)
    none = await stub.GetInstructions(runtime_pb2.GetInstructionsRequest(), metadata=as_user("a"))
    assert (none.text, none.max_chars) == ("", MAX_CHARS)
    stored = await stub.UpdateInstructions(
        runtime_pb2.UpdateInstructionsRequest(text="  Answer in German.\r\nBe brief.\n"),
        metadata=as_user("alice"),
    )
    assert stored.text == "Answer in German.\nBe brief."
    await stub.UpdateInstructions(
        runtime_pb2.UpdateInstructionsRequest(text="Answer in French."), metadata=as_user("bob")
    )
    mine = await stub.GetInstructions(
        runtime_pb2.GetInstructionsRequest(), metadata=as_user("alice")
    )
    assert mine.text == "Answer in German.\nBe brief."
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.UpdateInstructions(
            runtime_pb2.UpdateInstructionsRequest(text="x" * (MAX_CHARS + 1)),
            metadata=as_user("alice"),
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"at most {MAX_CHARS} characters" in (refused.value.details() or "")
    cleared = await stub.UpdateInstructions(
        runtime_pb2.UpdateInstructionsRequest(text=""), metadata=as_user("bob")
    )
    assert cleared.text == ""


async def test_the_users_instructions_reach_the_prompt_from_the_next_turn(store: Store) -> None:
    llm = ScriptedLlm([TextChunk("a")], [TextChunk("b")])
    conversation, outbox, _ = await make(store, llm, agent="ask")
    await conversation.handle(UserMessage("one"))
    await until(outbox, TurnDone)
    assert "# The user's instructions" not in llm.seen[0][0].content
    await store.instructions.set("alice", "Answer in German.")
    await store.instructions.set("bob", "Answer in French.")
    await conversation.handle(UserMessage("two"))
    await until(outbox, TurnDone)
    system = llm.seen[1][0].content
    assert "# The user's instructions\n" in system
    assert "Answer in German." in system
    assert "French" not in system, "another user's are not"
