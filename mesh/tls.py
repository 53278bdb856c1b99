"""TLS files of a gRPC server or channel of the mesh."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """PEM file paths for TLS on a server or a channel; empty strings are unset.

    On a server: ``cert`` and ``key`` are its own, ``ca`` (optional) makes it
    require client certificates signed by that CA (mTLS). On a channel:
    ``ca`` verifies the server, ``cert``/``key`` (optional) are the client's.
    """

    cert: str = ""
    key: str = ""
    ca: str = ""

    @property
    def enabled(self) -> bool:
        return bool(self.cert or self.key or self.ca)

    @staticmethod
    def _read(path: str, part: str) -> bytes | None:
        if not path:
            return None
        try:
            return Path(path).read_bytes()
        except OSError as exc:
            raise TlsFileError(part, f"cannot read TLS file {path}: {exc.strerror}") from None

    def server_credentials(self) -> grpc.ServerCredentials:
        """Raises ValueError unless cert and key are both given and readable."""
        if not (self.cert and self.key):
            raise ValueError("a TLS server needs both a certificate and a key")
        key, cert = self._read(self.key, "key"), self._read(self.cert, "cert")
        # Both paths are set (checked above), so both were read.
        assert key is not None
        assert cert is not None
        ca = self._read(self.ca, "ca")
        return grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=ca, require_client_auth=ca is not None
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """Raises TlsFileError for a half-given client certificate or unreadable files."""
        if bool(self.cert) != bool(self.key):
            raise TlsFileError(
                "cert" if self.key else "key",
                "a client certificate needs its key, and the key its certificate: they go together",
            )
        return grpc.ssl_channel_credentials(
            root_certificates=self._read(self.ca, "ca"),
            private_key=self._read(self.key, "key"),
            certificate_chain=self._read(self.cert, "cert"),
        )


class TlsFileError(ValueError):
    """A :class:`TlsFiles` is unusable; ``part`` is the field at fault
    (``cert``, ``key`` or ``ca``), for a message naming its setting."""

    def __init__(self, part: str, message: str) -> None:
        super().__init__(message)
        self.part = part
