"""Pure schedule grammar and time maths: cron, windows, weekdays, zones.

Everything here takes values and returns values (no clock, no I/O), so the
config validator and the scheduler share one reading of every field, and the
scheduler's decisions can be tested by passing ``now`` in.  The one exception
is :func:`local_zone`, which has to ask the operating system once which zone
"the server's local zone" (spec 20 §5.2) is.

Conventions: every returned instant is an aware UTC ``datetime``; ``tz``
arguments take a ``tzinfo`` (normally ``zoneinfo.ZoneInfo``), an IANA name,
or ``None`` for the server's local zone; intervals are seconds (``float``) or
``timedelta``.
"""
from __future__ import annotations

import bisect
import calendar
import functools
import math
import os
import random
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone, tzinfo
from typing import Optional, Sequence, Tuple, Union

_MONTHS = {name.lower(): i for i, name in enumerate(calendar.month_abbr) if name}
_DAYS = {"sun": 0, "mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6}
_FULL_DAYS = {"sunday": 0, "monday": 1, "tuesday": 2, "tues": 2, "wednesday": 3, "thursday": 4, "thurs": 4,
              "friday": 5, "saturday": 6}
_WINDOW = re.compile(r"^(\d{1,2}):(\d{2})-(\d{1,2}):(\d{2})$")
# Days in each month in a leap year: the most a date can ever have.
_MAX_DAYS = {1: 31, 2: 29, 3: 31, 4: 30, 5: 31, 6: 30, 7: 31, 8: 31, 9: 30, 10: 31, 11: 30, 12: 31}


class ScheduleError(ValueError):
    """A schedule field that cannot be used; the message says why."""


@dataclass(frozen=True)
class CronSpec:
    """A parsed 5-field cron expression.

    ``dom_restricted``/``dow_restricted`` keep the classic either-rule: when
    both day fields are restricted a time matches if either one does.  A
    field is restricted unless it is literally ``*`` (spec 20 §5.3), so
    ``*/2`` and ``1-31`` count as restricted, as they do in croniter.
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
        dom_restricted=fields[2] != "*",
        dow_restricted=fields[4] != "*",
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


# ---------------------------------------------------------------------------
# Time maths (spec 20 §5.3-§5.6, decision E7)
# ---------------------------------------------------------------------------

UTC = timezone.utc
# "Next match searched ... <= 5 years" (§5.3): any five calendar years hold at
# most two leap days, so this covers every 5-year span.
CRON_HORIZON = timedelta(days=5 * 365 + 2)
CATCH_UP_MAX = 100  # §5.6: run_all enqueues at most this many missed slots
# How far the constraint search looks: one week of excluded days plus a week
# in case the only allowed day's window start falls into a DST gap.
_CONSTRAINT_HORIZON = timedelta(days=15)
_MINUTE = timedelta(minutes=1)

Zone = Union[tzinfo, str, None]
Interval = Union[float, int, timedelta]


def floor_minute(dt: datetime) -> datetime:
    """``dt`` without seconds and microseconds (zone and fold kept).

    Cron works in whole minutes: a run due at 10:00 is due for all of 10:00:xx,
    and §5.4 compares ``floor_minute(now)`` with ``floor_minute(next_run_at)``.
    """
    return dt.replace(second=0, microsecond=0)


def _utc(moment: datetime) -> datetime:
    """``moment`` as aware UTC; a naive datetime is refused, never guessed at."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("schedule maths needs a timezone-aware datetime, got naive %r" % (moment,))
    return moment.astimezone(UTC)


def _as_timedelta(value: Interval) -> timedelta:
    """Seconds, a ``timedelta`` or a config ``Duration`` (int nanoseconds).

    ``Duration`` is an ``int``; read as seconds it would be off by 10^9, so it
    is recognised explicitly.
    """
    if isinstance(value, timedelta):
        return value
    from ductile_lib.durations import Duration  # sibling pure module; lazy keeps imports one-way

    if isinstance(value, Duration):
        return timedelta(microseconds=int(value) // 1000)
    return timedelta(seconds=float(value))


# -- zones -------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def local_zone() -> tzinfo:
    """The server's local zone (§5.2 default), with real DST rules if possible.

    Tried in order: ``$TZ`` (an IANA name, or ``:``/absolute path to a TZif
    file; empty means UTC as in POSIX), the zone name the ``/etc/localtime``
    symlink points at, that file's contents, ``/etc/timezone`` (Debian), and
    last the current fixed UTC offset (no DST rules, but usable by the same
    code).  Cached: the server's zone does not change while Ductile runs, and
    the scheduler asks on every evaluation.  ``local_zone.cache_clear()``
    re-reads it.
    """
    for finder in (_zone_from_tz_env, _zone_from_localtime_link, _zone_from_localtime_file,
                   _zone_from_etc_timezone):
        zone = finder()
        if zone is not None:
            return zone
    return datetime.now().astimezone().tzinfo or UTC


def _zone_by_key(key: str) -> Optional[tzinfo]:
    import zoneinfo

    try:
        return zoneinfo.ZoneInfo(key)
    except (ValueError, zoneinfo.ZoneInfoNotFoundError, OSError):
        return None


def _zone_from_file(path: str) -> Optional[tzinfo]:
    import zoneinfo

    try:
        with open(path, "rb") as handle:
            return zoneinfo.ZoneInfo.from_file(handle, key="localtime")
    except (OSError, ValueError):
        return None


def _zone_from_tz_env() -> Optional[tzinfo]:
    value = os.environ.get("TZ")
    if value is None:
        return None
    value = value[1:] if value.startswith(":") else value
    if not value:
        return UTC
    return _zone_from_file(value) if value.startswith("/") else _zone_by_key(value)


def _zone_from_localtime_link() -> Optional[tzinfo]:
    target = os.path.realpath("/etc/localtime")
    marker = "/zoneinfo/"
    if marker not in target:
        return None
    key = target.split(marker, 1)[1]
    for prefix in ("posix/", "right/"):
        key = key[len(prefix):] if key.startswith(prefix) else key
    return _zone_by_key(key)


def _zone_from_localtime_file() -> Optional[tzinfo]:
    return _zone_from_file("/etc/localtime") if os.path.exists("/etc/localtime") else None


def _zone_from_etc_timezone() -> Optional[tzinfo]:
    try:
        with open("/etc/timezone", encoding="utf-8") as handle:
            key = handle.readline().strip()
    except OSError:
        return None
    return _zone_by_key(key) if key else None


def _zone(tz: Zone) -> tzinfo:
    """A ``tz`` argument resolved: None ⇒ server local zone, str ⇒ IANA name."""
    if tz is None:
        return local_zone()
    if isinstance(tz, str):
        return load_timezone(tz)
    return tz


def _first_instant(wall: datetime, zone: tzinfo) -> Optional[datetime]:
    """The first UTC instant at which the local clock shows naive ``wall``.

    ``fold=0`` picks the earlier of two repeated instants (PEP 495), the
    occurrence a DST fold fires at; a wall time inside a DST gap does not
    survive the round trip through UTC, which is how the gap is recognised
    (``None``).
    """
    instant = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    if instant.astimezone(zone).replace(tzinfo=None) != wall:
        return None
    return instant


# -- cron --------------------------------------------------------------------

def _as_spec(spec: Union[CronSpec, str]) -> CronSpec:
    return spec if isinstance(spec, CronSpec) else parse_cron(spec)


@functools.lru_cache(maxsize=256)
def _sorted_fields(spec: CronSpec) -> tuple:
    """Sorted minute, hour, day-of-month and month values, for bisecting."""
    return (tuple(sorted(spec.minutes)), tuple(sorted(spec.hours)),
            tuple(sorted(spec.days_of_month)), tuple(sorted(spec.months)))


def _after(values: Sequence[int], current: int) -> Optional[int]:
    """The smallest value greater than ``current``, or None."""
    index = bisect.bisect_right(values, current)
    return values[index] if index < len(values) else None


def _day_matches(spec: CronSpec, year: int, month: int, day: int) -> bool:
    """dom/dow with the either-rule: both restricted ⇒ either one may match.

    An unrestricted field holds every value, so plain AND covers the rest.
    """
    in_dom = day in spec.days_of_month
    in_dow = (calendar.weekday(year, month, day) + 1) % 7 in spec.days_of_week
    if spec.dom_restricted and spec.dow_restricted:
        return in_dom or in_dow
    return in_dom and in_dow


def _wall_matches(spec: CronSpec, wall: datetime) -> bool:
    return (wall.minute in spec.minutes and wall.hour in spec.hours and wall.month in spec.months
            and _day_matches(spec, wall.year, wall.month, wall.day))


def _next_day(spec: CronSpec, days: Sequence[int], day: int) -> int:
    """The next day worth checking; past the month's end rolls the month.

    With only day-of-month restricted the next listed day is the next
    candidate; with day-of-week involved a match is at most 7 days away.
    """
    if spec.dom_restricted and not spec.dow_restricted:
        following = _after(days, day)
        return following if following is not None else 32
    return day + 1


def _next_wall_match(spec: CronSpec, wall: datetime, last_year: int) -> Optional[datetime]:
    """The first naive wall-clock minute >= ``wall`` whose five fields match.

    Works on integers and jumps straight to the next allowed month, day, hour
    or minute, so even a once-a-year expression costs a handful of steps, not
    half a million minute checks.  DST is not considered here: cron_next drops
    the wall times that do not exist or that already passed.
    """
    minutes, hours, days, months = _sorted_fields(spec)
    year, month, day, hour, minute = wall.year, wall.month, wall.day, wall.hour, wall.minute
    while year <= last_year:
        if month not in spec.months or day > calendar.monthrange(year, month)[1]:
            following = _after(months, month)
            year, month = (year, following) if following is not None else (year + 1, months[0])
            day, hour, minute = 1, 0, 0
        elif not _day_matches(spec, year, month, day):
            day, hour, minute = _next_day(spec, days, day), 0, 0
        elif hour not in spec.hours:
            following = _after(hours, hour)
            day, hour, minute = (day, following, 0) if following is not None else (day + 1, 0, 0)
        elif minute not in spec.minutes:
            following = _after(minutes, minute)
            hour, minute = (hour, following) if following is not None else (hour + 1, 0)
        else:
            return datetime(year, month, day, hour, minute)
    return None


def cron_next(spec: Union[CronSpec, str], after: datetime, tz: Zone = None) -> Optional[datetime]:
    """The first firing minute strictly after ``after``, as aware UTC.

    Evaluated in the wall-clock time of ``tz`` (§5.3): a local minute inside a
    DST gap is skipped; a repeated local minute fires once, at its first
    occurrence.  Mapping each existing wall minute to its first occurrence is
    strictly increasing in wall time, so the answer is the first matching
    wall minute whose first occurrence lies after ``after``.  None when
    nothing fires within :data:`CRON_HORIZON` (5 years).
    """
    zone, spec, start = _zone(tz), _as_spec(spec), _utc(after)
    limit = start + CRON_HORIZON
    last_year = limit.astimezone(zone).year
    wall = floor_minute(start.astimezone(zone)).replace(tzinfo=None, fold=0)
    while True:
        candidate = _next_wall_match(spec, wall, last_year)
        if candidate is None:
            return None
        instant = _first_instant(candidate, zone)
        if instant is not None and instant > start:
            return instant if instant <= limit else None
        wall = candidate + _MINUTE


def cron_matches(spec: Union[CronSpec, str], moment: datetime, tz: Zone = None) -> bool:
    """Whether the local minute containing ``moment`` is a firing minute.

    The second occurrence of a repeated (DST fold) minute does not match: it
    fired at its first occurrence, and this keeps cron_matches and cron_next
    telling the same story.
    """
    zone, spec = _zone(tz), _as_spec(spec)
    local = floor_minute(_utc(moment).astimezone(zone))
    wall = local.replace(tzinfo=None, fold=0)
    return _wall_matches(spec, wall) and _first_instant(wall, zone) == local.astimezone(UTC)


def cron_due(spec: Union[CronSpec, str], tz: Zone, now: datetime,
             next_run_at: Optional[datetime]) -> Tuple[bool, Optional[datetime]]:
    """§5.4 step 4 for a cron entry: ``(due, next_run_at to keep)``.

    ``next_run_at`` NULL: due iff the current minute matches; then there is
    nothing to store yet (None; step 9 stores the next match after firing),
    otherwise the next match is returned for storing.  Set: due iff
    ``floor_minute(now) >= floor_minute(next_run_at)``, so a long sleep fires
    once, not once per missed minute; it is returned unchanged (as UTC).
    A NULL entry whose expression never fires again returns ``(False, None)``.
    """
    current = _utc(now)
    if next_run_at is None:
        if cron_matches(spec, current, tz):
            return True, None
        return False, cron_next(spec, current, tz)
    stored = _utc(next_run_at)
    return floor_minute(current) >= floor_minute(stored), stored


# -- every -------------------------------------------------------------------

def every_next(base: datetime, interval_s: Interval, jitter_s: Interval = 0.0, rng=None) -> datetime:
    """``base + interval + uniform(-jitter/2, +jitter/2)`` as UTC (E7).

    ``base`` is ``now`` when the entry fires (§5.4 step 9) or the job's
    ``completed_at`` (step 10).  ``rng`` is a ``random.Random`` (the module's
    shared generator when None); it is not consumed without jitter, so tests
    stay reproducible.  No clamping: a jitter above twice the interval can
    yield a time before ``base``, which simply means "due at once".
    """
    jitter = _as_timedelta(jitter_s).total_seconds()
    offset = (rng or random).uniform(-jitter / 2, jitter / 2) if jitter > 0 else 0.0
    return _utc(base) + _as_timedelta(interval_s) + timedelta(seconds=offset)


# -- only_between / not_on -----------------------------------------------------

def _as_window(window) -> Tuple[int, int]:
    """``(start_min, end_min)`` from a tuple or an ``HH:MM-HH:MM`` string."""
    if isinstance(window, str):
        return parse_window(window)
    return int(window[0]), int(window[1])


def _as_days(not_on) -> frozenset:
    """Weekdays 0..6 (0 = Sunday) from numbers 0..7 or names."""
    return frozenset(parse_weekday(day) for day in (not_on or ()))


def _weekday(local: datetime) -> int:
    return (local.weekday() + 1) % 7


def _window_open(minute_of_day: int, window: Tuple[int, int]) -> bool:
    """Start inclusive, end exclusive; ``start > end`` wraps midnight."""
    start, end = window
    if start < end:
        return start <= minute_of_day < end
    return minute_of_day >= start or minute_of_day < end


def in_window(moment: datetime, window, tz: Zone = None) -> bool:
    """Whether ``moment``'s local time of day is inside ``only_between``."""
    local = _utc(moment).astimezone(_zone(tz))
    return _window_open(local.hour * 60 + local.minute, _as_window(window))


def is_excluded_day(moment: datetime, not_on, tz: Zone = None) -> bool:
    """Whether ``moment``'s local weekday is listed in ``not_on``."""
    return _weekday(_utc(moment).astimezone(_zone(tz))) in _as_days(not_on)


def _block_reason(local: datetime, window: Optional[Tuple[int, int]], days: frozenset) -> Optional[str]:
    """Why ``local`` is blocked, or None; the day is checked first (§5.4 step 5 order)."""
    if _weekday(local) in days:
        return "outside_day_constraint"
    if window is not None and not _window_open(local.hour * 60 + local.minute, window):
        return "outside_time_window"
    return None


def _wall_step(local: datetime, window: Optional[Tuple[int, int]], days: frozenset) -> timedelta:
    """Wall-clock time from ``local`` to the next boundary that could unblock it.

    An excluded day can only end at the next local midnight; a time outside
    the window can only end at the window's next start (the window is closed
    all the way there, across midnight included).
    """
    naive = local.replace(tzinfo=None, fold=0)
    today = datetime(naive.year, naive.month, naive.day)
    if _weekday(local) in days or window is None:
        return today + timedelta(days=1) - naive
    opening = today + timedelta(minutes=window[0])
    if opening <= naive:
        opening += timedelta(days=1)
    return opening - naive


def _offset_change(low: datetime, high: datetime, zone: tzinfo) -> datetime:
    """The first whole second in ``(low, high]`` whose UTC offset differs from ``low``'s.

    Found by bisection: zoneinfo does not list its transitions.
    """
    origin = low.replace(microsecond=0)
    offset = origin.astimezone(zone).utcoffset()
    below, above = 0, math.ceil((high - origin).total_seconds())
    while above - below > 1:
        middle = (below + above) // 2
        if (origin + timedelta(seconds=middle)).astimezone(zone).utcoffset() == offset:
            below = middle
        else:
            above = middle
    return origin + timedelta(seconds=above)


def _first_allowed(start: datetime, zone: tzinfo, window: Optional[Tuple[int, int]],
                   days: frozenset) -> Optional[datetime]:
    """The first instant >= ``start`` (UTC) that neither constraint blocks.

    Walks boundary to boundary (see _wall_step).  Between two boundaries at a
    constant UTC offset nothing can change, so each jump is safe; a DST
    transition inside a jump becomes a stop of its own, because the clock
    jumping there can open the window (fall-back into it) or skip its start
    (spring-forward over it).  None when nothing is allowed within
    :data:`_CONSTRAINT_HORIZON` (every weekday excluded).
    """
    if len(days) >= 7:
        return None
    moment, deadline = start, start + _CONSTRAINT_HORIZON
    while moment <= deadline:
        local = moment.astimezone(zone)
        if _block_reason(local, window, days) is None:
            return moment
        target = moment + _wall_step(local, window, days)
        if target.astimezone(zone).utcoffset() != local.utcoffset():
            target = _offset_change(moment, target, zone)
        moment = target
    return None


def next_window_start(moment: datetime, window, tz: Zone = None) -> Optional[datetime]:
    """The first instant >= ``moment`` at which ``only_between`` is open (UTC).

    ``moment`` itself when the window is open now; otherwise the window's next
    start, or the end of a DST gap that swallowed it, or a fall-back
    transition that moves the clock back into the window.
    """
    return _first_allowed(_utc(moment), _zone(tz), _as_window(window), frozenset())


def next_allowed_day(moment: datetime, not_on, tz: Zone = None) -> Optional[datetime]:
    """The first instant >= ``moment`` on a weekday not in ``not_on`` (UTC).

    ``moment`` itself when today is allowed, else the start (local midnight,
    or the first existing instant if midnight is in a DST gap) of the next
    allowed local day; None when ``not_on`` lists all seven days.
    """
    return _first_allowed(_utc(moment), _zone(tz), None, _as_days(not_on))


def constraint_block(moment: datetime, only_between=None, not_on=(), tz: Zone = None
                     ) -> Optional[Tuple[str, Optional[datetime]]]:
    """§5.4 step 5: None when allowed, else ``(reason, retry_at)``.

    ``reason`` is ``outside_day_constraint`` (checked first) or
    ``outside_time_window``.  ``retry_at`` is "the first allowed minute": the
    first instant at which *both* constraints allow, so a blocked entry is not
    woken just to be blocked by the other one.  ``retry_at`` is None when no
    instant is ever allowed (all seven days excluded).
    """
    window = _as_window(only_between) if only_between is not None else None
    days = _as_days(not_on)
    if window is None and not days:
        return None
    zone, current = _zone(tz), _utc(moment)
    reason = _block_reason(current.astimezone(zone), window, days)
    if reason is None:
        return None
    return reason, _first_allowed(current, zone, window, days)


# -- catch-up (§5.6) -------------------------------------------------------------

def catch_up_missed(now: datetime, base: datetime, interval_s: Interval) -> int:
    """``floor((now - base - interval) / interval) + 1`` when ``now >= base + interval``, else 0.

    Integer timedelta division keeps the count exact at slot boundaries,
    where floats would wobble.
    """
    interval = _as_timedelta(interval_s)
    if interval <= timedelta(0):
        return 0
    late = _utc(now) - _utc(base) - interval
    if late < timedelta(0):
        return 0
    return late // interval + 1


def catch_up_slots(now: datetime, base: datetime, interval_s: Interval, mode: str) -> list:
    """The missed slots to enqueue at process start, oldest first (UTC).

    Slots are ``base + i*interval`` for ``i = 1..n``: ``base`` itself already
    fired, and ``base + missed*interval <= now`` is the newest missed slot.
    ``run_once`` ⇒ n = 1 (the oldest missed slot, as the original does);
    ``run_all`` ⇒ n = min(missed, 100); anything else (``skip``) ⇒ none.
    """
    missed = catch_up_missed(now, base, interval_s)
    if mode == "run_once":
        count = min(missed, 1)
    elif mode == "run_all":
        count = min(missed, CATCH_UP_MAX)
    else:
        count = 0
    start, interval = _utc(base), _as_timedelta(interval_s)
    return [start + interval * index for index in range(1, count + 1)]


def catch_up_last_fired(now: datetime, base: datetime, interval_s: Interval, mode: str, n: int) -> datetime:
    """``last_fired_at`` after catch-up: ``now`` (run_once) or ``base + n*interval`` (run_all).

    ``n`` is the number of slots processed (``len(catch_up_slots(...))``);
    with none, nothing happened and ``base`` stays.
    """
    if n <= 0:
        return _utc(base)
    if mode == "run_once":
        return _utc(now)
    return _utc(base) + _as_timedelta(interval_s) * n


def catch_up_next_run(last_fired: datetime, interval_s: Interval, next_run_at: Optional[datetime]) -> datetime:
    """``next_run_at`` after catch-up: ``last_fired + interval`` when NULL or earlier than ``last_fired``.

    "Earlier" compares with the new ``last_fired_at``, as the original does;
    a later stored time (e.g. a jittered one) is kept.
    """
    fired = _utc(last_fired)
    if next_run_at is None or _utc(next_run_at) < fired:
        return fired + _as_timedelta(interval_s)
    return _utc(next_run_at)


def catch_up_slot_text(slot: datetime) -> str:
    """A slot as the catch-up dedupe key writes it: RFC 3339, whole seconds, ``Z``."""
    return _utc(slot).strftime("%Y-%m-%dT%H:%M:%SZ")
