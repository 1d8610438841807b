"""structlog, configured once per process: pretty on a terminal, JSON lines otherwise."""

from __future__ import annotations

import logging
import os
import sys

import structlog

__all__ = ["configure_logging"]

_configured = False


def configure_logging(level: str | None = None, *, json: bool | None = None) -> None:
    """Idempotent. `EXECBUS_LOG_LEVEL` (default info) and `EXECBUS_LOG_JSON=1|0` override the defaults."""
    global _configured
    if _configured:
        return
    _configured = True
    level_name = (level or os.environ.get("EXECBUS_LOG_LEVEL") or "info").upper()
    if json is None:
        env = os.environ.get("EXECBUS_LOG_JSON")
        json = (env == "1") if env is not None else not sys.stderr.isatty()
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level_name, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
