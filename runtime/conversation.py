"""One client stream attached to one session: client events in, events out.

:class:`Conversation` is the turn loop without any transport: the gRPC
servicer feeds it client events and drains its outbox. A turn runs as a task
owned by the conversation, so the client can cancel it; closing the
conversation cancels the turn, and with it the LLM request.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

import structlog

from runtime.errors import UpstreamError
from runtime.events import (
    AssistantText,
    ErrorEvent,
    Event,
    Sequenced,
    TurnDone,
    TurnStatus,
    Usage,
)
from runtime.llm import ChatMessage, LlmClient, StreamEnd, TextChunk
from runtime.session import Session

log = structlog.get_logger("runtime.conversation")


@dataclass(frozen=True, slots=True)
class UserMessage:
    content: str
    role: str = "user"


@dataclass(frozen=True, slots=True)
class CancelTurn:
    pass


@dataclass(frozen=True, slots=True)
class Unsupported:
    """A client event this runtime does not handle yet; ``kind`` names it."""

    kind: str


ClientEvent = UserMessage | CancelTurn | Unsupported


class Conversation:
    """Serves one client stream on one session.

    Events are put on ``outbox`` (bounded: a slow client slows the turn, it
    does not grow memory). Not safe to share between streams.
    """

    def __init__(
        self,
        session: Session,
        llm: LlmClient,
        *,
        model: str,
        outbox: asyncio.Queue[Sequenced],
        request_id: str | None = None,
    ) -> None:
        self._session = session
        self._llm = llm
        self._model = model
        self._outbox = outbox
        self._request_id = request_id
        self._turn: asyncio.Task[None] | None = None

    @property
    def turn_running(self) -> bool:
        return self._turn is not None and not self._turn.done()

    async def emit(self, event: Event) -> None:
        await self._outbox.put(Sequenced(self._session.next_seq(), event))

    async def handle(self, event: ClientEvent) -> None:
        """React to one client event; returns without waiting for a turn."""
        match event:
            case UserMessage(content=content, role=role):
                if self.turn_running:
                    await self.emit(
                        ErrorEvent(
                            "turn_in_progress",
                            "a turn is already running; cancel it or wait for is_final",
                            retryable=True,
                        )
                    )
                    return
                if role not in ("user", "system"):
                    await self.emit(
                        ErrorEvent("invalid_frame", f"role must be user or system, not {role!r}")
                    )
                    return
                self._session.messages.append(ChatMessage(role=role, content=content))
                self._turn = asyncio.create_task(self._run_turn())
            case CancelTurn():
                if self.turn_running:
                    await self.close()
                    await self.emit(TurnDone(TurnStatus.CANCELLED))
                else:
                    await self.emit(ErrorEvent("no_turn_running", "there is no turn to cancel"))
            case Unsupported(kind=kind):
                await self.emit(
                    ErrorEvent("unsupported", f"{kind} is not supported by this runtime yet")
                )

    async def wait_idle(self) -> None:
        """Wait for the running turn, if any, to finish."""
        if self._turn is not None:
            await asyncio.wait([self._turn])

    async def close(self) -> None:
        """Cancel the running turn and wait for it; idempotent.

        ``asyncio.wait`` rather than ``await turn``: the turn's own
        CancelledError stays inside it, while a cancellation of the caller
        still propagates.
        """
        turn, self._turn = self._turn, None
        if turn is not None and not turn.done():
            turn.cancel()
            await asyncio.wait([turn])

    async def _run_turn(self) -> None:
        parts: list[str] = []
        usage = Usage()
        try:
            async with contextlib.aclosing(
                self._llm.stream_chat(
                    self._model, list(self._session.messages), request_id=self._request_id
                )
            ) as chunks:
                async for chunk in chunks:
                    if isinstance(chunk, TextChunk):
                        if chunk.text:
                            parts.append(chunk.text)
                            await self.emit(AssistantText(chunk.text))
                    elif isinstance(chunk, StreamEnd):
                        usage = chunk.usage
        except UpstreamError as exc:
            log.warning("turn_failed", code=exc.code, error=str(exc))
            await self.emit(ErrorEvent(exc.code, str(exc), exc.retryable))
            await self.emit(TurnDone(TurnStatus.FAILED, usage))
            return
        # Stored only once complete: a cancelled or failed turn leaves no
        # partial answer behind as if the assistant had said it.
        self._session.messages.append(ChatMessage(role="assistant", content="".join(parts)))
        await self.emit(TurnDone(TurnStatus.COMPLETED, usage))
