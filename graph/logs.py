"""Logging: structlog and the stdlib's records rendered as one stream on stderr, JSON or console, each line with the
trace and span ids of its request. Apart from graph.observability (tracing, the web app's hooks) so that the CLI
sets up its logging without importing the web framework."""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, Any

import structlog
from opentelemetry import trace

if TYPE_CHECKING:
    from structlog.typing import EventDict, Processor, WrappedLogger

    from models.settings import ServerSettings

# Loggers that libraries configure with their own handlers; they must reach the root handler instead.
_LIBRARY_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "granian", "litestar", "arq")


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Write to whatever `sys.stderr` is at emit time, so redirection and test capture keep working."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def add_trace_context(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """Add the current trace and span ids so a log line leads to its trace."""
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        event_dict["trace_id"] = format(context.trace_id, "032x")
        event_dict["span_id"] = format(context.span_id, "016x")
    return event_dict


def _shared_processors() -> list[Processor]:
    """Return the processors both structlog and stdlib records go through before rendering."""
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        add_trace_context,
    ]


def _formatter(log_json: bool, shared: list[Processor]) -> structlog.stdlib.ProcessorFormatter:
    """Build the one formatter that renders every record, JSON or console."""
    strip_meta = structlog.stdlib.ProcessorFormatter.remove_processors_meta
    renderer: list[Processor] = (
        [strip_meta, structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
        if log_json
        else [strip_meta, structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())]
    )
    return structlog.stdlib.ProcessorFormatter(foreign_pre_chain=shared, processors=renderer)


def _log_level(name: str) -> int:
    """Translate a level name from settings, refusing unknown names instead of logging everything."""
    levels = logging.getLevelNamesMapping()
    if name.upper() not in levels:
        raise ValueError(f"unknown log level {name!r}; use one of {sorted(levels)}")
    return levels[name.upper()]


def _install_root_handler(formatter: logging.Formatter, level: int) -> None:
    """Replace this module's root handler and route library loggers to it."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _StderrHandler)]:
        root.removeHandler(handler)
    handler = _StderrHandler()
    handler.setFormatter(formatter)
    root.addHandler(handler)
    root.setLevel(level)
    for name in _LIBRARY_LOGGERS:
        library_logger = logging.getLogger(name)
        library_logger.handlers.clear()
        library_logger.setLevel(logging.NOTSET)
        library_logger.propagate = True


def configure_logging(server: ServerSettings) -> None:
    """Render structlog and stdlib logging as one stream on stderr; safe to call again."""
    shared = _shared_processors()
    structlog.configure(
        # The level lives on the stdlib root logger, so a later call can change it even for cached loggers.
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    _install_root_handler(_formatter(server.log_json, shared), _log_level(server.log_level))
