"""``python -m auth`` as a real process on a real loopback port."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import jwt
import pytest
from prometheus_client.parser import text_string_to_metric_families

from auth.config import AuthConfig
from auth.keys import rotate_keys
from mesh.config import ConfigError, load
from tests.conftest import free_port
from tests.support import Service, http_healthy, wait_until

from .conftest import subprocess_env

PASSWORD = "s3cret-passphrase"


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture
def metrics_port() -> int:
    return free_port()


@pytest.fixture
def running_service(workdir: Path, metrics_port: int) -> Iterator[tuple[str, Service]]:
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    env = subprocess_env(
        AUTH_SERVICE__PORT=str(port),
        AUTH_SERVICE__METRICS_PORT=str(metrics_port),
        AUTH_SERVICE__ISSUER=base_url,
        AUTH_SERVICE__LOG_LEVEL="INFO",
        AUTH_SERVICE__KEYS_RELOAD_INTERVAL="0.2",
    )
    # The defaults put the database and keys under ./.codelab of the working directory.
    added = subprocess.run(
        [sys.executable, "-m", "auth.admin", "migrate"],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert added.returncode == 0, added.stderr
    added = subprocess.run(
        [sys.executable, "-m", "auth.admin", "add-user", "alice", "--password-stdin"],
        input=PASSWORD,
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert added.returncode == 0, added.stderr
    service = Service(
        [sys.executable, "-m", "auth"],
        cwd=workdir,
        env=env,
        ready=http_healthy(f"{base_url}/health"),
        start_timeout=20,
    )
    service.start()
    try:
        yield base_url, service
    finally:
        service.stop(signal.SIGKILL)


def test_token_over_a_real_socket_then_graceful_stop(
    running_service: tuple[str, Service], workdir: Path
) -> None:
    base_url, service = running_service
    with httpx.Client(base_url=base_url, timeout=10) as client:
        discovery = client.get("/.well-known/openid-configuration").json()
        assert discovery["token_endpoint"] == f"{base_url}/oauth/token"
        response = client.post(
            discovery["token_endpoint"],
            data={
                "grant_type": "password",
                "username": "alice",
                "password": PASSWORD,
                "client_id": "codelab-ide",
            },
            # Not a trusted proxy (none is configured): this header must be ignored.
            headers={"X-Forwarded-For": "203.0.113.9"},
        )
        assert response.status_code == 200, response.text
        token = response.json()["access_token"]
        refresh_token = response.json()["refresh_token"]
        jwks = jwt.PyJWKSet.from_dict(client.get(discovery["jwks_uri"]).json())
        refreshed = client.post(
            discovery["token_endpoint"],
            data={
                "grant_type": "refresh_token",
                "refresh_token": refresh_token,
                "client_id": "codelab-ide",
            },
        )
        assert refreshed.status_code == 200, refreshed.text
        second_refresh = refreshed.json()["refresh_token"]
        revoked = client.post(
            discovery["revocation_endpoint"],
            data={"token": second_refresh, "client_id": "codelab-ide"},
        )
        assert revoked.status_code == 200

        # A staged key shows up in the JWKS without a restart, and does not sign yet.
        rotation = rotate_keys(workdir / ".codelab" / "keys", publish_ahead=600, retire_after=1200)
        wait_until(
            lambda: len(client.get(discovery["jwks_uri"]).json()["keys"]) >= 2,
            timeout=10,
            what="the staged key published",
        )
        published = [key["kid"] for key in client.get(discovery["jwks_uri"]).json()["keys"]]
        assert published[1] == rotation.staged.kid

    kid = jwt.get_unverified_header(token)["kid"]
    claims = jwt.decode(
        token,
        jwks[kid].key,
        algorithms=["RS256"],
        audience="codelab-api",
        issuer=base_url,
    )
    assert claims["preferred_username"] == "alice"

    key_files = list((workdir / ".codelab" / "keys").glob("*.pem"))
    assert len(key_files) == 2  # the generated one and the staged one
    assert all(path.stat().st_mode & 0o777 == 0o600 for path in key_files)
    assert (workdir / ".codelab" / "auth.db").is_file()

    returncode = service.stop(signal.SIGTERM, timeout=20)
    output = service.output  # stdout and stderr
    assert returncode == 0, output
    assert "auth_stopped" in output
    assert "token_issued" in output
    # Nothing secret reaches the logs.
    assert PASSWORD not in output
    assert token not in output
    assert token.split(".")[2] not in output
    assert "PRIVATE KEY" not in output
    for secret in (refresh_token, second_refresh):
        assert secret not in output
    assert "signing_keys_reloaded" in output

    # The socket peer, not the forged header, is who logged in.
    with sqlite3.connect(workdir / ".codelab" / "auth.db") as db:
        addresses = {row[0] for row in db.execute("SELECT address FROM audit_events")}
    assert addresses == {"127.0.0.1"}


def test_metrics_are_served_on_their_own_port_only(
    running_service: tuple[str, Service], metrics_port: int
) -> None:
    base_url, _service = running_service
    with httpx.Client(base_url=base_url, timeout=10) as client:
        issued = client.post(
            "/oauth/token",
            data={
                "grant_type": "password",
                "username": "alice",
                "password": PASSWORD,
                "client_id": "codelab-ide",
            },
        )
        assert issued.status_code == 200, issued.text
        assert client.get("/metrics").status_code == 404, "the public port serves no metrics"
        scraped = client.get(f"http://127.0.0.1:{metrics_port}/metrics")
    assert scraped.status_code == 200
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(scraped.text)
        for sample in family.samples
    }
    token_requests = (("path", "/oauth/token"), ("status", "200"))
    assert samples[("codelab_auth_http_requests_total", token_requests)] == 1
    assert samples[("codelab_auth_http_request_duration_seconds_count", (token_requests[0],))] == 1


def test_bad_configuration_exits_2(workdir: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "auth"],
        cwd=workdir,
        env=subprocess_env(AUTH_SERVICE__PORT="not-a-port"),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "AUTH_SERVICE__PORT" in result.stderr


@pytest.mark.parametrize(
    ("metrics_port", "message"),
    [("65536", "is not a TCP port"), ("-1", "is not a TCP port"), ("8003", "must differ")],
)
def test_a_bad_metrics_port_is_a_configuration_error(metrics_port: str, message: str) -> None:
    env = {"AUTH_SERVICE__METRICS_PORT": metrics_port}
    with pytest.raises(ConfigError, match=f"AUTH_SERVICE__METRICS_PORT.*{message}"):
        load(AuthConfig, env)


def test_metrics_are_off_by_default() -> None:
    assert load(AuthConfig, {}).metrics_port == 0
