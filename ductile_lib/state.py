"""Plugin state and plugin facts (spec 20 §7).

Two tables, in the original's habit of keeping facts apart from caches:

* `plugin_facts` is append-only: one row per recorded fact, numbered by the
  `plugin_facts` counter in `storage_sequences`, never pruned.
* `plugin_state` is the current state object per plugin, the cache a plugin
  receives in its next request.

A successful response's `state_updates` object either becomes a fact (when
the plugin's manifest has a `fact_outputs` rule for the command) whose object
then *replaces* the state (`mirror_object`, decision E9), or is shallow-merged
into the state.  Both keep JSON normalized (sorted keys, compact) and refuse
anything over 1 MiB, so one chatty plugin cannot bloat every later request.
"""
from __future__ import annotations

import json
import sqlite3
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable, Dict, List, Optional

from ductile_lib.timefmt import format_ts, utc_now

MAX_STATE_BYTES = 1048576
FACT_SEQUENCE = "plugin_facts"
FACT_TOO_LARGE = "failed to record plugin fact: plugin state exceeds max size (%d bytes)" % MAX_STATE_BYTES
STATE_TOO_LARGE = "failed to apply state updates: plugin state exceeds max size (%d bytes)" % MAX_STATE_BYTES


class StateError(Exception):
    """State could not be read or written; the message is the job's last_error."""


@dataclass(frozen=True)
class Fact:
    """One `plugin_facts` row with its JSON decoded (`fact` is None if the text is unreadable)."""

    id: str
    seq: Optional[int]
    plugin_name: str
    fact_type: str
    job_id: str
    command: str
    fact: Any = field(hash=False)
    fact_json: str = field(repr=False)
    created_at: str


def normalize_json(value) -> str:
    """Sorted keys, no whitespace, UTF-8 kept as is: one spelling per value."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _decode_json_column(value):
    """Parse a JSON column read as TEXT or BLOB."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        value = bytes(value).decode("utf-8")
    return json.loads(value)


def _too_large(text: str) -> bool:
    return len(text.encode("utf-8")) > MAX_STATE_BYTES


def _fact_rule_applies(rule: dict, command: str) -> bool:
    """A `fact_outputs` rule for this command that records `state_updates` as `mirror_object`."""
    when = rule.get("when") or {}
    return (when.get("command") == command
            and (rule.get("from") or "state_updates") == "state_updates"
            and bool(rule.get("fact_type"))
            and (rule.get("compatibility_view") or "mirror_object") == "mirror_object")


class StateStore:
    """Reads and writes `plugin_state` and `plugin_facts`.

    Each write is one short `BEGIN IMMEDIATE` transaction on the database's
    writer connection; `clock()` stamps `created_at`/`updated_at`.
    """

    def __init__(self, db, clock: Callable[[], datetime] = utc_now):
        self.db = db
        self.clock = clock

    # -- reading --

    def get_state(self, plugin: str) -> dict:
        """The plugin's state object, `{}` when it has none.

        Raises `StateError` when the stored text is not a JSON object, so
        the dispatcher fails the job before spawning a plugin that would
        otherwise receive garbage.
        """
        with self.db.read() as conn:
            return self._read_state(conn, plugin, "failed to load plugin state")

    def read_state(self, conn: sqlite3.Connection, plugin: str) -> dict:
        """``get_state`` inside a caller's open transaction."""
        return self._read_state(conn, plugin, "failed to load plugin state")

    @staticmethod
    def _read_state(conn: sqlite3.Connection, plugin: str, error_prefix: str) -> dict:
        row = conn.execute("SELECT state FROM plugin_state WHERE plugin_name = ?", (plugin,)).fetchone()
        if row is None or row["state"] is None:
            return {}
        try:
            state = _decode_json_column(row["state"])
        except (ValueError, UnicodeDecodeError) as error:
            raise StateError("%s: invalid JSON in plugin_state for %s: %s" % (error_prefix, plugin, error)) from None
        if not isinstance(state, dict):
            raise StateError("%s: plugin_state for %s is not a JSON object" % (error_prefix, plugin))
        return state

    def facts(self, plugin: str, fact_type: Optional[str] = None, limit: int = 20) -> List[Fact]:
        """Newest facts first: NULL `seq` (rows from before numbering) last, then seq, then time."""
        sql = ("SELECT id, seq, plugin_name, fact_type, job_id, command, fact_json, created_at"
               " FROM plugin_facts WHERE plugin_name = ?")
        args: tuple = (plugin,)
        if fact_type:
            sql += " AND fact_type = ?"
            args += (fact_type,)
        sql += " ORDER BY seq IS NULL, seq DESC, created_at DESC LIMIT ?"
        with self.db.read() as conn:
            rows = conn.execute(sql, args + (int(limit),)).fetchall()
        return [self._fact(row) for row in rows]

    @staticmethod
    def _fact(row) -> Fact:
        raw = row["fact_json"]
        text = bytes(raw).decode("utf-8", errors="replace") if isinstance(raw, (bytes, bytearray)) else raw
        try:
            decoded = json.loads(text)
        except (TypeError, ValueError):
            decoded = None
        return Fact(row["id"], row["seq"], row["plugin_name"], row["fact_type"], row["job_id"], row["command"],
                    decoded, text, row["created_at"])

    # -- writing --

    def apply_updates(self, plugin_name: str, command: str, job_id: str, updates: Dict[str, Any],
                      rules: List[dict]) -> None:
        """Apply an `ok` response's `state_updates` (spec 20 §7).

        Only a non-empty object does anything.  Each matching fact rule (in
        manifest order) records one fact and mirrors the object into the
        state, in its own transaction; with no rule the object is
        shallow-merged.  Raises `StateError` with the spec's exact text when
        the fact or the resulting state exceeds 1 MiB; nothing is written
        by the failing step.
        """
        if not isinstance(updates, dict) or not updates:
            return
        matching = [rule for rule in rules or () if _fact_rule_applies(rule, command)]
        if not matching:
            self._merge(plugin_name, updates)
            return
        text = normalize_json(updates)
        if _too_large(text):
            raise StateError(FACT_TOO_LARGE)
        for rule in matching:
            self._record_fact(plugin_name, command, job_id, rule["fact_type"], text)

    def _record_fact(self, plugin_name: str, command: str, job_id: str, fact_type: str, text: str) -> None:
        """Fact + mirrored state in one transaction, so they can never disagree."""
        with self.db.write() as conn:
            at = format_ts(self.clock())
            seq = self._next_seq(conn)
            conn.execute(
                "INSERT INTO plugin_facts(id, seq, plugin_name, fact_type, job_id, command, fact_json, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (str(uuid.uuid4()), seq, plugin_name, fact_type, job_id, command, text, at),
            )
            self._write_state(conn, plugin_name, text, at)

    @staticmethod
    def _next_seq(conn: sqlite3.Connection) -> int:
        """Increment and read back the `plugin_facts` counter (created at 0)."""
        conn.execute("INSERT OR IGNORE INTO storage_sequences(name, value) VALUES (?, 0)", (FACT_SEQUENCE,))
        conn.execute("UPDATE storage_sequences SET value = value + 1 WHERE name = ?", (FACT_SEQUENCE,))
        return conn.execute("SELECT value FROM storage_sequences WHERE name = ?", (FACT_SEQUENCE,)).fetchone()[0]

    def _merge(self, plugin_name: str, updates: Dict[str, Any]) -> None:
        """Top-level keys of `updates` replace those of the stored state (a missing row starts `{}`)."""
        with self.db.write() as conn:
            state = self._read_state(conn, plugin_name, "failed to apply state updates")
            state.update(updates)
            text = normalize_json(state)
            if _too_large(text):
                raise StateError(STATE_TOO_LARGE)
            self._write_state(conn, plugin_name, text, format_ts(self.clock()))

    @staticmethod
    def _write_state(conn: sqlite3.Connection, plugin_name: str, text: str, at: str) -> None:
        conn.execute(
            "INSERT INTO plugin_state(plugin_name, state, updated_at) VALUES (?, ?, ?)"
            " ON CONFLICT(plugin_name) DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at",
            (plugin_name, text, at),
        )
