"""Durations and sizes as the original's config files write them.

Durations use Go's syntax (``500ms``, ``1h30m``) plus ``d`` and ``w`` units
(decision C2).  They are held as :class:`Duration`, an ``int`` of nanoseconds,
so arithmetic stays exact and ``str()`` prints Go's own format (``1h0m0s``),
which is what operators see in ``config show`` and in error texts.
"""
from __future__ import annotations

import re
from datetime import timedelta

NANOSECOND = 1
MICROSECOND = 1000
MILLISECOND = 1000 * MICROSECOND
SECOND = 1000 * MILLISECOND
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE

_UNITS = {
    "ns": NANOSECOND,
    "us": MICROSECOND,
    "\u00b5s": MICROSECOND,  # micro sign
    "\u03bcs": MICROSECOND,  # greek mu
    "ms": MILLISECOND,
    "s": SECOND,
    "m": MINUTE,
    "h": HOUR,
    "d": 24 * HOUR,
    "w": 168 * HOUR,
}
_TERM = re.compile(r"(\d*\.?\d*)([a-zA-Z\u00b5\u03bc]+)")
_BARE_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
_NAMED_INTERVALS = {"hourly": HOUR, "daily": 24 * HOUR, "weekly": 168 * HOUR, "monthly": 720 * HOUR}
_SIZE = re.compile(r"^(\d+)\s*(KB|MB|GB)?$", re.IGNORECASE)
_SIZE_FACTORS = {None: 1, "KB": 1024, "MB": 1024 ** 2, "GB": 1024 ** 3}


class Duration(int):
    """Nanoseconds that print like Go's ``time.Duration``."""

    @property
    def seconds(self) -> float:
        """The duration in seconds, for ``time.sleep`` and friends."""
        return int(self) / SECOND

    def __str__(self) -> str:
        return format_duration(self)

    def __repr__(self) -> str:
        return "Duration(%s)" % format_duration(self)


class DurationError(ValueError):
    """A value that is not a duration; the message is ready for the operator."""


def parse_duration(value, key: str = "duration") -> Duration:
    """Parse ``value`` (a YAML scalar) into a Duration, or explain why not.

    A bare number is refused with a hint to add a unit: the original read
    ``60`` as 60 nanoseconds, which is never what anyone meant.
    """
    if isinstance(value, bool) or value is None:
        raise DurationError('%s: invalid duration "%s"' % (key, show_scalar(value)))
    text = str(value).strip()
    if isinstance(value, (int, float)) or _BARE_NUMBER.match(text):
        if text in ("0", "+0", "-0"):
            return Duration(0)
        raise DurationError('%s: duration "%s" has no unit; add one, e.g. "%ss"' % (key, text, text))
    total = _parse_terms(text)
    if total is None:
        raise DurationError('%s: invalid duration "%s"' % (key, text))
    return Duration(total)


def _parse_terms(text: str):
    """Sum ``<decimal><unit>`` terms after an optional sign; None if malformed."""
    sign = 1
    if text and text[0] in "+-":
        sign = -1 if text[0] == "-" else 1
        text = text[1:]
    if not text:
        return None
    total, pos = 0, 0
    while pos < len(text):
        match = _TERM.match(text, pos)
        if not match or match.group(1) in ("", "."):
            return None
        unit = _UNITS.get(match.group(2))
        if unit is None:
            return None
        total += _scale(match.group(1), unit)
        pos = match.end()
    return sign * total


def _scale(number: str, unit: int) -> int:
    """Multiply a decimal string by a unit without float rounding."""
    whole, _, frac = number.partition(".")
    result = int(whole or "0") * unit
    if frac:
        result += int(frac) * unit // (10 ** len(frac))
    return result


def to_timedelta(duration) -> timedelta:
    """A Duration (int nanoseconds) as a timedelta, for datetime arithmetic."""
    return timedelta(microseconds=int(duration) // 1000)


def parse_interval(value, key: str = "every") -> Duration:
    """Parse a schedule ``every``: a named interval or a positive duration."""
    text = str(value).strip().lower() if isinstance(value, str) else value
    if isinstance(text, str) and text in _NAMED_INTERVALS:
        return Duration(_NAMED_INTERVALS[text])
    try:
        result = parse_duration(value, key)
    except DurationError:
        raise DurationError('%s: invalid interval "%s"' % (key, show_scalar(value))) from None
    if result <= 0:
        raise DurationError('%s: invalid interval "%s"' % (key, show_scalar(value)))
    return result


def format_duration(ns: int) -> str:
    """Format nanoseconds exactly as Go's ``Duration.String`` does."""
    ns = int(ns)
    if ns == 0:
        return "0s"
    sign = "-" if ns < 0 else ""
    ns = abs(ns)
    if ns < SECOND:
        for unit, name in ((MILLISECOND, "ms"), (MICROSECOND, "\u00b5s"), (NANOSECOND, "ns")):
            if ns >= unit:
                return sign + _decimal(ns, unit) + name
    hours, rest = divmod(ns, HOUR)
    minutes, rest = divmod(rest, MINUTE)
    text = _decimal(rest, SECOND) + "s"
    if hours or minutes:
        text = "%dm%s" % (minutes, text)
    if hours:
        text = "%dh%s" % (hours, text)
    return sign + text


def _decimal(value: int, unit: int) -> str:
    """``value / unit`` as a decimal with trailing zeros trimmed."""
    whole, frac = divmod(value, unit)
    if not frac:
        return str(whole)
    digits = len(str(unit)) - 1
    return "%d.%s" % (whole, str(frac).rjust(digits, "0").rstrip("0"))


def parse_size(value, key: str = "size") -> int:
    """Parse ``512``, ``64KB``, ``1 MB`` or ``1GB`` (1024-based) into bytes."""
    if isinstance(value, bool) or value is None:
        raise ValueError('%s: invalid size "%s"' % (key, show_scalar(value)))
    match = _SIZE.match(str(value).strip())
    if not match or int(match.group(1)) <= 0:
        raise ValueError('%s: invalid size "%s" (want a positive number of bytes, or KB, MB, GB)'
                         % (key, show_scalar(value)))
    suffix = match.group(2).upper() if match.group(2) else None
    return int(match.group(1)) * _SIZE_FACTORS[suffix]


def format_size(size: int) -> str:
    """The shortest exact spelling of a byte count (``1MB``, ``1536KB``)."""
    for suffix in ("GB", "MB", "KB"):
        factor = _SIZE_FACTORS[suffix]
        if size and size % factor == 0:
            return "%d%s" % (size // factor, suffix)
    return str(size)


def show_scalar(value) -> str:
    """A YAML scalar as the operator wrote it, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
