"""The database layer against real SQLite files: schema, checks, migration, threads."""
from __future__ import annotations

import sqlite3
import stat
import threading

import pytest

from ductile_lib import db as dbmod
from ductile_lib.db import Database, DatabaseError, SchemaError, validate_schema

# Spec 20 §0.1 written out by hand: (column, type, NOT NULL, default).
SPEC_TABLES = {
    "job_queue": [
        ("id", "TEXT", False, None), ("plugin", "TEXT", True, None), ("command", "TEXT", True, None),
        ("payload", "JSON", False, None), ("status", "TEXT", True, None),
        ("attempt", "INTEGER", True, "1"), ("max_attempts", "INTEGER", True, "4"),
        ("submitted_by", "TEXT", True, None), ("dedupe_key", "TEXT", False, None),
        ("created_at", "TEXT", True, None), ("started_at", "TEXT", False, None),
        ("completed_at", "TEXT", False, None), ("next_retry_at", "TEXT", False, None),
        ("last_error", "TEXT", False, None), ("parent_job_id", "TEXT", False, None),
        ("source_event_id", "TEXT", False, None), ("event_context_id", "TEXT", False, None),
        ("enqueued_config_snapshot_id", "TEXT", False, None), ("started_config_snapshot_id", "TEXT", False, None),
    ],
    "job_transitions": [
        ("id", "INTEGER", False, None), ("job_id", "TEXT", True, None), ("from_status", "TEXT", False, None),
        ("to_status", "TEXT", True, None), ("reason", "TEXT", False, None), ("created_at", "TEXT", True, None),
    ],
    "job_attempts": [
        ("id", "INTEGER", False, None), ("job_id", "TEXT", True, None), ("attempt", "INTEGER", True, None),
        ("created_at", "TEXT", True, None),
    ],
    "job_log": [
        ("id", "TEXT", False, None), ("job_id", "TEXT", False, None), ("plugin", "TEXT", True, None),
        ("command", "TEXT", True, None), ("status", "TEXT", True, None), ("result", "TEXT", False, None),
        ("attempt", "INTEGER", True, None), ("submitted_by", "TEXT", True, None),
        ("created_at", "TEXT", True, None), ("completed_at", "TEXT", True, None),
        ("last_error", "TEXT", False, None), ("stderr", "TEXT", False, None),
        ("parent_job_id", "TEXT", False, None), ("source_event_id", "TEXT", False, None),
        ("event_context_id", "TEXT", False, None), ("enqueued_config_snapshot_id", "TEXT", False, None),
        ("started_config_snapshot_id", "TEXT", False, None),
    ],
    "plugin_state": [
        ("plugin_name", "TEXT", False, None), ("state", "JSON", True, "'{}'"), ("updated_at", "TEXT", False, None),
    ],
    "storage_sequences": [("name", "TEXT", False, None), ("value", "INTEGER", True, "0")],
    "plugin_facts": [
        ("id", "TEXT", False, None), ("seq", "INTEGER", False, None), ("plugin_name", "TEXT", True, None),
        ("fact_type", "TEXT", True, None), ("job_id", "TEXT", True, None), ("command", "TEXT", True, None),
        ("fact_json", "JSON", True, None), ("created_at", "TEXT", True, None),
    ],
    "event_context": [
        ("id", "TEXT", False, None), ("parent_id", "TEXT", False, None), ("pipeline_name", "TEXT", False, None),
        ("step_id", "TEXT", False, None), ("accumulated_json", "JSON", True, None),
        ("created_at", "TEXT", True, None),
    ],
    "circuit_breakers": [
        ("plugin", "TEXT", True, None), ("command", "TEXT", True, None), ("state", "TEXT", True, "'closed'"),
        ("failure_count", "INTEGER", True, "0"), ("opened_at", "TEXT", False, None),
        ("last_failure_at", "TEXT", False, None), ("last_job_id", "TEXT", False, None),
        ("updated_at", "TEXT", True, None),
    ],
    "circuit_breaker_transitions": [
        ("id", "TEXT", False, None), ("plugin", "TEXT", True, None), ("command", "TEXT", True, None),
        ("from_state", "TEXT", False, None), ("to_state", "TEXT", True, None),
        ("failure_count", "INTEGER", True, "0"), ("reason", "TEXT", True, None), ("job_id", "TEXT", False, None),
        ("created_at", "TEXT", True, None),
    ],
    "schedule_entries": [
        ("plugin", "TEXT", True, None), ("schedule_id", "TEXT", True, None), ("command", "TEXT", True, None),
        ("status", "TEXT", True, "'active'"), ("reason", "TEXT", False, None),
        ("last_fired_at", "TEXT", False, None), ("last_success_job_id", "TEXT", False, None),
        ("last_success_at", "TEXT", False, None), ("next_run_at", "TEXT", False, None),
        ("updated_at", "TEXT", True, None),
    ],
    "config_snapshots": [
        ("id", "TEXT", False, None), ("config_hash", "TEXT", True, None), ("source_hash", "TEXT", False, None),
        ("source_path", "TEXT", False, None), ("source", "TEXT", False, None), ("reason", "TEXT", True, None),
        ("loaded_at", "TEXT", True, None), ("ductile_version", "TEXT", False, None),
        ("binary_path", "TEXT", False, None), ("snapshot_format", "INTEGER", True, "1"),
        ("semantics", "JSON", False, None), ("plugin_fingerprints", "JSON", False, None),
        ("sanitized_config", "JSON", False, None), ("secret_fingerprints", "JSON", False, None),
    ],
    "split_frames": [
        ("id", "TEXT", False, None), ("pipeline_name", "TEXT", True, None), ("instance_id", "TEXT", False, None),
        ("split_step_id", "TEXT", True, None), ("branch_count", "INTEGER", True, None),
        ("entry_event_json", "TEXT", True, None), ("status", "TEXT", True, "'open'"),
        ("created_at", "TEXT", True, None), ("closed_at", "TEXT", False, None),
    ],
    "split_arrivals": [
        ("frame_id", "TEXT", True, None), ("branch", "INTEGER", True, None), ("job_id", "TEXT", True, None),
        ("event_context_id", "TEXT", False, None), ("created_at", "TEXT", True, None),
    ],
}

SPEC_PRIMARY_KEYS = {
    "job_queue": ["id"], "job_transitions": ["id"], "job_attempts": ["id"], "job_log": ["id"],
    "plugin_state": ["plugin_name"], "storage_sequences": ["name"], "plugin_facts": ["id"],
    "event_context": ["id"], "circuit_breakers": ["plugin", "command"],
    "circuit_breaker_transitions": ["id"], "schedule_entries": ["plugin", "schedule_id"],
    "config_snapshots": ["id"], "split_frames": ["id"], "split_arrivals": ["frame_id", "branch"],
}

# name: (table, columns); † marks the ones checked at open.
SPEC_INDEXES = {
    "job_queue_status_created_at_idx": ("job_queue", ["status", "created_at"]),
    "job_queue_plugin_command_status_idx": ("job_queue", ["plugin", "command", "status"]),
    "job_queue_dedupe_status_completed_idx": ("job_queue", ["dedupe_key", "status", "completed_at"]),
    "job_queue_event_source_idx": ("job_queue", ["parent_job_id", "source_event_id", "plugin", "command"]),
    "job_transitions_job_created_at_idx": ("job_transitions", ["job_id", "created_at"]),
    "job_transitions_created_at_idx": ("job_transitions", ["created_at"]),
    "job_attempts_job_created_at_idx": ("job_attempts", ["job_id", "created_at"]),
    "job_attempts_created_at_idx": ("job_attempts", ["created_at"]),
    "job_log_job_id_attempt_idx": ("job_log", ["job_id", "attempt"]),
    "job_log_completed_at_idx": ("job_log", ["completed_at"]),
    "plugin_facts_plugin_created_at_idx": ("plugin_facts", ["plugin_name", "created_at"]),
    "plugin_facts_plugin_type_created_at_idx": ("plugin_facts", ["plugin_name", "fact_type", "created_at"]),
    "plugin_facts_plugin_seq_idx": ("plugin_facts", ["plugin_name", "seq"]),
    "plugin_facts_plugin_type_seq_idx": ("plugin_facts", ["plugin_name", "fact_type", "seq"]),
    "circuit_breaker_transitions_plugin_command_created_idx":
        ("circuit_breaker_transitions", ["plugin", "command", "created_at"]),
    "circuit_breaker_transitions_created_at_idx": ("circuit_breaker_transitions", ["created_at"]),
}

DAGGER_INDEXES = {
    "job_queue_dedupe_status_completed_idx", "job_transitions_created_at_idx", "job_attempts_created_at_idx",
    "job_log_job_id_attempt_idx", "job_log_completed_at_idx", "plugin_facts_plugin_created_at_idx",
    "plugin_facts_plugin_type_created_at_idx", "plugin_facts_plugin_seq_idx",
    "plugin_facts_plugin_type_seq_idx", "circuit_breaker_transitions_created_at_idx",
}

TS = "2026-03-15T14:00:00.000000Z"


# --- helpers -------------------------------------------------------------------------

@pytest.fixture
def db_path(tmp_path):
    return tmp_path / "state" / "ductile.db"


@pytest.fixture
def database(db_path):
    database = Database(db_path)
    yield database
    database.close()


def raw_connect(path):
    """A plain connection, as an operator's sqlite3 shell would have."""
    return sqlite3.connect(str(path), isolation_level=None)


def make_original_database(path, *, unique_event_index=True):
    """A file shaped like one the Go original wrote: its tables, no split tables,
    user_version 0, its UNIQUE event-source index and a table of its own."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = raw_connect(path)
    conn.execute("PRAGMA journal_mode = WAL")
    for sql in dbmod.CORE_TABLES.values():
        conn.execute(sql)
    for name, sql in dbmod.INDEXES.items():
        if name == "job_queue_event_source_idx" and unique_event_index:
            sql = sql.replace("CREATE INDEX", "CREATE UNIQUE INDEX")
        conn.execute(sql)
    conn.execute("CREATE TABLE job_stopwatch (id INTEGER PRIMARY KEY AUTOINCREMENT, job_id TEXT NOT NULL)")
    conn.execute(
        "INSERT INTO job_queue (id, plugin, command, status, submitted_by, created_at)"
        " VALUES ('job-1', 'echo', 'poll', 'queued', 'ductile', '2026-03-15T14:00:00Z')"
    )
    conn.close()


def rebuild_table(path, table, create_sql):
    """Replace `table` by `create_sql` (SQLite 3.31 has no DROP COLUMN),
    re-creating whichever of its indexes still fit."""
    conn = raw_connect(path)
    conn.execute("DROP TABLE %s" % table)
    conn.execute(create_sql)
    for sql in dbmod.INDEXES.values():
        if " ON %s(" % table in sql:
            try:
                conn.execute(sql)
            except sqlite3.OperationalError:
                pass  # the index names a dropped column
    conn.close()


def problems_of(path, **kwargs):
    conn = raw_connect(path)
    try:
        return validate_schema(conn, **kwargs)
    finally:
        conn.close()


def insert_job(conn, job_id, **columns):
    row = dict(id=job_id, plugin="echo", command="poll", status="queued", submitted_by="api", created_at=TS)
    row.update(columns)
    names = ", ".join(row)
    marks = ", ".join("?" for _ in row)
    conn.execute("INSERT INTO job_queue (%s) VALUES (%s)" % (names, marks), list(row.values()))


def count_jobs(conn):
    return conn.execute("SELECT COUNT(*) FROM job_queue").fetchone()[0]


# --- a fresh database -------------------------------------------------------------------

def test_fresh_database_has_exactly_the_spec_tables(database, db_path):
    conn = raw_connect(db_path)
    names = {row[0] for row in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")}
    conn.close()
    assert names == set(SPEC_TABLES)


@pytest.mark.parametrize("table", sorted(SPEC_TABLES))
def test_fresh_database_columns_match_the_spec(database, db_path, table):
    conn = raw_connect(db_path)
    rows = conn.execute("PRAGMA table_info(%s)" % table).fetchall()
    conn.close()
    actual = [(row[1], row[2].upper(), bool(row[3]), row[4]) for row in rows]
    assert actual == SPEC_TABLES[table]
    primary_key = [row[1] for row in sorted(rows, key=lambda row: row[5]) if row[5]]
    assert primary_key == SPEC_PRIMARY_KEYS[table]


def test_fresh_database_indexes_match_the_spec(database, db_path):
    conn = raw_connect(db_path)
    found = {}
    for name, table, sql in conn.execute(
            "SELECT name, tbl_name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"):
        columns = [row[2] for row in conn.execute("PRAGMA index_info(%s)" % name)]
        found[name] = (table, columns)
        assert not sql.upper().startswith("CREATE UNIQUE"), name
    event_sql = conn.execute(
        "SELECT sql FROM sqlite_master WHERE name = 'job_queue_event_source_idx'").fetchone()[0]
    conn.close()
    assert found == SPEC_INDEXES
    assert "WHERE source_event_id IS NOT NULL" in event_sql


def test_job_attempts_is_unique_on_job_and_attempt(database):
    with database.write() as conn:
        conn.execute("INSERT INTO job_attempts (job_id, attempt, created_at) VALUES ('j', 1, ?)", (TS,))
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute("INSERT INTO job_attempts (job_id, attempt, created_at) VALUES ('j', 1, ?)", (TS,))


def test_autoincrement_ids_are_never_reused(database):
    with database.write() as conn:
        for _ in range(3):
            conn.execute("INSERT INTO job_transitions (job_id, to_status, created_at) VALUES ('j', 'queued', ?)", (TS,))
        conn.execute("DELETE FROM job_transitions WHERE id = 3")
        conn.execute("INSERT INTO job_transitions (job_id, to_status, created_at) VALUES ('j', 'running', ?)", (TS,))
        ids = [row[0] for row in conn.execute("SELECT id FROM job_transitions ORDER BY id")]
    assert ids == [1, 2, 4]


def test_column_defaults_apply(database):
    with database.write() as conn:
        insert_job(conn, "job-defaults")
        conn.execute("INSERT INTO plugin_state (plugin_name) VALUES ('echo')")
        conn.execute("INSERT INTO circuit_breakers (plugin, command, updated_at) VALUES ('echo', 'poll', ?)", (TS,))
    with database.read() as conn:
        job = conn.execute("SELECT attempt, max_attempts FROM job_queue").fetchone()
        state = conn.execute("SELECT state FROM plugin_state").fetchone()
        breaker = conn.execute("SELECT state, failure_count FROM circuit_breakers").fetchone()
    assert (job["attempt"], job["max_attempts"]) == (1, 4)
    assert state["state"] == "{}"
    assert tuple(breaker) == ("closed", 0)


def test_fresh_database_passes_both_schema_checks(database, db_path):
    assert problems_of(db_path) == []
    assert problems_of(db_path, for_open=True) == []


def test_fresh_database_records_schema_version(database, db_path):
    conn = raw_connect(db_path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == dbmod.SCHEMA_VERSION == 1
    conn.close()
    assert database.notes == ["created database schema version 1"]


def test_parent_directories_are_created_private(tmp_path):
    path = tmp_path / "a" / "b" / "ductile.db"
    Database(path).close()
    for directory in (tmp_path / "a", tmp_path / "a" / "b"):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700


def test_pragmas_on_writer_and_reader(database):
    expected = {"journal_mode": "wal", "foreign_keys": 1, "busy_timeout": 5000, "synchronous": 1}
    with database.write() as conn:
        writer = {name: conn.execute("PRAGMA %s" % name).fetchone()[0] for name in expected}
    with database.read() as conn:
        reader = {name: conn.execute("PRAGMA %s" % name).fetchone()[0] for name in expected}
    assert writer == expected
    assert reader == expected


def test_rows_come_back_as_sqlite_rows(database):
    with database.write() as conn:
        insert_job(conn, "job-row")
    with database.read() as conn:
        row = conn.execute("SELECT id, plugin FROM job_queue").fetchone()
    assert isinstance(row, sqlite3.Row)
    assert row["id"] == "job-row" and row["plugin"] == "echo"


def test_reopening_changes_nothing(db_path):
    Database(db_path).close()
    conn = raw_connect(db_path)
    before = conn.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall()
    conn.close()
    again = Database(db_path)
    notes = again.notes
    again.close()
    conn = raw_connect(db_path)
    after = conn.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall()
    conn.close()
    assert notes == []
    assert after == before


# --- schema validation ---------------------------------------------------------------------

def test_dropped_column_is_flagged_and_refused(database, db_path):
    database.close()
    sql = dbmod.CORE_TABLES["job_log"].replace("  stderr          TEXT,\n", "")
    assert sql != dbmod.CORE_TABLES["job_log"]
    rebuild_table(db_path, "job_log", sql)
    assert problems_of(db_path) == ["missing column job_log.stderr"]
    with pytest.raises(SchemaError) as raised:
        Database(db_path)
    assert "missing column job_log.stderr" in str(raised.value)
    assert raised.value.problems == ["missing column job_log.stderr"]


def test_changed_column_type_and_nullability_are_flagged(database, db_path):
    database.close()
    sql = dbmod.CORE_TABLES["job_queue"].replace(
        "attempt         INTEGER NOT NULL DEFAULT 1", "attempt         TEXT DEFAULT 1")
    rebuild_table(db_path, "job_queue", sql)
    problems = problems_of(db_path)
    assert problems == [
        "column job_queue.attempt has type TEXT, expected INTEGER",
        "column job_queue.attempt is nullable, expected NOT NULL",
    ]
    with pytest.raises(SchemaError):
        Database(db_path)


def test_changed_default_is_flagged_by_the_full_check_only(database, db_path):
    database.close()
    sql = dbmod.CORE_TABLES["job_queue"].replace("DEFAULT 4", "DEFAULT 5")
    rebuild_table(db_path, "job_queue", sql)
    assert problems_of(db_path) == ["column job_queue.max_attempts has default 5, expected 4"]
    assert problems_of(db_path, for_open=True) == []
    Database(db_path).close()


def test_changed_primary_key_unique_and_autoincrement_are_flagged(database, db_path):
    database.close()
    rebuild_table(db_path, "job_attempts", """
CREATE TABLE job_attempts (
  id         INTEGER PRIMARY KEY,
  job_id     TEXT NOT NULL,
  attempt    INTEGER NOT NULL,
  created_at TEXT NOT NULL
)""")
    rebuild_table(db_path, "circuit_breakers", dbmod.CORE_TABLES["circuit_breakers"].replace(
        "PRIMARY KEY(plugin, command)", "PRIMARY KEY(command, plugin)"))
    assert problems_of(db_path) == [
        "missing constraint job_attempts UNIQUE(job_id, attempt)",
        "table job_attempts id is not AUTOINCREMENT",
        "table circuit_breakers has primary key (command, plugin), expected (plugin, command)",
    ]


def test_dropped_dagger_index_is_flagged_and_refused(database, db_path):
    database.close()
    conn = raw_connect(db_path)
    conn.execute("DROP INDEX job_log_completed_at_idx")
    conn.close()
    assert problems_of(db_path) == ["missing index job_log_completed_at_idx"]
    assert problems_of(db_path, for_open=True) == ["missing index job_log_completed_at_idx"]
    with pytest.raises(SchemaError, match="missing index job_log_completed_at_idx"):
        Database(db_path)


def test_dropped_plain_index_is_flagged_but_does_not_refuse_open(database, db_path):
    database.close()
    conn = raw_connect(db_path)
    conn.execute("DROP INDEX job_queue_status_created_at_idx")
    conn.close()
    assert problems_of(db_path) == ["missing index job_queue_status_created_at_idx"]
    assert problems_of(db_path, for_open=True) == []
    Database(db_path).close()
    # Opening never adds what the original lacks beyond the split tables.
    assert problems_of(db_path) == ["missing index job_queue_status_created_at_idx"]


def test_index_with_wrong_columns_or_where_is_flagged(database, db_path):
    database.close()
    conn = raw_connect(db_path)
    conn.execute("DROP INDEX job_queue_plugin_command_status_idx")
    conn.execute("CREATE UNIQUE INDEX job_queue_plugin_command_status_idx ON job_queue(plugin, status)")
    conn.execute("DROP INDEX job_queue_event_source_idx")
    conn.execute("CREATE INDEX job_queue_event_source_idx ON job_queue"
                 "(parent_job_id, source_event_id, plugin, command)")
    conn.close()
    assert problems_of(db_path) == [
        "index job_queue_plugin_command_status_idx is on job_queue(plugin, status),"
        " expected job_queue(plugin, command, status)",
        "index job_queue_plugin_command_status_idx is UNIQUE, expected plain",
        "index job_queue_event_source_idx has WHERE (none), expected WHERE source_event_id is not null",
    ]


def test_dropped_table_is_flagged_and_refused(database, db_path):
    database.close()
    conn = raw_connect(db_path)
    conn.execute("DROP TABLE plugin_facts")
    conn.close()
    assert problems_of(db_path) == ["missing table plugin_facts"]
    with pytest.raises(SchemaError, match="missing table plugin_facts"):
        Database(db_path)


def test_all_problems_are_reported_together(database, db_path):
    database.close()
    conn = raw_connect(db_path)
    conn.execute("DROP TABLE event_context")
    conn.execute("DROP INDEX plugin_facts_plugin_seq_idx")
    conn.close()
    with pytest.raises(SchemaError) as raised:
        Database(db_path)
    assert str(raised.value) == (
        "database schema invalid: missing table event_context; missing index plugin_facts_plugin_seq_idx")


def test_unrelated_database_is_refused(db_path):
    db_path.parent.mkdir(parents=True)
    conn = raw_connect(db_path)
    conn.execute("CREATE TABLE notes (body TEXT)")
    conn.close()
    with pytest.raises(SchemaError, match="missing table job_queue"):
        Database(db_path)


def test_file_that_is_not_a_database_is_refused(db_path):
    db_path.parent.mkdir(parents=True)
    db_path.write_bytes(b"this is not an sqlite database at all" * 100)
    with pytest.raises(DatabaseError, match="open database"):
        Database(db_path)


# --- adopting a database written by the original --------------------------------------------

def test_original_database_is_adopted(tmp_path):
    path = tmp_path / "original.db"
    make_original_database(path)
    assert "missing table split_frames" in problems_of(path)
    messages = []
    database = Database(path, on_info=messages.append)
    with database.read() as conn:
        assert conn.execute("SELECT id FROM job_queue").fetchall()[0]["id"] == "job-1"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    database.close()
    assert messages == [
        "replaced UNIQUE index job_queue_event_source_idx with a plain index",
        "created table split_frames",
        "created table split_arrivals",
    ]
    assert database.notes == messages
    assert problems_of(path) == []
    conn = raw_connect(path)
    assert conn.execute("SELECT COUNT(*) FROM sqlite_master WHERE name = 'job_stopwatch'").fetchone()[0] == 1
    conn.close()


def test_adopted_database_lets_one_event_start_two_jobs_on_one_target(tmp_path):
    path = tmp_path / "original.db"
    make_original_database(path)
    database = Database(path)
    with database.write() as conn:
        for job_id in ("child-a", "child-b"):
            insert_job(conn, job_id, parent_job_id="job-1", source_event_id="event-1")
    with database.read() as conn:
        assert count_jobs(conn) == 3
    database.close()


def test_original_database_with_plain_index_only_gains_split_tables(tmp_path):
    path = tmp_path / "original.db"
    make_original_database(path, unique_event_index=False)
    database = Database(path)
    database.close()
    assert database.notes == ["created table split_frames", "created table split_arrivals"]


def test_unique_index_put_back_later_is_replaced_again(database, db_path):
    database.close()
    conn = raw_connect(db_path)
    conn.execute("DROP INDEX job_queue_event_source_idx")
    conn.execute(dbmod.INDEXES["job_queue_event_source_idx"].replace("CREATE INDEX", "CREATE UNIQUE INDEX"))
    conn.close()
    assert problems_of(db_path) == []  # the one accepted difference
    reopened = Database(db_path)
    reopened.close()
    assert reopened.notes == ["replaced UNIQUE index job_queue_event_source_idx with a plain index"]
    conn = raw_connect(db_path)
    sql = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'job_queue_event_source_idx'").fetchone()[0]
    conn.close()
    assert not sql.upper().startswith("CREATE UNIQUE")


def test_original_database_missing_a_column_is_refused_untouched(tmp_path):
    path = tmp_path / "original.db"
    make_original_database(path)
    rebuild_table(path, "plugin_facts", dbmod.CORE_TABLES["plugin_facts"].replace(
        "  seq         INTEGER,\n", ""))
    with pytest.raises(SchemaError, match="missing column plugin_facts.seq"):
        Database(path)
    conn = raw_connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 0
    assert conn.execute("SELECT COUNT(*) FROM sqlite_master WHERE name = 'split_frames'").fetchone()[0] == 0
    conn.close()


def test_migrations_are_numbered_in_order():
    versions = [version for version, _, _ in dbmod.MIGRATIONS]
    assert versions == sorted(set(versions))
    assert versions[-1] == dbmod.SCHEMA_VERSION


# --- transactions ----------------------------------------------------------------------------

def test_write_rolls_back_when_the_block_raises(database):
    with pytest.raises(RuntimeError):
        with database.write() as conn:
            insert_job(conn, "job-lost")
            raise RuntimeError("boom")
    with database.read() as conn:
        assert count_jobs(conn) == 0
    with database.write() as conn:  # the writer is usable again
        insert_job(conn, "job-kept")
    with database.read() as conn:
        assert count_jobs(conn) == 1


def test_nested_write_is_a_savepoint(database):
    with database.write() as outer:
        insert_job(outer, "job-outer")
        with pytest.raises(ValueError):
            with database.write() as inner:
                assert inner is outer
                insert_job(inner, "job-inner")
                raise ValueError("inner fails")
        insert_job(outer, "job-after")
    with database.read() as conn:
        ids = sorted(row["id"] for row in conn.execute("SELECT id FROM job_queue"))
    assert ids == ["job-after", "job-outer"]


def test_write_takes_the_write_lock_up_front(database, db_path):
    """BEGIN IMMEDIATE: while write() is open another process cannot write."""
    other = sqlite3.connect(str(db_path), timeout=0.1, isolation_level=None)
    with database.write():
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            other.execute("BEGIN IMMEDIATE")
    other.execute("BEGIN IMMEDIATE")
    other.execute("ROLLBACK")
    other.close()


def test_reader_cannot_write(database):
    with database.read() as conn:
        with pytest.raises(sqlite3.OperationalError):
            insert_job(conn, "job-sneaky")


def test_nested_read_reuses_the_connection(database):
    with database.read() as outer:
        with database.read() as inner:
            assert inner is outer


def test_concurrent_writers_serialize(database):
    threads_count, per_thread = 8, 200
    errors = []

    def writer(thread_number):
        try:
            for index in range(per_thread):
                with database.write() as conn:
                    insert_job(conn, "job-%d-%d" % (thread_number, index))
        except Exception as error:  # reported below; a thread cannot fail the test itself
            errors.append(error)

    threads = [threading.Thread(target=writer, args=(number,)) for number in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    with database.read() as conn:
        ids = {row["id"] for row in conn.execute("SELECT id FROM job_queue")}
    assert len(ids) == threads_count * per_thread


def test_reader_sees_committed_data_while_writer_holds_a_transaction(database):
    with database.write() as conn:
        insert_job(conn, "job-committed")
    writer_inside = threading.Event()
    reader_done = threading.Event()
    seen = {}

    def hold_write_transaction():
        with database.write() as conn:
            insert_job(conn, "job-uncommitted")
            writer_inside.set()
            reader_done.wait(10)

    def read_in_another_thread():
        writer_inside.wait(10)
        with database.read() as conn:
            seen["ids"] = [row["id"] for row in conn.execute("SELECT id FROM job_queue ORDER BY id")]
        reader_done.set()

    threads = [threading.Thread(target=hold_write_transaction), threading.Thread(target=read_in_another_thread)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(15)
    assert seen["ids"] == ["job-committed"]
    with database.read() as conn:
        assert count_jobs(conn) == 2


def test_read_block_keeps_one_snapshot(database):
    with database.write() as conn:
        insert_job(conn, "job-1")
    with database.read() as conn:
        assert count_jobs(conn) == 1
        writer = threading.Thread(target=lambda: _insert_in_new_transaction(database, "job-2"))
        writer.start()
        writer.join(10)
        assert count_jobs(conn) == 1
    with database.read() as conn:
        assert count_jobs(conn) == 2


def _insert_in_new_transaction(database, job_id):
    with database.write() as conn:
        insert_job(conn, job_id)


def test_idle_readers_are_pooled_not_leaked(database):
    def read_once():
        with database.read() as conn:
            conn.execute("SELECT 1").fetchone()

    for _ in range(30):
        thread = threading.Thread(target=read_once)
        thread.start()
        thread.join(10)
    assert len(database._idle_readers) == 1


def test_two_processes_opening_a_new_file_at_once(db_path):
    opened, errors = [], []

    def open_database():
        try:
            opened.append(Database(db_path))
        except Exception as error:
            errors.append(error)

    threads = [threading.Thread(target=open_database) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    for database in opened:
        database.close()
    assert errors == []
    assert sorted(len(database.notes) for database in opened) == [0, 0, 0, 1]
    assert problems_of(db_path) == []


def test_closed_database_refuses_work(db_path):
    database = Database(db_path)
    database.close()
    database.close()  # idempotent
    assert database.closed
    with pytest.raises(DatabaseError):
        with database.write():
            pass
    with pytest.raises(DatabaseError):
        with database.read():
            pass


def test_unusable_directory_is_a_database_error(tmp_path):
    blocker = tmp_path / "file-not-dir"
    blocker.write_text("x")
    with pytest.raises(DatabaseError, match="create database directory"):
        Database(blocker / "sub" / "ductile.db")
