"""The circuit-breaker store (spec 20 §6): reconcile, gate, reset, view."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from ductile_lib import breakers
from ductile_lib.queue import JobQueue
from ductile_lib.timefmt import format_ts

SERVICE = "ductile"
T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=timezone.utc)


class Clock:
    """A clock the test moves by hand; every read advances one second so rows order strictly."""

    def __init__(self, start: datetime = T0):
        self.now = start

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def queue(db, clock):
    return JobQueue(db, clock=clock)


def finish(queue, status: str, submitted_by: str = SERVICE, command: str = "poll", plugin: str = "echo"):
    """Enqueue, claim and end one job with ``status``; returns the ended job."""
    queue.enqueue(plugin, command, {}, submitted_by)
    job = queue.claim(lambda _plugin: 8)
    error = None if status == "succeeded" else "boom"
    return queue.complete(job, status, last_error=error)


def row(db, command: str = "poll"):
    with db.read() as conn:
        found = conn.execute("SELECT * FROM circuit_breakers WHERE plugin = 'echo' AND command = ?",
                             (command,)).fetchone()
    return None if found is None else dict(found)


def transitions(db):
    with db.read() as conn:
        return [dict(r) for r in conn.execute(
            "SELECT * FROM circuit_breaker_transitions ORDER BY rowid").fetchall()]


def reconcile(db, clock, threshold: int = 3):
    return breakers.reconcile(db, "echo", "poll", SERVICE, threshold, clock())


def open_breaker(db, queue, clock, threshold: int = 3):
    """Fail ``threshold`` scheduler jobs, reconciling after each; returns the last job."""
    for _ in range(threshold):
        job = finish(queue, "failed")
        reconcile(db, clock, threshold)
    return job


# --- reconcile ----------------------------------------------------------------------

def test_no_terminal_job_changes_nothing(db, queue, clock):
    queue.enqueue("echo", "poll", {}, SERVICE)  # queued, not terminal
    assert reconcile(db, clock) is None
    assert row(db) is None and transitions(db) == []


def test_failures_open_at_threshold(db, queue, clock):
    first = finish(queue, "failed")
    assert reconcile(db, clock) is None  # closed -> closed is no change
    assert row(db)["state"] == "closed" and row(db)["failure_count"] == 1
    assert row(db)["last_failure_at"] == first.completed_at and row(db)["opened_at"] is None
    finish(queue, "dead")
    assert reconcile(db, clock) is None
    third = finish(queue, "failed")
    change = reconcile(db, clock)
    assert change == breakers.BreakerChange("echo", "poll", "closed", "open", 3)
    current = row(db)
    assert current["state"] == "open" and current["failure_count"] == 3
    assert current["opened_at"] == third.completed_at and current["last_job_id"] == third.id
    [transition] = transitions(db)
    assert (transition["from_state"], transition["to_state"], transition["reason"]) == ("closed", "open",
                                                                                         "failure_threshold")
    assert transition["job_id"] == third.id and transition["failure_count"] == 3
    assert len(transition["id"]) == 36 and transition["id"] == transition["id"].lower()


def test_threshold_zero_means_default_three(db, queue, clock):
    for expected in ("closed", "closed", "open"):
        finish(queue, "failed")
        reconcile(db, clock, threshold=0)
        assert row(db)["state"] == expected


def test_same_job_is_not_counted_twice(db, queue, clock):
    finish(queue, "failed")
    reconcile(db, clock)
    for _ in range(3):
        assert reconcile(db, clock) is None
    assert row(db)["failure_count"] == 1


def test_success_closes_and_clears(db, queue, clock):
    open_breaker(db, queue, clock)
    ok = finish(queue, "succeeded")
    change = reconcile(db, clock)
    assert change == breakers.BreakerChange("echo", "poll", "open", "closed", 0)
    current = row(db)
    assert current["state"] == "closed" and current["failure_count"] == 0
    assert current["opened_at"] is None and current["last_failure_at"] is None and current["last_job_id"] == ok.id
    assert [t["reason"] for t in transitions(db)] == ["failure_threshold", "success"]
    assert transitions(db)[-1]["job_id"] == ok.id


def test_only_scheduler_jobs_of_the_command_count(db, queue, clock):
    finish(queue, "failed", submitted_by="api")
    finish(queue, "failed", submitted_by="cli")
    finish(queue, "failed", command="handle")
    finish(queue, "failed", plugin="other")
    assert reconcile(db, clock) is None
    assert row(db) is None


def test_skipped_jobs_do_not_count(db, queue, clock):
    finish(queue, "failed")
    reconcile(db, clock)
    with db.write() as conn:  # Ductile never writes `skipped`, but databases hold it
        conn.execute("INSERT INTO job_queue(id, plugin, command, status, submitted_by, created_at, completed_at)"
                     " VALUES ('s1', 'echo', 'poll', 'skipped', ?, ?, ?)",
                     (SERVICE, format_ts(T0 + timedelta(days=1)), format_ts(T0 + timedelta(days=1))))
    assert reconcile(db, clock) is None
    assert row(db)["failure_count"] == 1


def test_newest_by_completed_at_then_rowid(db, queue, clock):
    older = finish(queue, "succeeded")
    with db.write() as conn:  # a failure that completed earlier but was written later
        conn.execute("INSERT INTO job_queue(id, plugin, command, status, submitted_by, created_at, completed_at)"
                     " VALUES ('late', 'echo', 'poll', 'failed', ?, ?, ?)",
                     (SERVICE, format_ts(T0), format_ts(T0)))
    reconcile(db, clock)
    assert row(db)["last_job_id"] == older.id and row(db)["state"] == "closed"


# --- gate and the half-open probe -------------------------------------------------------

def test_gate_lets_closed_and_unknown_breakers_through(db, queue, clock):
    assert breakers.gate(db, "echo", "poll", 60, clock()) == (True, None, False)
    finish(queue, "failed")
    reconcile(db, clock)
    assert breakers.gate(db, "echo", "poll", 60, clock()) == (True, None, False)
    assert transitions(db) == []


def test_gate_blocks_during_cooldown_then_half_opens(db, queue, clock):
    last = open_breaker(db, queue, clock)
    opened = row(db)["opened_at"]
    from ductile_lib.timefmt import parse_ts

    retry_at = parse_ts(opened) + timedelta(seconds=600)
    decision = breakers.gate(db, "echo", "poll", 600, retry_at - timedelta(seconds=1))
    assert decision == (False, retry_at, False)
    assert decision.allowed is False and decision.retry_at == retry_at
    assert row(db)["state"] == "open"
    decision = breakers.gate(db, "echo", "poll", 600, retry_at)
    assert decision == (True, None, True)
    assert row(db)["state"] == "half_open" and row(db)["failure_count"] == 3
    latest = transitions(db)[-1]
    assert (latest["from_state"], latest["to_state"], latest["reason"]) == ("open", "half_open",
                                                                            "cooldown_elapsed")
    assert latest["job_id"] == last.id
    # half_open lets the probe through without another transition
    assert breakers.gate(db, "echo", "poll", 600, retry_at) == (True, None, False)
    assert len(transitions(db)) == 2


def test_reset_after_zero_means_thirty_minutes(db, queue, clock):
    open_breaker(db, queue, clock)
    from ductile_lib.timefmt import parse_ts

    opened = parse_ts(row(db)["opened_at"])
    assert breakers.gate(db, "echo", "poll", 0, opened + timedelta(minutes=29)).allowed is False
    assert breakers.gate(db, "echo", "poll", 0, opened + timedelta(minutes=30)).allowed is True


def test_gate_half_opens_when_opened_at_is_missing(db, queue, clock):
    open_breaker(db, queue, clock)
    with db.write() as conn:
        conn.execute("UPDATE circuit_breakers SET opened_at = NULL")
    assert breakers.gate(db, "echo", "poll", 600, T0) == (True, None, True)
    assert row(db)["state"] == "half_open"


def _half_open(db, queue, clock):
    open_breaker(db, queue, clock)
    breakers.gate(db, "echo", "poll", 1, clock() + timedelta(hours=1))
    assert row(db)["state"] == "half_open"


def test_probe_success_closes(db, queue, clock):
    _half_open(db, queue, clock)
    finish(queue, "succeeded")
    assert reconcile(db, clock) == breakers.BreakerChange("echo", "poll", "half_open", "closed", 0)
    assert [t["reason"] for t in transitions(db)] == ["failure_threshold", "cooldown_elapsed", "success"]


def test_probe_failure_reopens_with_new_opened_at(db, queue, clock):
    _half_open(db, queue, clock)
    old_opened = row(db)["opened_at"]
    probe = finish(queue, "failed")
    # a raised threshold does not let a failed probe close the breaker
    change = reconcile(db, clock, threshold=10)
    assert change == breakers.BreakerChange("echo", "poll", "half_open", "open", 4)
    current = row(db)
    assert current["state"] == "open" and current["failure_count"] == 4
    assert current["opened_at"] == probe.completed_at != old_opened
    assert transitions(db)[-1]["reason"] == "failure_threshold"


# --- reset and view ----------------------------------------------------------------------

def test_reset_closes_and_does_not_recount_the_last_job(db, queue, clock):
    last = open_breaker(db, queue, clock)
    change = breakers.reset(db, "echo", "poll", SERVICE, clock())
    assert change == breakers.BreakerChange("echo", "poll", "open", "closed", 0)
    current = row(db)
    assert (current["state"], current["failure_count"], current["opened_at"], current["last_failure_at"]) == (
        "closed", 0, None, None)
    assert current["last_job_id"] == last.id
    reset_row = transitions(db)[-1]
    assert (reset_row["from_state"], reset_row["to_state"], reset_row["reason"], reset_row["job_id"]) == (
        "open", "closed", "manual_reset", None)
    assert reconcile(db, clock) is None
    assert row(db)["failure_count"] == 0


def test_reset_without_a_row_records_null_from_state(db, clock):
    change = breakers.reset(db, "echo", "poll", SERVICE, clock())
    assert change.previous_state is None
    assert row(db)["state"] == "closed" and row(db)["last_job_id"] is None
    assert transitions(db)[0]["from_state"] is None


def test_view_without_row(db):
    assert breakers.view(db, "echo", "poll", 20) == {"plugin": "echo", "command": "poll", "failure_count": 0,
                                                     "transitions": []}


def test_view_shape_order_and_limit(db, queue, clock):
    last = open_breaker(db, queue, clock)
    for _ in range(3):
        breakers.reset(db, "echo", "poll", SERVICE, clock())
    report = breakers.view(db, "echo", "poll", 2)
    assert list(report) == ["plugin", "command", "state", "failure_count", "last_job_id", "updated_at",
                            "transitions"]
    assert report["state"] == "closed" and report["last_job_id"] == last.id
    assert len(report["transitions"]) == 2
    newest = report["transitions"][0]
    assert list(newest) == ["id", "from_state", "to_state", "failure_count", "reason", "created_at"]
    assert newest["created_at"] > report["transitions"][1]["created_at"]
    full = breakers.view(db, "echo", "poll", 0)  # <= 0 means the default 20
    assert len(full["transitions"]) == 4
    opened = full["transitions"][-1]
    assert opened["reason"] == "failure_threshold" and opened["job_id"] == last.id
