"""tests/conftest.py's free_port: ports that stay free for the service that binds them later."""

from __future__ import annotations

import itertools

import pytest

from tests import conftest


def test_a_port_is_never_handed_out_twice_in_one_process() -> None:
    """A mesh takes ten ports before any service binds one: the same port
    twice would make one of them fail to start."""
    ports = [conftest.free_port() for _ in range(500)]
    assert len(set(ports)) == len(ports)


@pytest.mark.parametrize("workers", [2, 3, 4])
def test_each_pytest_worker_has_ports_of_its_own(
    workers: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", str(workers))
    ranges = []
    for index in range(workers):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", f"gw{index}")
        ranges.append(conftest.port_range())
    low, high = conftest._BELOW_EPHEMERAL
    assert ranges[0][0] == low
    assert ranges[-1][1] <= high
    for (_, end), (start, _) in itertools.pairwise(ranges):
        assert end < start, ranges  # no overlap
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw1")
    assert all(ranges[1][0] <= conftest.free_port() <= ranges[1][1] for _ in range(50))


def test_outside_xdist_the_whole_range_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    monkeypatch.delenv("PYTEST_XDIST_WORKER_COUNT", raising=False)
    assert conftest.port_range() == conftest._BELOW_EPHEMERAL
