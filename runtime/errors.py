"""The runtime's errors, named for what went wrong, not for a transport.

:mod:`runtime.service` maps them to gRPC status codes in one place; the rest
of the runtime never imports ``grpc`` to report a failure.
"""

from __future__ import annotations


class RuntimeServiceError(Exception):
    """Base of the errors the runtime reports to its callers."""

    code = "internal"
    retryable = False


class InvalidArgument(RuntimeServiceError):
    code = "invalid_argument"


class NotFound(RuntimeServiceError):
    code = "not_found"


class PermissionDenied(RuntimeServiceError):
    code = "permission_denied"


class Deleted(RuntimeServiceError):
    """The session was deleted: its id stays taken and nothing of it is served."""

    code = "failed_precondition"


class Precondition(RuntimeServiceError):
    """The request cannot be served in the session's current state (the message
    says why: a turn runs, nothing to undo, no IDE connected). Not
    ``failed_precondition``, which says the session was deleted."""

    code = "aborted"


class Unauthenticated(RuntimeServiceError):
    code = "unauthenticated"


class AlreadyExists(RuntimeServiceError):
    """A name that must be unique is taken (whose it is is not said)."""

    code = "already_exists"


class Unavailable(RuntimeServiceError):
    """Not here, not now: e.g. another replica serves the session. Retry.

    ``holder`` is the address of the replica that serves it, when known: the
    caller may retry there directly."""

    code = "unavailable"
    retryable = True

    def __init__(self, message: str, *, holder: str | None = None) -> None:
        super().__init__(message)
        self.holder = holder


class UpstreamError(RuntimeServiceError):
    """The LLM proxy failed; ``code`` says how, ``retryable`` whether to retry."""

    def __init__(self, message: str, *, code: str, retryable: bool) -> None:
        super().__init__(message)
        self.code = code
        self.retryable = retryable
