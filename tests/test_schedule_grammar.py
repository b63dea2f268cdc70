"""The pure schedule grammar shared by config validation and the scheduler."""
import pytest

from ductile_lib.schedule import (ScheduleError, cron_can_fire, load_timezone, parse_cron, parse_weekday,
                                  parse_window)


def test_cron_fields():
    spec = parse_cron("*/15 9-17 1,15 JAN-MAR mon-fri")
    assert spec.minutes == {0, 15, 30, 45}
    assert spec.hours == set(range(9, 18))
    assert spec.days_of_month == {1, 15}
    assert spec.months == {1, 2, 3}
    assert spec.days_of_week == {1, 2, 3, 4, 5}
    assert spec.dom_restricted and spec.dow_restricted


def test_cron_sunday_is_0_and_7_and_steps_from_a_start():
    assert parse_cron("0 0 * * 7").days_of_week == {0}
    assert parse_cron("5/20 * * * *").minutes == {5, 25, 45}
    assert not parse_cron("* * * * *").dom_restricted


@pytest.mark.parametrize("expr", ["* * * *", "61 * * * *", "* 24 * * *", "* * 0 * *", "* * * 13 *", "* * * * 8",
                                  "*/0 * * * *", "5-1 * * * *", "a * * * *", "1,,2 * * * *", "* * * foo *"])
def test_bad_cron(expr):
    with pytest.raises(ScheduleError):
        parse_cron(expr)


def test_cron_that_never_fires():
    assert not cron_can_fire(parse_cron("0 0 30 2 *"))
    assert not cron_can_fire(parse_cron("0 0 31 4,6,9,11 *"))
    assert cron_can_fire(parse_cron("0 0 29 2 *"))  # leap years exist
    assert cron_can_fire(parse_cron("0 0 30 2 mon"))  # either-rule: Mondays in February


def test_windows():
    assert parse_window("07:00-22:30") == (420, 1350)
    assert parse_window("22:00-06:00") == (1320, 360)
    for bad in ("7-22", "25:00-01:00", "10:00-10:00", "10:60-11:00"):
        with pytest.raises(ScheduleError, match="invalid window"):
            parse_window(bad)


def test_weekdays():
    assert [parse_weekday(v) for v in ("sun", "Monday", 0, 7, "6", "SAT")] == [0, 1, 0, 0, 6, 6]
    for bad in ("funday", 8, -1, True):
        with pytest.raises(ScheduleError):
            parse_weekday(bad)


def test_timezones():
    assert str(load_timezone("Europe/Berlin")) == "Europe/Berlin"
    for bad in ("Mars/Olympus", "", "../etc/passwd"):
        with pytest.raises(ScheduleError, match="unknown time zone"):
            load_timezone(bad)
