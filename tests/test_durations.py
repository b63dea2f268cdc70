"""Durations and sizes: Go's grammar plus d/w, Go's printing."""
import pytest
from hypothesis import given, strategies as st

from ductile_lib.durations import (Duration, DurationError, format_duration, format_size, parse_duration,
                                   parse_interval, parse_size)

S = 10 ** 9


@pytest.mark.parametrize("text, seconds", [
    ("500ms", 0.5), ("30s", 30), ("5m", 300), ("1h30m", 5400), ("1.5h", 5400), ("30d", 30 * 86400),
    ("2w", 14 * 86400), ("-1m", -60), ("0", 0), ("1m30.5s", 90.5), ("250us", 0.00025),
    ("250\u00b5s", 0.00025), ("1ns", 1e-9), (" 10s ", 10),
])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == round(seconds * S)


@pytest.mark.parametrize("value", ["60", 60, 1.5, "1.5", "+60"])
def test_bare_number_asks_for_a_unit(value):
    with pytest.raises(DurationError, match=r'tick: duration "[^"]+" has no unit; add one, e\.g\. "'):
        parse_duration(value, "tick")


@pytest.mark.parametrize("value", ["5x", "", "ms", "1h 2m", "1..5s", "-", True, None, "s5", "5sec"])
def test_garbage_is_invalid(value):
    with pytest.raises(DurationError, match="invalid duration"):
        parse_duration(value, "k")


@pytest.mark.parametrize("ns, text", [
    (0, "0s"), (S, "1s"), (90 * S, "1m30s"), (3600 * S, "1h0m0s"), (30 * 86400 * S, "720h0m0s"),
    (1500 * 10 ** 6, "1.5s"), (500 * 10 ** 6, "500ms"), (1500, "1.5\u00b5s"), (7, "7ns"),
    (-60 * S, "-1m0s"), (3723 * S + 5 * 10 ** 8, "1h2m3.5s"),
])
def test_format_duration_matches_go(ns, text):
    assert format_duration(ns) == text
    assert str(Duration(ns)) == text


@given(st.integers(min_value=-(10 ** 18), max_value=10 ** 18))
def test_format_then_parse_round_trips(ns):
    assert parse_duration(format_duration(ns)) == ns


def test_named_intervals():
    assert parse_interval("Hourly") == 3600 * S
    assert parse_interval("daily") == 86400 * S
    assert parse_interval("weekly") == 7 * 86400 * S
    assert parse_interval("monthly") == 720 * 3600 * S
    with pytest.raises(DurationError, match='invalid interval "0s"'):
        parse_interval("0s")
    with pytest.raises(DurationError, match='invalid interval "often"'):
        parse_interval("often")


@pytest.mark.parametrize("text, size", [("512", 512), ("64KB", 65536), ("1 MB", 1 << 20), ("1gb", 1 << 30),
                                        (2048, 2048)])
def test_parse_size(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["1.5MB", "1M", "0", "-1", "", "MB", True])
def test_bad_sizes(text):
    with pytest.raises(ValueError):
        parse_size(text)


def test_format_size():
    assert format_size(1 << 20) == "1MB"
    assert format_size(1536 * 1024) == "1536KB"
    assert format_size(100) == "100"
