"""Plugin state and facts against real SQLite files (spec 20 §7, decision E9)."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from ductile_lib.state import StateError, StateStore
from ductile_lib.timefmt import format_ts

FACT_TOO_LARGE = "failed to record plugin fact: plugin state exceeds max size (1048576 bytes)"
STATE_TOO_LARGE = "failed to apply state updates: plugin state exceeds max size (1048576 bytes)"


class FakeClock:
    def __init__(self):
        self.now = datetime(2026, 3, 1, 12, 0, 0, tzinfo=timezone.utc)

    def __call__(self):
        return self.now

    def advance(self, **delta):
        self.now += timedelta(**delta)


def rule(command="sync", fact_type="repo.snapshot", **extra):
    return dict({"when": {"command": command}, "from": "state_updates", "fact_type": fact_type}, **extra)


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def store(db, clock):
    return StateStore(db, clock=clock)


def stored(db, plugin):
    with db.read() as conn:
        row = conn.execute("SELECT state, updated_at FROM plugin_state WHERE plugin_name = ?", (plugin,)).fetchone()
    return None if row is None else (row["state"], row["updated_at"])


def set_raw_state(db, plugin, value):
    with db.write() as conn:
        conn.execute("INSERT OR REPLACE INTO plugin_state(plugin_name, state, updated_at) VALUES (?, ?, ?)",
                     (plugin, value, "2026-01-01T00:00:00.000000Z"))


def sequence(db):
    with db.read() as conn:
        row = conn.execute("SELECT value FROM storage_sequences WHERE name = 'plugin_facts'").fetchone()
    return None if row is None else row[0]


def fact_count(db):
    with db.read() as conn:
        return conn.execute("SELECT COUNT(*) FROM plugin_facts").fetchone()[0]


# --- reading ---------------------------------------------------------------------------

def test_missing_state_is_an_empty_object(store):
    assert store.get_state("echo") == {}


def test_state_is_read_from_text_or_blob(store, db):
    set_raw_state(db, "a", '{"x": 1}')
    set_raw_state(db, "b", b'{"y": [1, 2]}')
    assert store.get_state("a") == {"x": 1} and store.get_state("b") == {"y": [1, 2]}


@pytest.mark.parametrize("raw", ["not json", "[1, 2]", '"text"'])
def test_unparsable_state_raises(store, db, raw):
    set_raw_state(db, "echo", raw)
    with pytest.raises(StateError):
        store.get_state("echo")
    with pytest.raises(StateError):  # a merge must not silently replace it either
        store.apply_updates("echo", "poll", "job-1", {"k": 1}, [])
    assert stored(db, "echo")[0] == raw


# --- shallow merge -----------------------------------------------------------------------

def test_shallow_merge_replaces_top_level_keys(store, db, clock):
    store.apply_updates("echo", "poll", "job-1", {"a": 1, "b": {"x": 1}}, [])
    clock.advance(seconds=5)
    store.apply_updates("echo", "poll", "job-2", {"c": "é", "b": {"y": 2}}, [])
    assert store.get_state("echo") == {"a": 1, "b": {"y": 2}, "c": "é"}
    text, updated_at = stored(db, "echo")
    assert text == '{"a":1,"b":{"y":2},"c":"é"}'  # sorted keys, compact, UTF-8 kept
    assert updated_at == format_ts(clock.now)
    assert fact_count(db) == 0 and sequence(db) is None


@pytest.mark.parametrize("updates", [{}, None, [1, 2], "text"])
def test_only_a_non_empty_object_is_applied(store, db, updates):
    store.apply_updates("echo", "poll", "job-1", updates, [rule(command="poll")])
    assert stored(db, "echo") is None and fact_count(db) == 0


def test_rules_for_other_commands_mean_merge(store, db):
    store.apply_updates("echo", "poll", "job-0", {"keep": True}, [])
    store.apply_updates("echo", "poll", "job-1", {"new": 1}, [rule(command="sync")])
    assert store.get_state("echo") == {"keep": True, "new": 1} and fact_count(db) == 0


# --- facts ----------------------------------------------------------------------------------

def test_each_matching_rule_records_a_fact_and_mirrors_the_object(store, db, clock):
    store.apply_updates("repo", "sync", "job-0", {"old": True, "stale": 1}, [])
    rules = [rule(fact_type="repo.snapshot"), rule(fact_type="repo.audit", compatibility_view="mirror_object"),
             rule(command="poll", fact_type="ignored")]
    store.apply_updates("repo", "sync", "job-1", {"z": 1, "a": {"b": 2}}, rules)
    facts = store.facts("repo")
    assert [(f.seq, f.fact_type) for f in facts] == [(2, "repo.audit"), (1, "repo.snapshot")]
    for fact in facts:
        assert fact.fact == {"z": 1, "a": {"b": 2}} and fact.fact_json == '{"a":{"b":2},"z":1}'
        assert (fact.plugin_name, fact.job_id, fact.command) == ("repo", "job-1", "sync")
        assert fact.created_at == format_ts(clock.now) and len(fact.id) == 36
    assert store.get_state("repo") == {"z": 1, "a": {"b": 2}}  # replaced, not merged
    assert stored(db, "repo") == ('{"a":{"b":2},"z":1}', format_ts(clock.now))
    assert sequence(db) == 2


def test_rule_without_compatibility_view_mirrors(store, db):
    store.apply_updates("repo", "sync", "job-1", {"v": 1}, [{"when": {"command": "sync"}, "fact_type": "t"}])
    assert store.get_state("repo") == {"v": 1} and fact_count(db) == 1


def test_sequence_continues_from_the_stored_counter(store, db, clock):
    with db.write() as conn:
        conn.execute("INSERT INTO storage_sequences(name, value) VALUES ('plugin_facts', 41)")
    store.apply_updates("repo", "sync", "job-1", {"v": 1}, [rule()])
    clock.advance(seconds=1)
    store.apply_updates("other", "sync", "job-2", {"v": 2}, [rule()])
    assert store.facts("repo")[0].seq == 42 and store.facts("other")[0].seq == 43
    assert sequence(db) == 43


def test_fact_order_and_filters(store, db, clock):
    for n in range(3):
        store.apply_updates("repo", "sync", "job-%d" % n, {"n": n}, [rule(fact_type="a" if n != 1 else "b")])
        clock.advance(seconds=1)
    with db.write() as conn:  # legacy rows without seq, as the original once wrote
        for n, at in ((10, "2026-03-02T00:00:00.000000Z"), (11, "2026-03-03T00:00:00.000000Z")):
            conn.execute("INSERT INTO plugin_facts(id, seq, plugin_name, fact_type, job_id, command, fact_json,"
                         " created_at) VALUES (?, NULL, 'repo', 'a', 'old', 'sync', ?, ?)",
                         ("legacy-%d" % n, json.dumps({"n": n}), at))
    assert [f.fact["n"] for f in store.facts("repo")] == [2, 1, 0, 11, 10]
    assert [f.fact["n"] for f in store.facts("repo", fact_type="a")] == [2, 0, 11, 10]
    assert [f.fact["n"] for f in store.facts("repo", limit=2)] == [2, 1]
    assert store.facts("nobody") == []


# --- size limit -------------------------------------------------------------------------------

def padded(total_bytes, key="k"):
    """An object whose normalized JSON is exactly `total_bytes` long."""
    overhead = len(json.dumps({key: ""}, separators=(",", ":")))
    return {key: "x" * (total_bytes - overhead)}


def test_merged_state_may_be_exactly_one_mebibyte(store, db):
    store.apply_updates("big", "poll", "job-1", padded(1048576), [])
    assert len(stored(db, "big")[0].encode("utf-8")) == 1048576


def test_merged_state_over_the_limit_fails_and_keeps_the_old_state(store, db):
    store.apply_updates("big", "poll", "job-1", {"a": "small"}, [])
    before = stored(db, "big")
    with pytest.raises(StateError) as error:
        store.apply_updates("big", "poll", "job-2", padded(1048576 - len(',"a":"small"') + 1), [])
    assert str(error.value) == STATE_TOO_LARGE
    assert stored(db, "big") == before


def test_fact_over_the_limit_records_nothing(store, db):
    store.apply_updates("big", "sync", "job-1", {"a": 1}, [])
    with pytest.raises(StateError) as error:
        store.apply_updates("big", "sync", "job-2", padded(1048577), [rule()])
    assert str(error.value) == FACT_TOO_LARGE
    assert fact_count(db) == 0 and sequence(db) is None and store.get_state("big") == {"a": 1}
    store.apply_updates("big", "sync", "job-3", padded(1048576), [rule()])
    assert fact_count(db) == 1 and sequence(db) == 1


def test_size_counts_utf8_bytes_not_characters(store):
    overhead = len('{"k":""}')
    with pytest.raises(StateError):
        store.apply_updates("big", "poll", "job-1", {"k": "é" * ((1048576 - overhead) // 2 + 1)}, [])
