"""``codelab-probe``: a health probe for containers and orchestrators.

    codelab-probe grpc 127.0.0.1:50051          # standard gRPC health: SERVING?
    codelab-probe http http://127.0.0.1:8000/ready

Exit status 0 when healthy, 1 when not (the reason on stderr). The gRPC
health ``Check`` needs no credential, so the probe holds no secret (such
checks are served from a small pool of their own, see
:mod:`mesh.grpc_server`).
"""

from __future__ import annotations

import argparse
import sys
import urllib.error
import urllib.request


def grpc_serving(address: str, timeout: float) -> str | None:
    import grpc
    from grpc_health.v1 import health_pb2

    from mesh.grpc_server import health_check

    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_check(channel)(health_pb2.HealthCheckRequest(), timeout=timeout)
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
            return f"{address}: {code.name}"
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        return f"{address}: {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}"
    return None


def http_ok(url: str, timeout: float) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - our URL
            return None if response.status == 200 else f"{url}: HTTP {response.status}"
    except urllib.error.HTTPError as exc:
        return f"{url}: HTTP {exc.code}"
    except OSError as exc:
        return f"{url}: {exc}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="codelab-probe", description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=["grpc", "http"])
    parser.add_argument("target", help="host:port for grpc, a URL for http")
    parser.add_argument("--timeout", type=float, default=3.0)
    args = parser.parse_args(argv)
    check = grpc_serving if args.kind == "grpc" else http_ok
    problem = check(args.target, args.timeout)
    if problem is not None:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
