"""Which address a request comes from, given the proxies we trust.

The peer address of the TCP connection is the client, unless that peer is a
configured trusted proxy (``AUTH_SERVICE__TRUSTED_PROXIES``,
``GATEWAY__TRUSTED_PROXIES``: the front door). Then the
``X-Forwarded-For`` chain is walked from the right, skipping trusted proxies,
and the first untrusted address is the client: everything left of it could
have been written by the client itself. A malformed entry stops the walk at
the last trusted hop, so garbage never becomes an identity.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(items: Iterable[str]) -> tuple[Network, ...]:
    """Parse IPs and CIDRs; raises ``ValueError`` naming a bad one."""
    networks: list[Network] = []
    for item in items:
        try:
            networks.append(ipaddress.ip_network(item.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{item!r} is not an IP address or CIDR") from None
    return tuple(networks)


def _trusted(address: str, trusted: Sequence[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in trusted)


def client_address(
    peer: str | None, forwarded_for: Sequence[str], trusted: Sequence[Network]
) -> str:
    """The client's address; ``forwarded_for`` is every X-Forwarded-For header in order."""
    address = peer or "unknown"
    if not trusted or not _trusted(address, trusted):
        return address
    hops = [hop.strip() for header in forwarded_for for hop in header.split(",")]
    for hop in reversed(hops):
        try:
            ipaddress.ip_address(hop)
        except ValueError:
            return address
        address = hop
        if not _trusted(hop, trusted):
            return address
    return address
