"""Reading ``plugins.<name>.schedules[]`` (spec 10 §3.2.1, messages §8.1).

Each field is checked with the same grammar the scheduler uses
(``schedule.py``), so a schedule that passes here is one the scheduler can
run.  ``r`` is the config reader: typed getters that record issues.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Optional

from ductile_lib import durations, schedule
from ductile_lib.durations import Duration, DurationError, show_scalar as _show


@dataclass(frozen=True)
class Schedule:
    id: str
    command: str
    every: Optional[Duration]
    cron: Optional[str]
    at: Optional[str]
    after: Optional[Duration]
    jitter: Duration
    catch_up: str
    if_running: str
    only_between: Optional[str]
    timezone: Optional[str]
    not_on: tuple
    payload: MappingProxyType



_SCHEDULE_KINDS = ("every", "cron", "at", "after")


def read_schedules(r, path: tuple, label: str) -> tuple:
    """Every ``schedules[]`` entry of one plugin; bad entries are reported and left out."""
    schedules, seen = [], set()
    for index, item in enumerate(r.list_of(path + ("schedules",), label + "schedules")):
        spath = path + ("schedules", index)
        slabel = label + "schedules[%d]" % index
        if not isinstance(item, dict):
            r.error("service", spath, slabel + " must be a mapping")
            continue
        entry = _read_schedule(r, spath, slabel)
        if entry is None:
            continue
        if entry.id in seen:
            r.error("service", spath + ("id",), label + 'duplicate schedule id "%s"' % entry.id)
            continue
        seen.add(entry.id)
        schedules.append(entry)
    return tuple(schedules)


def _read_schedule(r, path: tuple, label: str) -> Optional[Schedule]:
    kinds = [k for k in _SCHEDULE_KINDS if r.get(path + (k,)) is not None]
    if not kinds:
        r.error("service", path, label + " requires one of every, cron, at, or after")
        return None
    if len(kinds) > 1:
        r.error("service", path, label + " must set exactly one of every, cron, at, or after")
        return None
    before = len(r.issues)
    command = r.string(path + ("command",), "poll").strip() or "poll"
    if command == "handle":
        r.error("service", path + ("command",), label + '.command "handle" cannot be scheduled')
    every = _schedule_every(r, path, label)
    entry = Schedule(
        id=r.string(path + ("id",), "default").strip() or "default",
        command=command,
        every=every,
        cron=_schedule_cron(r, path, label),
        at=_schedule_at(r, path, label),
        after=_schedule_after(r, path, label),
        jitter=_schedule_jitter(r, path, label, every),
        catch_up=_schedule_choice(r, path, label, "catch_up", ("skip", "run_once", "run_all"), "skip"),
        if_running=_schedule_choice(r, path, label, "if_running", ("skip", "queue", "cancel"), "skip"),
        only_between=_schedule_window(r, path, label),
        timezone=_schedule_timezone(r, path, label),
        not_on=_schedule_not_on(r, path, label),
        payload=MappingProxyType(dict(r.mapping(path + ("payload",)))),
    )
    if entry.catch_up != "skip" and every is None:
        r.error("service", path + ("catch_up",), label + '.catch_up: "%s" requires every' % entry.catch_up)
    return entry if len(r.issues) == before else None


def _schedule_every(r, path, label):
    value = r.get(path + ("every",))
    if value is None:
        return None
    try:
        return durations.parse_interval(value, label + ".every")
    except DurationError:
        r.error("service", path + ("every",), label + '.every: invalid interval "%s"' % _show(value))
        return None


def _schedule_cron(r, path, label):
    value = r.get(path + ("cron",))
    if value is None:
        return None
    try:
        spec = schedule.parse_cron(str(value))
    except schedule.ScheduleError as exc:
        r.error("service", path + ("cron",), label + '.cron: invalid cron expression "%s": %s' % (value, exc))
        return None
    if not schedule.cron_can_fire(spec):
        r.error("service", path + ("cron",), label + ".cron: cron expression never fires")
        return None
    return str(value)


def _schedule_at(r, path, label):
    value = r.get(path + ("at",))
    if value is None:
        return None
    from ductile_lib.timefmt import parse_ts

    text = str(value).strip()
    try:
        if not (text.endswith(("Z", "z")) or text[-6:-5] in "+-" and text[-3:-2] == ":"):
            raise ValueError(text)
        parse_ts(text)
    except (ValueError, IndexError):
        r.error("service", path + ("at",), label + '.at: invalid timestamp "%s" (want RFC 3339 with a zone)' % text)
        return None
    return text


def _schedule_after(r, path, label):
    if r.get(path + ("after",)) is None:
        return None
    value = r.duration(path + ("after",), None, label + ".after", rule="any")
    if value is not None and value <= 0:
        r.error("service", path + ("after",), label + ".after: duration must be positive")
        return None
    return value


def _schedule_jitter(r, path, label, every) -> Duration:
    if r.get(path + ("jitter",)) is None:
        return Duration(0)
    value = r.duration(path + ("jitter",), Duration(0), label + ".jitter", rule="any")
    if every is None and r.get(path + ("every",)) is None:
        r.error("service", path + ("jitter",), label + ".jitter: only valid with every")
    if value < 0:
        r.error("service", path + ("jitter",), label + ".jitter must not be negative")
    return value


def _schedule_choice(r, path, label, key, choices, default) -> str:
    value = r.string(path + (key,), default).strip().lower() or default
    if value not in choices:
        r.error("service", path + (key,), label + '.%s: invalid value "%s" (want %s)' % (key, value, ", ".join(choices)))
        return default
    return value


def _schedule_window(r, path, label):
    value = r.get(path + ("only_between",))
    if value is None:
        return None
    try:
        schedule.parse_window(str(value))
    except schedule.ScheduleError as exc:
        r.error("service", path + ("only_between",), label + ".only_between: %s" % exc)
        return None
    return str(value).strip()


def _schedule_timezone(r, path, label):
    value = r.get(path + ("timezone",))
    if value is None or str(value).strip() == "":
        return None
    try:
        schedule.load_timezone(str(value).strip())
    except schedule.ScheduleError as exc:
        r.error("service", path + ("timezone",), label + ".timezone: %s" % exc)
        return None
    return str(value).strip()


def _schedule_not_on(r, path, label) -> tuple:
    value = r.get(path + ("not_on",), [])
    items = value if isinstance(value, list) else [value]
    days = []
    for item in items:
        try:
            days.append(schedule.parse_weekday(item))
        except schedule.ScheduleError as exc:
            r.error("service", path + ("not_on",), label + ".not_on: %s" % exc)
    return tuple(sorted(set(days)))
