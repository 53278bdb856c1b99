"""The turn's core: its limits, and one model request turned into a reply.

Nothing here touches the database or gRPC. A model is anything that is a
:class:`~runtime.llm.ChatModel` (the LLM proxy's client, or a test's
scripted model); text is handed on through a callback as it streams, so
the caller decides where it goes (:meth:`runtime.stream.EventStream.text`).
:class:`~runtime.conversation.Conversation` drives turns with these: it
routes a new session's first request (:func:`runtime.routing.classify`),
asks for a reply, hands it to :class:`~runtime.dispatch.Dispatcher` (which
dispatches its tool calls and decides how the turn goes on) and writes each
step.
"""

from __future__ import annotations

import contextlib
import enum
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from runtime.agents import BUILT_IN, Agent, Roster
from runtime.commands import STRICT, ClientOptions, Environment
from runtime.context import ContextWindow, system_with_summary
from runtime.events import ContextUsage, Usage
from runtime.llm import (
    ChatMessage,
    ChatModel,
    StreamEnd,
    TextChunk,
    ToolCallChunk,
    ToolCallRequest,
)
from runtime.project import Guidance
from runtime.prompts import system_prompt
from runtime.tools import TOOLS, Tool

MAX_SWITCHES_PER_TURN = 3
"""Agent switches the model may make in one turn (more are refused to it)."""
MAX_MODEL_CALLS_PER_TURN = 25
"""Model calls in one turn; the turn fails with ``turn_limit`` after them."""
MAX_ERROR_CHARS = 300
"""Characters of the last error quoted when a turn stops after its mistakes."""


class Next(enum.Enum):
    """What the shell does once a step's changes are queued."""

    NOTHING = "nothing"
    """Nothing changed (a refusal went out at once): there is nothing to write."""
    WAIT = "wait"
    """Write the step; the turn waits for answers to its tool calls, nothing runs."""
    MODEL = "model"
    """Write the step, then call the model."""
    DONE = "done"
    """Write the step; the turn is over (its ``TurnDone`` is in the step)."""


@dataclass(slots=True)
class Turn:
    """One turn's counters: what it has used of its limits, and its usage."""

    request_id: str | None = None
    started: float | None = None
    """``time.monotonic()`` when it began (None once it is counted as finished)."""
    switches: int = 0
    model_calls: int = 0
    auto_approvals: int = 0
    """Calls the user's approval rules let run unasked (:meth:`take_auto_approval`)."""
    ends_after_results: bool = False
    """A tool that ends the turn was called: it ends once the waiting calls are answered."""
    mistakes: int = 0
    """Failed tool calls in a row (refused, answered with an error, an edit that
    did not apply); a call that succeeds resets it."""
    last_failure: tuple[str, str] = ("", "")
    """The last failed call's tool and the error it was answered with."""
    usage: Usage = field(default_factory=Usage)
    client: ClientOptions = STRICT
    """The client the turn runs for: the one that started it, then the one
    whose answer let it go on (its tools are what the model is offered)."""
    context: ContextUsage | None = None
    """What the turn's last prompt filled of the model's window."""

    def take_model_call(self) -> bool:
        """Count one more model call; False (counting nothing) when the limit is reached."""
        if self.model_calls >= MAX_MODEL_CALLS_PER_TURN:
            return False
        self.model_calls += 1
        return True

    def note_outcome(self, tool: str, payload: Mapping[str, Any]) -> None:
        """Count a call of ``tool`` answered with ``payload``: an ``error`` is
        one more mistake in a row, anything else resets the count."""
        error = payload.get("error")
        if error is None:
            self.mistakes = 0
        else:
            self.mistakes += 1
            self.last_failure = (tool, str(error))

    def stuck_message(self) -> str:
        """What the user is told when the turn stops after its mistakes: what
        kept failing (the last error, shortened) and a question."""
        tool, error = self.last_failure
        error = " ".join(error.split())
        if len(error) > MAX_ERROR_CHARS:
            error = error[: MAX_ERROR_CHARS - 1] + "…"
        return (
            f"I stopped after {self.mistakes} failed tool "
            f"call{'s' if self.mistakes != 1 else ''} in a row. The last one, "
            f"{tool}, failed with: {error}\n\nHow would you like me to proceed?"
        )

    def take_switch(self) -> bool:
        """Count one more switch by the model; False when the limit is reached."""
        if self.switches >= MAX_SWITCHES_PER_TURN:
            return False
        self.switches += 1
        return True

    def take_auto_approval(self, limit: int) -> bool:
        """Count one more auto-approved call; False (counting nothing) at ``limit``."""
        if self.auto_approvals >= limit:
            return False
        self.auto_approvals += 1
        return True

    def add_usage(self, usage: Usage) -> None:
        self.usage = Usage(
            self.usage.prompt_tokens + usage.prompt_tokens,
            self.usage.completion_tokens + usage.completion_tokens,
        )


@dataclass(slots=True)
class ModelReply:
    """What one model call answered: its text, its complete tool calls, its usage."""

    text: str = ""
    calls: list[ToolCallRequest] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)


@dataclass(slots=True)
class _CallDraft:
    name: str = ""
    arguments: list[str] = field(default_factory=list)


async def request_reply(
    chat: ChatModel,
    model: str,
    agent: Agent,
    history: Sequence[ChatMessage],
    *,
    on_text: Callable[[str], Awaitable[None]],
    request_id: str | None = None,
    environment: Environment | None = None,
    workspace_view: str | None = None,
    today: date | None = None,
    roster: Roster = BUILT_IN,
    guidance: Guidance | None = None,
    tools: Mapping[str, Tool] = TOOLS,
    context: ContextWindow | None = None,
    summary: str = "",
) -> ModelReply:
    """Ask ``model`` to continue ``history`` as ``agent``, with the agent's tools.

    The system prompt is the agent's (:func:`runtime.prompts.system_prompt`)
    in the session's ``environment``, with its ``workspace_view`` and
    ``today``'s date (default: today in UTC), the other agents of its
    ``roster`` and the session's ``guidance`` (project rules, the user's
    instructions); the agent's tools are declared in ``tools``
    (:attr:`~runtime.dispatch.Dispatcher.tools`). The history sent is what fits
    the model's window (:class:`~runtime.context.ContextWindow`: the
    session's ``context``, kept from call to call, or a new one), after
    the ``summary`` of older turns if there is one. Each non-empty text delta is
    passed to ``on_text`` as it arrives; tool calls are put together from
    their fragments and named by the runtime.
    Raises what ``chat`` raises (:class:`~runtime.errors.UpstreamError`).
    Safe to cancel: the model call is closed with it.
    """
    today = today or datetime.now(UTC).date()
    system = system_prompt(agent, environment, workspace_view, today, roster, guidance)
    system = system_with_summary(system, summary)
    context = context if context is not None else ContextWindow()
    messages = context.prompt(system, history, model, await chat.context_window(model))
    specs = [tools[name].spec() for name in sorted(agent.tools)]
    reply = ModelReply()
    parts: list[str] = []
    drafts: dict[int, _CallDraft] = {}
    async with contextlib.aclosing(
        chat.stream_chat(model, messages, specs, request_id=request_id)
    ) as chunks:
        async for chunk in chunks:
            if isinstance(chunk, TextChunk):
                if chunk.text:
                    parts.append(chunk.text)
                    await on_text(chunk.text)
            elif isinstance(chunk, ToolCallChunk):
                draft = drafts.setdefault(chunk.index, _CallDraft())
                draft.name = draft.name or chunk.name
                draft.arguments.append(chunk.arguments_fragment)
            elif isinstance(chunk, StreamEnd):
                reply.usage = chunk.usage
                context.learn(messages, chunk.token_counts)
    reply.text = "".join(parts)
    for index in sorted(drafts):
        draft = drafts[index]
        # The runtime names every call itself: ids are then unique across
        # sessions and turns whatever the provider sends (some send none,
        # a deterministic model repeats them), and the IDE cannot guess them.
        call_id = f"call_{uuid.uuid4().hex[:24]}"
        reply.calls.append(ToolCallRequest(call_id, draft.name, "".join(draft.arguments)))
    return reply
