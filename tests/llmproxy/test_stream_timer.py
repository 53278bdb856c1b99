"""The stream's one silence timer (llmproxy.resilience._keep_due): where it is
set as chunks arrive, in the loop's clock but far ahead, so it never fires."""

from __future__ import annotations

import asyncio

import pytest

from llmproxy.resilience import LIMIT_SLACK, _keep_due


async def test_the_timer_moves_only_when_it_would_fire_too_early_or_too_late() -> None:
    start = asyncio.get_running_loop().time() + 10_000
    async with asyncio.timeout(None) as timer:
        _keep_due(timer, start, 60.0, None)
        assert timer.when() == pytest.approx(start + 60 * (1 + LIMIT_SLACK))

        _keep_due(timer, start + 1, 60.0, None)  # a steady stream: left alone
        assert timer.when() == pytest.approx(start + 66)

        _keep_due(timer, start + 7, 60.0, None)  # it would fire 59 s after a chunk
        assert timer.when() == pytest.approx(start + 7 + 66)

        _keep_due(timer, start + 8, 5.0, None)  # the first delta: a shorter limit
        assert timer.when() == pytest.approx(start + 8 + 5.5)

        await asyncio.sleep(0)  # far ahead: nothing fired
    assert not timer.expired()


async def test_the_deadline_binds_exactly_and_no_limits_mean_no_timer() -> None:
    start = asyncio.get_running_loop().time() + 10_000
    async with asyncio.timeout(None) as timer:
        _keep_due(timer, start, 60.0, start + 10)
        assert timer.when() == start + 10

        _keep_due(timer, start, None, start + 30)
        assert timer.when() == start + 30

        _keep_due(timer, start, None, None)
        assert timer.when() is None
        await asyncio.sleep(0)
    assert not timer.expired()
