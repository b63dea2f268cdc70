"""Circuit breakers for scheduled commands (spec 20 §6).

One `circuit_breakers` row per (plugin, command) caches the breaker's
current state; `circuit_breaker_transitions` is the append-only record of
every state change, in the original's habit of keeping facts apart from
caches.  The breaker is fed only by terminal jobs the scheduler itself
submitted (`submitted_by = service.name`), so an operator's API calls or a
webhook storm never trip it, and it only ever gates the scheduler.

Everything here is a plain database operation on a `Database`-like object
(`read()`/`write()` context managers) with the clock passed in as `now`:
the scheduler calls `reconcile` and `gate`, the CLI calls `reset` and
`view`, and tests replay any timeline without sleeping.  Nothing here
publishes events or logs; callers do that from the values returned.
"""
from __future__ import annotations

import sqlite3
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Dict, NamedTuple, Optional

from ductile_lib.timefmt import format_ts, parse_ts_or_none

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"

REASON_FAILURE_THRESHOLD = "failure_threshold"
REASON_SUCCESS = "success"
REASON_COOLDOWN_ELAPSED = "cooldown_elapsed"
REASON_MANUAL_RESET = "manual_reset"

DEFAULT_THRESHOLD = 3
DEFAULT_RESET_AFTER_S = 30 * 60.0
DEFAULT_VIEW_LIMIT = 20

# Terminal statuses that count for a breaker; `skipped` is neither success nor failure.
_COUNTED = ("succeeded", "failed", "timed_out", "dead")


@dataclass(frozen=True)
class BreakerChange:
    """A state change `reconcile` made; the scheduler turns it into
    `scheduler.circuit_state_changed` and an INFO log line."""

    plugin: str
    command: str
    previous_state: Optional[str]  # None: there was no row (only after `reset`)
    state: str
    failure_count: int


class GateDecision(NamedTuple):
    """What `gate` decided; unpacks as `(allowed, retry_at, half_opened)`.

    `retry_at` is when the cooldown ends (only when blocked), so the
    scheduler can sleep until then instead of re-checking every tick.
    `half_opened` means this call moved the breaker to `half_open`: the job
    about to be enqueued is the probe.
    """

    allowed: bool
    retry_at: Optional[datetime]
    half_opened: bool


@dataclass
class _Row:
    """The `circuit_breakers` row being worked on (defaults = no row yet)."""

    state: str = CLOSED
    failure_count: int = 0
    opened_at: Optional[str] = None
    last_failure_at: Optional[str] = None
    last_job_id: Optional[str] = None
    exists: bool = False


# --- shared SQL -----------------------------------------------------------------

def _load(conn: sqlite3.Connection, plugin: str, command: str) -> _Row:
    row = conn.execute(
        "SELECT state, failure_count, opened_at, last_failure_at, last_job_id FROM circuit_breakers"
        " WHERE plugin = ? AND command = ?", (plugin, command)).fetchone()
    if row is None:
        return _Row()
    return _Row(row[0] or CLOSED, int(row[1] or 0), row[2], row[3], row[4], True)


def _store(conn: sqlite3.Connection, plugin: str, command: str, row: _Row, now: datetime) -> None:
    conn.execute(
        "INSERT INTO circuit_breakers(plugin, command, state, failure_count, opened_at, last_failure_at,"
        " last_job_id, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT(plugin, command) DO UPDATE SET state = excluded.state,"
        " failure_count = excluded.failure_count, opened_at = excluded.opened_at,"
        " last_failure_at = excluded.last_failure_at, last_job_id = excluded.last_job_id,"
        " updated_at = excluded.updated_at",
        (plugin, command, row.state, row.failure_count, row.opened_at, row.last_failure_at, row.last_job_id,
         format_ts(now)))


def _record_transition(conn: sqlite3.Connection, plugin: str, command: str, from_state: Optional[str],
                       to_state: str, failure_count: int, reason: str, job_id: Optional[str],
                       now: datetime) -> None:
    conn.execute(
        "INSERT INTO circuit_breaker_transitions(id, plugin, command, from_state, to_state, failure_count,"
        " reason, job_id, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (str(uuid.uuid4()), plugin, command, from_state, to_state, failure_count, reason, job_id,
         format_ts(now)))


def _newest_terminal_job(conn: sqlite3.Connection, plugin: str, command: str, service_name: str):
    """(id, status, completed_at) of the scheduler's newest finished job of (plugin, command)."""
    return conn.execute(
        "SELECT id, status, completed_at FROM job_queue WHERE plugin = ? AND command = ? AND submitted_by = ?"
        " AND completed_at IS NOT NULL AND completed_at != '' AND status IN (%s)"
        " ORDER BY completed_at DESC, rowid DESC LIMIT 1" % ", ".join("?" * len(_COUNTED)),
        (plugin, command, service_name) + _COUNTED).fetchone()


# --- the operations ---------------------------------------------------------------

def reconcile(db, plugin: str, command: str, service_name: str, threshold: int,
              now: datetime) -> Optional[BreakerChange]:
    """Fold the scheduler's newest terminal job into the breaker.

    Looking at the newest job (rather than being told about each one) makes
    this idempotent: the housekeeping tick, the gate and the dispatcher's
    completion report may all call it, and a job already folded in
    (`last_job_id`) is never counted twice.  A success closes the breaker
    and clears the count; a failure counts up and opens it at `threshold`
    (or at once when it was the half-open probe), stamping `opened_at`
    with the job's `completed_at` so the cooldown runs from the failure,
    not from whenever reconcile happened to run.
    """
    threshold = threshold if threshold and threshold > 0 else DEFAULT_THRESHOLD
    with db.write() as conn:
        job = _newest_terminal_job(conn, plugin, command, service_name)
        row = _load(conn, plugin, command)
        if job is None or (row.last_job_id is not None and row.last_job_id == job[0]):
            return None
        previous = row.state
        _fold_job(row, job[1], job[2], threshold)
        row.last_job_id = job[0]
        _store(conn, plugin, command, row, now)
        if row.state == previous:
            return None
        reason = REASON_SUCCESS if row.state == CLOSED else REASON_FAILURE_THRESHOLD
        _record_transition(conn, plugin, command, previous, row.state, row.failure_count, reason, job[0], now)
        return BreakerChange(plugin, command, previous, row.state, row.failure_count)


def _fold_job(row: _Row, status: str, completed_at: str, threshold: int) -> None:
    """Apply one terminal job to the row in place (the §6 rules)."""
    if status == "succeeded":
        row.state, row.failure_count, row.opened_at, row.last_failure_at = CLOSED, 0, None, None
        return
    row.failure_count += 1
    row.last_failure_at = completed_at
    if row.failure_count >= threshold or row.state == HALF_OPEN:
        row.state, row.opened_at = OPEN, completed_at


def gate(db, plugin: str, command: str, reset_after_s: float, now: datetime) -> GateDecision:
    """May the scheduler enqueue (plugin, command) now?

    Closed and half-open breakers let the job through.  An open breaker
    blocks until `opened_at + reset_after`; after that (or when `opened_at`
    is unknown) it moves to `half_open` — one transition row with reason
    `cooldown_elapsed` — and lets exactly this job through as the probe,
    whose outcome `reconcile` later turns into `closed` or `open` again.
    """
    reset_after = reset_after_s if reset_after_s and reset_after_s > 0 else DEFAULT_RESET_AFTER_S
    with db.write() as conn:
        row = _load(conn, plugin, command)
        if row.state != OPEN:
            return GateDecision(True, None, False)
        opened = parse_ts_or_none(row.opened_at)
        if opened is not None:
            retry_at = opened + timedelta(seconds=reset_after)
            if now < retry_at:
                return GateDecision(False, retry_at, False)
        row.state = HALF_OPEN
        _store(conn, plugin, command, row, now)
        _record_transition(conn, plugin, command, OPEN, HALF_OPEN, row.failure_count, REASON_COOLDOWN_ELAPSED,
                           row.last_job_id, now)
        return GateDecision(True, None, True)


def reset(db, plugin: str, command: str, service_name: str, now: datetime) -> BreakerChange:
    """`ductile system reset`: close the breaker by hand.

    `last_job_id` is set to the newest terminal scheduler job so the next
    reconcile does not count that (already judged) job again — the
    original recounted it and could re-open a breaker just reset.  The
    transition's `from_state` is NULL when there was no row at all.
    """
    with db.write() as conn:
        previous = _load(conn, plugin, command)
        job = _newest_terminal_job(conn, plugin, command, service_name)
        row = _Row(CLOSED, 0, None, None, job[0] if job is not None else None)
        _store(conn, plugin, command, row, now)
        from_state = previous.state if previous.exists else None
        _record_transition(conn, plugin, command, from_state, CLOSED, 0, REASON_MANUAL_RESET, None, now)
    return BreakerChange(plugin, command, from_state, CLOSED, 0)


def view(db, plugin: str, command: str, limit: int = DEFAULT_VIEW_LIMIT) -> Dict[str, Any]:
    """The `system breaker --json` report: current row and newest transitions first.

    Keys whose value is absent are omitted (`state` too, when there is no
    row), matching the original's JSON so scripts keep working.
    """
    limit = limit if limit and limit > 0 else DEFAULT_VIEW_LIMIT
    with db.read() as conn:
        current = conn.execute(
            "SELECT state, failure_count, opened_at, last_failure_at, last_job_id, updated_at"
            " FROM circuit_breakers WHERE plugin = ? AND command = ?", (plugin, command)).fetchone()
        transitions = conn.execute(
            "SELECT id, from_state, to_state, failure_count, reason, job_id, created_at"
            " FROM circuit_breaker_transitions WHERE plugin = ? AND command = ?"
            " ORDER BY created_at DESC, rowid DESC LIMIT ?", (plugin, command, int(limit))).fetchall()
    report: Dict[str, Any] = {"plugin": plugin, "command": command}
    if current is None:
        report["failure_count"] = 0
    else:
        report["state"] = current[0]
        report["failure_count"] = int(current[1] or 0)
        _put_present(report, ("opened_at", current[2]), ("last_failure_at", current[3]),
                     ("last_job_id", current[4]), ("updated_at", current[5]))
    report["transitions"] = [_transition_json(row) for row in transitions]
    return report


def _transition_json(row) -> Dict[str, Any]:
    item: Dict[str, Any] = {"id": row[0]}
    _put_present(item, ("from_state", row[1]))
    item.update(to_state=row[2], failure_count=int(row[3] or 0), reason=row[4])
    _put_present(item, ("job_id", row[5]))
    item["created_at"] = row[6]
    return item


def _put_present(target: Dict[str, Any], *pairs) -> None:
    for key, value in pairs:
        if value is not None and value != "":
            target[key] = value
