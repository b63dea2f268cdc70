"""Timestamps as the database and the wire hold them (spec 20 §0).

Ductile always *writes* `YYYY-MM-DDTHH:MM:SS.ffffffZ`: UTC, six fraction
digits kept even when zero, so that string order is time order and SQL can
compare timestamps as text.  It *reads* any RFC 3339 timestamp, because the
original Go Ductile wrote fractions of 0-9 digits with trailing zeros
trimmed, and clients may send offsets.

`datetime.fromisoformat` on Python 3.9 accepts neither `Z` nor fractions
other than 3 or 6 digits, hence the small parser here.
"""
from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import Optional

_RFC3339 = re.compile(
    r"(?P<year>[0-9]{4})-(?P<month>[0-9]{2})-(?P<day>[0-9]{2})"
    r"[Tt](?P<hour>[0-9]{2}):(?P<minute>[0-9]{2}):(?P<second>[0-9]{2})"
    r"(?:\.(?P<fraction>[0-9]{1,9}))?"
    r"(?:(?P<utc>[Zz])|(?P<sign>[+-])(?P<offset_hour>[0-9]{2}):(?P<offset_minute>[0-9]{2}))"
)


def utc_now() -> datetime:
    """The current instant as an aware UTC datetime."""
    return datetime.now(timezone.utc)


def format_ts(moment: datetime) -> str:
    """`moment` in the stored shape `YYYY-MM-DDTHH:MM:SS.ffffffZ`.

    A naive datetime is refused rather than guessed at: reading it as local
    time or as UTC would silently shift queue times by the server's offset.
    """
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("format_ts needs a timezone-aware datetime, got naive %r" % (moment,))
    utc = moment.astimezone(timezone.utc)
    return "%04d-%02d-%02dT%02d:%02d:%02d.%06dZ" % (
        utc.year, utc.month, utc.day, utc.hour, utc.minute, utc.second, utc.microsecond,
    )


def now_ts() -> str:
    """The current instant in the stored shape."""
    return format_ts(utc_now())


def parse_ts(text: str) -> datetime:
    """Any RFC 3339 timestamp as an aware UTC datetime.

    Accepts `Z` or a `±HH:MM` offset and 0-9 fraction digits; digits past
    the sixth are truncated (Python keeps microseconds), never rounded, so
    parsing preserves order.  Anything else raises ValueError naming the
    text, including impossible dates and leap seconds (which Go's parser
    rejects too).
    """
    if not isinstance(text, str):
        raise ValueError("timestamp must be a string, got %s" % type(text).__name__)
    match = _RFC3339.fullmatch(text)
    if match is None:
        raise ValueError("invalid RFC 3339 timestamp: %r" % (text,))
    try:
        return _build_datetime(match)
    except (ValueError, OverflowError) as error:
        raise ValueError("invalid RFC 3339 timestamp: %r (%s)" % (text, error)) from None


def _build_datetime(match) -> datetime:
    """The aware UTC datetime for a regex match.

    ValueError for an impossible field, OverflowError when the offset pushes
    the instant outside the years 1-9999.
    """
    fraction = (match.group("fraction") or "").ljust(6, "0")[:6]
    moment = datetime(
        int(match.group("year")), int(match.group("month")), int(match.group("day")),
        int(match.group("hour")), int(match.group("minute")), int(match.group("second")),
        int(fraction), tzinfo=_offset_zone(match),
    )
    return moment.astimezone(timezone.utc)


def _offset_zone(match) -> timezone:
    """The fixed zone of the match's `Z` or `±HH:MM` suffix."""
    if match.group("utc"):
        return timezone.utc
    hours, minutes = int(match.group("offset_hour")), int(match.group("offset_minute"))
    if hours > 23 or minutes > 59:
        raise ValueError("offset out of range")
    offset = timedelta(hours=hours, minutes=minutes)
    return timezone(-offset if match.group("sign") == "-" else offset)


def parse_ts_or_none(text) -> Optional[datetime]:
    """``parse_ts`` for stored columns that may be NULL, empty or malformed."""
    if not text:
        return None
    try:
        return parse_ts(text)
    except ValueError:
        return None


def wire_ts(moment: Optional[datetime] = None) -> str:
    """RFC 3339 UTC for the wire: up to 9 fraction digits, trailing zeros trimmed, no dot when zero."""
    moment = (moment or utc_now()).astimezone(timezone.utc)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if moment.microsecond:
        text += ("." + "%06d" % moment.microsecond).rstrip("0")
    return text + "Z"
