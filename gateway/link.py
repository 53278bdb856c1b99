"""One IDE connection's state (:class:`Link`) and its session's other
connections in this gateway (:class:`SessionLinks`).

A quiet link (one holding no runtime stream: docs/GATEWAY.md, "Attaching on
the first frame") waits in its session's ``quiet`` list with a timeout
without deadline around its read; when the session moves past the seq it
was told (:meth:`Link.saw` on a peer, :meth:`SessionLinks.moved_on`), the
wake moves that deadline to now and the connection attaches. Connections to
other gateway replicas are not seen.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import structlog
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from gateway.errors import SlowConsumer
from gateway.frames import Frame, encode
from gateway.jwks import Principal
from gateway.limits import TokenBucket
from gateway.profiles import FrameShaper
from runtime.v1 import runtime_pb2

if TYPE_CHECKING:
    from gateway.attach import ConverseCall

log = structlog.get_logger("gateway")

FRAME_HEADER_MAX = 14
"""Bytes a WebSocket frame header takes at most (RFC 6455, section 5.2)."""


@dataclass(slots=True, eq=False)
class SessionLinks:
    """The connections of one session in this gateway (every one, and the
    quiet ones among them, which hold no runtime stream yet)."""

    links: list[Link] = field(default_factory=list)
    quiet: list[Link] = field(default_factory=list)

    def moved_on(self, seq: int) -> None:
        """The session has reached ``seq``: wake every quiet link told less,
        so that it attaches (resuming after what it was told) and shows the
        rest live. Idempotent; costs nothing when no link is behind."""
        behind = [link for link in self.quiet if link.seen_seq < seq]
        if not behind:
            return
        now = asyncio.get_running_loop().time()
        for link in behind:
            self.quiet.remove(link)
            link.woken = True
            if link.wake is not None:
                link.wake.reschedule(now)
        log.info("quiet_connections_woken", count=len(behind), seq=seq)


@dataclass(slots=True, eq=False)
class Link:
    """One IDE connection, its gRPC call and its counters."""

    websocket: ServerConnection
    session_id: str
    principal: Principal
    frame_bucket: TokenBucket
    send_timeout: float | None
    peers: SessionLinks
    """Every connection of this session in this gateway, this one included."""
    shaper: FrameShaper
    """The client's profile, applied to this connection's frames."""
    seen_seq: int = 0
    """The session's highest seq this client was sent or told (``last_seq``)."""
    wake: asyncio.Timeout | None = None
    """While quiet and reading: a timeout without deadline that a wake moves to now."""
    woken: bool = False
    """Set when the session moved past ``seen_seq`` while this link was quiet."""
    environment: runtime_pb2.ConverseRequest | None = None
    """The ``environment`` a quiet link was sent: it does not attach the link
    (it makes no event), it is forwarded first once the link attaches."""
    call: ConverseCall | None = None
    watchdog: asyncio.TimerHandle | None = None
    """The next check of token, idleness and keepalive (``Connections._watch``)."""
    closing: asyncio.Task[None] | None = None
    last_activity: float = field(default_factory=time.monotonic)
    next_ping: float = 0.0
    """When the next keepalive ping is due (monotonic)."""
    ping_sent: float = 0.0
    """When the last ping was started; 0 before the first."""
    pinging: asyncio.Task[None] | None = None
    pong: asyncio.Future[float] | None = None
    """The last ping's pong (None until the ping is on the wire)."""
    last_pong: float = 0.0
    """When the last pong arrived (monotonic); 0 before the first."""
    frames_in: int = 0
    frames_out: int = 0

    async def send(self, frame: Frame) -> None:
        """Send one frame; raises SlowConsumer when the IDE has not made room
        within ``send_timeout``, ConnectionClosed when it is gone.

        The timer is armed only when the send may wait: a frame that fits
        under the transport's high-water mark is written at once, and a
        timer per frame (a few µs each) is most of this hop's own cost in a
        stream of one-token frames.
        """
        data = encode(frame).encode()
        if self._fits(len(data)):
            await self.websocket.send(data, text=True)
        else:
            try:
                async with asyncio.timeout(self.send_timeout):
                    await self.websocket.send(data, text=True)
            except TimeoutError:
                raise SlowConsumer("the client does not read its frames") from None
        self.frames_out += 1
        self.last_activity = time.monotonic()

    def _fits(self, size: int) -> bool:
        """Whether a frame of ``size`` bytes is written without waiting for
        the client: writing is not paused and the transport's buffer stays
        at or under its high-water mark (so the write does not pause it)."""
        websocket = self.websocket
        if getattr(websocket, "paused", True):  # websockets' flow-control flag
            return False
        transport = websocket.transport
        _low, high = transport.get_write_buffer_limits()
        return transport.get_write_buffer_size() + size + FRAME_HEADER_MAX <= high

    async def send_if_open(self, frame: Frame) -> None:
        """:meth:`send`, ignoring a closed or slow client."""
        with contextlib.suppress(ConnectionClosed, SlowConsumer):
            await self.send(frame)

    def saw(self, seq: int) -> None:
        """Note an event for this link; a newer seq wakes its quiet peers."""
        if seq > self.seen_seq:
            self.seen_seq = seq
            if self.peers.quiet:
                self.peers.moved_on(seq)

    def behind_a_peer(self) -> bool:
        """Whether another connection of the session here was sent or told
        a newer seq than this one."""
        return max(peer.seen_seq for peer in self.peers.links) > self.seen_seq


async def discard_until_closed(websocket: ServerConnection) -> None:
    """Read and drop frames until the closing handshake is over.

    Unread frames fill the library's queue (``max_queue``), which stops it
    reading the socket, where the peer's close frame waits behind them.
    """
    with contextlib.suppress(ConnectionClosed):
        async for _ in websocket:
            pass
