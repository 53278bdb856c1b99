"""The runtime channel over mutual TLS."""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from gateway.__main__ import running_gateway, runtime_channel
from mesh.config import ConfigError
from runtime.v1 import runtime_pb2_grpc
from tests.gateway.conftest import FakeRuntime, JwksEndpoint, SigningKey, make_config, mint, opened


def _pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _certificate(
    name: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name | None = None,
    issuer_key: ec.EllipticCurvePrivateKey | None = None,
    *,
    ca: bool = False,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer or subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return builder.sign(issuer_key or key, hashes.SHA256())


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("test-ca", ca_key, ca=True)
    files = {"ca": ca.public_bytes(serialization.Encoding.PEM)}
    for role in ("server", "client"):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _certificate(role, key, ca.subject, ca_key)
        files[f"{role}_cert"] = cert.public_bytes(serialization.Encoding.PEM)
        files[f"{role}_key"] = _pem(key)
    paths = {}
    for name, data in files.items():
        paths[name] = folder / f"{name}.pem"
        paths[name].write_bytes(data)
    return paths


@pytest.fixture
async def tls_runtime(pki: dict[str, Path]) -> AsyncIterator[tuple[FakeRuntime, int]]:
    fake = FakeRuntime()
    server = grpc.aio.server()
    runtime_pb2_grpc.add_AgentRuntimeServiceServicer_to_server(fake, server)
    credentials = grpc.ssl_server_credentials(
        [(pki["server_key"].read_bytes(), pki["server_cert"].read_bytes())],
        root_certificates=pki["ca"].read_bytes(),
        require_client_auth=True,
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    try:
        yield fake, port
    finally:
        await server.stop(0)


async def test_gateway_reaches_the_runtime_over_mtls(
    tls_runtime: tuple[FakeRuntime, int],
    pki: dict[str, Path],
    jwks_endpoint: JwksEndpoint,
    rsa_key: SigningKey,
):
    config = make_config(
        jwks_endpoint,
        tls_runtime[1],
        runtime_tls_ca=str(pki["ca"]),
        runtime_tls_cert=str(pki["client_cert"]),
        runtime_tls_key=str(pki["client_key"]),
    )
    async with running_gateway(config) as gateway:
        url = f"ws://127.0.0.1:{gateway.port}/ws/s"
        async with connect(
            url, additional_headers={"Authorization": f"Bearer {mint(rsa_key)}"}
        ) as ws:
            await opened(ws)


async def test_without_a_client_certificate_the_runtime_is_unreachable(
    tls_runtime: tuple[FakeRuntime, int],
    pki: dict[str, Path],
    jwks_endpoint: JwksEndpoint,
    rsa_key: SigningKey,
):
    config = make_config(
        jwks_endpoint, tls_runtime[1], runtime_tls_ca=str(pki["ca"]), view_timeout=2
    )
    async with running_gateway(config) as gateway:
        url = f"ws://127.0.0.1:{gateway.port}/ws/s"
        with pytest.raises(InvalidStatus) as caught:
            async with connect(
                url, additional_headers={"Authorization": f"Bearer {mint(rsa_key)}"}
            ):
                pass
        assert caught.value.response.status_code == 503
    assert tls_runtime[0].metadata == []


def test_half_given_client_certificate_is_a_config_error(
    pki: dict[str, Path], jwks_endpoint: JwksEndpoint
):
    config = make_config(jwks_endpoint, 1, runtime_tls_cert=str(pki["client_cert"]))
    with pytest.raises(ConfigError, match="go together"):
        runtime_channel(config)
    missing = make_config(jwks_endpoint, 1, runtime_tls_ca="/nonexistent/ca.pem")
    with pytest.raises(ConfigError, match="RUNTIME_TLS_CA"):
        runtime_channel(missing)
