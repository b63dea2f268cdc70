"""The job queue against real SQLite files (spec 20 §3, §4.2, §4.4, §5.5, §8.2-§8.4)."""
from __future__ import annotations

import io
import json
import random
import re
import threading
from datetime import datetime, timedelta, timezone

import pytest

from ductile_lib import queue as queuemod
from ductile_lib.db import Database
from ductile_lib.logs import Logger, LogSink
from ductile_lib.queue import JobNotRunning, JobQueue
from ductile_lib.timefmt import format_ts, parse_ts

TS_SHAPE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
UNLIMITED = lambda plugin: 100  # noqa: E731


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, start=datetime(2026, 3, 1, 12, 0, 0, tzinfo=timezone.utc)):
        self.now = start

    def __call__(self):
        return self.now

    def advance(self, **delta):
        self.now += timedelta(**delta)


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def logs():
    return io.StringIO()


@pytest.fixture
def q(db, clock, logs):
    return JobQueue(db, clock=clock, rng=random.Random(7), log=Logger("dispatch", LogSink(logs)))


def log_lines(stream):
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def rows(db, sql, *args):
    with db.read() as conn:
        return [dict(row) for row in conn.execute(sql, args).fetchall()]


def enqueue(q, clock, plugin="echo", command="poll", **kwargs):
    """Enqueue and move the clock on, so created_at values differ."""
    result = q.enqueue(plugin, command, kwargs.pop("payload", {"n": 1}), kwargs.pop("submitted_by", "api"), **kwargs)
    clock.advance(milliseconds=1)
    return result


def run_job(q, clock, **kwargs):
    """Enqueue and claim one job (nothing older may be queued); returns the running Job."""
    job_id = enqueue(q, clock, **kwargs).job_id
    job = q.claim(UNLIMITED)
    assert job is not None and job.id == job_id
    return job


def statuses(q, job_id):
    return [(t["from_status"], t["to_status"], t["reason"]) for t in q.transitions(job_id)]


# --- enqueue ---------------------------------------------------------------------------

def test_enqueue_writes_the_row_and_the_first_transition(q, db, clock):
    result = q.enqueue("echo", "poll", {"b": 1, "a": "é"}, "ductile", max_attempts=3, dedupe_key="  k1  ",
                       parent_job_id="p1", source_event_id="e1", event_context_id="c1", config_snapshot_id="cfg_x")
    assert result.enqueued and not result.dropped and UUID4.match(result.job_id)
    (row,) = rows(db, "SELECT *, typeof(payload) AS payload_type FROM job_queue")
    assert row["payload_type"] == "blob"
    assert json.loads(str(row["payload"], "utf-8")) == {"b": 1, "a": "é"}
    assert (row["status"], row["attempt"], row["max_attempts"], row["submitted_by"]) == ("queued", 1, 3, "ductile")
    assert row["dedupe_key"] == "k1"
    assert TS_SHAPE.match(row["created_at"]) and row["created_at"] == format_ts(clock.now)
    assert (row["parent_job_id"], row["source_event_id"], row["event_context_id"]) == ("p1", "e1", "c1")
    assert row["enqueued_config_snapshot_id"] == "cfg_x" and row["started_config_snapshot_id"] is None
    assert statuses(q, result.job_id) == [(None, "queued", None)]
    job = q.get(result.job_id)
    assert job.payload == {"b": 1, "a": "é"} and not job.is_root


def test_blank_key_is_no_key_and_bad_max_attempts_means_four(q, db, clock):
    job_id = enqueue(q, clock, dedupe_key="   ", max_attempts=0).job_id
    job = q.get(job_id)
    assert job.dedupe_key is None and job.max_attempts == 4 and job.is_root


def test_outstanding_dedupe_only_with_a_per_call_ttl(q, clock, logs):
    first = enqueue(q, clock, dedupe_key="k")
    second = enqueue(q, clock, dedupe_key="k")  # no per-call TTL: in-flight rows are not checked
    assert second.enqueued
    third = enqueue(q, clock, dedupe_key=" k ", dedupe_ttl_s=60)
    assert third.dropped and third.job_id is None
    assert third.dedupe_reason == "outstanding" and third.existing_job_id == second.job_id
    assert q.count_outstanding("echo", "poll") == 2
    (line,) = [r for r in log_lines(logs) if r["msg"] == "dropped duplicate enqueue"]
    assert line["level"] == "INFO" and line["dedupe_key"] == "k" and line["dedupe_reason"] == "outstanding"
    assert line["existing_job_id"] == second.job_id and "dedupe_ttl" not in line
    assert first.job_id != second.job_id


def test_per_call_ttl_zero_still_checks_in_flight(q, clock):
    enqueue(q, clock, dedupe_key="k")
    assert enqueue(q, clock, dedupe_key="k", dedupe_ttl_s=0).dedupe_reason == "outstanding"


def test_recent_success_drops_within_the_ttl(q, clock, logs):
    job = run_job(q, clock, dedupe_key="k")
    q.complete(job, "succeeded", result="{}")
    clock.advance(hours=23)
    dropped = enqueue(q, clock, dedupe_key="k")
    assert dropped.dropped and dropped.dedupe_reason == "recent_success" and dropped.existing_job_id == job.id
    line = [r for r in log_lines(logs) if r["msg"] == "dropped duplicate enqueue"][-1]
    assert line["dedupe_ttl"] == "24h0m0s"
    clock.advance(hours=1, seconds=1)
    assert enqueue(q, clock, dedupe_key="k").enqueued


def test_per_call_ttl_replaces_the_default_window(q, clock):
    job = run_job(q, clock, dedupe_key="k")
    q.complete(job, "succeeded")
    clock.advance(seconds=5)
    assert enqueue(q, clock, dedupe_key="k", dedupe_ttl_s=10).dedupe_reason == "recent_success"
    clock.advance(seconds=6)
    assert enqueue(q, clock, dedupe_key="k", dedupe_ttl_s=10).enqueued


def test_ttl_zero_never_drops_a_recent_success(q, clock):
    job = run_job(q, clock, dedupe_key="k")
    q.complete(job, "succeeded")
    again = enqueue(q, clock, dedupe_key="k", default_dedupe_ttl_s=0)
    assert again.enqueued
    q.complete(q.claim(UNLIMITED), "succeeded")
    other = run_job(q, clock, plugin="other", dedupe_key="k")
    q.complete(other, "succeeded")
    assert enqueue(q, clock, plugin="other", dedupe_key="k", dedupe_ttl_s=0).enqueued


def test_failed_jobs_never_count_as_recent_success(q, clock):
    job = run_job(q, clock, dedupe_key="k")
    q.complete(job, "failed", last_error="boom")
    assert enqueue(q, clock, dedupe_key="k").enqueued


def test_dedupe_is_scoped_to_plugin_and_command(q, clock):
    done = run_job(q, clock, dedupe_key="k")
    q.complete(done, "succeeded")
    enqueue(q, clock, command="sync", dedupe_key="k2")
    assert enqueue(q, clock, command="handle", dedupe_key="k").enqueued
    assert enqueue(q, clock, plugin="other", dedupe_key="k").enqueued
    assert enqueue(q, clock, plugin="other", command="sync", dedupe_key="k2", dedupe_ttl_s=60).enqueued
    assert enqueue(q, clock, command="sync", dedupe_key="k2", dedupe_ttl_s=60).dropped


def test_enqueue_inside_a_caller_transaction(q, db, clock):
    with db.write() as conn:
        result = q.enqueue("echo", "handle", {"x": 1}, "route", conn=conn)
        conn.execute("SELECT 1")
    assert q.get(result.job_id).submitted_by == "route"
    with pytest.raises(RuntimeError):
        with db.write() as conn:
            rolled_back = q.enqueue("echo", "handle", {}, "route", conn=conn)
            raise RuntimeError("abort")
    assert q.get(rolled_back.job_id) is None


# --- claim -----------------------------------------------------------------------------

def test_claim_marks_running_with_transition_and_attempt(q, db, clock):
    job_id = enqueue(q, clock).job_id
    clock.advance(seconds=2)
    job = q.claim(UNLIMITED, "cfg_run")
    assert job.id == job_id and job.status == "running" and job.attempt == 1
    assert job.started_at == format_ts(clock.now) and job.started_config_snapshot_id == "cfg_run"
    assert statuses(q, job_id) == [(None, "queued", None), ("queued", "running", None)]
    assert [(a["attempt"], a["created_at"]) for a in q.attempts(job_id)] == [(1, format_ts(clock.now))]
    assert q.claim(UNLIMITED) is None


def test_claim_is_fifo_by_created_at_even_after_a_retry(q, clock):
    a = enqueue(q, clock).job_id
    b = enqueue(q, clock, plugin="other").job_id
    first = q.claim(UNLIMITED)
    assert first.id == a
    q.fail(first, "boom", retryable=True, reason="plugin_error", backoff_base_s=1)
    clock.advance(seconds=5)
    again = q.claim(UNLIMITED)
    assert again.id == a and again.attempt == 2  # kept its place ahead of b
    assert q.claim(UNLIMITED).id == b


def test_next_retry_at_gates_the_claim(q, clock):
    job = run_job(q, clock)
    outcome = q.fail(job, "boom", retryable=True, reason="plugin_error", backoff_base_s=30)
    assert outcome.status == "queued"
    assert q.claim(UNLIMITED) is None
    assert q.next_retry_at() == parse_ts(outcome.next_retry_at)
    clock.now = parse_ts(outcome.next_retry_at) - timedelta(microseconds=1)
    assert q.claim(UNLIMITED) is None
    clock.now = parse_ts(outcome.next_retry_at)
    assert q.next_retry_at() is None  # due now, no longer in the future
    claimed = q.claim(UNLIMITED)
    assert claimed.id == job.id and claimed.attempt == 2
    assert claimed.next_retry_at == outcome.next_retry_at  # a claim does not clear it
    assert [a["attempt"] for a in q.attempts(job.id)] == [1, 2]


def test_empty_next_retry_at_counts_as_due(q, db, clock):
    job_id = enqueue(q, clock).job_id
    with db.write() as conn:
        conn.execute("UPDATE job_queue SET next_retry_at = '' WHERE id = ?", (job_id,))
    assert q.next_retry_at() is None
    assert q.claim(UNLIMITED).id == job_id


def test_per_plugin_cap_skips_busy_plugins(q, clock):
    caps = {"serial": 1, "pair": 2}
    s1, s2 = enqueue(q, clock, plugin="serial").job_id, enqueue(q, clock, plugin="serial").job_id
    p1, p2, p3 = (enqueue(q, clock, plugin="pair").job_id for _ in range(3))
    other = enqueue(q, clock, plugin="other").job_id
    claimed = [q.claim(lambda p: caps.get(p, 10)) for _ in range(5)]
    assert [j.id if j else None for j in claimed] == [s1, p1, p2, other, None]
    assert q.running_count_by_plugin() == {"serial": 1, "pair": 2, "other": 1}
    q.complete(claimed[0], "succeeded")
    assert q.claim(lambda p: caps.get(p, 10)).id == s2
    assert q.claim(lambda p: caps.get(p, 10), exclude_plugins=["pair"]) is None
    q.complete(claimed[1], "succeeded")
    assert q.claim(lambda p: caps.get(p, 10), exclude_plugins=["pair"]) is None
    assert q.claim(lambda p: caps.get(p, 10)).id == p3


def test_running_dedupe_key_blocks_the_same_target_only(q, clock):
    first = enqueue(q, clock, dedupe_key="repo-1").job_id
    second = enqueue(q, clock, dedupe_key="repo-1").job_id
    sibling = enqueue(q, clock, command="sync", dedupe_key="repo-1").job_id
    running = q.claim(UNLIMITED)
    assert running.id == first
    assert q.claim(UNLIMITED).id == sibling  # second is passed over, not blocking the queue
    assert q.claim(UNLIMITED) is None
    q.complete(running, "succeeded")
    assert q.claim(UNLIMITED).id == second


def test_requeue_interrupted_keeps_the_attempt_and_its_fact(q, clock):
    job = run_job(q, clock)
    clock.advance(seconds=1)
    back = q.requeue_interrupted(job)
    assert (back.status, back.attempt, back.next_retry_at) == ("queued", 1, None)
    assert back.last_error == "interrupted by shutdown"
    assert q.job_log_rows(job_id=job.id).total == 0
    again = q.claim(UNLIMITED)
    assert again.id == job.id and again.attempt == 1
    assert [a["attempt"] for a in q.attempts(job.id)] == [1]
    assert statuses(q, job.id)[-2:] == [("running", "queued", "interrupted by shutdown"),
                                        ("queued", "running", None)]


# --- finishing -------------------------------------------------------------------------

@pytest.mark.parametrize("attempt,low,high", [(1, 30000, 37500), (2, 60000, 67500), (3, 120000, 127500)])
def test_backoff_for_a_thirty_second_base(db, clock, attempt, low, high):
    seen = set()
    for seed in range(200):
        q = JobQueue(db, clock=clock, rng=random.Random(seed))
        delay = q.backoff_ms(attempt, 30)
        assert low <= delay <= high
        assert delay == 30000 * 2 ** (attempt - 1) + random.Random(seed).randint(0, 7500)
        seen.add(delay)
    assert len(seen) > 100  # the jitter really varies


def test_retry_writes_the_row_and_logs(q, clock, logs):
    job = run_job(q, clock, max_attempts=4)
    before = clock.now
    outcome = q.fail(job, "plugin said no", retryable=True, reason="plugin_error", backoff_base_s=30,
                     result='{"status":"error"}\n', stderr="oops")
    expected = 30000 + random.Random(7).randint(0, 7500)
    assert outcome.status == "queued" and outcome.backoff_ms == expected and not outcome.attempts_exhausted
    assert outcome.next_retry_at == format_ts(before + timedelta(milliseconds=expected))
    after = outcome.job
    assert (after.status, after.attempt, after.last_error) == ("queued", 2, "plugin said no")
    assert after.next_retry_at == outcome.next_retry_at and after.completed_at is None
    assert q.job_log_rows(job_id=job.id).total == 0
    (line,) = [r for r in log_lines(logs) if r["msg"] == "retry scheduled"]
    assert line["level"] == "WARN"
    assert {k: line[k] for k in ("attempt", "max_attempts", "backoff_ms", "next_retry_at", "reason")} == {
        "attempt": 1, "max_attempts": 4, "backoff_ms": expected, "next_retry_at": outcome.next_retry_at,
        "reason": "plugin_error"}


def test_dead_after_max_attempts_and_failed_when_not_retryable(q, db, clock):
    job = run_job(q, clock, max_attempts=2)
    assert q.fail(job, "e1", retryable=True, reason="timeout", backoff_base_s=0).status == "queued"
    second = q.claim(UNLIMITED)
    outcome = q.fail(second, "e2", retryable=True, reason="timeout", backoff_base_s=30, timed_out=True)
    assert outcome.status == "dead" and outcome.attempts_exhausted and outcome.timed_out
    assert outcome.job.status == "dead" and outcome.job.last_error == "e2" and outcome.job.completed_at
    (log,) = q.job_log_rows(job_id=job.id, include_result=True).rows
    assert (log["id"], log["status"], log["attempt"], log["result"]) == (job.id + "-2", "dead", 2, None)

    other = run_job(q, clock, max_attempts=4)
    failed = q.fail(other, "bad input", retryable=False, reason="plugin_retry_false", backoff_base_s=30,
                    result='{"status":"error","retry":false}')
    assert failed.status == "failed" and not failed.attempts_exhausted and failed.job.attempt == 1
    assert statuses(q, other.id)[-1] == ("running", "failed", "bad input")


def test_job_log_is_one_row_per_terminal_job_with_result_verbatim(q, db, clock):
    job = run_job(q, clock, parent_job_id="parent", source_event_id="ev", event_context_id="ctx",
                  config_snapshot_id="cfg_a")
    stdout = '{"status": "ok",  "result": "x"}\n'
    done = q.complete(job, "succeeded", result=stdout, last_error="ignored on success", stderr="w" * 70000)
    assert done.status == "succeeded" and done.last_error is None and done.completed_at == format_ts(clock.now)
    (log,) = rows(db, "SELECT * FROM job_log")
    assert log["id"] == "%s-1" % job.id and log["result"] == stdout and log["last_error"] is None
    assert len(log["stderr"]) == 64 * 1024
    assert (log["parent_job_id"], log["source_event_id"], log["event_context_id"]) == ("parent", "ev", "ctx")
    assert log["enqueued_config_snapshot_id"] == "cfg_a" and log["created_at"] == job.created_at
    assert statuses(q, job.id)[-1] == ("running", "succeeded", None)
    with pytest.raises(JobNotRunning):
        q.complete(job, "failed", last_error="late")
    assert len(rows(db, "SELECT id FROM job_log")) == 1 and q.get(job.id).status == "succeeded"


def test_stderr_cap_never_splits_a_character(q, db, clock):
    job = run_job(q, clock)
    q.complete(job, "failed", last_error="x", stderr="a" + "é" * 40000)
    (log,) = rows(db, "SELECT stderr FROM job_log")
    assert len(log["stderr"].encode("utf-8")) <= 64 * 1024 and log["stderr"].endswith("é")


def test_complete_refuses_statuses_ductile_never_writes(q, clock):
    job = run_job(q, clock)
    with pytest.raises(ValueError):
        q.complete(job, "timed_out")


def test_transitions_of_a_full_retry_lifecycle(q, clock):
    job = run_job(q, clock)
    q.fail(job, "first try failed", retryable=True, reason="plugin_error", backoff_base_s=0)
    clock.advance(seconds=1)
    q.complete(q.claim(UNLIMITED), "succeeded", result="{}")
    assert statuses(q, job.id) == [
        (None, "queued", None), ("queued", "running", None), ("running", "queued", "first try failed"),
        ("queued", "running", None), ("running", "succeeded", None)]
    assert [a["attempt"] for a in q.attempts(job.id)] == [1, 2]
    assert q.get(job.id).last_error is None


def test_extra_writes_share_the_terminal_transaction(q, clock):
    job = run_job(q, clock)
    children = []

    def add_child(conn, after):
        assert after.status == "succeeded"
        children.append(q.enqueue("next", "handle", {"from": after.id}, "route", parent_job_id=after.id,
                                  conn=conn).job_id)

    q.complete(job, "succeeded", extra_writes=add_child)
    assert q.get(children[0]).parent_job_id == job.id


def test_extra_writes_failure_rolls_everything_back(q, db, clock):
    job = run_job(q, clock)
    before = statuses(q, job.id)

    def broken(conn, after):
        q.enqueue("next", "handle", {}, "route", parent_job_id=after.id, conn=conn)
        raise RuntimeError("routing failed")

    with pytest.raises(RuntimeError, match="routing failed"):
        q.complete(job, "succeeded", result="{}", extra_writes=broken)
    assert q.get(job.id).status == "running"
    assert rows(db, "SELECT * FROM job_log") == []
    assert statuses(q, job.id) == before
    assert rows(db, "SELECT id FROM job_queue WHERE plugin = 'next'") == []
    # The caller can still end the job another way.
    assert q.complete(job, "failed", last_error="failed to route events: routing failed").status == "failed"


# --- ending jobs from outside ------------------------------------------------------------

def test_cancel_outstanding_ends_queued_and_running_of_any_submitter(q, db, clock):
    running = run_job(q, clock, submitted_by="ductile")
    queued = enqueue(q, clock, submitted_by="api").job_id
    other_command = enqueue(q, clock, command="sync").job_id
    hooked = []
    reason = "cancelled by scheduler (if_running=cancel)"
    ended = q.cancel_outstanding("echo", "poll", reason, extra_writes=lambda conn, job: hooked.append(job.id))
    assert sorted(j.id for j in ended) == sorted([running.id, queued]) and sorted(hooked) == sorted(
        [running.id, queued])
    for job in ended:
        assert (job.status, job.last_error, job.completed_at) == ("dead", reason, format_ts(clock.now))
    assert statuses(q, running.id)[-1] == ("running", "dead", reason)
    assert statuses(q, queued)[-1] == ("queued", "dead", reason)
    logs = rows(db, "SELECT job_id, status, result, last_error FROM job_log ORDER BY job_id")
    assert {(r["job_id"], r["status"], r["result"], r["last_error"]) for r in logs} == {
        (running.id, "dead", None, reason), (queued, "dead", None, reason)}
    assert q.get(other_command).status == "queued"
    with pytest.raises(JobNotRunning):  # the terminated worker's late result is discarded
        q.complete(running, "succeeded", result="{}")
    assert q.cancel_outstanding("echo", "poll", reason) == []


def test_kill_queued_by_plugin_map_or_predicate(q, db, clock):
    busy = run_job(q, clock, plugin="gone")
    gone = enqueue(q, clock, plugin="gone").job_id
    off = enqueue(q, clock, plugin="off").job_id
    kept = enqueue(q, clock, plugin="kept").job_id
    ended = q.kill_queued({"gone": "plugin removed", "off": 'plugin "off" disabled by config reload'})
    assert [(j.id, j.last_error) for j in ended] == [(gone, "plugin removed"),
                                                     (off, 'plugin "off" disabled by config reload')]
    assert q.get(busy.id).status == "running" and q.get(kept).status == "queued"
    assert len(rows(db, "SELECT id FROM job_log")) == 2
    ended = q.kill_queued(lambda job: "plugin removed" if job.plugin == "kept" else None)
    assert [j.id for j in ended] == [kept]


def test_recover_orphans_requeues_or_buries(q, db, clock, logs):
    young = run_job(q, clock, max_attempts=4)
    old = run_job(q, clock, max_attempts=2)
    q.fail(old, "e", retryable=True, reason="plugin_error", backoff_base_s=0)
    old = q.claim(UNLIMITED)
    assert old.attempt == 2
    waiting = enqueue(q, clock).job_id
    report = q.recover_orphans()
    (requeued,) = report.requeued
    assert (requeued.id, requeued.status, requeued.attempt) == (young.id, "queued", 2)
    assert requeued.last_error is None and requeued.next_retry_at is None
    assert statuses(q, young.id)[-1] == ("running", "queued", None)
    (dead,) = report.dead
    message = "Job marked dead during crash recovery: max attempts (2) reached"
    assert (dead.id, dead.status, dead.last_error, dead.attempt) == (old.id, "dead", message, 2)
    (log,) = rows(db, "SELECT * FROM job_log")
    assert (log["id"], log["result"], log["stderr"], log["last_error"]) == (old.id + "-2", None, None, message)
    assert q.get(waiting).status == "queued"
    msgs = [(r["level"], r["msg"]) for r in log_lines(logs) if r["msg"] != "retry scheduled"]
    assert msgs[:2] == [("INFO", "Performing crash recovery for orphaned jobs"),
                        ("WARN", "Found orphaned jobs, attempting recovery")]
    assert ("WARN", "Re-queueing orphaned job") in msgs
    assert ("ERROR", "Marking orphaned job as dead (max attempts reached)") in msgs
    recovering = [r for r in log_lines(logs) if r["msg"] == "Recovering orphaned job"]
    assert {(r["current_attempt"], r["max_attempts"]) for r in recovering} == {(1, 4), (2, 2)}
    assert [r["count"] for r in log_lines(logs) if "count" in r] == [2]
    # Recovered job runs again; a second recovery finds nothing.
    assert q.claim(UNLIMITED).id == young.id
    q.complete(q.get(young.id), "succeeded")
    logs.truncate(0)
    logs.seek(0)
    assert q.recover_orphans() == queuemod.RecoveryReport([], [])
    assert [r["msg"] for r in log_lines(logs)] == ["Performing crash recovery for orphaned jobs",
                                                   "No orphaned jobs found."]


# --- retention -----------------------------------------------------------------------------

def insert_breaker_transition(db, at):
    with db.write() as conn:
        conn.execute("INSERT INTO circuit_breaker_transitions(id, plugin, command, to_state, reason, created_at)"
                     " VALUES (?, 'echo', 'poll', 'open', 'failure_threshold', ?)", (format_ts(at) + "x", format_ts(at)))


def count(db, table):
    return rows(db, "SELECT COUNT(*) AS n FROM %s" % table)[0]["n"]


def test_prune_each_table_by_its_own_retention(q, db, clock):
    start = clock.now
    finished = run_job(q, clock)
    q.complete(finished, "succeeded")
    still_running = run_job(q, clock)
    insert_breaker_transition(db, start)
    clock.now = start + timedelta(hours=25)
    fresh = run_job(q, clock)
    q.complete(fresh, "succeeded")

    disabled = dict(job_log_s=-1, job_queue_s=-1, job_transitions_s=-1, job_attempts_s=-1, breaker_transitions_s=-1)
    assert set(q.prune(**disabled).values()) == {0}

    counts = q.prune(**dict(disabled, job_queue_s=24 * 3600))
    assert counts["job_queue"] == 1 and q.get(finished.id) is None
    assert q.get(still_running.id).status == "running" and q.get(fresh.id) is not None

    counts = q.prune(**dict(disabled, job_log_s=3600))
    assert counts["job_log"] == 1 and [r["job_id"] for r in rows(db, "SELECT job_id FROM job_log")] == [fresh.id]

    counts = q.prune(**dict(disabled, job_transitions_s=3600, job_attempts_s=3600))
    assert counts["job_transitions"] == 5 and counts["job_attempts"] == 2  # the two old jobs' facts

    clock.now = start + timedelta(hours=2159)
    assert q.prune(**dict(disabled, breaker_transitions_s=0))["circuit_breaker_transitions"] == 0
    clock.now = start + timedelta(hours=2161)
    assert q.prune(**dict(disabled, breaker_transitions_s=0))["circuit_breaker_transitions"] == 1


def test_prune_zero_means_the_default(q, clock):
    job = run_job(q, clock)
    q.complete(job, "succeeded")
    clock.advance(hours=23)
    zero = dict(job_log_s=0, job_queue_s=0, job_transitions_s=0, job_attempts_s=0, breaker_transitions_s=0)
    assert q.prune(**zero)["job_queue"] == 0
    clock.advance(hours=2)
    assert q.prune(**zero) == {"job_log": 0, "job_queue": 1, "job_transitions": 0, "job_attempts": 0,
                               "circuit_breaker_transitions": 0}


def test_prune_works_in_batches(q, db, clock, monkeypatch):
    monkeypatch.setattr(queuemod, "PRUNE_BATCH", 3)
    for _ in range(7):
        enqueue(q, clock)
    clock.advance(days=31)
    counts = q.prune(job_log_s=-1, job_queue_s=-1, job_transitions_s=3600, job_attempts_s=-1,
                     breaker_transitions_s=-1)
    assert counts["job_transitions"] == 7 and count(db, "job_transitions") == 0


# --- reads ---------------------------------------------------------------------------------

def test_counts(q, clock):
    q.complete(run_job(q, clock, plugin="other"), "failed", last_error="x")
    a = run_job(q, clock, submitted_by="ductile")
    enqueue(q, clock, submitted_by="api")
    enqueue(q, clock, command="sync")
    assert q.count_outstanding("echo", "poll") == 2
    assert q.count_outstanding("echo", "poll", submitted_by="ductile") == 1
    assert q.count_by_status() == {"running": 1, "queued": 2, "failed": 1}
    assert q.running_count_by_plugin() == {"echo": 1}
    jobs, total = q.list_jobs(plugin="echo", limit=2)
    assert total == 3 and len(jobs) == 2 and jobs[-1].id != a.id


def test_job_log_rows_filters(q, clock):
    one = run_job(q, clock, submitted_by="api")
    q.complete(one, "succeeded", result='{"status":"ok","result":"Hello"}')
    clock.advance(hours=1)
    two = run_job(q, clock, plugin="other", submitted_by="ductile")
    q.complete(two, "failed", last_error="Disk FULL", stderr="trace")
    page = q.job_log_rows()
    assert page.total == 2 and [r["job_id"] for r in page.rows] == [two.id, one.id]
    assert "result" not in page.rows[0] and page.rows[0]["log_id"] == two.id + "-1"
    assert [r["job_id"] for r in q.job_log_rows(query="disk full").rows] == [two.id]
    assert [r["job_id"] for r in q.job_log_rows(query="HELLO", include_result=True).rows] == [one.id]
    assert q.job_log_rows(query="hello", include_result=True).rows[0]["result"].endswith('"Hello"}')
    assert [r["job_id"] for r in q.job_log_rows(plugin="other").rows] == [two.id]
    assert [r["job_id"] for r in q.job_log_rows(status="succeeded", submitted_by="api").rows] == [one.id]
    assert q.job_log_rows(job_id=one.id).total == 1
    one_done = parse_ts(q.get(one.id).completed_at)
    assert q.job_log_rows(to=one_done).total == 1
    assert q.job_log_rows(from_=one_done + timedelta(microseconds=1)).total == 1
    offset = one_done.astimezone(timezone(timedelta(hours=2))).isoformat()
    assert [r["job_id"] for r in q.job_log_rows(from_=offset, to=offset).rows] == [one.id]
    assert q.job_log_rows(limit=1).total == 2 and len(q.job_log_rows(limit=1).rows) == 1
    assert q.job_log_for(two.id)["last_error"] == "Disk FULL"


def test_payload_read_from_text_and_bad_payloads(q, db, clock):
    good, bad = enqueue(q, clock).job_id, enqueue(q, clock).job_id
    with db.write() as conn:
        conn.execute("UPDATE job_queue SET payload = ? WHERE id = ?", ('{"text": true}', good))
        conn.execute("UPDATE job_queue SET payload = ? WHERE id = ?", (b"{not json", bad))
    assert q.get(good).payload == {"text": True}
    broken = q.get(bad)
    assert broken.payload is None and "not valid JSON" in broken.payload_error and broken.payload_raw == "{not json"
    none = enqueue(q, clock, payload=None).job_id
    assert q.get(none).payload is None and q.get(none).payload_error is None


# --- concurrency -----------------------------------------------------------------------------

def test_four_threads_claim_each_job_exactly_once(tmp_path):
    path = tmp_path / "race.db"
    databases = [Database(path), Database(path)]  # two writer connections, as two processes would have
    try:
        seed = JobQueue(databases[0])
        with databases[0].write() as conn:
            for n in range(500):
                seed.enqueue("p%d" % (n % 5), "poll", {"n": n}, "api", conn=conn)
        claimed = [[] for _ in range(4)]
        errors = []

        def worker(index):
            queue = JobQueue(databases[index % 2])
            try:
                while True:
                    job = queue.claim(UNLIMITED)
                    if job is None:
                        return
                    claimed[index].append(job.id)
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert errors == []
        ids = [job_id for bucket in claimed for job_id in bucket]
        assert len(ids) == 500 and len(set(ids)) == 500
        assert sum(1 for bucket in claimed if bucket) >= 2
        assert count(databases[0], "job_attempts") == 500
        assert rows(databases[0], "SELECT COUNT(*) AS n FROM job_transitions WHERE to_status = 'running'")[0]["n"] == 500
    finally:
        for database in databases:
            database.close()
