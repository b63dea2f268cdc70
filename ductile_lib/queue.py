"""The durable job queue: one SQLite table and its lineage (spec 20 §3, §4.2, §8).

`job_queue` holds the current row of every job; `job_transitions` and
`job_attempts` are append-only facts about how it got there; `job_log` is the
one row a job leaves behind when it reaches a terminal status.  This module
owns every write to those four tables, so the "one transition row per status
change, in the same transaction" rule lives in exactly one place.

It is a storage layer and nothing more: it never spawns a process and never
publishes to the event hub.  Methods return what happened (an
`EnqueueResult`, a `FailOutcome`, the jobs a cancel ended) and the caller
publishes.  Time comes from an injectable clock and jitter from an injectable
`random.Random`, so tests can replay any schedule exactly.

Every write is one short `BEGIN IMMEDIATE` transaction on the database's
single writer connection (`Database.write()`).  Rows are re-read inside the
transaction before they change: the `Job` a caller holds may be stale (a
cancel or reload may have ended it meanwhile), and a stale job must never
overwrite a newer status.  Such a call raises `JobNotRunning`.
"""
from __future__ import annotations

import json
import random
import sqlite3
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

from ductile_lib.durations import format_duration
from ductile_lib.logs import get_logger
from ductile_lib.timefmt import format_ts, parse_ts, utc_now

QUEUED = "queued"
RUNNING = "running"
SUCCEEDED = "succeeded"
SKIPPED = "skipped"
FAILED = "failed"
TIMED_OUT = "timed_out"
DEAD = "dead"

STATUSES = (QUEUED, RUNNING, SUCCEEDED, SKIPPED, FAILED, TIMED_OUT, DEAD)
# Terminal statuses that exist in databases; Ductile itself writes only the
# first three (spec 20 §3.1).
TERMINAL_STATUSES = (SUCCEEDED, FAILED, DEAD, SKIPPED, TIMED_OUT)
WRITABLE_TERMINAL = (SUCCEEDED, FAILED, DEAD)

MAX_STDERR_BYTES = 64 * 1024
DEFAULT_MAX_ATTEMPTS = 4
DEFAULT_DEDUPE_TTL_S = 86400.0
SHUTDOWN_REASON = "interrupted by shutdown"
RECOVERY_DEAD_MESSAGE = "Job marked dead during crash recovery: max attempts (%d) reached"

# Retention defaults in seconds (spec 20 §8.3); 0 means "use the default".
RETENTION_DEFAULTS = {
    "job_log": 720 * 3600.0,
    "job_queue": 24 * 3600.0,
    "job_transitions": 720 * 3600.0,
    "job_attempts": 720 * 3600.0,
    "circuit_breaker_transitions": 2160 * 3600.0,
}
PRUNE_BATCH = 1000

JOB_COLUMNS = (
    "id", "plugin", "command", "payload", "status", "attempt", "max_attempts", "submitted_by",
    "dedupe_key", "created_at", "started_at", "completed_at", "next_retry_at", "last_error",
    "parent_job_id", "source_event_id", "event_context_id",
    "enqueued_config_snapshot_id", "started_config_snapshot_id",
)
_SELECT_JOB = "SELECT %s FROM job_queue" % ", ".join(JOB_COLUMNS)

ExtraWrites = Callable[[sqlite3.Connection, "Job"], None]


class QueueError(Exception):
    """A queue operation could not be carried out as asked."""


class JobNotRunning(QueueError):
    """The job is no longer running at the attempt the caller holds.

    Someone else ended or requeued it first (a cancel, a reload, recovery);
    the caller's outcome is stale and was not written.
    """

    def __init__(self, job_id: str, status: Optional[str], attempt: Optional[int]):
        self.job_id, self.status, self.attempt = job_id, status, attempt
        super().__init__("job %s is not running (status %s, attempt %s)" % (job_id, status, attempt))


# --- values -------------------------------------------------------------------------

@dataclass(frozen=True)
class Job:
    """One `job_queue` row.  Timestamps are kept as stored (RFC 3339 text).

    `payload` is the decoded JSON (None for SQL NULL).  A payload that is not
    valid JSON decodes to None with `payload_error` set, so the dispatcher can
    fail that job instead of the whole claim loop choking on it.
    """

    id: str
    plugin: str
    command: str
    payload: Any = field(hash=False)
    status: str
    attempt: int
    max_attempts: int
    submitted_by: str
    dedupe_key: Optional[str] = None
    created_at: str = ""
    started_at: Optional[str] = None
    completed_at: Optional[str] = None
    next_retry_at: Optional[str] = None
    last_error: Optional[str] = None
    parent_job_id: Optional[str] = None
    source_event_id: Optional[str] = None
    event_context_id: Optional[str] = None
    enqueued_config_snapshot_id: Optional[str] = None
    started_config_snapshot_id: Optional[str] = None
    payload_raw: Optional[str] = field(default=None, repr=False, compare=False)
    payload_error: Optional[str] = field(default=None, compare=False)

    @property
    def is_root(self) -> bool:
        """Not started by another job nor part of a pipeline run (hooks fire only for roots)."""
        return not self.parent_job_id and not self.event_context_id

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def duration_ms(self) -> Optional[int]:
        """started_at → completed_at in milliseconds, when both are known."""
        if not self.started_at or not self.completed_at:
            return None
        try:
            delta = parse_ts(self.completed_at) - parse_ts(self.started_at)
        except ValueError:
            return None
        return max(0, int(delta.total_seconds() * 1000))

    @classmethod
    def from_row(cls, row: Mapping) -> "Job":
        values = {name: row[name] for name in JOB_COLUMNS}
        raw, payload, error = _decode_payload(values.pop("payload"))
        return cls(payload=payload, payload_raw=raw, payload_error=error, **values)


@dataclass(frozen=True)
class EnqueueResult:
    """What `enqueue` did: a new job id, or a dedupe drop naming the job that won."""

    job_id: Optional[str]
    dropped: bool = False
    dedupe_reason: Optional[str] = None  # 'outstanding' | 'recent_success'
    existing_job_id: Optional[str] = None

    @property
    def enqueued(self) -> bool:
        return not self.dropped


@dataclass(frozen=True)
class FailOutcome:
    """What `fail` did.  `status` is `queued` for a scheduled retry.

    `job` is the row after the write.  `backoff_ms`/`next_retry_at` (stored
    text) are set only for a retry; `attempts_exhausted` is True when a
    retryable failure ended `dead` because no attempt was left.
    """

    status: str
    job: Job
    backoff_ms: Optional[int] = None
    next_retry_at: Optional[str] = None
    attempts_exhausted: bool = False
    reason: Optional[str] = None
    timed_out: bool = False


@dataclass(frozen=True)
class RecoveryReport:
    """Crash recovery's outcome: the rows put back in the queue and the rows it ended."""

    requeued: List[Job]
    dead: List[Job]


@dataclass(frozen=True)
class JobLogPage:
    """A page of `job_log` rows (dicts) and the number of matches ignoring `limit`."""

    total: int
    rows: List[Dict[str, Any]]


# --- helpers ----------------------------------------------------------------------

def _decode_payload(value) -> Tuple[Optional[str], Any, Optional[str]]:
    """(raw text, decoded value, error) for a payload column read as BLOB or TEXT."""
    if value is None:
        return None, None, None
    if isinstance(value, (bytes, bytearray, memoryview)):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError as error:
            return None, None, "payload is not UTF-8: %s" % error
    if not isinstance(value, str):  # a number stored by some other writer
        return str(value), value, None
    try:
        return value, json.loads(value), None
    except ValueError as error:
        return value, None, "payload is not valid JSON: %s" % error


def encode_payload(payload) -> Optional[bytes]:
    """The BLOB of UTF-8 JSON the column holds (spec 20 §0).

    `bytes` are taken as already-encoded JSON (an event body passed through
    verbatim); `None` stores SQL NULL; anything else is serialised compactly.
    """
    if payload is None:
        return None
    if isinstance(payload, (bytes, bytearray)):
        return bytes(payload)
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _result_text(result) -> Optional[str]:
    """Plugin stdout for `job_log.result`, verbatim (bytes decoded as UTF-8)."""
    if result is None:
        return None
    if isinstance(result, (bytes, bytearray)):
        return bytes(result).decode("utf-8", errors="replace")
    return str(result)


def _cap_stderr(stderr) -> Optional[str]:
    """Stderr cut to 64 KiB of UTF-8, never in the middle of a character."""
    if stderr is None:
        return None
    data = stderr if isinstance(stderr, (bytes, bytearray)) else str(stderr).encode("utf-8", errors="replace")
    return bytes(data[:MAX_STDERR_BYTES]).decode("utf-8", errors="ignore")


def _blank_to_none(text: Optional[str]) -> Optional[str]:
    if text is None:
        return None
    text = str(text).strip()
    return text or None


def _placeholders(count: int) -> str:
    return ", ".join("?" * count)


def _go_duration(seconds: float) -> str:
    return format_duration(int(round(seconds * 1e9)))


# --- the queue ---------------------------------------------------------------------

class JobQueue:
    """Enqueue, claim, finish, retry, cancel, recover and prune jobs.

    `db` is a `ductile_lib.db.Database`; `clock()` returns an aware UTC
    datetime; `rng` supplies the retry jitter.
    """

    def __init__(self, db, clock: Callable[[], datetime] = utc_now, rng: Optional[random.Random] = None,
                 log=None):
        self.db = db
        self.clock = clock
        self.rng = rng if rng is not None else random.Random()
        self.log = log if log is not None else get_logger("dispatch")

    def _now(self) -> Tuple[datetime, str]:
        now = self.clock()
        return now, format_ts(now)

    # -- shared write steps --

    @staticmethod
    def _load(conn: sqlite3.Connection, job_id: str) -> Optional[Job]:
        row = conn.execute(_SELECT_JOB + " WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else Job.from_row(row)

    @staticmethod
    def _transition(conn: sqlite3.Connection, job_id: str, from_status: Optional[str], to_status: str,
                    reason: Optional[str], at: str) -> None:
        """The one `job_transitions` row of a status change (none when nothing changes)."""
        if from_status == to_status:
            return
        conn.execute(
            "INSERT INTO job_transitions(job_id, from_status, to_status, reason, created_at) VALUES (?, ?, ?, ?, ?)",
            (job_id, from_status, to_status, reason if _blank_to_none(reason) else None, at),
        )

    @staticmethod
    def _insert_job_log(conn: sqlite3.Connection, job: Job, result=None, stderr=None) -> None:
        """The job's single `job_log` row, written with its terminal status.

        INSERT OR IGNORE on `<job_id>-<attempt>`: a row that is already there
        (the original wrote one too) is the job's record and stays as it is.
        """
        conn.execute(
            "INSERT OR IGNORE INTO job_log(id, job_id, plugin, command, status, result, attempt, submitted_by,"
            " created_at, completed_at, last_error, stderr, parent_job_id, source_event_id, event_context_id,"
            " enqueued_config_snapshot_id, started_config_snapshot_id)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            ("%s-%d" % (job.id, job.attempt), job.id, job.plugin, job.command, job.status, _result_text(result),
             job.attempt, job.submitted_by, job.created_at, job.completed_at, job.last_error, _cap_stderr(stderr),
             job.parent_job_id, job.source_event_id, job.event_context_id,
             job.enqueued_config_snapshot_id, job.started_config_snapshot_id),
        )

    def _end(self, conn: sqlite3.Connection, job: Job, status: str, last_error: Optional[str], at: str,
             result=None, stderr=None, extra_writes: Optional[ExtraWrites] = None) -> Job:
        """Terminal write shared by every path: row, transition, job_log, then the caller's writes."""
        conn.execute("UPDATE job_queue SET status = ?, completed_at = ?, last_error = ? WHERE id = ?",
                     (status, at, last_error, job.id))
        self._transition(conn, job.id, job.status, status, last_error if status != SUCCEEDED else None, at)
        after = self._load(conn, job.id)
        self._insert_job_log(conn, after, result=result, stderr=stderr)
        if extra_writes is not None:
            extra_writes(conn, after)
        return after

    def _load_running(self, conn: sqlite3.Connection, job: Job) -> Job:
        """The current row, which must still be running at the caller's attempt."""
        current = self._load(conn, job.id)
        if current is None or current.status != RUNNING or current.attempt != job.attempt:
            raise JobNotRunning(job.id, current and current.status, current and current.attempt)
        return current

    # -- enqueue --

    def enqueue(self, plugin: str, command: str, payload, submitted_by: str, *,
                max_attempts: int = DEFAULT_MAX_ATTEMPTS, dedupe_key: Optional[str] = None,
                dedupe_ttl_s: Optional[float] = None, default_dedupe_ttl_s: float = DEFAULT_DEDUPE_TTL_S,
                parent_job_id: Optional[str] = None, source_event_id: Optional[str] = None,
                event_context_id: Optional[str] = None, config_snapshot_id: Optional[str] = None,
                conn: Optional[sqlite3.Connection] = None) -> EnqueueResult:
        """Add a `queued` job unless the dedupe rules of spec 20 §3.4 drop it.

        The dedupe check and the insert share one transaction, so two callers
        racing with the same key cannot both get in.  Pass `conn` to enqueue
        inside a write transaction the caller already holds (child and hook
        jobs commit with their parent's terminal status).
        """
        if not plugin or not command or not submitted_by:
            raise ValueError("enqueue needs plugin, command and submitted_by")
        key = _blank_to_none(dedupe_key)
        request = dict(plugin=plugin, command=command, payload=payload, submitted_by=submitted_by,
                       max_attempts=max_attempts, key=key, parent_job_id=parent_job_id,
                       source_event_id=source_event_id, event_context_id=event_context_id,
                       config_snapshot_id=_blank_to_none(config_snapshot_id))
        if conn is not None:
            result = self._enqueue_in(conn, request, dedupe_ttl_s, default_dedupe_ttl_s)
        else:
            with self.db.write() as own:
                result = self._enqueue_in(own, request, dedupe_ttl_s, default_dedupe_ttl_s)
        if result.dropped:
            self._log_drop(plugin, command, key, result, dedupe_ttl_s, default_dedupe_ttl_s)
        return result

    def _enqueue_in(self, conn: sqlite3.Connection, request: dict, dedupe_ttl_s: Optional[float],
                    default_dedupe_ttl_s: float) -> EnqueueResult:
        now, now_text = self._now()
        if request["key"] is not None:
            drop = self._dedupe_match(conn, request, now, dedupe_ttl_s, default_dedupe_ttl_s)
            if drop is not None:
                return drop
        job_id = str(uuid.uuid4())
        max_attempts = int(request["max_attempts"] or 0)
        conn.execute(
            "INSERT INTO job_queue(id, plugin, command, payload, status, attempt, max_attempts, submitted_by,"
            " dedupe_key, created_at, parent_job_id, source_event_id, event_context_id,"
            " enqueued_config_snapshot_id) VALUES (?, ?, ?, ?, ?, 1, ?, ?, ?, ?, ?, ?, ?, ?)",
            (job_id, request["plugin"], request["command"], encode_payload(request["payload"]), QUEUED,
             max_attempts if max_attempts > 0 else DEFAULT_MAX_ATTEMPTS, request["submitted_by"],
             request["key"], now_text, request["parent_job_id"], request["source_event_id"],
             request["event_context_id"], request["config_snapshot_id"]),
        )
        self._transition(conn, job_id, None, QUEUED, None, now_text)
        return EnqueueResult(job_id)

    @staticmethod
    def _dedupe_match(conn: sqlite3.Connection, request: dict, now: datetime, dedupe_ttl_s: Optional[float],
                      default_dedupe_ttl_s: float) -> Optional[EnqueueResult]:
        """The §3.4 drop, if any.

        The outstanding check runs only when the caller gave a TTL of its own
        (an API client re-sending the same key while the first is in
        flight); the recent-success window applies to every keyed enqueue
        whose effective TTL is positive.
        """
        scope = (request["key"], request["plugin"], request["command"])
        if dedupe_ttl_s is not None:
            row = conn.execute(
                "SELECT id FROM job_queue WHERE dedupe_key = ? AND plugin = ? AND command = ?"
                " AND status IN ('queued', 'running') ORDER BY created_at DESC, rowid DESC LIMIT 1", scope,
            ).fetchone()
            if row is not None:
                return EnqueueResult(None, True, "outstanding", row["id"])
        ttl = dedupe_ttl_s if dedupe_ttl_s is not None else default_dedupe_ttl_s
        if ttl is None or ttl <= 0:
            return None
        cutoff = format_ts(now - timedelta(seconds=ttl))
        row = conn.execute(
            "SELECT id FROM job_queue WHERE dedupe_key = ? AND plugin = ? AND command = ? AND status = 'succeeded'"
            " AND completed_at IS NOT NULL AND completed_at >= ? ORDER BY completed_at DESC LIMIT 1",
            scope + (cutoff,),
        ).fetchone()
        if row is not None:
            return EnqueueResult(None, True, "recent_success", row["id"])
        return None

    def _log_drop(self, plugin: str, command: str, key: str, result: EnqueueResult,
                  dedupe_ttl_s: Optional[float], default_dedupe_ttl_s: float) -> None:
        fields = dict(plugin=plugin, command=command, dedupe_key=key, existing_job_id=result.existing_job_id,
                      dedupe_reason=result.dedupe_reason)
        if result.dedupe_reason == "recent_success":
            ttl = dedupe_ttl_s if dedupe_ttl_s is not None else default_dedupe_ttl_s
            fields["dedupe_ttl"] = _go_duration(ttl)
        self.log.info("dropped duplicate enqueue", **fields)

    # -- claim --

    def claim(self, parallelism_for: Callable[[str], int], config_snapshot_id: Optional[str] = None,
              exclude_plugins: Iterable[str] = ()) -> Optional[Job]:
        """Atomically take the oldest eligible queued job and mark it running (spec 20 §4.2).

        Eligible: retry time reached, plugin below its parallelism cap (the
        count of `running` rows in the database, so jobs of other processes
        count too), not in `exclude_plugins`, and no running job shares its
        dedupe key on the same plugin and command.  FIFO is by `created_at`,
        which a retry never changes.  Returns None when nothing is eligible.
        """
        with self.db.write() as conn:
            _, now_text = self._now()
            skip = set(exclude_plugins) | self._plugins_at_cap(conn, parallelism_for)
            row = conn.execute(self._claim_sql(len(skip)), (now_text,) + tuple(sorted(skip))).fetchone()
            if row is None:
                return None
            job_id = row["id"]
            conn.execute(
                "UPDATE job_queue SET status = 'running', started_at = ?, started_config_snapshot_id = ?"
                " WHERE id = ?", (now_text, _blank_to_none(config_snapshot_id), job_id),
            )
            self._transition(conn, job_id, QUEUED, RUNNING, None, now_text)
            # After a shutdown requeue the same attempt is claimed again: one fact per attempt.
            conn.execute("INSERT OR IGNORE INTO job_attempts(job_id, attempt, created_at) VALUES (?, ?, ?)",
                         (job_id, row["attempt"], now_text))
            return self._load(conn, job_id)

    @staticmethod
    def _plugins_at_cap(conn: sqlite3.Connection, parallelism_for: Callable[[str], int]) -> set:
        rows = conn.execute("SELECT plugin, COUNT(*) AS n FROM job_queue WHERE status = 'running' GROUP BY plugin")
        return {row["plugin"] for row in rows if row["n"] >= max(1, int(parallelism_for(row["plugin"])))}

    @staticmethod
    def _claim_sql(skip_count: int) -> str:
        skip = " AND candidate.plugin NOT IN (%s)" % _placeholders(skip_count) if skip_count else ""
        return (
            "SELECT candidate.id, candidate.attempt FROM job_queue AS candidate"
            " WHERE candidate.status = 'queued'"
            " AND (candidate.next_retry_at IS NULL OR candidate.next_retry_at = '' OR candidate.next_retry_at <= ?)"
            + skip +
            " AND (candidate.dedupe_key IS NULL OR NOT EXISTS ("
            "SELECT 1 FROM job_queue AS running WHERE running.status = 'running'"
            " AND running.dedupe_key = candidate.dedupe_key AND running.plugin = candidate.plugin"
            " AND running.command = candidate.command))"
            " ORDER BY candidate.created_at, candidate.rowid LIMIT 1"
        )

    def next_retry_at(self) -> Optional[datetime]:
        """The earliest future `next_retry_at` of a queued job, so the dispatcher can sleep until then."""
        _, now_text = self._now()
        with self.db.read() as conn:
            row = conn.execute(
                "SELECT MIN(next_retry_at) AS due FROM job_queue WHERE status = 'queued'"
                " AND next_retry_at IS NOT NULL AND next_retry_at != '' AND next_retry_at > ?", (now_text,),
            ).fetchone()
        if row is None or row["due"] is None:
            return None
        try:
            return parse_ts(row["due"])
        except ValueError:
            return None

    # -- finishing a running job --

    def complete(self, job: Job, status: str, *, result=None, last_error: Optional[str] = None, stderr=None,
                 extra_writes: Optional[ExtraWrites] = None) -> Job:
        """End a running job `succeeded`, `failed` or `dead` (spec 20 §3.1, §3.3).

        One transaction writes the row (`last_error` NULL on success), the
        transition (reason = `last_error` for failed/dead), the `job_log`
        row (`result` verbatim, `stderr` ≤ 64 KiB) and then whatever
        `extra_writes(conn, job_after)` adds (child and hook jobs).  If
        `extra_writes` raises, nothing is written and the exception
        propagates: the job stays running for the caller to end otherwise.
        Raises `JobNotRunning` when the row was ended or requeued meanwhile.
        """
        if status not in WRITABLE_TERMINAL:
            raise ValueError("complete: %r is not a terminal status Ductile writes" % (status,))
        error = None if status == SUCCEEDED else last_error
        with self.db.write() as conn:
            _, now_text = self._now()
            current = self._load_running(conn, job)
            return self._end(conn, current, status, error, now_text, result=result, stderr=stderr,
                             extra_writes=extra_writes)

    def fail(self, job: Job, error: str, *, retryable: bool, reason: str, backoff_base_s: float, result=None,
             stderr=None, timed_out: bool = False, extra_writes: Optional[ExtraWrites] = None) -> FailOutcome:
        """Record a failed attempt: retry it, or end the job (spec 20 §3.5, decisions E1, E2).

        Non-retryable ⇒ `failed`.  Retryable with `attempt >= max_attempts`
        ⇒ `dead`.  Otherwise the row goes back to `queued` with attempt + 1
        and `next_retry_at = now + base·2^(attempt−1) + uniform_int[0, base/4]`
        (milliseconds); a retry writes no `job_log` row and does not call
        `extra_writes`.
        """
        if not retryable:
            after = self.complete(job, FAILED, result=result, last_error=error, stderr=stderr,
                                  extra_writes=extra_writes)
            return FailOutcome(FAILED, after, reason=reason, timed_out=timed_out)
        with self.db.write() as conn:
            now, now_text = self._now()
            current = self._load_running(conn, job)
            if current.attempt >= current.max_attempts:
                after = self._end(conn, current, DEAD, error, now_text, result=result, stderr=stderr,
                                  extra_writes=extra_writes)
                return FailOutcome(DEAD, after, attempts_exhausted=True, reason=reason, timed_out=timed_out)
            backoff_ms = self.backoff_ms(current.attempt, backoff_base_s)
            due = format_ts(now + timedelta(milliseconds=backoff_ms))
            conn.execute(
                "UPDATE job_queue SET status = 'queued', attempt = ?, next_retry_at = ?, last_error = ? WHERE id = ?",
                (current.attempt + 1, due, error, current.id),
            )
            self._transition(conn, current.id, RUNNING, QUEUED, error, now_text)
            after = self._load(conn, current.id)
        self.log.warn("retry scheduled", job_id=current.id, plugin=current.plugin, command=current.command,
                      attempt=current.attempt, max_attempts=current.max_attempts, backoff_ms=backoff_ms,
                      next_retry_at=due, reason=reason)
        return FailOutcome(QUEUED, after, backoff_ms=backoff_ms, next_retry_at=due, reason=reason,
                           timed_out=timed_out)

    def backoff_ms(self, attempt: int, backoff_base_s: float) -> int:
        """Decision E2 for the failed `attempt`, in whole milliseconds."""
        base_ms = max(0, int(round(float(backoff_base_s) * 1000)))
        return base_ms * 2 ** max(0, attempt - 1) + self.rng.randint(0, base_ms // 4)

    def requeue_interrupted(self, job: Job, reason: str = SHUTDOWN_REASON) -> Job:
        """Put a job the shutdown terminated back in the queue (spec 20 §4.4 step 3).

        The attempt is kept (the next claim re-runs it without a second
        `job_attempts` row), `next_retry_at` is cleared so it runs first
        thing on restart, and no `job_log` row is written.
        """
        with self.db.write() as conn:
            _, now_text = self._now()
            current = self._load_running(conn, job)
            conn.execute("UPDATE job_queue SET status = 'queued', next_retry_at = NULL, last_error = ? WHERE id = ?",
                         (reason, current.id))
            self._transition(conn, current.id, RUNNING, QUEUED, reason, now_text)
            return self._load(conn, current.id)

    # -- ending jobs from outside --

    def cancel_outstanding(self, plugin: str, command: str, reason: str,
                           extra_writes: Optional[ExtraWrites] = None) -> List[Job]:
        """`if_running: cancel` (spec 20 §5.5): every queued and running job of (plugin, command) → dead.

        Any submitter.  Each gets `last_error` = reason, `completed_at`, a
        transition and a `job_log` row without result, and `extra_writes`
        (hook jobs) — all in one transaction.  Returns the ended jobs; the
        caller terminates the processes of those that were running (their
        workers then get `JobNotRunning` and discard their output).
        """
        with self.db.write() as conn:
            _, now_text = self._now()
            rows = conn.execute(
                _SELECT_JOB + " WHERE plugin = ? AND command = ? AND status IN ('queued', 'running')"
                " ORDER BY created_at, rowid", (plugin, command),
            ).fetchall()
            return [self._end(conn, Job.from_row(row), DEAD, reason, now_text, extra_writes=extra_writes)
                    for row in rows]

    def kill_queued(self, predicate_or_plugins: Union[Mapping[str, str], Callable[[Job], Optional[str]]],
                    extra_writes: Optional[ExtraWrites] = None) -> List[Job]:
        """Reload step 4 (spec 20 §8.4): queued jobs of removed or disabled plugins → dead.

        `predicate_or_plugins` is `{plugin: reason}` or `job -> reason|None`.
        Normal completion: transition, `job_log` (no result), `extra_writes`.
        """
        decide = self._reason_function(predicate_or_plugins)
        with self.db.write() as conn:
            _, now_text = self._now()
            rows = conn.execute(_SELECT_JOB + " WHERE status = 'queued' ORDER BY created_at, rowid").fetchall()
            ended = []
            for row in rows:
                job = Job.from_row(row)
                reason = decide(job)
                if reason:
                    ended.append(self._end(conn, job, DEAD, reason, now_text, extra_writes=extra_writes))
            return ended

    @staticmethod
    def _reason_function(predicate_or_plugins) -> Callable[[Job], Optional[str]]:
        if callable(predicate_or_plugins):
            return predicate_or_plugins
        reasons = dict(predicate_or_plugins)
        return lambda job: reasons.get(job.plugin)

    def recover_orphans(self, extra_writes: Optional[ExtraWrites] = None, log=None) -> RecoveryReport:
        """Crash recovery at process start (spec 20 §8.2, decision E8).

        Every `running` row belongs to a process that died.  With an attempt
        left it is requeued at attempt + 1 (no retry delay, last_error
        cleared, no event); otherwise it ends `dead` with the recovery
        message and a `job_log` row without result or stderr.  The dead
        row keeps the attempt that actually ran, so its `job_log` id and
        `job_attempts` facts agree.  One transaction for all rows.
        """
        log = log if log is not None else self.log
        log.info("Performing crash recovery for orphaned jobs")
        requeued: List[Job] = []
        dead: List[Job] = []
        with self.db.write() as conn:
            _, now_text = self._now()
            rows = conn.execute(_SELECT_JOB + " WHERE status = 'running' ORDER BY created_at, rowid").fetchall()
            if rows:
                log.warn("Found orphaned jobs, attempting recovery", count=len(rows))
            for row in rows:
                self._recover_one(conn, Job.from_row(row), now_text, log, extra_writes, requeued, dead)
        if not rows:
            log.info("No orphaned jobs found.")
        return RecoveryReport(requeued, dead)

    def _recover_one(self, conn: sqlite3.Connection, job: Job, at: str, log, extra_writes,
                     requeued: List[Job], dead: List[Job]) -> None:
        ids = dict(job_id=job.id, plugin=job.plugin, command=job.command)
        log.warn("Recovering orphaned job", current_attempt=job.attempt, max_attempts=job.max_attempts, **ids)
        if job.attempt + 1 <= job.max_attempts:
            log.warn("Re-queueing orphaned job", new_attempt=job.attempt + 1, status=QUEUED, **ids)
            conn.execute("UPDATE job_queue SET status = 'queued', attempt = ?, next_retry_at = NULL,"
                         " last_error = NULL WHERE id = ?", (job.attempt + 1, job.id))
            self._transition(conn, job.id, RUNNING, QUEUED, None, at)
            requeued.append(self._load(conn, job.id))
            return
        message = RECOVERY_DEAD_MESSAGE % job.max_attempts
        log.error("Marking orphaned job as dead (max attempts reached)", final_attempt=job.attempt, status=DEAD,
                  error=message, **ids)
        dead.append(self._end(conn, job, DEAD, message, at, extra_writes=extra_writes))

    # -- retention --

    def prune(self, *, job_log_s: float, job_queue_s: float, job_transitions_s: float, job_attempts_s: float,
              breaker_transitions_s: float) -> Dict[str, int]:
        """Delete rows past their retention (spec 20 §8.3); returns rows deleted per table.

        0 means the default, negative disables that table.  Deletes run in
        batches of `PRUNE_BATCH` rows, each its own short transaction, so a
        large backlog never holds the writer lock for long.
        """
        now = self.clock()
        plan = [
            ("job_log", job_log_s, "completed_at < ?"),
            ("job_queue", job_queue_s, "status IN (%s) AND completed_at IS NOT NULL AND completed_at < ?"
             % ", ".join("'%s'" % s for s in TERMINAL_STATUSES)),
            ("job_transitions", job_transitions_s, "created_at < ?"),
            ("job_attempts", job_attempts_s, "created_at < ?"),
            ("circuit_breaker_transitions", breaker_transitions_s, "created_at < ?"),
        ]
        counts = {}
        for table, retention, condition in plan:
            seconds = RETENTION_DEFAULTS[table] if retention == 0 else retention
            if seconds is None or seconds < 0:
                counts[table] = 0
                continue
            counts[table] = self._delete_batches(table, condition, format_ts(now - timedelta(seconds=seconds)))
        return counts

    def _delete_batches(self, table: str, condition: str, cutoff: str) -> int:
        sql = "DELETE FROM %s WHERE rowid IN (SELECT rowid FROM %s WHERE %s LIMIT %d)" % (
            table, table, condition, PRUNE_BATCH)
        total = 0
        while True:
            with self.db.write() as conn:
                deleted = conn.execute(sql, (cutoff,)).rowcount
            total += deleted
            if deleted < PRUNE_BATCH:
                return total

    # -- reads --

    def get(self, job_id: str) -> Optional[Job]:
        with self.db.read() as conn:
            return self._load(conn, job_id)

    def count_outstanding(self, plugin: str, command: str, submitted_by: Optional[str] = None) -> int:
        """Queued + running jobs of (plugin, command), optionally of one submitter (spec 20 §5.5)."""
        sql = "SELECT COUNT(*) FROM job_queue WHERE plugin = ? AND command = ? AND status IN ('queued', 'running')"
        args: Tuple = (plugin, command)
        if submitted_by is not None:
            sql += " AND submitted_by = ?"
            args += (submitted_by,)
        with self.db.read() as conn:
            return conn.execute(sql, args).fetchone()[0]

    def count_by_status(self) -> Dict[str, int]:
        with self.db.read() as conn:
            rows = conn.execute("SELECT status, COUNT(*) AS n FROM job_queue GROUP BY status").fetchall()
        return {row["status"]: row["n"] for row in rows}

    def running_count_by_plugin(self) -> Dict[str, int]:
        with self.db.read() as conn:
            rows = conn.execute(
                "SELECT plugin, COUNT(*) AS n FROM job_queue WHERE status = 'running' GROUP BY plugin").fetchall()
        return {row["plugin"]: row["n"] for row in rows}

    def list_jobs(self, *, plugin: Optional[str] = None, command: Optional[str] = None,
                  status: Optional[str] = None, limit: int = 50) -> Tuple[List[Job], int]:
        """Jobs newest first (created_at, then insertion) and the total ignoring `limit` (`GET /jobs`)."""
        where, args = self._filters([("plugin = ?", plugin), ("command = ?", command), ("status = ?", status)])
        with self.db.read() as conn:
            total = conn.execute("SELECT COUNT(*) FROM job_queue" + where, args).fetchone()[0]
            rows = conn.execute(_SELECT_JOB + where + " ORDER BY created_at DESC, rowid DESC LIMIT ?",
                                args + (int(limit),)).fetchall()
        return [Job.from_row(row) for row in rows], total

    def transitions(self, job_id: str) -> List[Dict[str, Any]]:
        """The job's `job_transitions` rows, oldest first."""
        with self.db.read() as conn:
            rows = conn.execute(
                "SELECT id, job_id, from_status, to_status, reason, created_at FROM job_transitions"
                " WHERE job_id = ? ORDER BY created_at, id", (job_id,)).fetchall()
        return [dict(row) for row in rows]

    def attempts(self, job_id: str) -> List[Dict[str, Any]]:
        """The job's `job_attempts` rows, oldest first."""
        with self.db.read() as conn:
            rows = conn.execute(
                "SELECT id, job_id, attempt, created_at FROM job_attempts WHERE job_id = ? ORDER BY created_at, id",
                (job_id,)).fetchall()
        return [dict(row) for row in rows]

    def job_log_rows(self, *, job_id: Optional[str] = None, plugin: Optional[str] = None,
                     command: Optional[str] = None, status: Optional[str] = None,
                     submitted_by: Optional[str] = None, from_: Union[None, str, datetime] = None,
                     to: Union[None, str, datetime] = None, query: Optional[str] = None, limit: int = 50,
                     include_result: bool = False) -> JobLogPage:
        """`job_log` rows for `job logs` / `GET /job-logs`, newest completion first.

        `job_id` matches the job id or a log id `<job_id>-…`; `from_`/`to`
        are inclusive bounds on `completed_at`; `query` is a case-insensitive
        substring of `last_error`, `stderr` or `result` (spec 40 §4.6, 50
        §10.2).  `result` is in each row only with `include_result`.
        """
        clauses = [("(l.job_id = ? OR l.id LIKE ? ESCAPE '\\')", job_id and (job_id, _like_prefix(job_id))),
                   ("l.plugin = ?", plugin), ("l.command = ?", command), ("l.status = ?", status),
                   ("l.submitted_by = ?", submitted_by), ("l.completed_at >= ?", _bound(from_)),
                   ("l.completed_at <= ?", _bound(to))]
        needle = (query or "").strip().lower()
        if needle:
            pattern = "%" + _like_escape(needle) + "%"
            clauses.append(("(LOWER(COALESCE(l.last_error, '')) LIKE ? ESCAPE '\\'"
                            " OR LOWER(COALESCE(l.stderr, '')) LIKE ? ESCAPE '\\'"
                            " OR LOWER(COALESCE(l.result, '')) LIKE ? ESCAPE '\\')", (pattern,) * 3))
        where, args = self._filters(clauses)
        sql = ("SELECT l.*, l.id AS log_id FROM job_log AS l" + where
               + " ORDER BY l.completed_at DESC, l.rowid DESC LIMIT ?")
        with self.db.read() as conn:
            total = conn.execute("SELECT COUNT(*) FROM job_log AS l" + where, args).fetchone()[0]
            rows = conn.execute(sql, args + (int(limit),)).fetchall()
        return JobLogPage(total, [_log_row(row, include_result) for row in rows])

    def job_log_for(self, job_id: str, attempt: Optional[int] = None) -> Optional[Dict[str, Any]]:
        """The `job_log` row of a job's attempt (default: its current attempt), result included."""
        with self.db.read() as conn:
            if attempt is None:
                job = self._load(conn, job_id)
                if job is None:
                    return None
                attempt = job.attempt
            row = conn.execute("SELECT *, id AS log_id FROM job_log WHERE job_id = ? AND attempt = ?"
                               " ORDER BY rowid DESC LIMIT 1", (job_id, attempt)).fetchone()
        return None if row is None else _log_row(row, True)

    @staticmethod
    def _filters(clauses: Sequence[Tuple[str, Any]]) -> Tuple[str, Tuple]:
        """WHERE text and arguments for the clauses whose value is given (a tuple value = several args)."""
        parts, args = [], ()
        for sql, value in clauses:
            if value is None or value == "":
                continue
            parts.append(sql)
            args += value if isinstance(value, tuple) else (value,)
        return (" WHERE " + " AND ".join(parts) if parts else ""), args


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _like_prefix(job_id: str) -> str:
    return _like_escape(job_id) + "-%"


def _bound(value: Union[None, str, datetime]) -> Optional[str]:
    """A from/to bound in the stored fixed-width shape, so text comparison is time comparison.

    Offsets are converted to UTC first, so bounds compare as instants.
    """
    if value is None or value == "":
        return None
    moment = value if isinstance(value, datetime) else parse_ts(str(value))
    return format_ts(moment)


def _log_row(row: Mapping, include_result: bool) -> Dict[str, Any]:
    data = {key: row[key] for key in row.keys()}
    if not include_result:
        data.pop("result", None)
    return data
