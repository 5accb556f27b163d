"""structlog set up once per process: JSON off a terminal, console on one."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import structlog


def configure_logging(service: str, level: str = "INFO", fmt: str = "auto") -> None:
    """Route structlog and stdlib logging to stderr with ``service`` bound on every line."""
    use_console = fmt == "console" or (fmt == "auto" and sys.stderr.isatty())
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer() if use_console else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(service=service)
    logging.basicConfig(
        level=level, stream=sys.stderr, format=f"{service} %(levelname)s %(name)s: %(message)s"
    )


class ThrottledWarning:
    """Log a recurring failure at most once per ``interval`` seconds (an outage at 300 req/s
    must not turn into 300 log lines per second); the next line says how many were skipped."""

    def __init__(self, log: Any, interval: float = 10.0) -> None:
        self._log = log
        self._interval = interval
        self._last = -interval
        self._suppressed = 0

    def __call__(self, event: str, **fields: Any) -> None:
        now = time.monotonic()
        if now - self._last < self._interval:
            self._suppressed += 1
            return
        self._log.warning(event, suppressed_since_last=self._suppressed, **fields)
        self._last, self._suppressed = now, 0
