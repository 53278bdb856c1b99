"""What tests in every folder share for waiting: on a condition that has
no event (:func:`eventually`, :func:`wait_until`), on a service's health
check (:func:`grpc_healthy`, :func:`http_healthy`: the checks of
:mod:`mesh.probe`, the containers' probe), and on a program run as a
subprocess (:class:`Service`: started with its output captured, ready once
a line or a check says so, stopped with a signal and a bounded wait).

Every wait here is bounded; none is a fixed sleep standing in for an event.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

from mesh import probe
from mesh.database import create_engine
from runtime.leases import Leases

TIMEOUT = 10.0
"""How long :func:`eventually` waits, in seconds."""


async def eventually(predicate: Callable[[], bool]) -> None:
    """Wait for a condition that has no event to await; TimeoutError after
    :data:`TIMEOUT` seconds."""
    async with asyncio.timeout(TIMEOUT):
        while True:
            if predicate():
                return
            await asyncio.sleep(0.01)


async def lease_released(database_url: str, session_id: str, *, limit: float = 30.0) -> None:
    """Wait until no runtime replica holds ``session_id``'s lease in the
    database: the runtime let the session go (it evicts a session whose
    last stream detached); TimeoutError after ``limit`` seconds."""
    engine = create_engine(database_url)
    try:
        leases = Leases(engine)
        async with asyncio.timeout(limit):
            while True:
                if await leases.owner(session_id) is None:
                    return
                await asyncio.sleep(0.01)
    finally:
        await engine.dispose()


def wait_until(check: Callable[[], bool], *, timeout: float, what: str) -> None:
    """:func:`eventually` for synchronous code (fixtures, threads, sync tests):
    AssertionError naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what}: not within {timeout:g} s"
        time.sleep(0.05)


def grpc_healthy(address: str) -> Callable[[], bool]:
    """A check: the standard gRPC health service at ``address`` says SERVING."""
    return lambda: probe.grpc_serving(address, timeout=1) is None


def http_healthy(url: str) -> Callable[[], bool]:
    """A check: ``url`` answers 200."""
    return lambda: probe.http_ok(url, timeout=1) is None


class NotReady(AssertionError):
    """A :class:`Service` exited, or did not get ready in time; the message
    ends with the tail of its output."""


class Service:
    """A program the tests run as a subprocess, restartable (``start`` after
    ``stop``; the output of every run accumulates in ``output``).

    Its stdout and stderr are read by a thread into memory, so the child
    never blocks on a full pipe. ``ready`` is a line its output contains
    once it serves, or a check that passes once it does.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        ready: str | Callable[[], bool],
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        start_timeout: float = 60,
    ) -> None:
        self.argv, self.ready, self.env, self.cwd = list(argv), ready, env, cwd
        self.start_timeout = start_timeout
        self.process: subprocess.Popen[str] | None = None
        self._lines: list[str] = []
        self._reader: threading.Thread | None = None
        self._seen = threading.Event()
        self._launched = 0.0

    @property
    def output(self) -> str:
        """Everything it wrote to stdout and stderr, over every run so far."""
        return "".join(self._lines)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        """Start it and return once it is ready; NotReady (the process killed)
        when it exits first or is not ready within ``start_timeout``."""
        self.launch()
        self.wait_ready()

    def launch(self) -> None:
        """Start the process and return at once; :meth:`wait_ready` waits for it.
        Services launched together start side by side (their imports overlap)."""
        self._seen = threading.Event()
        self._launched = time.monotonic()
        self.process = subprocess.Popen(
            self.argv,
            env=self.env,
            cwd=self.cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        )
        assert self.process.stdout is not None
        line = self.ready if isinstance(self.ready, str) else None
        self._reader = threading.Thread(
            target=self._read, args=(self.process.stdout, line, self._seen), daemon=True
        )
        self._reader.start()

    def wait_ready(self) -> None:
        """Return once the launched process is ready; NotReady (the process
        killed) when it exits first or is not ready within ``start_timeout``
        of its launch."""
        assert self.process is not None, "never launched"
        deadline = self._launched + self.start_timeout
        try:
            if isinstance(self.ready, str):
                # Set at the line, or at the end of the output: the process is exiting.
                self._seen.wait(max(0.0, deadline - time.monotonic()))
                ready = self.ready in self.output
            else:
                check = self.ready
                while not (ready := check()) and self.running:
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.05)
            if not ready:
                exited = "" if self.running else f" (exited with {self.process.poll()})"
                raise NotReady(f"{self.argv} was not ready{exited}:\n{self.output[-3000:]}")
        except BaseException:
            self.stop(signal.SIGKILL)
            raise

    def _read(self, stream: IO[str], line: str | None, seen: threading.Event) -> None:
        with stream:
            for text in stream:
                self._lines.append(text)
                if line is not None and line in text:
                    seen.set()
        seen.set()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        """Send ``sig`` (unless it has exited), wait up to ``timeout`` seconds
        for the exit, and return its exit status (``-sig`` for a signal's
        death). One that does not exit in time is killed, and the stop fails
        with AssertionError. Its output is read to the end and the pipe closed.
        Idempotent."""
        process = self.process
        assert process is not None, "never started"
        try:
            if process.poll() is None:
                process.send_signal(sig)
            try:
                return process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                raise AssertionError(
                    f"{self.argv} did not exit within {timeout:g} s of signal {sig}:\n"
                    f"{self.output[-3000:]}"
                ) from None
        finally:
            if self._reader is not None:
                self._reader.join(10)


def start_all(*services: Service) -> None:
    """Launch every service, then wait for each to be ready: they start side
    by side rather than one after another. If one is not ready, those already
    launched are stopped and NotReady is raised."""
    launched: list[Service] = []
    try:
        for service in services:
            service.launch()
            launched.append(service)
        for service in services:
            service.wait_ready()
    except BaseException:
        for service in launched:
            if service.running:
                service.stop(signal.SIGKILL)
        raise
