"""Shared test setup: environment that must be right before any import."""

from __future__ import annotations

import os
import socket

import pytest

# LiteLLM fetches its model cost map from the network at import unless told
# otherwise; set it before anything imports litellm.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def unused_port() -> int:
    return free_port()
