"""The scheduler's pure time maths (spec 20 §5.3-§5.6, decision E7).

Two oracles check cron next-fire times:

* croniter (test-only dependency) over hundreds of generated expressions and
  start times spread over 2000-2040, in UTC, Europe/Berlin and
  America/New_York;
* a minute-by-minute brute force written here, which implements the spec's
  DST rule directly (walk real UTC minutes, skip the second occurrence of a
  repeated local minute; a gap minute never shows up on the clock at all).

Where croniter's DST behaviour differs from the spec, the spec wins and the
instant is left out of the croniter comparison (see ``_croniter_next``):
croniter fires a gap minute at the first minute after the gap (``30 2`` on
spring-forward day fires at 03:00) and fires both occurrences of a repeated
minute.  Those cases are asserted by hand in the ``test_dst_*`` tests and by
the brute force.  Two grammar corners are also kept away from croniter,
because croniter reads them differently from spec §5.3: a ``*`` inside a list
(``*,5`` is "not literally ``*``", so restricted for the either-rule; croniter
folds it to ``*``) and a day-of-week ``N/S`` (the field's max is 7 in the
spec, so ``1/2`` includes Sunday; croniter stops at 6).  croniter 7 also
mis-expands one-value ranges (``3-3`` becomes ``*``, ``5-5/3`` becomes
``*/3``), and folds some full but restricted day fields (``1-7``) into
``*``, applying AND where the spec applies the either-rule; the generator
rejects any expression whose croniter expansion differs from ours.  All of
these are asserted against the brute force instead.
"""
from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from croniter import croniter
from hypothesis import given, settings, strategies as st

from ductile_lib import schedule
from ductile_lib.durations import parse_duration
from ductile_lib.schedule import (CATCH_UP_MAX, CRON_HORIZON, catch_up_last_fired, catch_up_missed,
                                  catch_up_next_run, catch_up_slot_text, catch_up_slots, constraint_block,
                                  cron_can_fire, cron_due, cron_matches, cron_next, every_next, floor_minute,
                                  in_window, is_excluded_day, local_zone, next_allowed_day, next_window_start,
                                  parse_cron, parse_weekday)

UTC = timezone.utc
BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
LORD_HOWE = ZoneInfo("Australia/Lord_Howe")  # 30-minute DST shift
SANTIAGO = ZoneInfo("America/Santiago")  # DST changes at local midnight
ORACLE_ZONES = (ZoneInfo("UTC"), BERLIN, NEW_YORK)
BRUTE_ZONES = ORACLE_ZONES + (LORD_HOWE, SANTIAGO)
MINUTE = timedelta(minutes=1)


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


def local(zone, *args, fold=0) -> datetime:
    return datetime(*args, tzinfo=zone, fold=fold)


# ---------------------------------------------------------------------------
# Oracles
# ---------------------------------------------------------------------------

def _brute_matches(expr: str, spec, wall: datetime) -> bool:
    """The five fields against a local time, written independently of schedule.py."""
    fields = expr.split()
    in_dom = wall.day in spec.days_of_month
    in_dow = wall.isoweekday() % 7 in spec.days_of_week
    if fields[2] != "*" and fields[4] != "*":
        day = in_dom or in_dow
    else:
        day = in_dom and in_dow
    return day and wall.minute in spec.minutes and wall.hour in spec.hours and wall.month in spec.months


def brute_next(expr: str, after: datetime, zone, max_minutes: int):
    """First UTC minute start > ``after`` that fires, walking real minutes one by one.

    Walking UTC means a DST-gap minute is never seen; ``fold == 1`` marks the
    second occurrence of a repeated local minute, which the spec does not fire.
    Returns None when nothing fires within ``max_minutes``.
    """
    spec = parse_cron(expr)
    moment = after.astimezone(UTC).replace(second=0, microsecond=0) + MINUTE
    for _ in range(max_minutes):
        wall = moment.astimezone(zone)
        if wall.fold == 0 and _brute_matches(expr, spec, wall):
            return moment
        moment += MINUTE
    return None


def _near_dst_change(moment: datetime, zone) -> bool:
    return (moment - timedelta(hours=3)).astimezone(zone).utcoffset() != \
        (moment + timedelta(hours=3)).astimezone(zone).utcoffset()


def _croniter_next(expr: str, after: datetime, zone, spec, stats: dict):
    """croniter's next fire, minus the instants where its DST reading differs from the spec.

    Dropped (and counted): the second occurrence of a repeated local minute,
    and a time croniter produced for a gap minute, recognisable because its
    wall time is not one the expression names.  Both must sit next to a DST
    change; anything else is a real disagreement and fails the test.
    """
    iterator = croniter(expr, after.astimezone(zone))
    for _ in range(200):
        found = iterator.get_next(datetime).astimezone(UTC)
        wall = found.astimezone(zone)
        if wall.fold == 0 and _brute_matches(expr, spec, wall) and found > after:
            return found
        assert _near_dst_change(found, zone), (expr, after, found)
        stats["dst_excluded"] += 1
    raise AssertionError("croniter kept producing DST artefacts for %r" % expr)


# ---------------------------------------------------------------------------
# Expression and start-time generators (fixed seeds)
# ---------------------------------------------------------------------------

_FIELD_RANGES = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))
_MONTH_NAMES = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
_DAY_NAMES = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]


def _value_text(rng: random.Random, index: int, value: int) -> str:
    """A number, or for month/dow sometimes its name in random case."""
    if index == 3 and rng.random() < 0.4:
        name = _MONTH_NAMES[value - 1]
    elif index == 4 and value <= 6 and rng.random() < 0.4:
        name = _DAY_NAMES[value]
    else:
        return str(value)
    return rng.choice([name, name.upper(), name.title()])


def _part(rng: random.Random, index: int, croniter_safe: bool) -> str:
    """One list entry: N, A-B, A-B/S, N/S (not for dow, see module doc) or */S.

    ``croniter_safe`` avoids one-value ranges (``3-3``, ``5-5/3``), which
    croniter 7 expands to ``*`` or ``*/S``.
    """
    low, high = _FIELD_RANGES[index]
    kinds = ["n", "n", "range", "range_step", "star_step"] + (["n_step"] if index != 4 else [])
    kind = rng.choice(kinds)
    a = rng.randint(low, high)
    if kind == "n":
        return _value_text(rng, index, a)
    step = rng.randint(1, max(1, (high - low) // 2))
    if kind == "star_step":
        return "*/%d" % step
    if kind == "n_step":
        return "%s/%d" % (_value_text(rng, index, a), step)
    if croniter_safe and a == high:
        return _value_text(rng, index, a)
    b = rng.randint(a + 1 if croniter_safe else a, high)
    text = "%s-%s" % (_value_text(rng, index, a), _value_text(rng, index, b))
    return text + ("/%d" % step if kind == "range_step" else "")


def _field(rng: random.Random, index: int, star_chance: float, croniter_safe: bool) -> str:
    if rng.random() < star_chance:
        return "*"
    return ",".join(_part(rng, index, croniter_safe) for _ in range(rng.choice([1, 1, 1, 2, 3])))


def _croniter_reads_like_spec(expr: str, spec) -> bool:
    """Whether croniter expands every field to our sets and agrees which day fields are restricted.

    croniter folds some restricted-but-full day fields (``1-7``, ``1-7/1``)
    into ``*`` and so applies AND where the spec applies the either-rule.
    """
    expanded = croniter(expr).expanded
    ours = (spec.minutes, spec.hours, spec.days_of_month, spec.months, spec.days_of_week)
    for index, (values, (low, high)) in enumerate(zip(expanded, _FIELD_RANGES)):
        full = set(range(low, min(high, 6) + 1)) if index == 4 else set(range(low, high + 1))
        theirs = full if values == ["*"] else {value % 7 if index == 4 else value for value in values}
        if theirs != set(ours[index]):
            return False
    return (expanded[2] != ["*"], expanded[4] != ["*"]) == (spec.dom_restricted, spec.dow_restricted)


_REJECTED = {"croniter_reading": 0}


def random_expression(rng: random.Random, croniter_safe: bool = True) -> str:
    """A valid expression that can fire; day fields often both restricted.

    ``croniter_safe`` also rejects expressions croniter reads differently
    from the spec (counted in ``_REJECTED``; those corners are covered by the
    brute force).
    """
    while True:
        both_days = rng.random() < 0.3
        stars = (0.1, 0.5, 0.0 if both_days else 0.6, 0.6, 0.0 if both_days else 0.6)
        expr = " ".join(_field(rng, index, star, croniter_safe) for index, star in enumerate(stars))
        spec = parse_cron(expr)
        if not cron_can_fire(spec):
            continue
        if croniter_safe and not _croniter_reads_like_spec(expr, spec):
            _REJECTED["croniter_reading"] += 1
            continue
        return expr


def _dst_changes(zone, first_year: int, last_year: int) -> list:
    """UTC instants of the zone's offset changes, found by a daily scan plus bisection."""
    changes = []
    day = utc(first_year, 1, 1)
    while day.year <= last_year:
        following = day + timedelta(days=1)
        if day.astimezone(zone).utcoffset() != following.astimezone(zone).utcoffset():
            low, high = day, following
            while high - low > MINUTE:
                middle = low + (high - low) / 2
                middle = middle.replace(second=0, microsecond=0)
                if middle.astimezone(zone).utcoffset() == low.astimezone(zone).utcoffset():
                    low = middle
                else:
                    high = middle
            changes.append(high)
        day = following
    return changes


_CHANGES = {zone.key: _dst_changes(zone, 2000, 2040) for zone in BRUTE_ZONES}


def random_start(rng: random.Random, zone) -> datetime:
    """A start time in 2000-2040; half of them within a day of a DST change."""
    changes = _CHANGES[zone.key]
    if changes and rng.random() < 0.5:
        base = rng.choice(changes)
        return base + timedelta(seconds=rng.randint(-86400, 86400))
    return utc(2000, 1, 1) + timedelta(seconds=rng.randint(0, 40 * 365 * 86400))


# ---------------------------------------------------------------------------
# cron_next against the oracles
# ---------------------------------------------------------------------------

def test_cron_next_matches_croniter_on_generated_expressions():
    rng = random.Random(20240531)
    stats = {"compared": 0, "dst_excluded": 0, "both_days": 0}
    for _ in range(400):
        expr = random_expression(rng)
        spec = parse_cron(expr)
        stats["both_days"] += spec.dom_restricted and spec.dow_restricted
        for zone in ORACLE_ZONES:
            after = random_start(rng, zone)
            expected = _croniter_next(expr, after, zone, spec, stats)
            got = cron_next(spec, after, zone)
            if expected - after > CRON_HORIZON:
                assert got is None, (expr, zone, after)
            else:
                assert got == expected, (expr, zone.key, after, got, expected)
            stats["compared"] += 1
    assert stats["compared"] == 1200
    assert stats["both_days"] >= 80  # the either-rule really is exercised
    assert _REJECTED["croniter_reading"] < 30  # grammar corners stay rare


def test_cron_next_sequences_match_croniter():
    """Chained next-fire times (how the scheduler uses it) across several DST years."""
    rng = random.Random(7)
    stats = {"dst_excluded": 0}
    for expr in ["*/7 * * * *", "15 1-3 * * *", "30 2 * * *", "0 */5 * * sun", "59 23 28-31 * *",
                 "0 0 1,15 * mon", "*/20 1,2 * 3,10,11 *"] + [random_expression(rng) for _ in range(20)]:
        spec = parse_cron(expr)
        for zone in ORACLE_ZONES:
            after = rng.choice(_CHANGES[BERLIN.key]) - timedelta(days=2)
            for _ in range(30):
                expected = _croniter_next(expr, after, zone, spec, stats)
                got = cron_next(spec, after, zone)
                assert got == expected, (expr, zone.key, after, got, expected)
                after = got
    assert stats["dst_excluded"] > 0  # croniter's DST artefacts really were met and set aside


def test_cron_next_matches_brute_force_minute_by_minute():
    """Every zone, half the starts next to a DST change, a 3-day minute-by-minute window."""
    rng = random.Random(99)
    window = 3 * 24 * 60
    fired = 0
    for _ in range(120):
        expr = random_expression(rng, croniter_safe=False)
        for zone in BRUTE_ZONES:
            after = random_start(rng, zone) + timedelta(microseconds=rng.choice([0, 1, 500000]))
            expected = brute_next(expr, after, zone, window)
            got = cron_next(expr, after, zone)
            if expected is None:
                assert got is None or got > after + timedelta(minutes=window), (expr, zone.key, after, got)
            else:
                fired += 1
                assert got == expected, (expr, zone.key, after, got, expected)
    assert fired > 200


@pytest.mark.parametrize("zone", BRUTE_ZONES, ids=lambda z: z.key)
def test_cron_next_brute_force_across_every_dst_change(zone):
    """Dense expressions started just before each DST change of 2023-2026."""
    changes = [c for c in _CHANGES[zone.key] if 2023 <= c.year <= 2026]
    assert zone.key == "UTC" or changes
    for change in changes:
        for expr in ("*/10 * * * *", "30 * * * *", "0,30 0-3 * * *", "45 23,0,1,2 * * *"):
            after = change - timedelta(hours=2)
            for _ in range(6):
                expected = brute_next(expr, after, zone, 2 * 24 * 60)
                assert cron_next(expr, after, zone) == expected, (expr, zone.key, after)
                after = expected


@pytest.mark.parametrize("expr", ["0 0 *,5 * mon", "0 12 1 * *,2", "0 0 * * 1/2", "0 0 * * 4/3", "0 0 * * 7/1",
                                  "0 0 */2 * mon", "0 0 1-31 * mon", "0 0 1 * 0-6", "0 0 13 * fri",
                                  "0 0 * * 3-3", "0 0 5-5/3 * *", "0 14 13/12 * SAT-6/2",
                                  "16 12/7 */6 * 1-7/1", "0 0 1 * 1-7"])
def test_grammar_corners_kept_away_from_croniter(expr):
    rng = random.Random(expr)
    for zone in (UTC, BERLIN):
        after = utc(2024, 1, 1) + timedelta(minutes=rng.randint(0, 500000))
        for _ in range(12):
            expected = brute_next(expr, after, zone, 40 * 24 * 60)
            assert cron_next(expr, after, zone) == expected, (expr, after)
            after = expected


def test_spec_readings_of_those_corners():
    assert parse_cron("0 0 * * 1/2").days_of_week == {1, 3, 5, 0}  # N/S runs to the field max 7 = Sunday
    assert parse_cron("0 0 * * 7/1").days_of_week == {0}
    assert parse_cron("0 0 *,5 * mon").dom_restricted  # not literally "*"
    assert parse_cron("0 0 */2 * *").dom_restricted
    assert not parse_cron("0 0 * * *").dow_restricted
    # Either-rule: every 13th and every Friday.
    first = utc(2024, 9, 1)
    fires = [first]
    for _ in range(6):
        fires.append(cron_next("0 0 13 * fri", fires[-1], UTC))
    assert [d.day for d in fires[1:]] == [6, 13, 20, 27, 4, 11]


def test_weekday_aliases_from_spec():
    assert [parse_weekday(v) for v in ("tues", "THURS", "Tue", "thursday")] == [2, 4, 2, 4]


# ---------------------------------------------------------------------------
# cron_next: hand-written cases
# ---------------------------------------------------------------------------

def test_cron_that_never_fires_returns_none():
    assert cron_next("0 0 30 2 *", utc(2024, 1, 1), UTC) is None
    assert cron_next("0 0 31 4,6,9,11 *", utc(2024, 1, 1), BERLIN) is None


def test_cron_next_is_strictly_after_and_minute_aligned():
    assert cron_next("* * * * *", utc(2024, 1, 1, 10, 0), UTC) == utc(2024, 1, 1, 10, 1)
    assert cron_next("* * * * *", utc(2024, 1, 1, 10, 0, 59, 999999), UTC) == utc(2024, 1, 1, 10, 1)
    assert cron_next("0 10 * * *", utc(2024, 1, 1, 9, 59, 59), UTC) == utc(2024, 1, 1, 10, 0)


def test_cron_next_leap_day_and_horizon():
    assert cron_next("0 0 29 2 *", utc(2024, 3, 1), UTC) == utc(2028, 2, 29)
    # 2096-02-29 → the next leap day is 2104-02-29 (2100 is no leap year): beyond 5 years.
    assert cron_next("0 0 29 2 *", utc(2096, 3, 1), UTC) is None
    assert CRON_HORIZON >= timedelta(days=5 * 365 + 1)


def test_cron_next_is_evaluated_in_the_zone():
    # 09:00 in Berlin is 08:00 UTC in winter, 07:00 UTC in summer.
    assert cron_next("0 9 * * *", utc(2024, 1, 10, 12), BERLIN) == utc(2024, 1, 11, 8)
    assert cron_next("0 9 * * *", utc(2024, 7, 10, 12), "Europe/Berlin") == utc(2024, 7, 11, 7)
    # The day fields are local too: Monday 00:30 in Berlin is still Sunday in UTC.
    assert cron_next("30 0 * * mon", utc(2024, 1, 7, 12), BERLIN) == utc(2024, 1, 7, 23, 30)


def test_dst_gap_minute_is_skipped():
    """Berlin 2024-03-31 02:00 CET → 03:00 CEST: 02:xx does not exist that day.

    croniter answers 03:00 here; the spec skips the minute, so the next run is
    the following day.
    """
    assert cron_next("30 2 * * *", local(BERLIN, 2024, 3, 30, 12), BERLIN) == local(BERLIN, 2024, 4, 1, 2, 30)
    assert cron_next("0 2 31 3 *", local(BERLIN, 2024, 3, 1), BERLIN) == local(BERLIN, 2025, 3, 31, 2)
    fires, after = [], local(BERLIN, 2024, 3, 31, 1, 40)
    for _ in range(3):
        after = cron_next("*/15 * * * *", after, BERLIN)
        fires.append(after.astimezone(BERLIN).strftime("%H:%M%z"))
    assert fires == ["01:45+0100", "03:00+0200", "03:15+0200"]
    # New York 2024-03-10 02:00 EST → 03:00 EDT.
    assert cron_next("15 2 * * *", local(NEW_YORK, 2024, 3, 10, 0), NEW_YORK) == local(NEW_YORK, 2024, 3, 11, 2, 15)


def test_dst_fold_minute_fires_once_at_first_occurrence():
    """Berlin 2024-10-27 03:00 CEST → 02:00 CET: 02:xx happens twice.

    croniter fires both occurrences; the spec fires the first only.
    """
    first = cron_next("30 2 * * *", local(BERLIN, 2024, 10, 27, 0), BERLIN)
    assert first == utc(2024, 10, 27, 0, 30)  # 02:30 CEST
    assert cron_next("30 2 * * *", first, BERLIN) == local(BERLIN, 2024, 10, 28, 2, 30)
    fires, after = [], local(BERLIN, 2024, 10, 27, 1, 50)
    for _ in range(5):
        after = cron_next("*/20 * * * *", after, BERLIN)
        fires.append(after.astimezone(BERLIN).strftime("%H:%M%z"))
    assert fires == ["02:00+0200", "02:20+0200", "02:40+0200", "03:00+0100", "03:20+0100"]
    # Starting inside the second occurrence: 02:20 CET already fired as 02:20 CEST.
    inside = local(BERLIN, 2024, 10, 27, 2, 10, fold=1)
    assert cron_next("*/20 * * * *", inside, BERLIN) == local(BERLIN, 2024, 10, 27, 3, 0)
    # New York 2024-11-03 02:00 EDT → 01:00 EST.
    assert cron_next("30 1 * * *", local(NEW_YORK, 2024, 11, 3, 0), NEW_YORK) == utc(2024, 11, 3, 5, 30)
    assert cron_next("30 1 * * *", utc(2024, 11, 3, 5, 30), NEW_YORK) == local(NEW_YORK, 2024, 11, 4, 1, 30)


def test_zoneinfo_marks_second_occurrence_with_fold():
    """The brute-force oracle relies on this."""
    assert utc(2024, 10, 27, 0, 30).astimezone(BERLIN).fold == 0
    assert utc(2024, 10, 27, 1, 30).astimezone(BERLIN).fold == 1


@pytest.mark.timeout(30)
def test_cron_next_sparse_expressions_across_years():
    """Minute stepping would blow the timeout here; the result is what is asserted."""
    for year in range(2001, 2041):
        assert cron_next("0 0 29 2 *", utc(year, 3, 1), BERLIN) is not None or year >= 2096
        assert cron_next("0 0 30 2 *", utc(year, 3, 1), BERLIN) is None
        assert cron_next("59 23 31 12 *", utc(year, 1, 1), NEW_YORK).year == year
        assert cron_next("0 12 31 * *", utc(year, 1, 1), UTC) is not None


def test_local_zone_and_none_zone(monkeypatch):
    try:
        monkeypatch.setenv("TZ", "Europe/Berlin")
        local_zone.cache_clear()
        assert local_zone().key == "Europe/Berlin"
        assert cron_next("0 9 * * *", utc(2024, 1, 10, 12), None) == utc(2024, 1, 11, 8)
        monkeypatch.setenv("TZ", ":/usr/share/zoneinfo/America/New_York")
        local_zone.cache_clear()
        assert cron_next("0 9 * * *", utc(2024, 1, 10, 12), None) == utc(2024, 1, 10, 14)
        monkeypatch.setenv("TZ", "")
        local_zone.cache_clear()
        assert local_zone().utcoffset(None) == timedelta(0)
        monkeypatch.setenv("TZ", "Not/A_Zone")
        local_zone.cache_clear()
        assert local_zone().utcoffset(datetime(2024, 1, 1)) is not None  # falls back, still usable
    finally:
        monkeypatch.undo()
        local_zone.cache_clear()


def test_naive_datetimes_are_refused():
    with pytest.raises(ValueError, match="timezone-aware"):
        cron_next("* * * * *", datetime(2024, 1, 1), UTC)


# ---------------------------------------------------------------------------
# cron_matches / cron_due
# ---------------------------------------------------------------------------

def test_cron_matches():
    assert cron_matches("0 10 * * *", utc(2024, 1, 1, 10, 0, 42), UTC)
    assert not cron_matches("0 10 * * *", utc(2024, 1, 1, 10, 1), UTC)
    assert cron_matches("0 10 * * *", utc(2024, 1, 1, 9, 0, 5), BERLIN)
    assert cron_matches("30 2 * * *", local(BERLIN, 2024, 10, 27, 2, 30, fold=0), BERLIN)
    assert not cron_matches("30 2 * * *", local(BERLIN, 2024, 10, 27, 2, 30, fold=1), BERLIN)


def test_cron_matches_agrees_with_cron_next():
    rng = random.Random(5)
    for _ in range(150):
        expr = random_expression(rng)
        zone = rng.choice(BRUTE_ZONES)
        moment = random_start(rng, zone).replace(second=0, microsecond=0)
        assert cron_matches(expr, moment, zone) == (cron_next(expr, moment - MINUTE, zone) == moment)


def test_cron_due_with_null_next_run_at():
    assert cron_due(parse_cron("0 10 * * *"), UTC, utc(2024, 1, 1, 10, 0, 37), None) == (True, None)
    assert cron_due("0 10 * * *", UTC, utc(2024, 1, 1, 10, 1), None) == (False, utc(2024, 1, 2, 10, 0))
    # Second occurrence of a repeated minute is not "the current minute matches".
    due, stored = cron_due("30 2 * * *", BERLIN, local(BERLIN, 2024, 10, 27, 2, 30, fold=1), None)
    assert not due and stored == local(BERLIN, 2024, 10, 28, 2, 30)
    assert cron_due("0 0 30 2 *", UTC, utc(2024, 1, 1), None) == (False, None)


def test_cron_due_with_stored_next_run_at():
    stored = utc(2024, 1, 1, 10, 0, 30)
    assert cron_due("0 10 * * *", UTC, utc(2024, 1, 1, 10, 0, 5), stored) == (True, stored)  # same minute
    assert cron_due("0 10 * * *", UTC, utc(2024, 1, 1, 9, 59, 59), stored) == (False, stored)
    # After a long sleep: due once; the stored value is not advanced here.
    assert cron_due("0 10 * * *", UTC, utc(2024, 1, 5, 3, 0), stored) == (True, stored)
    assert cron_due("0 10 * * *", UTC, utc(2024, 1, 1, 11), stored.astimezone(BERLIN)) == (True, stored)


def test_floor_minute():
    assert floor_minute(utc(2024, 1, 1, 10, 5, 59, 999999)) == utc(2024, 1, 1, 10, 5)
    assert floor_minute(local(BERLIN, 2024, 10, 27, 2, 30, 10, fold=1)).fold == 1


# ---------------------------------------------------------------------------
# every / jitter
# ---------------------------------------------------------------------------

def test_every_next_without_jitter_is_exact_and_leaves_rng_alone():
    rng = random.Random(1)
    state = rng.getstate()
    assert every_next(utc(2024, 1, 1), 3600, 0, rng) == utc(2024, 1, 1, 1)
    assert every_next(utc(2024, 1, 1), timedelta(minutes=5), 0, rng) == utc(2024, 1, 1, 0, 5)
    assert every_next(utc(2024, 1, 1), parse_duration("1h30m"), parse_duration("0s"), rng) == utc(2024, 1, 1, 1, 30)
    assert rng.getstate() == state


def test_every_next_jitter_stays_within_half_jitter_each_side():
    rng = random.Random(42)
    base = local(BERLIN, 2024, 6, 1, 12)
    offsets = [(every_next(base, 600, 60, rng) - base).total_seconds() - 600 for _ in range(5000)]
    assert all(-30 <= value <= 30 for value in offsets)
    assert min(offsets) < -28 and max(offsets) > 28  # spread over the whole range, both sides
    assert abs(sum(offsets) / len(offsets)) < 2  # centred on the interval
    assert every_next(base, 600, 60, random.Random(3)) == every_next(base, 600, 60, random.Random(3))
    assert every_next(base, 600, 60, random.Random(3)).tzinfo is UTC


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.floats(min_value=1, max_value=86400 * 30), st.floats(min_value=0, max_value=86400), st.integers(0, 2 ** 32))
def test_every_next_bounds_property(interval, jitter, seed):
    base = utc(2024, 1, 1)
    delta = (every_next(base, interval, jitter, random.Random(seed)) - base).total_seconds()
    assert interval - jitter / 2 - 1e-6 <= delta <= interval + jitter / 2 + 1e-6


# ---------------------------------------------------------------------------
# only_between / not_on / constraint_block
# ---------------------------------------------------------------------------

def test_in_window_plain_and_wrapping():
    day = (7 * 60, 22 * 60)
    night = (22 * 60, 6 * 60)
    assert in_window(utc(2024, 1, 1, 7, 0), day, UTC)
    assert in_window(utc(2024, 1, 1, 21, 59), day, UTC)
    assert not in_window(utc(2024, 1, 1, 22, 0), day, UTC)  # end exclusive
    assert not in_window(utc(2024, 1, 1, 6, 59), day, UTC)
    assert in_window(utc(2024, 1, 1, 22, 0), night, UTC)
    assert in_window(utc(2024, 1, 1, 0, 0), night, UTC)
    assert in_window(utc(2024, 1, 1, 5, 59), night, UTC)
    assert not in_window(utc(2024, 1, 1, 6, 0), night, UTC)
    assert not in_window(utc(2024, 1, 1, 12, 0), "22:00-06:00", UTC)
    # Local time of the zone: 21:30 UTC is 22:30 in Berlin (winter).
    assert in_window(utc(2024, 1, 1, 21, 30), "22:00-06:00", BERLIN)


def test_next_window_start():
    window = "07:00-22:00"
    assert next_window_start(utc(2024, 1, 1, 5, 30), window, UTC) == utc(2024, 1, 1, 7)
    assert next_window_start(utc(2024, 1, 1, 22, 0), window, UTC) == utc(2024, 1, 2, 7)
    inside = utc(2024, 1, 1, 12, 34, 56)
    assert next_window_start(inside, window, UTC) == inside
    assert next_window_start(utc(2024, 1, 1, 12), "22:00-06:00", UTC) == utc(2024, 1, 1, 22)
    assert next_window_start(utc(2024, 1, 1, 6, 59, 30), (420, 1320), UTC) == utc(2024, 1, 1, 7)
    assert next_window_start(utc(2024, 1, 1, 5, 30), window, BERLIN) == utc(2024, 1, 1, 6)
    assert next_window_start(utc(2024, 7, 1, 4, 30), window, BERLIN) == utc(2024, 7, 1, 5)
    assert next_window_start(utc(2024, 7, 1, 20, 0), window, BERLIN) == utc(2024, 7, 2, 5)


def test_next_window_start_across_dst():
    # Spring forward swallows 02:00-02:30 entirely: the window opens the next day.
    assert next_window_start(local(BERLIN, 2024, 3, 31, 0, 30), "02:00-02:30", BERLIN) == \
        local(BERLIN, 2024, 4, 1, 2, 0)
    # Spring forward swallows the start of 02:30-05:00: it opens at 03:00 CEST.
    assert next_window_start(local(BERLIN, 2024, 3, 31, 0, 30), "02:30-05:00", BERLIN) == \
        local(BERLIN, 2024, 3, 31, 3, 0)
    # Fall back moves the clock from 02:59 CEST back into 01:00-02:30, at 02:00 CET.
    # (Compared in UTC: PEP 495 makes an inter-zone == with a fold=1 time always False.)
    assert next_window_start(local(BERLIN, 2024, 10, 27, 2, 45), "01:00-02:30", BERLIN) == \
        local(BERLIN, 2024, 10, 27, 2, 0, fold=1).astimezone(UTC)


def test_not_on():
    saturday_noon = utc(2024, 1, 6, 12)
    assert is_excluded_day(saturday_noon, (6,), UTC)
    assert not is_excluded_day(saturday_noon, (0, 1), UTC)
    assert is_excluded_day(saturday_noon, ("sat",), UTC)
    # Saturday 23:30 UTC is Sunday 00:30 in Berlin.
    assert is_excluded_day(utc(2024, 1, 6, 23, 30), (0,), BERLIN)
    assert next_allowed_day(saturday_noon, (6,), UTC) == utc(2024, 1, 7)
    assert next_allowed_day(saturday_noon, (6, 0), BERLIN) == local(BERLIN, 2024, 1, 8)
    assert next_allowed_day(saturday_noon, (1,), UTC) == saturday_noon
    assert next_allowed_day(saturday_noon, tuple(range(7)), UTC) is None


def test_next_allowed_day_when_midnight_does_not_exist():
    """Santiago 2024-09-08: clocks jump from 00:00 to 01:00, so Sunday starts at 01:00."""
    saturday = local(SANTIAGO, 2024, 9, 7, 12)
    start = next_allowed_day(saturday, (6,), SANTIAGO)
    assert start.astimezone(SANTIAGO).replace(tzinfo=None) == datetime(2024, 9, 8, 1, 0)
    assert start == utc(2024, 9, 8, 4, 0)


def test_constraint_block_reasons_and_retry_times():
    window, weekend = "09:00-17:00", (0, 6)
    friday_evening = utc(2024, 1, 5, 18)
    assert constraint_block(utc(2024, 1, 5, 12), window, weekend, UTC) is None
    assert constraint_block(friday_evening, None, (), UTC) is None
    # Outside the window on Friday evening: the next allowed minute is Monday 09:00, not Saturday 09:00.
    assert constraint_block(friday_evening, window, weekend, UTC) == ("outside_time_window", utc(2024, 1, 8, 9))
    # Day checked first.
    assert constraint_block(utc(2024, 1, 6, 12), window, weekend, UTC) == ("outside_day_constraint", utc(2024, 1, 8, 9))
    assert constraint_block(utc(2024, 1, 6, 12), None, ("sat",), UTC) == ("outside_day_constraint", utc(2024, 1, 7))
    assert constraint_block(utc(2024, 1, 5, 8, 15), window, (), UTC) == ("outside_time_window", utc(2024, 1, 5, 9))
    # Wrapping window with an excluded day: Saturday 01:00 is blocked by the day; Sunday 00:00 is inside 22:00-06:00.
    assert constraint_block(utc(2024, 1, 6, 1), "22:00-06:00", (6,), UTC) == ("outside_day_constraint", utc(2024, 1, 7))
    assert constraint_block(utc(2024, 1, 6, 1), "22:00-06:00", tuple(range(7)), UTC) == ("outside_day_constraint", None)
    # In the schedule's zone.
    assert constraint_block(utc(2024, 7, 5, 6, 30), window, weekend, BERLIN) == \
        ("outside_time_window", utc(2024, 7, 5, 7))


def _brute_first_allowed(moment, window, not_on, zone, max_minutes):
    if not (is_excluded_day(moment, not_on, zone) or (window and not in_window(moment, window, zone))):
        return moment
    probe = moment.astimezone(UTC).replace(second=0, microsecond=0) + MINUTE
    for _ in range(max_minutes):
        wall = probe.astimezone(zone)
        minute = wall.hour * 60 + wall.minute
        start, end = window or (0, 1440)
        open_now = start <= minute < end if start < end else (minute >= start or minute < end)
        if wall.isoweekday() % 7 not in not_on and open_now:
            return probe
        probe += MINUTE
    return None


def test_constraint_block_matches_brute_force():
    """Random windows and excluded days, half the moments next to a DST change."""
    rng = random.Random(11)
    blocked = 0
    for _ in range(90):
        zone = rng.choice(BRUTE_ZONES)
        moment = random_start(rng, zone) + timedelta(seconds=rng.randint(0, 59))
        start, end = rng.randrange(0, 1440, rng.choice([1, 15, 30, 60])), rng.randrange(0, 1440, 30)
        window = None if start == end or rng.random() < 0.15 else (start, end)
        not_on = tuple(sorted(rng.sample(range(7), rng.choice([0, 0, 1, 2, 3, 5]))))
        result = constraint_block(moment, window, not_on, zone)
        expected = _brute_first_allowed(moment, window, not_on, zone, 8 * 24 * 60)
        if result is None:
            assert expected == moment
            continue
        blocked += 1
        reason, retry = result
        assert reason == ("outside_day_constraint" if is_excluded_day(moment, not_on, zone) else "outside_time_window")
        assert retry == expected, (zone.key, moment, window, not_on, retry, expected)
    assert blocked > 40


# ---------------------------------------------------------------------------
# catch-up
# ---------------------------------------------------------------------------

BASE = utc(2024, 1, 1, 10)
HOUR = 3600


def test_catch_up_nothing_missed():
    assert catch_up_missed(BASE + timedelta(minutes=59), BASE, HOUR) == 0
    assert catch_up_slots(BASE + timedelta(minutes=59), BASE, HOUR, "run_all") == []
    assert catch_up_slots(BASE - timedelta(hours=5), BASE, HOUR, "run_once") == []


def test_catch_up_slots_run_once_and_run_all():
    now = BASE + timedelta(hours=2, minutes=30)  # 11:00 and 12:00 were missed
    assert catch_up_missed(now, BASE, HOUR) == 2
    assert catch_up_slots(now, BASE, HOUR, "run_all") == [utc(2024, 1, 1, 11), utc(2024, 1, 1, 12)]
    assert catch_up_slots(now, BASE, HOUR, "run_once") == [utc(2024, 1, 1, 11)]
    assert catch_up_slots(now, BASE, HOUR, "skip") == []
    assert catch_up_last_fired(now, BASE, HOUR, "run_all", 2) == utc(2024, 1, 1, 12)
    assert catch_up_last_fired(now, BASE, HOUR, "run_once", 1) == now
    assert catch_up_last_fired(now, BASE, HOUR, "run_all", 0) == BASE


def test_catch_up_exact_boundary_counts():
    assert catch_up_missed(BASE + timedelta(hours=1), BASE, HOUR) == 1
    assert catch_up_missed(BASE + timedelta(hours=3), BASE, HOUR) == 3
    assert catch_up_missed(BASE + timedelta(hours=3) - timedelta(microseconds=1), BASE, HOUR) == 2
    one_hour_late = BASE + timedelta(hours=1)
    assert catch_up_slots(one_hour_late, BASE, parse_duration("1h"), "run_all") == [one_hour_late]


def test_catch_up_run_all_is_capped_at_100():
    now = BASE + timedelta(hours=1000, minutes=1)
    assert catch_up_missed(now, BASE, HOUR) == 1000
    slots = catch_up_slots(now, BASE, HOUR, "run_all")
    assert len(slots) == CATCH_UP_MAX == 100
    assert slots[0] == BASE + timedelta(hours=1) and slots[-1] == BASE + timedelta(hours=100)
    assert catch_up_last_fired(now, BASE, HOUR, "run_all", len(slots)) == BASE + timedelta(hours=100)


def test_catch_up_next_run_and_key_text():
    fired = utc(2024, 1, 1, 12)
    assert catch_up_next_run(fired, HOUR, None) == utc(2024, 1, 1, 13)
    assert catch_up_next_run(fired, HOUR, utc(2024, 1, 1, 11)) == utc(2024, 1, 1, 13)
    assert catch_up_next_run(fired, HOUR, utc(2024, 1, 1, 12, 20)) == utc(2024, 1, 1, 12, 20)
    assert catch_up_slot_text(local(BERLIN, 2024, 1, 1, 12, 0, 0, 123456)) == "2024-01-01T11:00:00Z"


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.integers(1, 10 ** 6), st.integers(-10 ** 7, 10 ** 8), st.sampled_from(["run_once", "run_all"]))
def test_catch_up_property(interval, elapsed, mode):
    """missed = the number of slots base + k*interval (k >= 1) at or before now."""
    now = BASE + timedelta(seconds=elapsed)
    missed = catch_up_missed(now, BASE, interval)
    assert missed == max(0, elapsed // interval)
    slots = catch_up_slots(now, BASE, interval, mode)
    assert len(slots) == min(missed, 1 if mode == "run_once" else 100)
    assert all(slot <= now for slot in slots)
    assert slots == sorted(slots) and all((s - BASE).total_seconds() % interval == 0 for s in slots)


def test_module_helpers_take_zone_names_and_durations():
    assert schedule.in_window(utc(2024, 1, 1, 21, 30), "22:00-06:00", "Europe/Berlin")
    assert schedule.every_next(BASE, parse_duration("30m")) == BASE + timedelta(minutes=30)
