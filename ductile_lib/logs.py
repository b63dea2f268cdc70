"""Structured logs: one JSON object per line on stdout.

Every line carries ``time`` (RFC 3339 with nanoseconds and the local
offset, as the original writes it), ``level``, ``msg`` and ``component``,
then the call's own fields.  Secret-named fields and known secret values are
redacted before anything is written (decision K4).
"""
from __future__ import annotations

import datetime
import json
import sys
import threading
import time

from ductile_lib.redact import PLACEHOLDER, is_secret_key, scrub_text

LEVELS = {"DEBUG": 10, "INFO": 20, "WARN": 30, "ERROR": 40}
CONFIG_LEVELS = {"debug": "DEBUG", "info": "INFO", "warn": "WARN", "error": "ERROR"}


class LogSink:
    """Where log lines go, the threshold, and the secrets to hide.

    One sink is shared by every component so that a reload can change the
    level and the secret list in one place.
    """

    def __init__(self, stream=None, level: str = "INFO"):
        self.stream = stream
        self.threshold = LEVELS[level]
        self.secrets: frozenset = frozenset()
        self._lock = threading.Lock()

    def set_level(self, level: str) -> None:
        """Accepts ``debug``/``DEBUG`` etc.; unknown names mean INFO."""
        name = CONFIG_LEVELS.get(str(level).lower(), str(level).upper())
        self.threshold = LEVELS.get(name, LEVELS["INFO"])

    def set_secrets(self, secrets) -> None:
        """Values that must never appear in a log line."""
        self.secrets = frozenset(s for s in secrets if isinstance(s, str) and s)

    def enabled(self, level: str) -> bool:
        return LEVELS[level] >= self.threshold

    def emit(self, level: str, component: str, msg: str, fields: dict) -> None:
        """Write one line if ``level`` passes the threshold."""
        if not self.enabled(level):
            return
        record = {"time": _timestamp(), "level": level, "msg": msg, "component": component}
        for key, value in fields.items():
            record[key] = PLACEHOLDER if is_secret_key(key) and key not in _PLAIN_FIELDS else value
        line = json.dumps(record, ensure_ascii=False, default=str)
        if self.secrets:
            line = scrub_text(line, self.secrets)
        stream = self.stream or sys.stdout
        with self._lock:
            try:
                stream.write(line + "\n")
                stream.flush()
            except (OSError, ValueError):
                pass  # a closed stdout must never take the gateway down


# Field names that contain a secret word but hold no secret.
_PLAIN_FIELDS = frozenset({"dedupe_key", "key_id", "token_name", "keys"})

_default_sink = LogSink()


def default_sink() -> LogSink:
    """The process-wide sink used by :func:`get_logger`."""
    return _default_sink


class Logger:
    """A component's logger: ``log.warn("msg", plugin="x")``."""

    def __init__(self, component: str, sink: LogSink = None, **bound):
        self.component = component
        self.sink = sink or _default_sink
        self.bound = bound

    def bind(self, **fields) -> "Logger":
        """A logger that adds ``fields`` to every line (e.g. a job's ids)."""
        return Logger(self.component, self.sink, **{**self.bound, **fields})

    def log(self, level: str, msg: str, **fields) -> None:
        if self.sink.enabled(level):  # skip building the record for filtered lines
            self.sink.emit(level, self.component, msg, {**self.bound, **fields})

    def debug(self, msg: str, **fields) -> None:
        self.log("DEBUG", msg, **fields)

    def info(self, msg: str, **fields) -> None:
        self.log("INFO", msg, **fields)

    def warn(self, msg: str, **fields) -> None:
        self.log("WARN", msg, **fields)

    def error(self, msg: str, **fields) -> None:
        self.log("ERROR", msg, **fields)


def get_logger(component: str) -> Logger:
    """A logger on the process-wide sink."""
    return Logger(component)


def _timestamp() -> str:
    """Now as RFC 3339 with nanoseconds and the local UTC offset."""
    ns = time.time_ns()
    local = datetime.datetime.fromtimestamp(ns // 1_000_000_000).astimezone()
    offset = local.strftime("%z")
    offset = "Z" if offset in ("+0000", "") else offset[:3] + ":" + offset[3:]
    return "%s.%09d%s" % (local.strftime("%Y-%m-%dT%H:%M:%S"), ns % 1_000_000_000, offset)
