"""Waiting for the signal that asks a service to stop."""

from __future__ import annotations

import asyncio
import signal


async def wait_for_stop_signal() -> signal.Signals:
    """Return the first SIGTERM or SIGINT received; safe to cancel."""
    loop = asyncio.get_running_loop()
    received: asyncio.Future[signal.Signals] = loop.create_future()
    sigs = (signal.SIGTERM, signal.SIGINT)

    def on_signal(sig: signal.Signals) -> None:
        if not received.done():
            received.set_result(sig)

    for sig in sigs:
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        return await received
    finally:
        for sig in sigs:
            loop.remove_signal_handler(sig)
