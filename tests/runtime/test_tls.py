"""mTLS inside the mesh: the runtime serves TLS and calls llmproxy over TLS."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from llmproxy.v1 import llmproxy_pb2_grpc
from mesh.grpc_server import MeshServer, internal_metadata, mesh_channel
from mesh.tls import TlsFiles
from runtime.__main__ import RuntimeConfig
from runtime.store import migrate
from runtime.v1 import runtime_pb2, runtime_pb2_grpc
from tests.gateway.test_tls import pki  # noqa: F401 - the fixture
from tests.runtime.test_service import KEY, ScriptedProxy, running_runtime

Pki = dict[str, Path]


@pytest.fixture
async def tls_proxy(pki: Pki) -> AsyncIterator[int]:  # noqa: F811
    server = MeshServer(
        address="127.0.0.1:0",
        internal_api_key=KEY,
        service_names=[],
        tls=TlsFiles(cert=str(pki["server_cert"]), key=str(pki["server_key"]), ca=str(pki["ca"])),
    )
    llmproxy_pb2_grpc.add_LlmProxyServiceServicer_to_server(ScriptedProxy(), server.server)
    port = await server.start()
    yield port
    await server.stop(0)


async def test_runtime_serves_mtls_and_reaches_llmproxy_over_mtls(
    pki: Pki,  # noqa: F811
    tls_proxy: int,
    tmp_path: Path,
) -> None:
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'runtime.db'}"
    await migrate(database_url)
    client = TlsFiles(cert=str(pki["client_cert"]), key=str(pki["client_key"]), ca=str(pki["ca"]))
    config = RuntimeConfig(
        internal_api_key=KEY,
        port=0,
        llm_proxy_address=f"localhost:{tls_proxy}",
        database_url=database_url,
        tls=TlsFiles(cert=str(pki["server_cert"]), key=str(pki["server_key"]), ca=str(pki["ca"])),
        llm_proxy_tls=client,
    )
    async with running_runtime(config) as port:
        async with mesh_channel(f"localhost:{port}", client) as channel:
            call = runtime_pb2_grpc.AgentRuntimeServiceStub(channel).Converse(
                metadata=internal_metadata(KEY, user="alice")
            )
            await call.write(
                runtime_pb2.ConverseRequest(open=runtime_pb2.OpenSession(session_id="tls-1"))
            )
            await call.read()
            await call.write(
                runtime_pb2.ConverseRequest(user_message=runtime_pb2.UserMessage(content="hi"))
            )
            texts = []
            while not (response := await call.read()).HasField("turn_done"):
                texts.append(response.assistant_delta.text)
            assert "".join(texts) == "one two three", "the answer came through llmproxy over mTLS"
            call.cancel()
        without_certificate = TlsFiles(ca=str(pki["ca"]))
        async with mesh_channel(f"localhost:{port}", without_certificate) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await runtime_pb2_grpc.AgentRuntimeServiceStub(channel).ListAgents(
                    runtime_pb2.ListAgentsRequest(),
                    metadata=internal_metadata(KEY, user="alice"),
                    timeout=5,
                )
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        async with grpc.aio.insecure_channel(f"localhost:{port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as plaintext:
                await runtime_pb2_grpc.AgentRuntimeServiceStub(channel).ListAgents(
                    runtime_pb2.ListAgentsRequest(), timeout=5
                )
            assert plaintext.value.code() == grpc.StatusCode.UNAVAILABLE


def test_half_given_tls_files_are_refused() -> None:
    with pytest.raises(ValueError, match="certificate and a key"):
        TlsFiles(cert="x.pem").server_credentials()
    with pytest.raises(ValueError, match="needs its key"):
        TlsFiles(cert="x.pem", ca="ca.pem").channel_credentials()
    with pytest.raises(ValueError, match="cannot read"):
        TlsFiles(ca="/nonexistent.pem").channel_credentials()
