"""structlog, configured once per process by the service's ``__main__``.

JSON lines when stderr is not a terminal, readable console output when it is.
Standard-library loggers (grpc, uvicorn, litellm) go through the same
processors so a process writes one format.

Our own (structlog) log calls are rendered by structlog and written straight
to stderr, not handed through the standard library's logging machinery (a
record, a handler, a formatter: about three times the CPU of a line); a
call below the level is a no-op that builds nothing.
"""

from __future__ import annotations

import logging
import sys

import structlog


def configure_logging(level: str = "INFO", *, json: bool | None = None) -> None:
    """Configure structlog and the standard library; safe to call again.

    Raises ValueError for a ``level`` the standard library does not know.
    """
    if json is None:
        json = not sys.stderr.isatty()
    root = logging.getLogger()
    root.setLevel(level.upper())
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        logger_factory=structlog.WriteLoggerFactory(sys.stderr),
        wrapper_class=structlog.make_filtering_bound_logger(root.level),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder()],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root.handlers[:] = [handler]
    # LiteLLM logs request bodies at DEBUG; keep it quiet unless asked.
    for noisy in ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
