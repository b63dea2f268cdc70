"""``ductile job inspect|logs`` (spec 50 §10): read the local database, no API.

Both commands answer "what happened to this job?" from the tables alone, so
they work with the gateway stopped, and beside a running one (WAL lets a
reader in while the gateway writes).  They never create or alter the
database: :class:`ExistingDatabase` opens the file as it is, which the
``system`` breaker, scheduler and facts commands reuse.
"""
from __future__ import annotations

import json
import os
import sqlite3
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

from ductile_lib.cli.common import (EXIT_FAILURE, Action, CliError, UsageError, add_config_flags, add_json_flag,
                                    json_or_text, load_config_from_args, print_json)
from ductile_lib.queue import JobQueue
from ductile_lib.timefmt import parse_ts

LOG_STATUSES = ("queued", "running", "succeeded", "failed", "timed_out", "dead", "skipped")
STATUS_ALIASES = {"pending": "queued", "ok": "succeeded", "error": "failed"}
MAX_LOG_LIMIT = 200

_LOG_KEYS = (("JobID", "job_id"), ("LogID", "log_id"), ("Plugin", "plugin"), ("Command", "command"),
             ("Status", "status"), ("Attempt", "attempt"), ("SubmittedBy", "submitted_by"),
             ("CreatedAt", "created_at"), ("CompletedAt", "completed_at"), ("LastError", "last_error"),
             ("Stderr", "stderr"))
_SNAPSHOT_KEYS = ("enqueued_config_snapshot_id", "started_config_snapshot_id")


# --- opening the database ------------------------------------------------------------

class ExistingDatabase:
    """A database file that must already exist, opened ``mode=rw`` as it is.

    ``db.Database`` creates a missing file and adapts an original one; an
    inspection command must do neither (a typo'd ``state.path`` would
    otherwise leave an empty database behind).  Offers the same
    ``read()``/``write()`` context managers, so ``JobQueue``,
    ``StateStore`` and ``breakers`` work on it unchanged.
    """

    def __init__(self, path: str):
        self.path = path
        uri = Path(os.path.abspath(path)).as_uri() + "?mode=rw"
        try:
            self._conn = sqlite3.connect(uri, uri=True, timeout=5.0, isolation_level=None,
                                         check_same_thread=False)
            self._conn.row_factory = sqlite3.Row
            self._conn.execute("PRAGMA busy_timeout = 5000").fetchall()
        except sqlite3.Error as exc:
            raise CliError("open database %s: %s" % (path, exc), EXIT_FAILURE, {"path": path}) from None

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """One snapshot for the block; nested calls share it."""
        if self._conn.in_transaction:
            yield self._conn
            return
        self._conn.execute("BEGIN")
        try:
            yield self._conn
        finally:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A short ``BEGIN IMMEDIATE`` transaction, committed unless the block raises."""
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
            self._conn.execute("COMMIT")
        except BaseException:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> "ExistingDatabase":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def open_existing_database(path: str) -> ExistingDatabase:
    """The gateway's database, or the spec's error when it was never created."""
    if not os.path.isfile(path):
        raise CliError("database file does not exist: %s (start the gateway once)" % path, EXIT_FAILURE,
                       {"path": path})
    return ExistingDatabase(path)


def database_error(exc: sqlite3.Error, path: str) -> CliError:
    """A SQLite failure (locked, corrupt, an old schema) as an operator-readable error."""
    return CliError("database error (%s): %s" % (path, exc), EXIT_FAILURE, {"path": path})


# --- job inspect -------------------------------------------------------------------

def _configure_inspect(parser) -> None:
    add_config_flags(parser)
    add_json_flag(parser)
    parser.add_argument("job_id", nargs="?", help="the job to report on")


def run_inspect(args) -> int:
    """The lineage report of one job: history, config, children, pipeline hops."""
    job_id = (args.job_id or "").strip()
    if not job_id:
        raise UsageError("job_id is required")
    cfg = load_config_from_args(args)
    with open_existing_database(cfg.state_path) as db:
        try:
            report = build_inspect_report(db, job_id)
        except sqlite3.Error as exc:
            raise database_error(exc, cfg.state_path) from None
    if report is None:
        raise CliError('Inspect failed: job "%s" not found' % job_id, EXIT_FAILURE, {"job_id": job_id})
    if args.json:
        print_json(report)
    else:
        sys.stdout.write(render_inspect(report))
    return 0


def build_inspect_report(db, job_id: str) -> Optional[Dict[str, Any]]:
    """The §10.1 JSON report, or None when the job is unknown.

    Everything is read in one snapshot so the parts agree with each other
    even while a gateway keeps writing.
    """
    queue = JobQueue(db)
    with db.read() as conn:
        job = queue.get(job_id)
        if job is None:
            return None
        report: Dict[str, Any] = {"job_id": job.id, "plugin": job.plugin, "command": job.command,
                                  "status": job.status, "attempt": job.attempt,
                                  "context_id": job.event_context_id or ""}
        if job.parent_job_id:
            report["parent_job_id"] = job.parent_job_id
        report["children"] = _children(conn, job.id)
        transitions, attempts = queue.transitions(job.id), queue.attempts(job.id)
        report["transitions"] = [_transition_json(t) for t in transitions]
        report["attempts"] = [{"attempt": a["attempt"], "at": a["created_at"]} for a in attempts]
        report["consistency"] = _consistency(job, transitions, attempts)
        report["config"] = _config_report(conn, job.enqueued_config_snapshot_id, job.started_config_snapshot_id)
        steps = _steps(conn, job.event_context_id) if job.event_context_id else []
        report["hops"] = len(steps)
        report["steps"] = steps
    return report


def _children(conn: sqlite3.Connection, job_id: str) -> List[Dict[str, Any]]:
    rows = conn.execute("SELECT id, plugin, command, status FROM job_queue WHERE parent_job_id = ?"
                        " ORDER BY created_at, rowid", (job_id,)).fetchall()
    return [{"job_id": r["id"], "plugin": r["plugin"], "command": r["command"], "status": r["status"]}
            for r in rows]


def _transition_json(row: Dict[str, Any]) -> Dict[str, Any]:
    item: Dict[str, Any] = {}
    if row["from_status"]:
        item["from"] = row["from_status"]
    item["to"] = row["to_status"]
    item["at"] = row["created_at"]
    if row["reason"]:
        item["reason"] = row["reason"]
    return item


def _consistency(job, transitions: list, attempts: list) -> Dict[str, Any]:
    """Does the cached row agree with the append-only facts?  (the original's rules)

    No transitions at all means a row written before those facts existed:
    that is `legacy_missing_data`, not an inconsistency to alarm about.
    """
    result: Dict[str, Any] = {}
    if transitions:
        latest = transitions[-1]["to_status"]
        result["latest_transition_status"] = latest
        result["cached_status_matches"] = latest == job.status
    else:
        result["cached_status_matches"] = False
    if attempts:
        result["attempt_facts_match"] = attempts[-1]["attempt"] == job.attempt
    else:
        result["attempt_facts_match"] = job.attempt == 1
    result["legacy_missing_data"] = not transitions
    return result


def _config_report(conn: sqlite3.Connection, enqueued_id: Optional[str], started_id: Optional[str]) -> dict:
    """Which config snapshot the job was enqueued and started under."""
    report: Dict[str, Any] = {}
    missing: List[str] = []
    secret_uses: List[dict] = []
    for key, snapshot_id in (("enqueued", enqueued_id), ("started", started_id)):
        if not snapshot_id or not snapshot_id.strip():
            continue
        row = conn.execute("SELECT * FROM config_snapshots WHERE id = ?", (snapshot_id,)).fetchone()
        if row is None:
            if snapshot_id not in missing:
                missing.append(snapshot_id)
            continue
        report[key] = _snapshot_summary(row)
        for use in _secret_uses(row["secret_fingerprints"]):
            if use not in secret_uses:
                secret_uses.append(use)
    report["crossed_reload_boundary"] = bool(enqueued_id and started_id and enqueued_id != started_id)
    report["legacy_missing_data"] = enqueued_id is None or started_id is None
    if missing:
        report["missing_snapshot_refs"] = missing
    if secret_uses:
        report["secret_uses"] = secret_uses
    return report


def _snapshot_summary(row) -> Dict[str, Any]:
    summary: Dict[str, Any] = {"id": row["id"], "config_hash": row["config_hash"]}
    for key in ("source_hash", "source_path", "source"):
        if row[key]:
            summary[key] = row[key]
    summary["reason"] = row["reason"]
    summary["loaded_at"] = row["loaded_at"]
    for key in ("ductile_version", "binary_path"):
        if row[key]:
            summary[key] = row[key]
    summary["snapshot_format"] = row["snapshot_format"]
    semantics = _json_value(row["semantics"])
    if isinstance(semantics, dict) and semantics:
        summary["semantics"] = semantics
    return summary


def _secret_uses(value) -> List[dict]:
    """`secret_fingerprints` when it holds the original's list of secret uses; else nothing."""
    decoded = _json_value(value)
    if not isinstance(decoded, list):
        return []
    uses = []
    for item in decoded:
        if isinstance(item, dict) and "purpose" in item:
            use = {"purpose": item["purpose"]}
            for key in ("ref", "source"):
                if item.get(key):
                    use[key] = item[key]
            use["present"] = bool(item.get("present"))
            if item.get("fingerprint"):
                use["fingerprint"] = item["fingerprint"]
            uses.append(use)
    return uses


def _steps(conn: sqlite3.Connection, context_id: str) -> List[Dict[str, Any]]:
    """The event-context chain from the pipeline's root to this job's context, one entry per hop."""
    chain = []
    seen = set()
    current: Optional[str] = context_id
    while current and current not in seen:
        seen.add(current)
        row = conn.execute("SELECT id, parent_id, pipeline_name, step_id, accumulated_json FROM event_context"
                           " WHERE id = ?", (current,)).fetchone()
        if row is None:
            break
        chain.append(row)
        current = row["parent_id"]
    return [_step(conn, hop, row) for hop, row in enumerate(reversed(chain), start=1)]


def _step(conn: sqlite3.Connection, hop: int, row) -> Dict[str, Any]:
    step: Dict[str, Any] = {"hop": hop, "pipeline": _or(row["pipeline_name"], "<root>"),
                            "step_id": _or(row["step_id"], "<entry>"), "context_id": row["id"]}
    if row["parent_id"]:
        step["parent_id"] = row["parent_id"]
    job = conn.execute("SELECT id, plugin, command, status FROM job_queue WHERE event_context_id = ?"
                       " ORDER BY created_at, rowid LIMIT 1", (row["id"],)).fetchone()
    if job is not None:
        step.update(job_id=job["id"], plugin=job["plugin"], command=job["command"], status=job["status"])
    baggage = _json_value(row["accumulated_json"])
    step["baggage"] = {} if baggage is None else baggage
    return step


def _or(value: Optional[str], fallback: str) -> str:
    return value if value and value.strip() else fallback


def _json_value(value):
    """A JSON column (TEXT or BLOB) decoded; unreadable text is returned as the text itself."""
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray, memoryview)):
        value = bytes(value).decode("utf-8", errors="replace")
    try:
        return json.loads(value)
    except (TypeError, ValueError):
        return value


# --- job inspect: the human report ---------------------------------------------------------

def render_inspect(report: Dict[str, Any]) -> str:
    """The terminal layout of the report; sections separated by one blank line."""
    sections = [_render_header(report), _render_children(report), _render_history(report),
                _render_config(report["config"])]
    sections += [_render_step(step) for step in report["steps"]]
    return "\n\n".join("\n".join(lines) for lines in sections) + "\n"


def _render_header(report: dict) -> List[str]:
    rows = (("Job ID", report["job_id"]), ("Plugin", report["plugin"]), ("Command", report["command"]),
            ("Status", report["status"]), ("Attempt", report["attempt"]), ("Context ID", report["context_id"]),
            ("Parent Job", report.get("parent_job_id") or "<none>"), ("Hops", report["hops"]))
    return ["Lineage Report"] + ["%-12s: %s" % (label, value) for label, value in rows]


def _render_children(report: dict) -> List[str]:
    lines = ["Children"]
    if not report["children"]:
        return lines + ["  <none>"]
    return lines + ["  - %s (%s:%s, %s)" % (c["job_id"], c["plugin"], c["command"], c["status"])
                    for c in report["children"]]


def _render_history(report: dict) -> List[str]:
    lines = ["Execution History"]
    if report["transitions"]:
        lines.append("  transitions :")
        for t in report["transitions"]:
            line = "    - %s -> %s at %s" % (t.get("from", "NULL"), t["to"], t["at"])
            lines.append(line + (" (%s)" % t["reason"] if t.get("reason") else ""))
    else:
        lines.append("  transitions : <none>")
    if report["attempts"]:
        lines.append("  attempts    :")
        lines += ["    - attempt %d at %s" % (a["attempt"], a["at"]) for a in report["attempts"]]
    else:
        lines.append("  attempts    : <none>")
    c = report["consistency"]
    lines.append("  consistency : cached_status_matches=%s attempt_facts_match=%s legacy_missing_data=%s" % (
        _bool(c["cached_status_matches"]), _bool(c["attempt_facts_match"]), _bool(c["legacy_missing_data"])))
    return lines


def _render_config(config: dict) -> List[str]:
    lines = ["Config",
             "  enqueued under: %s" % _snapshot_line(config.get("enqueued")),
             "  started under : %s" % _snapshot_line(config.get("started"))]
    for label, key in (("enqueued semantics", "enqueued"), ("started semantics ", "started")):
        semantics = (config.get(key) or {}).get("semantics")
        if semantics:
            lines.append("  %s: %s" % (label, ", ".join("%s=%s" % (k, _plain(semantics[k]))
                                                         for k in sorted(semantics))))
    lines.append("  crossed reload boundary: %s" % _bool(config["crossed_reload_boundary"]))
    lines.append("  legacy missing data    : %s" % _bool(config["legacy_missing_data"]))
    if config.get("missing_snapshot_refs"):
        lines.append("  missing snapshot refs  : %s" % ", ".join(config["missing_snapshot_refs"]))
    uses = config.get("secret_uses") or []
    if not uses:
        return lines + ["  secrets                : <none>"]
    lines.append("  secrets                :")
    lines += ["    - %s used by %s present=%s" % (u.get("ref") or "<inline>", u["purpose"], _bool(u["present"]))
              for u in uses]
    return lines


def _render_step(step: dict) -> List[str]:
    job = ("%s (%s:%s, %s)" % (step["job_id"], step["plugin"], step["command"], step["status"])
           if step.get("job_id") else "<none>")
    lines = ["[%d] %s :: %s" % (step["hop"], step["pipeline"], step["step_id"]),
             "    context_id : %s" % step["context_id"],
             "    parent_id  : %s" % (step.get("parent_id") or "<none>"),
             "    job        : %s" % job,
             "    baggage    :"]
    pretty = json.dumps(step["baggage"], indent=2, ensure_ascii=False)
    return lines + ["      " + line for line in pretty.splitlines()]


def _snapshot_line(snapshot: Optional[dict]) -> str:
    if not snapshot:
        return "<missing>"
    return "%s %s %s" % (snapshot["id"], snapshot["reason"], snapshot["loaded_at"])


def _bool(value) -> str:
    return "true" if value else "false"


def _plain(value) -> str:
    """A semantics value the way Go's %v shows scalars."""
    if isinstance(value, bool):
        return _bool(value)
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


# --- job logs ----------------------------------------------------------------------

def _configure_logs(parser) -> None:
    add_config_flags(parser)
    add_json_flag(parser)
    parser.add_argument("--plugin", default="", help="only this plugin")
    parser.add_argument("--command", default="", help="only this command")
    parser.add_argument("--status", default="", help="queued|running|succeeded|failed|timed_out|dead|skipped "
                                                     "(or pending|ok|error)")
    parser.add_argument("--submitted-by", default="", help="only jobs from this submitter")
    parser.add_argument("--from", dest="from_", default="", metavar="TIME", help="completed at or after (RFC 3339)")
    parser.add_argument("--to", default="", metavar="TIME", help="completed at or before (RFC 3339)")
    parser.add_argument("--query", default="", help="case-insensitive text in last_error, stderr or result")
    parser.add_argument("--limit", type=int, default=50, help="rows to show, 1-200 (default 50)")
    parser.add_argument("--include-result", action="store_true", help="include the plugin's output")


def run_logs(args) -> int:
    """Completed jobs from `job_log`, newest first, with the total before the limit."""
    filters = _log_filters(args)
    cfg = load_config_from_args(args)
    with open_existing_database(cfg.state_path) as db:
        try:
            total, rows = query_logs(db, filters, args.limit, args.include_result)
        except sqlite3.Error as exc:
            raise database_error(exc, cfg.state_path) from None
    if args.json:
        print_json({"total": total, "logs": [log_entry(row, args.include_result) for row in rows]})
    else:
        _print_logs(total, rows)
    return 0


def _log_filters(args) -> Dict[str, Any]:
    """Validated filters; every problem is a usage error (2), checked before the config loads."""
    if not 1 <= args.limit <= MAX_LOG_LIMIT:
        raise UsageError("limit must be between 1 and %d" % MAX_LOG_LIMIT)
    status = args.status.strip().lower()
    if status:
        status = STATUS_ALIASES.get(status, status)
        if status not in LOG_STATUSES:
            raise UsageError("invalid status filter")
    return {"plugin": args.plugin.strip(), "command": args.command.strip(), "status": status,
            "submitted_by": args.submitted_by.strip(), "from_": _time_filter(args.from_, "from"),
            "to": _time_filter(args.to, "to"), "query": args.query.strip()}


def _time_filter(text: str, which: str):
    text = (text or "").strip()
    if not text:
        return None
    try:
        return parse_ts(text)
    except ValueError:
        raise UsageError("invalid %s timestamp" % which) from None


def query_logs(db, filters: Dict[str, Any], limit: int, include_result: bool):
    """(total, rows): `job_log` rows, their snapshot ids completed from `job_queue`."""
    page = JobQueue(db).job_log_rows(limit=limit, include_result=include_result, **filters)
    snapshots = _queue_snapshot_ids(db, page.rows)
    for row in page.rows:
        fallback = snapshots.get((row.get("job_id"), row.get("attempt")), {})
        for key in _SNAPSHOT_KEYS:
            row[key] = row.get(key) or fallback.get(key)
    return page.total, page.rows


def log_entry(row: Dict[str, Any], include_result: bool) -> Dict[str, Any]:
    """One row with the JSON keys scripts written for the original expect."""
    entry = {key: row.get(column) for key, column in _LOG_KEYS}
    if include_result:
        entry["Result"] = json_or_text(row.get("result"))
    entry["EnqueuedConfigSnapshotID"] = row.get(_SNAPSHOT_KEYS[0])
    entry["StartedConfigSnapshotID"] = row.get(_SNAPSHOT_KEYS[1])
    return entry


def _queue_snapshot_ids(db, rows: List[dict]) -> Dict[tuple, dict]:
    """Snapshot ids from `job_queue` (id + attempt) for log rows that lack their own.

    The original wrote `job_log` rows without them; the queue row, while it
    is still retained, knows them.
    """
    wanted = sorted({row["job_id"] for row in rows if row.get("job_id")
                     and not (row.get(_SNAPSHOT_KEYS[0]) and row.get(_SNAPSHOT_KEYS[1]))})
    if not wanted:
        return {}
    with db.read() as conn:
        found = conn.execute("SELECT id, attempt, enqueued_config_snapshot_id, started_config_snapshot_id"
                             " FROM job_queue WHERE id IN (%s)" % ", ".join("?" * len(wanted)), wanted).fetchall()
    return {(r["id"], r["attempt"]): {k: r[k] for k in _SNAPSHOT_KEYS} for r in found}


def _print_logs(total: int, rows: List[dict]) -> None:
    print("Job Logs (total=%d)" % total)
    for row in rows:
        print("- %s %s %s:%s job=%s attempt=%s submitted_by=%s" % (
            row["completed_at"], row["status"], row["plugin"], row["command"], row["job_id"], row["attempt"],
            row["submitted_by"]))
        for label in ("last_error", "stderr", "result"):
            if row.get(label):
                print("  %s: %s" % (label, row[label].rstrip("\n")))


ACTIONS = {
    "inspect": Action("show one job's lineage: history, config, children, pipeline hops",
                      _configure_inspect, run_inspect),
    "logs": Action("query completed jobs (job_log) with filters", _configure_logs, run_logs),
}
