"""Stored timestamp shape and RFC 3339 parsing (spec 20 §0)."""
from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

import pytest

from ductile_lib.timefmt import format_ts, now_ts, parse_ts, utc_now

STORED_SHAPE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z")
UTC = timezone.utc


# --- writing -------------------------------------------------------------------

def test_utc_now_is_aware_utc_and_current():
    before = datetime.now(UTC)
    now = utc_now()
    after = datetime.now(UTC)
    assert now.utcoffset() == timedelta(0)
    assert before <= now <= after


def test_format_keeps_six_fraction_digits_even_when_zero():
    assert format_ts(datetime(2026, 3, 15, 14, 0, 0, tzinfo=UTC)) == "2026-03-15T14:00:00.000000Z"
    assert format_ts(datetime(2026, 3, 15, 14, 0, 0, 120000, tzinfo=UTC)) == "2026-03-15T14:00:00.120000Z"
    assert format_ts(datetime(2026, 3, 15, 14, 0, 0, 7, tzinfo=UTC)) == "2026-03-15T14:00:00.000007Z"


def test_format_converts_other_zones_to_utc():
    plus_ten = timezone(timedelta(hours=10))
    assert format_ts(datetime(2026, 1, 1, 5, 30, tzinfo=plus_ten)) == "2025-12-31T19:30:00.000000Z"


def test_format_pads_small_years():
    assert format_ts(datetime(999, 1, 2, 3, 4, 5, tzinfo=UTC)) == "0999-01-02T03:04:05.000000Z"


def test_format_refuses_naive_datetimes():
    with pytest.raises(ValueError):
        format_ts(datetime(2026, 3, 15, 14, 0, 0))


def test_now_ts_has_the_stored_shape():
    assert STORED_SHAPE.fullmatch(now_ts())


def test_string_order_equals_time_order():
    start = datetime(2026, 3, 15, 23, 59, 59, 999990, tzinfo=UTC)
    moments = [start + timedelta(microseconds=step * 3) for step in range(10)]
    moments += [start + timedelta(days=400 * step) for step in range(1, 5)]
    texts = [format_ts(moment) for moment in moments]
    assert sorted(texts) == texts


# --- reading -------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("2026-03-15T14:00:00Z", datetime(2026, 3, 15, 14, 0, 0, tzinfo=UTC)),
    ("2026-03-15T14:00:00.5Z", datetime(2026, 3, 15, 14, 0, 0, 500000, tzinfo=UTC)),
    ("2026-03-15T14:00:00.123456Z", datetime(2026, 3, 15, 14, 0, 0, 123456, tzinfo=UTC)),
    ("2026-03-15T14:00:00.123456789Z", datetime(2026, 3, 15, 14, 0, 0, 123456, tzinfo=UTC)),
    ("2026-03-15T14:00:00.999999999Z", datetime(2026, 3, 15, 14, 0, 0, 999999, tzinfo=UTC)),
    ("2026-03-15T14:00:00.1234567+02:00", datetime(2026, 3, 15, 12, 0, 0, 123456, tzinfo=UTC)),
    ("2026-03-15T01:00:00-05:30", datetime(2026, 3, 15, 6, 30, 0, tzinfo=UTC)),
    ("2026-03-15t14:00:00z", datetime(2026, 3, 15, 14, 0, 0, tzinfo=UTC)),
    ("2026-03-15T14:00:00-00:00", datetime(2026, 3, 15, 14, 0, 0, tzinfo=UTC)),
])
def test_parse_accepts_rfc3339_variants(text, expected):
    parsed = parse_ts(text)
    assert parsed == expected
    assert parsed.utcoffset() == timedelta(0)


def test_parse_reads_what_the_go_original_writes():
    """Go's RFC3339Nano trims trailing zeros and drops an all-zero fraction."""
    assert parse_ts("2026-03-15T14:00:00.12Z") == datetime(2026, 3, 15, 14, 0, 0, 120000, tzinfo=UTC)
    assert parse_ts("2026-03-15T14:00:00Z").microsecond == 0


def test_format_then_parse_round_trips():
    moment = datetime(2026, 7, 4, 12, 34, 56, 789012, tzinfo=UTC)
    assert parse_ts(format_ts(moment)) == moment


@pytest.mark.parametrize("text", [
    "",
    "2026-03-15",
    "2026-03-15T14:00:00",          # no zone
    "2026-03-15 14:00:00Z",         # space instead of T
    "2026-03-15T14:00Z",            # no seconds
    "2026-03-15T14:00:00.Z",        # empty fraction
    "2026-03-15T14:00:00.1234567890Z",  # ten digits
    "2026-03-15T14:00:00+0200",     # offset without colon
    "2026-03-15T14:00:00+24:00",    # offset out of range
    "2026-03-15T14:00:00+02:60",
    "2026-13-01T00:00:00Z",
    "2026-02-30T00:00:00Z",
    "2026-03-15T24:00:00Z",
    "2026-12-31T23:59:60Z",         # leap second
    " 2026-03-15T14:00:00Z",
    "2026-03-15T14:00:00Z\n",
    "0001-01-01T00:00:00+01:00",    # before year 1 in UTC
    "２０２６-03-15T14:00:00Z",       # non-ASCII digits
])
def test_parse_rejects_malformed_text(text):
    with pytest.raises(ValueError):
        parse_ts(text)


def test_parse_rejects_non_strings():
    with pytest.raises(ValueError):
        parse_ts(None)
