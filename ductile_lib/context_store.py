"""``event_context`` rows and split frames (spec 30 §4.8, §7.1).

Append-only storage used by the router inside a job's terminal transaction
(every function takes the open connection) and by the dispatcher to load a
step's context before it runs.
"""
from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import List, Optional

from ductile_lib.baggage import check_size
from ductile_lib.timefmt import now_ts


@dataclass(frozen=True)
class ContextRow:
    """One ``event_context`` row, decoded."""

    id: str
    parent_id: Optional[str]
    pipeline: str
    step_id: str
    accumulated: dict = field(default_factory=dict)

    @property
    def control(self) -> dict:
        """The reserved ``ductile`` object (instance id, depths, split stack)."""
        value = self.accumulated.get("ductile")
        return value if isinstance(value, dict) else {}

    @property
    def instance_id(self) -> str:
        return str(self.control.get("pipeline_instance_id") or "")

    @property
    def route_depth(self) -> int:
        return int(self.control.get("route_depth") or 0)

    @property
    def chain_depth(self) -> int:
        return int(self.control.get("chain_depth") or 0)

    @property
    def splits(self) -> list:
        value = self.control.get("splits")
        return list(value) if isinstance(value, list) else []


def load_context(conn, context_id: Optional[str]) -> Optional[ContextRow]:
    """The row, or None; a row whose JSON is broken raises ValueError (preflight fails the job)."""
    if not context_id:
        return None
    row = conn.execute("SELECT id, parent_id, pipeline_name, step_id, accumulated_json FROM event_context "
                       "WHERE id = ?", (context_id,)).fetchone()
    if row is None:
        raise ValueError("event context %s not found" % context_id)
    raw = row["accumulated_json"]
    text = bytes(raw).decode("utf-8") if isinstance(raw, (bytes, bytearray)) else raw
    accumulated = json.loads(text or "{}")
    if not isinstance(accumulated, dict):
        raise ValueError("event context %s is not a JSON object" % context_id)
    return ContextRow(row["id"], row["parent_id"], row["pipeline_name"] or "", row["step_id"] or "", accumulated)


def insert_context(conn, parent_id: Optional[str], pipeline: str, step_id: str, accumulated: dict) -> ContextRow:
    """Append a row (size-checked: a context over 1 MiB is a routing error)."""
    check_size(accumulated)
    context_id = str(uuid.uuid4())
    conn.execute("INSERT INTO event_context (id, parent_id, pipeline_name, step_id, accumulated_json, created_at) "
                 "VALUES (?, ?, ?, ?, ?, ?)",
                 (context_id, parent_id, pipeline, step_id, _compact(accumulated), now_ts()))
    return ContextRow(context_id, parent_id, pipeline, step_id, accumulated)


def open_frame(conn, pipeline: str, instance_id: str, split_step_id: str, branch_count: int, entry_event: dict) -> str:
    frame_id = str(uuid.uuid4())
    conn.execute("INSERT INTO split_frames (id, pipeline_name, instance_id, split_step_id, branch_count, "
                 "entry_event_json, status, created_at) VALUES (?, ?, ?, ?, ?, ?, 'open', ?)",
                 (frame_id, pipeline, instance_id, split_step_id, branch_count, _compact(entry_event), now_ts()))
    return frame_id


def record_arrival(conn, frame_id: str, branch: int, job_id: str, context_id: str):
    """Insert an arrival; return the frame row when this arrival completes it, else None."""
    cursor = conn.execute("INSERT OR IGNORE INTO split_arrivals (frame_id, branch, job_id, event_context_id, "
                          "created_at) VALUES (?, ?, ?, ?, ?)", (frame_id, branch, job_id, context_id, now_ts()))
    if cursor.rowcount == 0:
        return None  # a repeated branch arrival
    frame = conn.execute("SELECT * FROM split_frames WHERE id = ?", (frame_id,)).fetchone()
    if frame is None or frame["status"] != "open":
        return None
    arrived = conn.execute("SELECT COUNT(*) FROM split_arrivals WHERE frame_id = ?", (frame_id,)).fetchone()[0]
    if arrived < frame["branch_count"]:
        return None
    conn.execute("UPDATE split_frames SET status = 'joined', closed_at = ? WHERE id = ? AND status = 'open'",
                 (now_ts(), frame_id))
    return frame


def arrival_contexts(conn, frame_id: str) -> List[str]:
    """Context ids of a frame's arrivals in branch order."""
    return [r[0] for r in conn.execute("SELECT event_context_id FROM split_arrivals WHERE frame_id = ? "
                                       "ORDER BY branch", (frame_id,))]


def stop_frames(conn, frame_ids: List[str]) -> List[str]:
    """Mark open frames ``stopped``; return the ids that were open."""
    stopped = []
    for frame_id in frame_ids:
        cursor = conn.execute("UPDATE split_frames SET status = 'stopped', closed_at = ? WHERE id = ? AND "
                              "status = 'open'", (now_ts(), frame_id))
        if cursor.rowcount:
            stopped.append(frame_id)
    return stopped


def _compact(value) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
