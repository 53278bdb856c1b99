"""GET and PUT /api/v1/approval-rules: the real gateway in front of the real runtime."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from gateway.__main__ import running_gateway
from runtime.__main__ import RuntimeConfig
from runtime.rules import ALWAYS_ASK
from runtime.tools import DEFAULT_APPROVAL_REQUIRED
from tests.conftest import free_port
from tests.gateway.conftest import INTERNAL_KEY, JwksEndpoint, SigningKey, make_config, mint
from tests.runtime import test_service
from tests.runtime.test_service import ScriptedProxy, running_runtime

proxy = test_service.proxy
database_url = test_service.database_url
"""The fixtures: a scripted LLM proxy, a migrated database of each kind."""


@dataclass
class Ports:
    rest: httpx.AsyncClient
    """The gateway's REST port, which reads bodies."""
    socket: httpx.AsyncClient
    """The gateway's WebSocket port, which answers bodiless views."""
    key: SigningKey

    def bearer(self, sub: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {mint(self.key, sub=sub)}"}


@pytest.fixture
async def ports(
    proxy: tuple[ScriptedProxy, int],
    database_url: str,
    jwks_endpoint: JwksEndpoint,
    rsa_key: SigningKey,
) -> AsyncIterator[Ports]:
    runtime = RuntimeConfig(
        internal_api_key=INTERNAL_KEY,
        port=0,
        llm_proxy_address=f"127.0.0.1:{proxy[1]}",
        database_url=database_url,
        max_auto_approvals_per_turn=10,
    )
    async with (
        running_runtime(runtime) as runtime_port,
        running_gateway(make_config(jwks_endpoint, runtime_port, rest_port=free_port())) as edge,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{edge.rest_port}", timeout=10) as rest,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{edge.port}", timeout=10) as socket,
    ):
        yield Ports(rest, socket, rsa_key)


PATH = "/api/v1/approval-rules"


async def test_a_user_puts_and_gets_their_rules_and_only_theirs(ports: Ports) -> None:
    alice, bob = ports.bearer("alice"), ports.bearer("bob")
    rules: dict[str, Any] = {
        "allow": ["execute_command(pytest:*)", "edit(src/**)"],
        "deny": ["read(.env)"],
        "max_auto_approvals_per_turn": 4,
    }
    put = await ports.rest.put(PATH, json=rules, headers=alice)
    assert put.status_code == 200, put.text
    assert put.headers["content-type"] == "application/json"
    assert put.json() == {
        **rules,
        "operator": {
            "user_auto_approve": sorted(DEFAULT_APPROVAL_REQUIRED),
            "max_auto_approvals_per_turn": 10,
        },
        "always_ask": list(ALWAYS_ASK),
    }
    got = await ports.rest.get(PATH, headers=alice)
    assert got.json() == put.json()
    assert (await ports.socket.get(PATH, headers=alice)).json() == put.json(), "both ports"
    theirs = await ports.rest.get(PATH, headers=bob)
    assert (theirs.json()["allow"], theirs.json()["deny"]) == ([], []), "bob never sees them"
    assert theirs.json()["max_auto_approvals_per_turn"] is None, "null: the operator's cap"
    await ports.rest.put(PATH, json={"allow": ["read"]}, headers=bob)
    assert (await ports.rest.get(PATH, headers=alice)).json()["allow"] == rules["allow"]
    canonical = await ports.rest.put(
        PATH, json={"allow": ["execute_command(npm run *)"]}, headers=alice
    )
    assert canonical.json()["allow"] == ["execute_command(npm run:*)"]
    assert canonical.json()["deny"] == [], "a PUT replaces the rules whole"


@pytest.mark.parametrize(
    ("body", "error", "says"),
    [
        ({"allow": ["Bash(npm test)"]}, "invalid_request", "allow[0]: 'Bash(npm test)': 'Bash'"),
        ({"deny": ["edit(../x)"]}, "invalid_request", "deny[0]: 'edit(../x)': a path pattern"),
        ({"max_auto_approvals_per_turn": 11}, "invalid_request", "at most 10 (the operator's cap)"),
        ({"allow": "read"}, "invalid_body", "allow must be a list of rule strings"),
        ({"allow": [1]}, "invalid_body", "allow must be a list of rule strings"),
        ({"deny": ""}, "invalid_body", "deny must be a list of rule strings"),
        ({"ask": []}, "invalid_body", "unknown fields ask"),
        ({"max_auto_approvals_per_turn": -1}, "invalid_body", "a whole number from 0"),
        ({"max_auto_approvals_per_turn": "5"}, "invalid_body", "a whole number from 0"),
        ([], "invalid_body", "a JSON object"),
    ],
)
async def test_bad_rules_are_a_400_saying_what_is_wrong(
    ports: Ports, body: Any, error: str, says: str
) -> None:
    alice = ports.bearer("alice")
    await ports.rest.put(PATH, json={"allow": ["read"]}, headers=alice)
    refused = await ports.rest.put(PATH, json=body, headers=alice)
    assert refused.status_code == 400
    assert refused.json()["error"] == error
    assert says in refused.json()["error_description"]
    assert (await ports.rest.get(PATH, headers=alice)).json()["allow"] == ["read"], "unchanged"


async def test_rules_need_a_token_and_a_body_on_the_right_port(ports: Ports) -> None:
    for headers in ({}, {"Authorization": "Bearer nonsense"}):
        for reply in (
            await ports.rest.get(PATH, headers=headers),
            await ports.rest.put(PATH, json={"allow": []}, headers=headers),
        ):
            assert reply.status_code == 401
            assert reply.json()["error"] == "invalid_token"
    bodiless = await ports.socket.put(PATH, headers=ports.bearer("alice"))
    assert bodiless.status_code == 400
    assert "REST port" in bodiless.json()["error_description"]
    assert (await ports.rest.post(PATH, headers=ports.bearer("alice"))).status_code == 405
