"""The SQLite database: connections, the schema, migrations, schema checks.

The tables are the original Go Ductile's (spec 20 §0.1) so either program
can open the other's file.  Two habits keep SQLite happy under threads:

* **One writer.**  Every write goes through a single connection behind a
  lock, in a short `BEGIN IMMEDIATE` transaction (`Database.write()`).
  Writers queue on the lock instead of fighting over SQLite's file lock, and
  IMMEDIATE takes the write lock up front so a transaction never fails half
  way with SQLITE_BUSY when it upgrades from reading to writing.
* **Many readers.**  WAL mode lets readers run beside the writer and see
  every committed transaction.  `Database.read()` lends the calling thread a
  reader connection for the duration of a `with` block (one consistent
  snapshot); idle readers are pooled rather than kept per thread forever,
  because the HTTP server starts a thread per request.

Opening an existing database verifies it first and changes it only in the
two ways the spec allows (see `adopt_original_database`).
"""
from __future__ import annotations

import functools
import os
import re
import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Dict, Iterator, List, NamedTuple, Optional, Tuple

SCHEMA_VERSION = 1

# --- the schema (spec 20 §0.1; column spelling as the original's schema.sql) ---

CORE_TABLES: Dict[str, str] = {
    "job_queue": """
CREATE TABLE job_queue (
  id              TEXT PRIMARY KEY,
  plugin          TEXT NOT NULL,
  command         TEXT NOT NULL,
  payload         JSON,
  status          TEXT NOT NULL,
  attempt         INTEGER NOT NULL DEFAULT 1,
  max_attempts    INTEGER NOT NULL DEFAULT 4,
  submitted_by    TEXT NOT NULL,
  dedupe_key      TEXT,
  created_at      TEXT NOT NULL,
  started_at      TEXT,
  completed_at    TEXT,
  next_retry_at   TEXT,
  last_error      TEXT,
  parent_job_id   TEXT,
  source_event_id TEXT,
  event_context_id TEXT,
  enqueued_config_snapshot_id TEXT,
  started_config_snapshot_id TEXT
)""",
    "job_transitions": """
CREATE TABLE job_transitions (
  id          INTEGER PRIMARY KEY AUTOINCREMENT,
  job_id      TEXT NOT NULL,
  from_status TEXT,
  to_status   TEXT NOT NULL,
  reason      TEXT,
  created_at  TEXT NOT NULL
)""",
    "job_attempts": """
CREATE TABLE job_attempts (
  id         INTEGER PRIMARY KEY AUTOINCREMENT,
  job_id     TEXT NOT NULL,
  attempt    INTEGER NOT NULL,
  created_at TEXT NOT NULL,
  UNIQUE(job_id, attempt)
)""",
    "job_log": """
CREATE TABLE job_log (
  id              TEXT PRIMARY KEY,
  job_id          TEXT,
  plugin          TEXT NOT NULL,
  command         TEXT NOT NULL,
  status          TEXT NOT NULL,
  result          TEXT,
  attempt         INTEGER NOT NULL,
  submitted_by    TEXT NOT NULL,
  created_at      TEXT NOT NULL,
  completed_at    TEXT NOT NULL,
  last_error      TEXT,
  stderr          TEXT,
  parent_job_id   TEXT,
  source_event_id TEXT,
  event_context_id TEXT,
  enqueued_config_snapshot_id TEXT,
  started_config_snapshot_id TEXT
)""",
    "plugin_state": """
CREATE TABLE plugin_state (
  plugin_name TEXT PRIMARY KEY,
  state       JSON NOT NULL DEFAULT '{}',
  updated_at  TEXT
)""",
    "storage_sequences": """
CREATE TABLE storage_sequences (
  name  TEXT PRIMARY KEY,
  value INTEGER NOT NULL DEFAULT 0
)""",
    "plugin_facts": """
CREATE TABLE plugin_facts (
  id          TEXT PRIMARY KEY,
  seq         INTEGER,
  plugin_name TEXT NOT NULL,
  fact_type   TEXT NOT NULL,
  job_id      TEXT NOT NULL,
  command     TEXT NOT NULL,
  fact_json   JSON NOT NULL,
  created_at  TEXT NOT NULL
)""",
    "event_context": """
CREATE TABLE event_context (
  id               TEXT PRIMARY KEY,
  parent_id        TEXT,
  pipeline_name    TEXT,
  step_id          TEXT,
  accumulated_json JSON NOT NULL,
  created_at       TEXT NOT NULL
)""",
    "circuit_breakers": """
CREATE TABLE circuit_breakers (
  plugin          TEXT NOT NULL,
  command         TEXT NOT NULL,
  state           TEXT NOT NULL DEFAULT 'closed',
  failure_count   INTEGER NOT NULL DEFAULT 0,
  opened_at       TEXT,
  last_failure_at TEXT,
  last_job_id     TEXT,
  updated_at      TEXT NOT NULL,
  PRIMARY KEY(plugin, command)
)""",
    "circuit_breaker_transitions": """
CREATE TABLE circuit_breaker_transitions (
  id            TEXT PRIMARY KEY,
  plugin        TEXT NOT NULL,
  command       TEXT NOT NULL,
  from_state    TEXT,
  to_state      TEXT NOT NULL,
  failure_count INTEGER NOT NULL DEFAULT 0,
  reason        TEXT NOT NULL,
  job_id        TEXT,
  created_at    TEXT NOT NULL
)""",
    "schedule_entries": """
CREATE TABLE schedule_entries (
  plugin          TEXT NOT NULL,
  schedule_id     TEXT NOT NULL,
  command         TEXT NOT NULL,
  status          TEXT NOT NULL DEFAULT 'active',
  reason          TEXT,
  last_fired_at   TEXT,
  last_success_job_id TEXT,
  last_success_at  TEXT,
  next_run_at      TEXT,
  updated_at      TEXT NOT NULL,
  PRIMARY KEY(plugin, schedule_id)
)""",
    "config_snapshots": """
CREATE TABLE config_snapshots (
  id                  TEXT PRIMARY KEY,
  config_hash         TEXT NOT NULL,
  source_hash         TEXT,
  source_path         TEXT,
  source              TEXT,
  reason              TEXT NOT NULL,
  loaded_at           TEXT NOT NULL,
  ductile_version     TEXT,
  binary_path         TEXT,
  snapshot_format     INTEGER NOT NULL DEFAULT 1,
  semantics           JSON,
  plugin_fingerprints JSON,
  sanitized_config    JSON,
  secret_fingerprints JSON
)""",
}

# Pipeline split/join bookkeeping (spec 30 §4.8).  The original has no such
# tables, so Ductile creates them in any database that lacks them.
SPLIT_TABLES: Dict[str, str] = {
    "split_frames": """
CREATE TABLE split_frames (
  id               TEXT PRIMARY KEY,
  pipeline_name    TEXT NOT NULL,
  instance_id      TEXT,
  split_step_id    TEXT NOT NULL,
  branch_count     INTEGER NOT NULL,
  entry_event_json TEXT NOT NULL,
  status           TEXT NOT NULL DEFAULT 'open',
  created_at       TEXT NOT NULL,
  closed_at        TEXT
)""",
    "split_arrivals": """
CREATE TABLE split_arrivals (
  frame_id         TEXT NOT NULL,
  branch           INTEGER NOT NULL,
  job_id           TEXT NOT NULL,
  event_context_id TEXT,
  created_at       TEXT NOT NULL,
  PRIMARY KEY (frame_id, branch)
)""",
}

EVENT_SOURCE_INDEX = "job_queue_event_source_idx"

# A plain (not UNIQUE) index: one event may start several jobs on the same
# plugin and command (spec 20 §3.2, decision P8).
_EVENT_SOURCE_INDEX_SQL = (
    "CREATE INDEX job_queue_event_source_idx ON job_queue"
    "(parent_job_id, source_event_id, plugin, command) WHERE source_event_id IS NOT NULL"
)

INDEXES: Dict[str, str] = {
    "job_queue_status_created_at_idx":
        "CREATE INDEX job_queue_status_created_at_idx ON job_queue(status, created_at)",
    "job_queue_plugin_command_status_idx":
        "CREATE INDEX job_queue_plugin_command_status_idx ON job_queue(plugin, command, status)",
    "job_queue_dedupe_status_completed_idx":
        "CREATE INDEX job_queue_dedupe_status_completed_idx ON job_queue(dedupe_key, status, completed_at)",
    EVENT_SOURCE_INDEX: _EVENT_SOURCE_INDEX_SQL,
    "job_transitions_job_created_at_idx":
        "CREATE INDEX job_transitions_job_created_at_idx ON job_transitions(job_id, created_at)",
    "job_transitions_created_at_idx":
        "CREATE INDEX job_transitions_created_at_idx ON job_transitions(created_at)",
    "job_attempts_job_created_at_idx":
        "CREATE INDEX job_attempts_job_created_at_idx ON job_attempts(job_id, created_at)",
    "job_attempts_created_at_idx":
        "CREATE INDEX job_attempts_created_at_idx ON job_attempts(created_at)",
    "job_log_job_id_attempt_idx":
        "CREATE INDEX job_log_job_id_attempt_idx ON job_log(job_id, attempt)",
    "job_log_completed_at_idx":
        "CREATE INDEX job_log_completed_at_idx ON job_log(completed_at)",
    "plugin_facts_plugin_created_at_idx":
        "CREATE INDEX plugin_facts_plugin_created_at_idx ON plugin_facts(plugin_name, created_at)",
    "plugin_facts_plugin_type_created_at_idx":
        "CREATE INDEX plugin_facts_plugin_type_created_at_idx ON plugin_facts(plugin_name, fact_type, created_at)",
    "plugin_facts_plugin_seq_idx":
        "CREATE INDEX plugin_facts_plugin_seq_idx ON plugin_facts(plugin_name, seq)",
    "plugin_facts_plugin_type_seq_idx":
        "CREATE INDEX plugin_facts_plugin_type_seq_idx ON plugin_facts(plugin_name, fact_type, seq)",
    "circuit_breaker_transitions_plugin_command_created_idx":
        "CREATE INDEX circuit_breaker_transitions_plugin_command_created_idx"
        " ON circuit_breaker_transitions(plugin, command, created_at)",
    "circuit_breaker_transitions_created_at_idx":
        "CREATE INDEX circuit_breaker_transitions_created_at_idx ON circuit_breaker_transitions(created_at)",
}

# The † indexes: the ones the original itself insists on, so any database it
# ran against has them.  Opening refuses a database that lacks one.
INDEXES_CHECKED_AT_OPEN = frozenset({
    "job_queue_dedupe_status_completed_idx",
    "job_transitions_created_at_idx",
    "job_attempts_created_at_idx",
    "job_log_job_id_attempt_idx",
    "job_log_completed_at_idx",
    "plugin_facts_plugin_created_at_idx",
    "plugin_facts_plugin_type_created_at_idx",
    "plugin_facts_plugin_seq_idx",
    "plugin_facts_plugin_type_seq_idx",
    "circuit_breaker_transitions_created_at_idx",
})

ALL_TABLES: Dict[str, str] = dict(CORE_TABLES, **SPLIT_TABLES)

InfoCallback = Callable[[str], None]


class DatabaseError(Exception):
    """The database cannot be used; the message is meant for the operator."""


class SchemaError(DatabaseError):
    """An existing database does not have the tables Ductile needs."""

    def __init__(self, problems: List[str]):
        self.problems = list(problems)
        super().__init__("database schema invalid: " + "; ".join(self.problems))


# --- reading a schema back ------------------------------------------------------

class Column(NamedTuple):
    type: str
    not_null: bool
    default: Optional[str]
    pk_position: int


class Index(NamedTuple):
    table: str
    columns: Tuple[str, ...]
    unique: bool
    where: Optional[str]


class Table(NamedTuple):
    columns: Dict[str, Column]
    unique_constraints: frozenset
    autoincrement: bool


class Schema(NamedTuple):
    tables: Dict[str, Table]
    indexes: Dict[str, Index]


def _normalize_sql(text: Optional[str]) -> Optional[str]:
    """Case- and spacing-insensitive form, for comparing SQL fragments."""
    if text is None:
        return None
    return re.sub(r"\s+", " ", text.strip()).lower()


def _normalize_default(text: Optional[str]) -> Optional[str]:
    """Default expressions keep their case: 'Active' is not 'active'."""
    return None if text is None else re.sub(r"\s+", " ", text.strip())


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _read_columns(conn: sqlite3.Connection, table: str) -> Dict[str, Column]:
    rows = conn.execute("PRAGMA table_info(%s)" % _quote(table)).fetchall()
    return {
        row[1]: Column(_normalize_sql(row[2]).upper(), bool(row[3]), _normalize_default(row[4]), row[5])
        for row in rows
    }


def _index_columns(conn: sqlite3.Connection, index: str) -> Tuple[str, ...]:
    rows = conn.execute("PRAGMA index_info(%s)" % _quote(index)).fetchall()
    return tuple(row[2] for row in sorted(rows, key=lambda row: row[0]))


def _unique_constraints(conn: sqlite3.Connection, table: str) -> frozenset:
    """Column tuples of the table's UNIQUE constraints (not its indexes)."""
    rows = conn.execute("PRAGMA index_list(%s)" % _quote(table)).fetchall()
    return frozenset(_index_columns(conn, row[1]) for row in rows if row[3] == "u")


def _where_clause(create_sql: Optional[str]) -> Optional[str]:
    match = re.search(r"\bwhere\b(.*)$", create_sql or "", re.IGNORECASE | re.DOTALL)
    return _normalize_sql(match.group(1)) if match else None


def read_schema(conn: sqlite3.Connection) -> Schema:
    """Tables, columns, constraints and named indexes of the open database."""
    tables = {}
    for name, sql in conn.execute(
        "SELECT name, sql FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'"
    ).fetchall():
        tables[name] = Table(
            _read_columns(conn, name),
            _unique_constraints(conn, name),
            "AUTOINCREMENT" in (sql or "").upper(),
        )
    indexes = {}
    for name, table, sql in conn.execute(
        "SELECT name, tbl_name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
    ).fetchall():
        unique = bool(re.match(r"\s*create\s+unique\b", sql, re.IGNORECASE))
        indexes[name] = Index(table, _index_columns(conn, name), unique, _where_clause(sql))
    return Schema(tables, indexes)


def create_schema(conn: sqlite3.Connection, tables: Optional[Dict[str, str]] = None) -> None:
    """Create the given tables (default: all) and their indexes."""
    tables = ALL_TABLES if tables is None else tables
    for sql in tables.values():
        conn.execute(sql)
    for name, sql in INDEXES.items():
        if _index_table(sql) in tables:
            conn.execute(sql)


def _index_table(create_index_sql: str) -> str:
    return re.search(r"\bON\s+(\w+)\s*\(", create_index_sql).group(1)


@functools.lru_cache(maxsize=1)
def expected_schema() -> Schema:
    """The §0.1 schema as SQLite itself reports it.

    Built by running our own DDL in a scratch in-memory database, so the
    comparison with a real file is like with like (SQLite's own spelling
    of types and defaults), and the DDL stays the single source of truth.
    """
    scratch = sqlite3.connect(":memory:")
    try:
        create_schema(scratch)
        return read_schema(scratch)
    finally:
        scratch.close()


# --- comparing schemas -----------------------------------------------------------

def validate_schema(conn: sqlite3.Connection, *, for_open: bool = False) -> List[str]:
    """Every way the database differs from §0.1, as operator-readable lines.

    The full check (default, what `system selfcheck` reports) compares every
    table, column (type, NOT NULL, default, primary key), UNIQUE constraint,
    AUTOINCREMENT and named index (columns, uniqueness, WHERE).

    `for_open=True` is the check that gates opening: only what the original
    Ductile guaranteed on every database it ran against — each table except
    the split tables (opening creates those), each column with its type and
    NOT NULL, and each † index.  It must not refuse a database the original
    would open.

    Extra tables, columns and indexes are never problems (the original has
    tables of its own).  The one accepted difference is a UNIQUE
    `job_queue_event_source_idx`: opening replaces it.
    """
    actual = read_schema(conn)
    expected = expected_schema()
    problems: List[str] = []
    for name, table in expected.tables.items():
        if for_open and name in SPLIT_TABLES:
            continue
        if name not in actual.tables:
            problems.append("missing table %s" % name)
        else:
            problems += _table_problems(name, table, actual.tables[name], for_open)
    for name, index in expected.indexes.items():
        if index.table not in actual.tables:
            continue  # already reported as a missing table
        if for_open and name not in INDEXES_CHECKED_AT_OPEN:
            continue
        if name not in actual.indexes:
            problems.append("missing index %s" % name)
        elif not for_open:
            problems += _index_problems(name, index, actual.indexes[name])
    return problems


def _table_problems(name: str, expected: Table, actual: Table, for_open: bool) -> List[str]:
    problems = []
    for column_name, column in expected.columns.items():
        found = actual.columns.get(column_name)
        if found is None:
            problems.append("missing column %s.%s" % (name, column_name))
        else:
            problems += _column_problems("%s.%s" % (name, column_name), column, found, for_open)
    if for_open:
        return problems
    expected_pk = _primary_key(expected)
    if _primary_key(actual) != expected_pk:
        problems.append("table %s has primary key (%s), expected (%s)"
                        % (name, ", ".join(_primary_key(actual)), ", ".join(expected_pk)))
    for columns in sorted(expected.unique_constraints - actual.unique_constraints):
        problems.append("missing constraint %s UNIQUE(%s)" % (name, ", ".join(columns)))
    if expected.autoincrement and not actual.autoincrement:
        problems.append("table %s id is not AUTOINCREMENT" % name)
    return problems


def _primary_key(table: Table) -> Tuple[str, ...]:
    keyed = [(column.pk_position, name) for name, column in table.columns.items() if column.pk_position]
    return tuple(name for _, name in sorted(keyed))


def _column_problems(label: str, expected: Column, actual: Column, for_open: bool) -> List[str]:
    problems = []
    if actual.type != expected.type:
        problems.append("column %s has type %s, expected %s" % (label, actual.type or "(none)", expected.type))
    if actual.not_null != expected.not_null:
        problems.append("column %s is %s, expected %s"
                        % (label, _nullability(actual.not_null), _nullability(expected.not_null)))
    if not for_open and actual.default != expected.default:
        problems.append("column %s has default %s, expected %s"
                        % (label, actual.default or "(none)", expected.default or "(none)"))
    return problems


def _nullability(not_null: bool) -> str:
    return "NOT NULL" if not_null else "nullable"


def _index_problems(name: str, expected: Index, actual: Index) -> List[str]:
    problems = []
    if (actual.table, actual.columns) != (expected.table, expected.columns):
        problems.append("index %s is on %s(%s), expected %s(%s)" % (
            name, actual.table, ", ".join(actual.columns), expected.table, ", ".join(expected.columns)))
    if actual.unique != expected.unique and name != EVENT_SOURCE_INDEX:
        problems.append("index %s is %s, expected %s"
                        % (name, _uniqueness(actual.unique), _uniqueness(expected.unique)))
    if actual.where != expected.where:
        problems.append("index %s has WHERE %s, expected WHERE %s"
                        % (name, actual.where or "(none)", expected.where or "(none)"))
    return problems


def _uniqueness(unique: bool) -> str:
    return "UNIQUE" if unique else "plain"


# --- migrations --------------------------------------------------------------------

def _has_tables(conn: sqlite3.Connection) -> bool:
    row = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' LIMIT 1"
    ).fetchone()
    return row is not None


def _user_version(conn: sqlite3.Connection) -> int:
    return conn.execute("PRAGMA user_version").fetchone()[0]


def _set_user_version(conn: sqlite3.Connection, version: int) -> None:
    conn.execute("PRAGMA user_version = %d" % int(version))


def replace_unique_event_source_index(conn: sqlite3.Connection) -> List[str]:
    """Swap a UNIQUE `job_queue_event_source_idx` for the plain one.

    The original made it UNIQUE to dedupe child jobs, which stops one event
    from starting two jobs on the same plugin and command (split branches,
    two pipelines on one trigger).  Ductile dedupes children itself.
    """
    index = read_schema(conn).indexes.get(EVENT_SOURCE_INDEX)
    if index is None or not index.unique:
        return []
    conn.execute("DROP INDEX %s" % EVENT_SOURCE_INDEX)
    conn.execute(_EVENT_SOURCE_INDEX_SQL)
    return ["replaced UNIQUE index %s with a plain index" % EVENT_SOURCE_INDEX]


def create_missing_split_tables(conn: sqlite3.Connection) -> List[str]:
    """Create `split_frames`/`split_arrivals` where they are absent."""
    existing = read_schema(conn).tables
    missing = {name: sql for name, sql in SPLIT_TABLES.items() if name not in existing}
    create_schema(conn, missing)
    return ["created table %s" % name for name in missing]


def adopt_original_database(conn: sqlite3.Connection) -> List[str]:
    """Version 1: the only changes Ductile makes to an existing database.

    Idempotent, so it is also re-applied on every open: the original's own
    maintenance scripts can put the UNIQUE index back.
    """
    return replace_unique_event_source_index(conn) + create_missing_split_tables(conn)


# (version, what it does, step).  A step runs once, inside the opening
# transaction, when the file's user_version is below its number; append new
# steps for later schema versions.
MIGRATIONS: List[Tuple[int, str, Callable[[sqlite3.Connection], List[str]]]] = [
    (1, "adopt a database written by the original Go Ductile", adopt_original_database),
]


def prepare_schema(conn: sqlite3.Connection) -> List[str]:
    """Create, verify or upgrade the schema; return what was changed.

    Runs inside the caller's write transaction so two processes opening a
    new file at once cannot both create the tables.
    Raises SchemaError if an existing database is missing something.
    """
    if not _has_tables(conn):
        create_schema(conn)
        _set_user_version(conn, SCHEMA_VERSION)
        return ["created database schema version %d" % SCHEMA_VERSION]
    problems = validate_schema(conn, for_open=True)
    if problems:
        raise SchemaError(problems)
    current = _user_version(conn)
    notes: List[str] = []
    for version, _description, step in MIGRATIONS:
        if version > current:
            notes += step(conn)
            _set_user_version(conn, version)
    if current >= 1:
        notes += adopt_original_database(conn)
    return notes


# --- connections --------------------------------------------------------------------

_CONNECTION_PRAGMAS = (
    "PRAGMA busy_timeout = 5000",
    "PRAGMA foreign_keys = ON",
    "PRAGMA journal_mode = WAL",
    "PRAGMA synchronous = NORMAL",
)


def connect(path: Path, *, query_only: bool = False) -> sqlite3.Connection:
    """A connection with Ductile's pragmas, in autocommit mode.

    `isolation_level=None` stops the sqlite3 module from opening
    transactions behind our back; `Database` issues BEGIN/COMMIT itself.
    `check_same_thread=False` because connections are handed between
    threads, always one thread at a time.
    """
    conn = sqlite3.connect(str(path), timeout=5.0, isolation_level=None, check_same_thread=False)
    try:
        conn.row_factory = sqlite3.Row
        for pragma in _CONNECTION_PRAGMAS:
            conn.execute(pragma).fetchall()
        if query_only:
            conn.execute("PRAGMA query_only = ON")
    except sqlite3.Error:
        conn.close()
        raise
    return conn


def _make_private_dirs(directory: Path) -> None:
    """Create `directory` and any missing parents with mode 0700 (like Go's MkdirAll)."""
    missing = []
    while not directory.exists():
        missing.append(directory)
        if directory.parent == directory:
            break
        directory = directory.parent
    for path in reversed(missing):
        try:
            os.mkdir(str(path), 0o700)
        except FileExistsError:
            pass


CHECKPOINT_EVERY_COMMITS = 200


class _Checkpointer:
    """Moves WAL pages into the database file off the writer's path.

    SQLite's automatic checkpoint runs inside whichever COMMIT crosses the
    threshold, fsync included, so one job in a few hundred paid for
    everyone.  Here the writer only counts commits and sets an event; this
    thread (idle otherwise, waiting on the event) runs a PASSIVE
    checkpoint, which never blocks writers or readers.
    """

    def __init__(self, path: Path):
        self.path = path
        self._wanted = threading.Event()
        self._stopping = False
        self._thread: Optional[threading.Thread] = None

    def request(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="wal-checkpoint", daemon=True)
            self._thread.start()
        self._wanted.set()

    def _run(self) -> None:
        conn = connect(self.path)
        try:
            while True:
                self._wanted.wait()
                self._wanted.clear()
                if self._stopping:
                    return
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error:
                    pass  # retried after the next batch of commits
        finally:
            conn.close()

    def stop(self) -> None:
        self._stopping = True
        self._wanted.set()
        if self._thread is not None:
            self._thread.join(timeout=30)


class Database:
    """The queue and state database: one locked writer, pooled readers.

    `Database(path)` creates or verifies the schema before returning; it
    raises SchemaError for a database missing a table, column or † index,
    and DatabaseError when the file cannot be opened at all.  Messages
    about changes it made (e.g. the replaced index) are in `notes` and are
    passed to `on_info` for the caller's INFO log.
    """

    def __init__(self, path, *, on_info: Optional[InfoCallback] = None, max_idle_readers: int = 8):
        self.path = Path(os.path.expanduser(str(path)))
        self.max_idle_readers = max_idle_readers
        self._write_lock = threading.RLock()
        self._write_depth = 0
        self._readers_lock = threading.Lock()
        self._idle_readers: List[sqlite3.Connection] = []
        self._local = threading.local()
        self._closed = False
        try:
            _make_private_dirs(self.path.parent)
        except OSError as error:
            raise DatabaseError("create database directory %s: %s" % (self.path.parent, error)) from None
        try:
            self._writer = connect(self.path)
            self._writer.execute("PRAGMA wal_autocheckpoint = 0").fetchall()
        except sqlite3.Error as error:
            raise DatabaseError("open database %s: %s" % (self.path, error)) from None
        self._checkpointer = _Checkpointer(self.path)
        self._commits = 0
        self.notes = self._prepare(on_info)

    def _prepare(self, on_info: Optional[InfoCallback]) -> List[str]:
        try:
            with self.write() as conn:
                notes = prepare_schema(conn)
        except SchemaError:
            self.close()
            raise
        except sqlite3.Error as error:
            self.close()
            raise DatabaseError("open database %s: %s" % (self.path, error)) from None
        for note in notes:
            if on_info is not None:
                on_info(note)
        return notes

    # -- writing --

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction on the single writer connection.

        `BEGIN IMMEDIATE` on entry; COMMIT when the block ends, ROLLBACK if
        it raises.  Keep the block short (never around a plugin run): every
        other writer waits on it.  A nested `write()` on the same thread
        becomes a savepoint inside the outer transaction.
        """
        with self._write_lock:
            self._ensure_open()
            if self._write_depth:
                with self._savepoint():
                    yield self._writer
                return
            self._writer.execute("BEGIN IMMEDIATE")
            self._write_depth = 1
            try:
                yield self._writer
                self._writer.execute("COMMIT")
                self._count_commit()
            except BaseException:
                self._rollback(self._writer)
                raise
            finally:
                self._write_depth = 0

    def _count_commit(self) -> None:
        self._commits += 1
        if self._commits >= CHECKPOINT_EVERY_COMMITS:
            self._commits = 0
            self._checkpointer.request()

    @contextmanager
    def _savepoint(self) -> Iterator[None]:
        name = "nested_write_%d" % self._write_depth
        self._writer.execute("SAVEPOINT %s" % name)
        self._write_depth += 1
        try:
            yield
            self._writer.execute("RELEASE %s" % name)
        except BaseException:
            if self._writer.in_transaction:
                self._writer.execute("ROLLBACK TO %s" % name)
                self._writer.execute("RELEASE %s" % name)
            raise
        finally:
            self._write_depth -= 1

    @staticmethod
    def _rollback(conn: sqlite3.Connection) -> None:
        """Roll back unless SQLite already did (it does on some errors)."""
        if conn.in_transaction:
            conn.execute("ROLLBACK")

    # -- reading --

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A reader connection holding one snapshot for the whole block.

        It sees every transaction committed before its first query and
        nothing after, even while the writer is busy (WAL).  It does not
        see the calling thread's own uncommitted `write()`.  A nested
        `read()` on the same thread reuses the same connection/snapshot.
        """
        held = getattr(self._local, "reader", None)
        if held is not None:
            yield held
            return
        conn = self._borrow_reader()
        self._local.reader = conn
        try:
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                self._rollback(conn)  # a read-only transaction: ending it is all that matters
        finally:
            self._local.reader = None
            self._return_reader(conn)

    def _borrow_reader(self) -> sqlite3.Connection:
        with self._readers_lock:
            self._ensure_open()
            if self._idle_readers:
                return self._idle_readers.pop()
        try:
            return connect(self.path, query_only=True)
        except sqlite3.Error as error:
            raise DatabaseError("open database %s: %s" % (self.path, error)) from None

    def _return_reader(self, conn: sqlite3.Connection) -> None:
        with self._readers_lock:
            if not self._closed and len(self._idle_readers) < self.max_idle_readers:
                self._idle_readers.append(conn)
                return
        conn.close()

    # -- lifetime --

    def _ensure_open(self) -> None:
        if self._closed:
            raise DatabaseError("database %s is closed" % self.path)

    def close(self) -> None:
        """Close the writer and idle readers; readers in use close on return.

        A final TRUNCATE checkpoint folds the WAL back into the database file.
        """
        if hasattr(self, "_checkpointer"):
            self._checkpointer.stop()
        with self._write_lock:
            with self._readers_lock:
                if self._closed:
                    return
                self._closed = True
                idle, self._idle_readers = self._idle_readers, []
            for conn in idle:
                conn.close()
            try:
                self._writer.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            except sqlite3.Error:
                pass  # another process still reads: its own close will checkpoint
            self._writer.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> "Database":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
