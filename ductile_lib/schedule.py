"""Pure schedule grammar: cron expressions, time windows, weekdays, zones.

Everything here takes values and returns values (no clock, no I/O), so the
config validator and the scheduler share one reading of every field.
"""
from __future__ import annotations

import calendar
import re
from dataclasses import dataclass

_MONTHS = {name.lower(): i for i, name in enumerate(calendar.month_abbr) if name}
_DAYS = {"sun": 0, "mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6}
_FULL_DAYS = {"sunday": 0, "monday": 1, "tuesday": 2, "wednesday": 3, "thursday": 4, "friday": 5, "saturday": 6}
_WINDOW = re.compile(r"^(\d{1,2}):(\d{2})-(\d{1,2}):(\d{2})$")
# Days in each month in a leap year: the most a date can ever have.
_MAX_DAYS = {1: 31, 2: 29, 3: 31, 4: 30, 5: 31, 6: 30, 7: 31, 8: 31, 9: 30, 10: 31, 11: 30, 12: 31}


class ScheduleError(ValueError):
    """A schedule field that cannot be used; the message says why."""


@dataclass(frozen=True)
class CronSpec:
    """A parsed 5-field cron expression.

    ``dom_restricted``/``dow_restricted`` keep the classic either-rule: when
    both day fields are restricted a time matches if either one does.
    """

    minutes: frozenset
    hours: frozenset
    days_of_month: frozenset
    months: frozenset
    days_of_week: frozenset  # 0 = Sunday
    dom_restricted: bool
    dow_restricted: bool


_FIELDS = (
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day of month", 1, 31, {}),
    ("month", 1, 12, _MONTHS),
    ("day of week", 0, 7, _DAYS),
)


def parse_cron(expression: str) -> CronSpec:
    """Parse ``m h dom mon dow`` with names, ranges, lists and steps."""
    fields = str(expression).split()
    if len(fields) != 5:
        raise ScheduleError("expected 5 fields (minute hour day-of-month month day-of-week), got %d" % len(fields))
    values = [_parse_field(text, *spec) for text, spec in zip(fields, _FIELDS)]
    dow = frozenset(0 if day == 7 else day for day in values[4])
    return CronSpec(
        minutes=frozenset(values[0]),
        hours=frozenset(values[1]),
        days_of_month=frozenset(values[2]),
        months=frozenset(values[3]),
        days_of_week=dow,
        dom_restricted=not fields[2].startswith("*"),
        dow_restricted=not fields[4].startswith("*"),
    )


def _parse_field(text: str, label: str, low: int, high: int, names: dict) -> set:
    result = set()
    for part in text.split(","):
        if not part:
            raise ScheduleError("empty list entry in %s field" % label)
        result |= _parse_part(part, label, low, high, names)
    return result


def _parse_part(part: str, label: str, low: int, high: int, names: dict) -> set:
    """One list entry: ``*``, ``n``, ``a-b``, each optionally ``/step``."""
    base, slash, step_text = part.partition("/")
    step = 1
    if slash:
        if not step_text.isdigit() or int(step_text) == 0:
            raise ScheduleError("invalid step %r in %s field" % (step_text, label))
        step = int(step_text)
    if base == "*":
        start, end = low, high
    elif "-" in base:
        first, _, last = base.partition("-")
        start, end = _value(first, label, low, high, names), _value(last, label, low, high, names)
        if start > end:
            raise ScheduleError("range %s is backwards in %s field" % (base, label))
    else:
        start = _value(base, label, low, high, names)
        end = high if slash else start
    return set(range(start, end + 1, step))


def _value(text: str, label: str, low: int, high: int, names: dict) -> int:
    lowered = text.lower()
    if lowered in names:
        return names[lowered]
    if not text.isdigit():
        raise ScheduleError("invalid value %r in %s field" % (text, label))
    number = int(text)
    if not low <= number <= high:
        raise ScheduleError("value %d out of range %d-%d in %s field" % (number, low, high, label))
    return number


def cron_can_fire(spec: CronSpec) -> bool:
    """False when no calendar date satisfies the day and month fields.

    Only a restricted day-of-month with an unrestricted day-of-week can be
    impossible (``0 0 30 2 *``): any weekday occurs in every month.
    """
    if spec.dow_restricted:
        return True
    return any(day <= _MAX_DAYS[month] for month in spec.months for day in spec.days_of_month)


def parse_window(text: str):
    """``HH:MM-HH:MM`` → ``(start_minute, end_minute)``; may wrap midnight."""
    match = _WINDOW.match(str(text).strip())
    if not match:
        raise ScheduleError('invalid window "%s" (want HH:MM-HH:MM, start \u2260 end)' % text)
    h1, m1, h2, m2 = (int(g) for g in match.groups())
    if h1 > 23 or h2 > 23 or m1 > 59 or m2 > 59 or (h1, m1) == (h2, m2):
        raise ScheduleError('invalid window "%s" (want HH:MM-HH:MM, start \u2260 end)' % text)
    return h1 * 60 + m1, h2 * 60 + m2


def parse_weekday(value) -> int:
    """A weekday name or number (0 or 7 = Sunday) → 0..6 with 0 = Sunday."""
    if isinstance(value, bool):
        raise ScheduleError('invalid weekday "%s"' % value)
    if isinstance(value, int):
        if 0 <= value <= 7:
            return value % 7
        raise ScheduleError('invalid weekday "%s"' % value)
    text = str(value).strip().lower()
    if text in _DAYS:
        return _DAYS[text]
    if text in _FULL_DAYS:
        return _FULL_DAYS[text]
    if text.isdigit() and 0 <= int(text) <= 7:
        return int(text) % 7
    raise ScheduleError('invalid weekday "%s"' % value)


def load_timezone(name: str):
    """A ``zoneinfo.ZoneInfo`` for an IANA name, or ScheduleError."""
    import zoneinfo  # imported lazily: only schedules with a zone need it

    try:
        if not name or name.startswith("/") or ".." in name:
            raise ValueError(name)
        return zoneinfo.ZoneInfo(name)
    except (ValueError, zoneinfo.ZoneInfoNotFoundError, OSError):
        raise ScheduleError('unknown time zone "%s"' % name) from None
