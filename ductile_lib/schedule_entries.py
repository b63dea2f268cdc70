"""``schedule_entries`` rows: each schedule's durable memory (spec 20 §5.7).

Full-row upserts with ``updated_at``; rows are created lazily and never
pruned.  Times are held as aware UTC datetimes in Python and written in the
fixed-width DB shape.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Optional

from ductile_lib.timefmt import format_ts, parse_ts_or_none as _ts


@dataclass(frozen=True)
class EntryRow:
    plugin: str
    schedule_id: str
    command: str
    status: str = "active"
    reason: Optional[str] = None
    last_fired_at: Optional[datetime] = None
    last_success_job_id: Optional[str] = None
    last_success_at: Optional[datetime] = None
    next_run_at: Optional[datetime] = None

    def with_(self, **changes) -> "EntryRow":
        return replace(self, **changes)


def load_entry(db, plugin: str, schedule_id: str, command: str) -> EntryRow:
    """The stored row, or a fresh ``active`` one (not yet written)."""
    with db.read() as conn:
        row = conn.execute("SELECT * FROM schedule_entries WHERE plugin = ? AND schedule_id = ?",
                           (plugin, schedule_id)).fetchone()
    if row is None:
        return EntryRow(plugin, schedule_id, command)
    return EntryRow(
        plugin=plugin, schedule_id=schedule_id, command=row["command"], status=row["status"] or "active",
        reason=row["reason"], last_fired_at=_ts(row["last_fired_at"]),
        last_success_job_id=row["last_success_job_id"], last_success_at=_ts(row["last_success_at"]),
        next_run_at=_ts(row["next_run_at"]),
    )


def save_entry(db, entry: EntryRow, now: datetime) -> None:
    """Upsert the whole row."""
    with db.write() as conn:
        conn.execute(
            "INSERT INTO schedule_entries (plugin, schedule_id, command, status, reason, last_fired_at, "
            "last_success_job_id, last_success_at, next_run_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?) "
            "ON CONFLICT(plugin, schedule_id) DO UPDATE SET command=excluded.command, status=excluded.status, "
            "reason=excluded.reason, last_fired_at=excluded.last_fired_at, "
            "last_success_job_id=excluded.last_success_job_id, last_success_at=excluded.last_success_at, "
            "next_run_at=excluded.next_run_at, updated_at=excluded.updated_at",
            (entry.plugin, entry.schedule_id, entry.command, entry.status, entry.reason, _text(entry.last_fired_at),
             entry.last_success_job_id, _text(entry.last_success_at), _text(entry.next_run_at), format_ts(now)))


def newest_terminal_job(db, plugin: str, command: str, submitted_by: str, dedupe_key: str):
    """The newest finished job of one schedule entry (for the start-up outcome rule)."""
    with db.read() as conn:
        return conn.execute(
            "SELECT id, status, completed_at FROM job_queue WHERE plugin = ? AND command = ? AND submitted_by = ? "
            "AND (dedupe_key = ? OR dedupe_key LIKE ?) AND completed_at IS NOT NULL "
            "AND status IN ('succeeded','failed','timed_out','dead') ORDER BY completed_at DESC, rowid DESC LIMIT 1",
            (plugin, command, submitted_by, dedupe_key, dedupe_key + ":catchup:%")).fetchone()


def list_entries(db) -> list:
    with db.read() as conn:
        return [dict(row) for row in conn.execute("SELECT * FROM schedule_entries ORDER BY plugin, schedule_id")]


def _text(moment: Optional[datetime]) -> Optional[str]:
    return format_ts(moment) if moment is not None else None
