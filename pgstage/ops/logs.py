"""Structured run events: one `emit()` door that writes a structlog line to stderr and tells listeners.

Every event names its `run_id`, `pipeline` and `partition`. Logs go to stderr, so a `--json`
document on stdout stays one clean document. The progress bar (pgstage/cli/progress.py)
listens to the same events, so the run has one hook per event, not one per consumer.

Secrets never reach a line: URL passwords are masked by pattern, and every secret a run
knows (alert URLs, a source's URL) is registered with `secret()` and replaced wherever it
appears in any value.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
from collections.abc import Callable, MutableMapping
from typing import TYPE_CHECKING, Any

from pgstage.errors import UsageError

if TYPE_CHECKING:
    import structlog

FORMATS = ("console", "json")
LEVELS = ("debug", "info", "warning", "error")
ENV_FORMAT = "PGSTAGE_LOG_FORMAT"
ENV_LEVEL = "PGSTAGE_LOG_LEVEL"

Listener = Callable[[str, dict[str, Any]], None]

_lock = threading.Lock()
_secrets: set[str] = set()
_listeners: list[Listener] = []
_configured = False
# (format, level) asked for; structlog is imported and configured with it at the first line that
# passes the level: a console run that logs nothing (the common case) never imports it.
_settings: tuple[str, str] = ("console", "warning")
_logger: Any = None
# `scheme://user:password@host` and `password=...` in a conninfo string.
_URL_PASSWORD = re.compile(r"(://[^:/@\s]*:)[^@\s]+@")
_KV_PASSWORD = re.compile(r"(password\s*=\s*)('[^']*'|\S+)", re.IGNORECASE)


def secret(value: str | None) -> None:
    """Never let this text appear in a log line (an alert URL, a source URL); shorter than 4 characters is no secret."""
    if value and len(value) >= 4:
        with _lock:
            _secrets.add(value)


def redact(text: str) -> str:
    """The text with registered secrets and URL passwords replaced by `***`."""
    for value in sorted(_secrets, key=len, reverse=True):
        while value in text:   # until gone: a replacement can join text around it into the secret again
            text = text.replace(value, "***")
    return _KV_PASSWORD.sub(r"\1***", _URL_PASSWORD.sub(r"\1***@", text))


def _redact_values(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key, value in event.items():
        if isinstance(value, str):
            event[key] = redact(value)
    return event


def configure(log_format: str | None = None, level: str | None = None) -> None:
    """Set the format and level (else PGSTAGE_LOG_FORMAT / PGSTAGE_LOG_LEVEL); refuses unknown ones.

    Without a level, JSON logs (asked for by a machine) say everything from `info`; console
    logs only warnings and errors, as the run's summary table already tells a person the rest.
    """
    global _configured, _settings, _logger
    fmt = (log_format or os.environ.get(ENV_FORMAT) or "console").lower()
    if fmt not in FORMATS:
        raise UsageError(f"log format {fmt!r} is not one of {', '.join(FORMATS)}", hint=f"--log-format or {ENV_FORMAT}")
    lvl = (level or os.environ.get(ENV_LEVEL) or ("info" if fmt == "json" else "warning")).lower()
    if lvl not in LEVELS:
        raise UsageError(f"log level {lvl!r} is not one of {', '.join(LEVELS)}", hint=f"--log-level or {ENV_LEVEL}")
    with _lock:
        _settings, _logger, _configured = (fmt, lvl), None, True


def _structlog() -> Any:
    """The configured logger, structlog imported and set up on first use."""
    global _logger
    with _lock:
        if _logger is None:
            _logger = _setup(*_settings)
        return _logger


def _setup(fmt: str, lvl: str) -> Any:
    import structlog

    renderer: Any = (structlog.processors.JSONRenderer(sort_keys=False) if fmt == "json"
                     else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty()))
    structlog.configure(
        processors=[structlog.processors.add_log_level,
                    structlog.processors.TimeStamper(fmt="iso", utc=True),
                    _redact_values,
                    renderer],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, lvl.upper())),
        # Looked up at each write, so a test's captured stderr (or a redirected one) is honoured.
        logger_factory=_StderrFactory(),
        cache_logger_on_first_use=False,
    )
    return structlog.get_logger("pgstage")


class _StderrFactory:
    def __call__(self, *args: Any) -> structlog.PrintLogger:
        import structlog

        return structlog.PrintLogger(sys.stderr)


def listen(listener: Listener) -> Callable[[], None]:
    """Call `listener(event, fields)` for every event; returns the function that stops it."""
    with _lock:
        _listeners.append(listener)

    def stop() -> None:
        with _lock:
            if listener in _listeners:
                _listeners.remove(listener)
    return stop


WARNINGS = frozenset({"threshold exceeded", "anomaly", "reconcile differences", "alert failed", "alert not recorded",
                      "run paused", "backfill indexes kept"})
ERRORS = frozenset({"run failed"})


def emit(event: str, **fields: Any) -> None:
    """Log one run event (pool threads too) and pass it to the listeners; never raises into the run."""
    if not _configured:
        configure()
    level = "error" if event in ERRORS else "warning" if event in WARNINGS else "info"
    try:
        if LEVELS.index(level) >= LEVELS.index(_settings[1]):
            getattr(_structlog(), level)(event, **fields)
    except (OSError, ValueError):   # stderr closed: a log line is not worth a failed load
        pass
    with _lock:
        listeners = list(_listeners)
    for listener in listeners:
        try:
            listener(event, fields)
        except Exception:   # a broken progress bar must not fail a load
            pass
