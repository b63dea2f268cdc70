"""`job inspect|logs`, the `system` breaker/scheduler/facts commands and `plugin run` (spec 50 §8, §10, §11).

Every test runs the real CLI in-process against a real SQLite file written
through the real queue, so the tables are exactly what a gateway leaves.
"""
from __future__ import annotations

import json
import socket
import threading
import time
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import ECHO_PLUGIN_ROOT, config_text, write_tree
from ductile_lib import breakers
from ductile_lib.db import Database
from ductile_lib.pidlock import PidLock
from ductile_lib.queue import JobQueue
from ductile_lib.state import StateStore
from ductile_lib.timefmt import format_ts

T0 = datetime(2020, 3, 1, 12, 0, 0, tzinfo=timezone.utc)  # before any real "now"
OK_REPLY = '{"status":"ok","result":"done"}\n'


class Clock:
    """Advances one second per read, so every row has its own distinct timestamp."""

    def __init__(self):
        self.now = T0

    def __call__(self):
        self.now += timedelta(seconds=1)
        return self.now


class Env:
    """A config dir, its database and a queue writing into it."""

    def __init__(self, root: Path, extra: str = ""):
        self.dir = root / "cfg"
        write_tree(self.dir, {"config.yaml": config_text(extra)})
        self.db_path = self.dir / "data" / "state.db"
        self.pid_path = self.dir / "data" / "state.pid"
        self._db = None
        self._queue = None

    @property
    def db(self) -> Database:
        if self._db is None:
            self._db = Database(self.db_path)
        return self._db

    @property
    def queue(self) -> JobQueue:
        if self._queue is None:
            self._queue = JobQueue(self.db, clock=Clock())
        return self._queue

    def finish(self, status="succeeded", plugin="echo", command="poll", submitted_by="ductile", result=OK_REPLY,
               stderr=None, last_error=None, **enqueue):
        """One job enqueued, claimed and ended; returns the ended job."""
        job_id = self.queue.enqueue(plugin, command, {}, submitted_by, **enqueue).job_id
        job = self.queue.claim(lambda _p: 8, config_snapshot_id=enqueue.get("config_snapshot_id"))
        assert job.id == job_id
        if status != "succeeded" and last_error is None:
            last_error = "boom"
        return self.queue.complete(job, status, result=result, stderr=stderr, last_error=last_error)

    def rows(self, sql, args=()):
        with self.db.read() as conn:
            return [dict(r) for r in conn.execute(sql, args).fetchall()]

    def close(self):
        if self._db is not None:
            self._db.close()


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.delenv("DUCTILE_API_KEY", raising=False)
    environment = Env(tmp_path)
    yield environment
    environment.close()


def make_env(tmp_path, extra):
    return Env(tmp_path, extra)


def run(cli, env, *args):
    return cli(*args, "--config-dir", env.dir)


# --- job inspect ----------------------------------------------------------------------

INSPECT_KEYS = ["job_id", "plugin", "command", "status", "attempt", "context_id", "children", "transitions",
                "attempts", "consistency", "config", "hops", "steps"]


def test_inspect_json_of_a_plain_job(cli, env):
    job = env.finish()
    result = run(cli, env, "job", "inspect", job.id, "--json")
    assert result.code == 0, result
    report = result.json()
    assert list(report) == INSPECT_KEYS
    assert (report["job_id"], report["plugin"], report["command"], report["status"], report["attempt"]) == (
        job.id, "echo", "poll", "succeeded", 1)
    assert report["context_id"] == "" and report["children"] == [] and report["hops"] == 0
    assert report["steps"] == []
    first, claim, done = report["transitions"]
    assert "from" not in first and first["to"] == "queued"
    assert (claim["from"], claim["to"]) == ("queued", "running")
    assert (done["from"], done["to"]) == ("running", "succeeded") and "reason" not in done
    assert report["attempts"] == [{"attempt": 1, "at": job.started_at}]
    assert report["consistency"] == {"latest_transition_status": "succeeded", "cached_status_matches": True,
                                     "attempt_facts_match": True, "legacy_missing_data": False}
    assert report["config"] == {"crossed_reload_boundary": False, "legacy_missing_data": True}


def _lineage(env):
    """A root job with a child, run under two config snapshots, the child in a two-hop pipeline context."""
    with env.db.write() as conn:
        for snap_id, reason in (("cfg_a", "startup"), ("cfg_b", "reload")):
            conn.execute("INSERT INTO config_snapshots(id, config_hash, source, reason, loaded_at, snapshot_format,"
                         " semantics, secret_fingerprints) VALUES (?, 'h', 'explicit', ?, ?, 1, ?, ?)",
                         (snap_id, reason, format_ts(T0), '{"mode":"fast","retries":2}',
                          '[{"purpose":"webhooks.github.secret_ref","ref":"gh","present":true}]'))
        conn.execute("INSERT INTO event_context(id, parent_id, pipeline_name, step_id, accumulated_json, created_at)"
                     " VALUES ('ctx-root', NULL, 'deploy', NULL, '{\"ticket\": 7}', ?)", (format_ts(T0),))
        conn.execute("INSERT INTO event_context(id, parent_id, pipeline_name, step_id, accumulated_json, created_at)"
                     " VALUES ('ctx-step', 'ctx-root', 'deploy', 'notify', '{\"ticket\": 7, \"ok\": true}', ?)",
                     (format_ts(T0),))
    root_id = env.queue.enqueue("echo", "poll", {}, "api", config_snapshot_id="cfg_a").job_id
    root = env.queue.claim(lambda _p: 8, config_snapshot_id="cfg_b")
    assert root.id == root_id
    root = env.queue.complete(root, "failed", result=OK_REPLY, last_error="bad thing")
    child_id = env.queue.enqueue("echo", "handle", {}, "route", parent_job_id=root.id,
                                 event_context_id="ctx-step").job_id
    return root, child_id


def test_inspect_lineage_json(cli, env):
    root, child_id = _lineage(env)
    report = run(cli, env, "job", "inspect", root.id, "--json").json()
    assert report["children"] == [{"job_id": child_id, "plugin": "echo", "command": "handle", "status": "queued"}]
    assert report["transitions"][-1] == {"from": "running", "to": "failed", "at": root.completed_at,
                                         "reason": "bad thing"}
    config = report["config"]
    assert config["enqueued"]["id"] == "cfg_a" and config["started"]["id"] == "cfg_b"
    assert list(config["enqueued"]) == ["id", "config_hash", "source", "reason", "loaded_at", "snapshot_format",
                                        "semantics"]
    assert config["crossed_reload_boundary"] is True and config["legacy_missing_data"] is False
    assert config["secret_uses"] == [{"purpose": "webhooks.github.secret_ref", "ref": "gh", "present": True}]
    child = run(cli, env, "job", "inspect", child_id, "--json").json()
    assert child["parent_job_id"] == root.id and child["context_id"] == "ctx-step" and child["hops"] == 2
    first, second = child["steps"]
    assert first == {"hop": 1, "pipeline": "deploy", "step_id": "<entry>", "context_id": "ctx-root",
                     "baggage": {"ticket": 7}}
    assert second["parent_id"] == "ctx-root" and second["step_id"] == "notify"
    assert (second["job_id"], second["plugin"], second["command"], second["status"]) == (
        child_id, "echo", "handle", "queued")
    assert second["baggage"] == {"ticket": 7, "ok": True}
    assert child["consistency"]["attempt_facts_match"] is True  # no attempts yet, attempt 1


def test_inspect_legacy_row_without_lineage_facts(cli, env):
    job = env.finish()
    with env.db.write() as conn:  # a row from before job_transitions/job_attempts existed
        conn.execute("DELETE FROM job_transitions")
        conn.execute("DELETE FROM job_attempts")
    report = run(cli, env, "job", "inspect", job.id, "--json").json()
    assert report["transitions"] == [] and report["attempts"] == []
    assert report["consistency"] == {"cached_status_matches": False, "attempt_facts_match": True,
                                     "legacy_missing_data": True}
    out = run(cli, env, "job", "inspect", job.id).out
    assert "  transitions : <none>\n  attempts    : <none>\n" in out
    assert "legacy_missing_data=true" in out


def test_inspect_missing_snapshot_is_reported(cli, env):
    job = env.finish(config_snapshot_id="cfg_gone")
    config = run(cli, env, "job", "inspect", job.id, "--json").json()["config"]
    assert config["missing_snapshot_refs"] == ["cfg_gone"] and "enqueued" not in config


def test_inspect_human_report(cli, env):
    root, child_id = _lineage(env)
    out = run(cli, env, "job", "inspect", root.id).out
    assert out.startswith("Lineage Report\nJob ID      : %s\nPlugin      : echo\n" % root.id)
    assert "Parent Job  : <none>\nHops        : 0\n\nChildren\n  - %s (echo:handle, queued)\n" % child_id in out
    assert "Execution History\n  transitions :\n    - NULL -> queued at " in out
    assert "    - running -> failed at %s (bad thing)\n" % root.completed_at in out
    assert "  attempts    :\n    - attempt 1 at " in out
    assert "  consistency : cached_status_matches=true attempt_facts_match=true legacy_missing_data=false\n" in out
    assert "\n\nConfig\n  enqueued under: cfg_a startup %s\n  started under : cfg_b reload" % format_ts(T0) in out
    assert "  enqueued semantics: mode=fast, retries=2\n" in out
    assert "  crossed reload boundary: true\n  legacy missing data    : false\n" in out
    assert "  secrets                :\n    - gh used by webhooks.github.secret_ref present=true\n" in out
    child = run(cli, env, "job", "inspect", child_id).out
    assert "Parent Job  : %s\n" % root.id in child and "Children\n  <none>\n" in child
    assert "  transitions :\n    - NULL -> queued" in child and "  attempts    : <none>\n" in child
    assert "  enqueued under: <missing>\n  started under : <missing>\n" in child
    assert "  secrets                : <none>\n" in child
    assert ("\n\n[1] deploy :: <entry>\n    context_id : ctx-root\n    parent_id  : <none>\n"
            "    job        : <none>\n    baggage    :\n      {\n        \"ticket\": 7\n      }\n") in child
    assert "[2] deploy :: notify\n    context_id : ctx-step\n    parent_id  : ctx-root\n" in child
    assert "    job        : %s (echo:handle, queued)\n" % child_id in child
    assert child.endswith("      }\n") and not child.endswith("\n\n")


def test_inspect_errors(cli, env):
    env.finish()
    unknown = run(cli, env, "job", "inspect", "nope")
    assert unknown.code == 1 and unknown.err == 'Inspect failed: job "nope" not found\n'
    as_json = run(cli, env, "job", "inspect", "nope", "--json")
    assert as_json.code == 1 and as_json.json()["context"] == {"job_id": "nope"} and as_json.err == ""
    assert run(cli, env, "job", "inspect").code == 2
    assert run(cli, env, "job", "inspect", "a", "b").code == 2


def test_job_commands_need_an_existing_database(cli, env):
    for args in (("job", "inspect", "x"), ("job", "logs")):
        result = run(cli, env, *args, "--json")
        assert result.code == 1
        assert result.json()["error"] == "database file does not exist: %s (start the gateway once)" % env.db_path
    assert not env.db_path.exists()


def test_job_noun_help(cli):
    result = cli("job")
    assert result.code == 2 and "Usage: ductile job <action>" in result.err and "Actions: inspect, logs" in result.err
    assert cli("job", "help").code == 0


# --- job logs -----------------------------------------------------------------------

LOG_KEYS = ["JobID", "LogID", "Plugin", "Command", "Status", "Attempt", "SubmittedBy", "CreatedAt", "CompletedAt",
            "LastError", "Stderr", "EnqueuedConfigSnapshotID", "StartedConfigSnapshotID"]


def _some_logs(env):
    ok = env.finish(result=OK_REPLY)
    bad = env.finish("failed", plugin="other", command="handle", submitted_by="api", last_error="Disk FULL",
                     stderr="trace line\n", result="not json\n")
    dead = env.finish("dead", submitted_by="cli", result=None)
    return ok, bad, dead


def test_logs_json_shape_and_order(cli, env):
    ok, bad, dead = _some_logs(env)
    body = run(cli, env, "job", "logs", "--json").json()
    assert body["total"] == 3
    assert [e["JobID"] for e in body["logs"]] == [dead.id, bad.id, ok.id]
    first = body["logs"][0]
    assert list(first) == LOG_KEYS
    assert first["LogID"] == "%s-1" % dead.id and first["Status"] == "dead" and first["Attempt"] == 1
    assert first["CompletedAt"] == dead.completed_at and first["CreatedAt"] == dead.created_at
    assert first["LastError"] == "boom" and first["Stderr"] is None
    with_result = run(cli, env, "job", "logs", "--json", "--include-result").json()["logs"]
    assert list(with_result[0]) == LOG_KEYS[:11] + ["Result"] + LOG_KEYS[11:]
    assert with_result[2]["Result"] == {"status": "ok", "result": "done"}
    assert with_result[1]["Result"] == "not json\n" and with_result[0]["Result"] is None


def test_logs_snapshot_ids_fall_back_to_the_queue_row(cli, env):
    job = env.finish(config_snapshot_id="cfg_x")
    with env.db.write() as conn:  # the original's job_log rows had no snapshot ids
        conn.execute("UPDATE job_log SET enqueued_config_snapshot_id = NULL, started_config_snapshot_id = NULL")
    entry = run(cli, env, "job", "logs", "--json").json()["logs"][0]
    assert entry["JobID"] == job.id
    assert entry["EnqueuedConfigSnapshotID"] == "cfg_x" and entry["StartedConfigSnapshotID"] == "cfg_x"


@pytest.mark.parametrize("args, expected", [
    (("--plugin", "other"), ["bad"]),
    (("--command", "poll"), ["dead", "ok"]),
    (("--status", "ok"), ["ok"]),
    (("--status", "ERROR"), ["bad"]),
    (("--status", "pending"), []),
    (("--status", "skipped"), []),
    (("--submitted-by", "cli"), ["dead"]),
    (("--query", "disk full"), ["bad"]),
    (("--query", "TRACE"), ["bad"]),
    (("--query", "DONE"), ["ok"]),
])
def test_logs_filters(cli, env, args, expected):
    jobs = dict(zip(("ok", "bad", "dead"), _some_logs(env)))
    body = run(cli, env, "job", "logs", "--json", *args).json()
    assert [e["JobID"] for e in body["logs"]] == [jobs[name].id for name in expected]
    assert body["total"] == len(expected)


def test_logs_time_window_and_limit(cli, env):
    ok, bad, dead = _some_logs(env)
    window = run(cli, env, "job", "logs", "--json", "--from", bad.completed_at, "--to", bad.completed_at).json()
    assert [e["JobID"] for e in window["logs"]] == [bad.id]
    offset = run(cli, env, "job", "logs", "--json", "--to", "2020-03-01T13:00:00+01:00").json()
    assert offset["total"] == 0  # 12:00Z is before every job
    limited = run(cli, env, "job", "logs", "--json", "--limit", "1").json()
    assert limited["total"] == 3 and [e["JobID"] for e in limited["logs"]] == [dead.id]
    empty = run(cli, env, "job", "logs", "--json", "--plugin", "missing").json()
    assert empty == {"total": 0, "logs": []}


def test_logs_human_output(cli, env):
    ok, bad, dead = _some_logs(env)
    out = run(cli, env, "job", "logs", "--include-result").out
    lines = out.splitlines()
    assert lines[0] == "Job Logs (total=3)"
    assert lines[1] == "- %s dead echo:poll job=%s attempt=1 submitted_by=cli" % (dead.completed_at, dead.id)
    assert lines[2] == "  last_error: boom"
    assert "- %s failed other:handle job=%s attempt=1 submitted_by=api" % (bad.completed_at, bad.id) in lines
    assert "  last_error: Disk FULL" in lines and "  stderr: trace line" in lines
    assert "  result: not json" in lines and '  result: {"status":"ok","result":"done"}' in lines
    assert "result:" not in run(cli, env, "job", "logs").out


@pytest.mark.parametrize("args, message", [
    (("--limit", "0"), "limit must be between 1 and 200"),
    (("--limit", "201"), "limit must be between 1 and 200"),
    (("--status", "bogus"), "invalid status filter"),
    (("--from", "yesterday"), "invalid from timestamp"),
    (("--to", "2026-13-01T00:00:00Z"), "invalid to timestamp"),
    (("extra",), "unrecognized arguments: extra"),
])
def test_logs_usage_errors(cli, env, args, message):
    env.finish()
    result = run(cli, env, "job", "logs", *args)
    assert result.code == 2 and message in result.err
    as_json = run(cli, env, "job", "logs", "--json", *args)
    assert as_json.code == 2 and message in as_json.json()["error"] and as_json.err == ""


# --- system reset / breaker -----------------------------------------------------------

def _open_breaker(env):
    last = None
    for _ in range(3):
        last = env.finish("failed")
        breakers.reconcile(env.db, "echo", "poll", "ductile", 3, T0 + timedelta(days=1))
    return last


def test_breaker_without_row(cli, env):
    env.finish()
    body = run(cli, env, "system", "breaker", "echo", "--json").json()
    assert body == {"plugin": "echo", "command": "poll", "failure_count": 0, "transitions": []}
    out = run(cli, env, "system", "breaker", "echo", "--command", "handle").out
    assert out == "Circuit breaker for echo (handle)\nState: no current row\nTransitions:\n- none\n"


def test_breaker_report_and_reset(cli, env):
    last = _open_breaker(env)
    body = run(cli, env, "system", "breaker", "echo", "--json").json()
    assert body["state"] == "open" and body["failure_count"] == 3 and body["last_job_id"] == last.id
    assert body["opened_at"] == last.completed_at == body["last_failure_at"]
    out = run(cli, env, "system", "breaker", "echo").out.splitlines()
    assert out[:5] == ["Circuit breaker for echo (poll)", "State: open (failure_count=3)",
                       "Opened at: %s" % last.completed_at, "Last failure: %s" % last.completed_at,
                       "Last job: %s" % last.id]
    assert out[5] == "Transitions:"
    assert out[6].endswith(" closed -> open reason=failure_threshold failure_count=3 job=%s" % last.id)
    reset = run(cli, env, "system", "reset", "echo")
    assert reset.code == 0 and reset.out == "Reset circuit breaker for echo (poll)\n"
    again = run(cli, env, "system", "reset", "echo", "--json").json()
    assert again == {"status": "ok", "plugin": "echo", "command": "poll", "previous_state": "closed",
                     "state": "closed"}
    after = run(cli, env, "system", "breaker", "echo", "--json").json()
    assert after["state"] == "closed" and after["failure_count"] == 0 and "opened_at" not in after
    newest = after["transitions"][1]
    assert (newest["from_state"], newest["to_state"], newest["reason"]) == ("open", "closed", "manual_reset")
    assert "job_id" not in newest
    human = run(cli, env, "system", "breaker", "echo").out
    assert " open -> closed reason=manual_reset failure_count=0\n" in human


def test_reset_other_command_and_first_row(cli, env):
    env.finish()
    assert run(cli, env, "system", "reset", "echo", "--command", "health").code == 0
    body = run(cli, env, "system", "breaker", "echo", "--command", "health", "--json").json()
    assert body["state"] == "closed" and body["transitions"][0]["reason"] == "manual_reset"
    assert "from_state" not in body["transitions"][0]
    line = run(cli, env, "system", "breaker", "echo", "--command", "health").out.splitlines()[-1]
    assert " <none> -> closed reason=manual_reset failure_count=0" in line
    assert run(cli, env, "system", "breaker", "echo", "--json").json()["transitions"] == []


def test_breaker_limit(cli, env):
    env.finish()
    for _ in range(22):
        breakers.reset(env.db, "echo", "poll", "ductile", T0)
    count = lambda *a: len(run(cli, env, "system", "breaker", "echo", "--json", *a).json()["transitions"])
    assert count() == 20 and count("--limit", "0") == 20 and count("--limit", "-3") == 20
    assert count("--limit", "5") == 5 and count("--limit", "50") == 22


@pytest.mark.parametrize("action", ["reset", "breaker", "plugin-facts"])
def test_plugin_commands_errors(cli, env, action):
    env.finish()
    unknown = run(cli, env, "system", action, "nosuch", "--json")
    assert unknown.code == 1 and unknown.json()["error"] == "Unknown plugin: nosuch"
    assert unknown.json()["context"] == {"plugin": "nosuch"}
    blank = run(cli, env, "system", action, " ")
    assert blank.code == 2 and "plugin name is required" in blank.err
    assert run(cli, env, "system", action).code == 2


@pytest.mark.parametrize("args", [("reset", "echo"), ("breaker", "echo"), ("scheduler",),
                                  ("plugin-facts", "echo")])
def test_system_db_commands_refuse_missing_database(cli, env, args):
    result = run(cli, env, "system", *args)
    assert result.code == 1
    assert result.err == "database file does not exist: %s (start the gateway once)\n" % env.db_path
    assert not env.db_path.exists()


# --- system scheduler -------------------------------------------------------------------

def test_scheduler_lists_active_scheduler_polls(cli, env):
    env.finish()  # terminal: not listed
    queued = env.queue.enqueue("echo", "poll", {}, "ductile", dedupe_key="echo:poll:default").job_id
    env.queue.enqueue("echo", "poll", {}, "api")  # not the scheduler's
    env.queue.enqueue("echo", "handle", {}, "ductile")  # not a poll
    running = env.queue.claim(lambda _p: 8)
    assert running.id == queued
    second = env.queue.enqueue("other", "poll", {}, "ductile").job_id
    body = run(cli, env, "system", "scheduler", "--json").json()
    assert body["service_name"] == "ductile" and body["count"] == 2
    first, other = body["active_polls"]
    assert list(first) == ["job_id", "plugin", "dedupe_key", "status", "attempt", "created_at", "started_at"]
    assert (first["job_id"], first["status"], first["dedupe_key"]) == (queued, "running", "echo:poll:default")
    assert list(other) == ["job_id", "plugin", "status", "attempt", "created_at"] and other["job_id"] == second
    out = run(cli, env, "system", "scheduler").out.splitlines()
    assert out[:3] == ["Scheduler: ductile", "Active polls: 2", ""]
    assert out[3] == "- plugin=echo status=running attempt=1 created=%s started=%s job=%s dedupe=echo:poll:default" % (
        running.created_at, running.started_at, queued)
    assert out[4].endswith("started=- job=%s dedupe=-" % second)


def test_scheduler_empty_and_custom_service_name(cli, tmp_path):
    custom = make_env(tmp_path, "service:\n  name: gw\n")
    try:
        custom.queue.enqueue("echo", "poll", {}, "ductile")
        assert run(cli, custom, "system", "scheduler").out == "Scheduler: gw\nActive polls: 0\n(none)\n"
        custom.queue.enqueue("echo", "poll", {}, "gw")
        assert run(cli, custom, "system", "scheduler", "--json").json()["count"] == 1
    finally:
        custom.close()


# --- system plugin-facts ----------------------------------------------------------------

RULES = [{"when": {"command": "poll"}, "from": "state_updates", "fact_type": "echo.snapshot",
          "compatibility_view": "mirror_object"}]


def test_plugin_facts(cli, env):
    env.finish()
    store = StateStore(env.db, clock=Clock())
    store.apply_updates("echo", "poll", "job-1", {"n": 1}, RULES)
    store.apply_updates("echo", "poll", "job-2", {"n": 2}, RULES)
    store.apply_updates("echo", "poll", "job-3", {"n": 3}, [dict(RULES[0], fact_type="echo.other")])
    body = run(cli, env, "system", "plugin-facts", "echo", "--json").json()
    assert list(body) == ["plugin", "facts"]
    assert [f["job_id"] for f in body["facts"]] == ["job-3", "job-2", "job-1"]
    fact = body["facts"][1]
    assert list(fact) == ["id", "plugin", "fact_type", "job_id", "command", "fact", "created_at"]
    assert fact["fact"] == {"n": 2} and fact["fact_type"] == "echo.snapshot" and fact["plugin"] == "echo"
    typed = run(cli, env, "system", "plugin-facts", "echo", "--fact-type", "echo.snapshot", "--limit", "1",
                "--json").json()
    assert typed["fact_type"] == "echo.snapshot" and [f["job_id"] for f in typed["facts"]] == ["job-2"]
    out = run(cli, env, "system", "plugin-facts", "echo", "--fact-type", "echo.snapshot").out
    assert out.startswith("Plugin facts for echo\nFact type filter: echo.snapshot\n\n")
    assert "  echo.snapshot  job=job-2  command=poll\n{\"n\":2}\n" in out


def test_plugin_facts_empty_and_limit(cli, env):
    env.finish()
    assert run(cli, env, "system", "plugin-facts", "echo").out == "Plugin facts for echo\nNo facts found.\n"
    assert run(cli, env, "system", "plugin-facts", "echo", "--json").json() == {"plugin": "echo", "facts": []}
    for limit in ("0", "-1"):
        result = run(cli, env, "system", "plugin-facts", "echo", "--limit", limit)
        assert result.code == 2 and "limit must be greater than zero" in result.err


def test_new_actions_are_listed_and_old_ones_kept(cli):
    out = cli("system", "help").out
    for action in ("start", "status", "reload", "reset", "breaker", "scheduler", "plugin-facts"):
        assert action in out


# --- plugin run --local -------------------------------------------------------------------

def test_run_local_poll(cli, env):
    result = run(cli, env, "plugin", "run", "echo", "--local")
    assert result.code == 0, result
    reply = json.loads(result.out)
    assert reply["status"] == "ok" and reply["events"][0]["payload"]["count"] == 1
    assert "error" not in reply  # the plugin's own output, not the decoded form
    assert not env.db_path.exists()  # nothing written, not even a database


def test_run_local_uses_stored_state_and_writes_nothing(cli, env):
    StateStore(env.db).apply_updates("echo", "poll", "j", {"poll_count": 41}, [])
    result = run(cli, env, "plugin", "run", "echo", "poll", "--local", "--json")
    assert result.code == 0, result
    report = result.json()
    assert list(report) == ["plugin", "command", "job_id", "outcome", "response", "stderr", "exit_code",
                            "duration_ms"]
    assert report["outcome"] == "ok" and report["response"]["events"][0]["payload"]["count"] == 42
    assert env.rows("SELECT * FROM job_queue") == []
    assert json.loads(env.rows("SELECT state FROM plugin_state")[0]["state"]) == {"poll_count": 41}


def test_run_local_handle_builds_the_event(cli, env):
    result = run(cli, env, "plugin", "run", "echo", "handle", "--local", "--payload", '{"message": "hi"}')
    assert result.code == 0, result
    reply = json.loads(result.out)
    assert reply["events"][0]["payload"] == {"message": "hi", "ductile_plugin": "echo"}
    assert "cli.trigger" in reply["result"]


def test_run_local_payload_file_and_health(cli, env, tmp_path):
    payload = tmp_path / "p.json"
    payload.write_text('{"message": "from file"}')
    result = run(cli, env, "plugin", "run", "echo", "handle", "--local", "--payload-file", payload)
    assert json.loads(result.out)["events"][0]["payload"]["message"] == "from file"
    health = run(cli, env, "plugin", "run", "echo", "health", "--local")
    assert health.code == 0 and json.loads(health.out)["result"].startswith("echo ")


def _failing_plugin(root: Path) -> Path:
    plugins = root / "more"
    write_tree(plugins, {
        "grumpy/manifest.yaml": """
            manifest_spec: ductile.plugin
            manifest_version: 1
            name: grumpy
            protocol: 2
            entrypoint: run.sh
            commands:
              - name: poll
        """,
        "grumpy/run.sh": """
            #!/bin/sh
            cat >/dev/null
            echo "grumpy says no" >&2
            echo '{"status":"error","error":"not today","retry":false}'
        """,
    })
    (plugins / "grumpy" / "run.sh").chmod(0o755)
    return plugins


def test_run_local_error_status_exits_1(cli, tmp_path):
    plugins = _failing_plugin(tmp_path)
    extra = "plugin_roots: [%s, %s]\nplugins:\n  grumpy:\n    enabled: true\n" % (ECHO_PLUGIN_ROOT, plugins)
    grumpy = make_env(tmp_path, extra)
    result = run(cli, grumpy, "plugin", "run", "grumpy", "--local")
    assert result.code == 1
    assert json.loads(result.out)["error"] == "not today"
    assert "grumpy says no\n" in result.err and "Error: not today" in result.err
    as_json = run(cli, grumpy, "plugin", "run", "grumpy", "--local", "--json")
    assert as_json.code == 1 and as_json.err == ""
    report = as_json.json()
    assert report["outcome"] == "error" and report["stderr"] == "grumpy says no\n"
    assert report["error"] == "not today"


# --- plugin run: input and plugin errors -----------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (("--payload", "[1, 2]"), "Error: payload must be a JSON object"),
    (("--payload", '"text"'), "Error: payload must be a JSON object"),
    (("--payload", "{nope"), "Error: payload must be valid JSON"),
    (("--payload", "{}", "--payload-file", "x.json"), "use only one of --payload or --payload-file"),
    (("--timeout", "30"), "invalid --timeout"),
    (("--timeout", "0s"), "invalid --timeout"),
])
def test_run_usage_errors(cli, env, args, message):
    result = run(cli, env, "plugin", "run", "echo", "--local", *args)
    assert result.code == 2 and message in result.err
    assert not env.db_path.exists()


def test_run_needs_a_name(cli, env):
    result = run(cli, env, "plugin", "run")
    assert result.code == 2 and "plugin name is required" in result.err


@pytest.mark.parametrize("local", [True, False])
def test_run_unknown_or_disabled(cli, tmp_path, local, monkeypatch):
    monkeypatch.delenv("DUCTILE_API_KEY", raising=False)
    disabled = make_env(tmp_path, "plugins:\n  echo:\n    enabled: false\n")
    flags = ("--local",) if local else ()
    off = run(cli, disabled, "plugin", "run", "echo", *flags, "--json")
    assert off.code == 1 and off.json()["error"] == "plugin disabled"
    enabled = Env(tmp_path / "on")
    unknown = run(cli, enabled, "plugin", "run", "nosuch", *flags)
    assert unknown.code == 1 and unknown.err == "Unknown plugin: nosuch\n"
    bad_command = run(cli, enabled, "plugin", "run", "echo", "explode", *flags)
    assert bad_command.code == 1
    assert bad_command.err == 'plugin "echo" does not support command "explode" (declared: poll, handle, health)\n'
    assert not disabled.db_path.exists() and not enabled.db_path.exists()


# --- plugin run: straight into the database ---------------------------------------------------

def test_run_without_gateway_enqueues_a_cli_job(cli, tmp_path, monkeypatch):
    monkeypatch.delenv("DUCTILE_API_KEY", raising=False)
    custom = make_env(tmp_path, "plugins:\n  echo:\n    enabled: true\n    retry:\n      max_attempts: 7\n")
    try:
        result = run(cli, custom, "plugin", "run", "echo", "--payload", '{"a": 1}')
        assert result.code == 0, result
        [row] = custom.rows("SELECT * FROM job_queue")
        assert result.out == "Queued job %s (echo poll)\n" % row["id"]
        assert (row["plugin"], row["command"], row["status"], row["submitted_by"], row["max_attempts"]) == (
            "echo", "poll", "queued", "cli", 7)
        assert json.loads(bytes(row["payload"])) == {"a": 1}
        assert row["parent_job_id"] is None and row["dedupe_key"] is None
        assert custom.rows("SELECT to_status FROM job_transitions") == [{"to_status": "queued"}]
        body = run(cli, custom, "plugin", "run", "echo", "handle", "--payload", '{"b": 2}', "--json").json()
        assert list(body) == ["job_id", "status", "plugin", "command"] and body["status"] == "queued"
        stored = json.loads(bytes(custom.rows("SELECT payload FROM job_queue WHERE id = ?", (body["job_id"],))[0]
                                  ["payload"]))
        assert list(stored) == ["type", "payload", "source", "event_id", "timestamp"]
        assert (stored["type"], stored["payload"], stored["source"]) == ("cli.trigger", {"b": 2}, "cli")
        assert len(stored["event_id"]) == 36 and stored["timestamp"].endswith("Z")
    finally:
        custom.close()


def _worker(db_path: Path, status: str, result: str, stop: threading.Event):
    """A stand-in gateway: claims the first queued job and ends it."""
    db = Database(db_path)
    try:
        queue = JobQueue(db)
        while not stop.is_set():
            job = queue.claim(lambda _p: 8)
            if job is not None:
                queue.complete(job, status, result=result, last_error=None if status == "succeeded" else "nope")
                return
            time.sleep(0.02)
    finally:
        db.close()


@pytest.mark.parametrize("status, code", [("succeeded", 0), ("failed", 1)])
def test_run_wait_reports_the_outcome(cli, env, status, code):
    env.db  # create the database so the worker can start first
    stop = threading.Event()
    worker = threading.Thread(target=_worker, args=(env.db_path, status, OK_REPLY, stop))
    worker.start()
    try:
        result = run(cli, env, "plugin", "run", "echo", "--wait", "--timeout", "10s")
    finally:
        stop.set()
        worker.join(5)
    assert result.code == code, result
    lines = result.out.splitlines()
    assert lines[0].startswith("Queued job ") and lines[1] == "Status: %s" % status
    assert lines[2] == 'Result: {"status": "ok", "result": "done"}'
    assert lines[3] == ("Last error: -" if status == "succeeded" else "Last error: nope")


def test_run_wait_json(cli, env):
    env.db
    stop = threading.Event()
    worker = threading.Thread(target=_worker, args=(env.db_path, "succeeded", OK_REPLY, stop))
    worker.start()
    try:
        result = run(cli, env, "plugin", "run", "echo", "--wait", "--json")
    finally:
        stop.set()
        worker.join(5)
    body = result.json()
    assert list(body) == ["job_id", "plugin", "command", "status", "result"]
    assert body["status"] == "succeeded" and body["result"] == {"status": "ok", "result": "done"}


def test_run_wait_times_out(cli, env):
    started = time.monotonic()
    result = run(cli, env, "plugin", "run", "echo", "--wait", "--timeout", "300ms")
    assert result.code == 1 and time.monotonic() - started < 5
    assert "timed out after 300ms waiting for job " in result.err and "(status queued)" in result.err
    assert "no gateway is running" in result.err


# --- plugin run: through the API -------------------------------------------------------------

class FakeApi:
    """A tiny stand-in for the gateway's HTTP API that records what it was sent."""

    def __init__(self, status: int = 202):
        self.requests = []
        self.status = status
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                api.requests.append(("POST", self.path, self.headers.get("Authorization"), json.loads(body)))
                parts = self.path.split("/")
                reply = ({"job_id": "job-from-api", "status": "queued", "plugin": parts[2], "command": parts[3]}
                         if api.status < 400 else {"error": "plugin not found"})
                self._send(api.status, reply)

            def do_GET(self):
                api.requests.append(("GET", self.path, self.headers.get("Authorization"), None))
                self._send(200, {"job_id": "job-from-api", "status": "succeeded", "result": {"ok": 1}})

            def _send(self, status, reply):
                data = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def _api_config(port: int) -> str:
    return ('api:\n  enabled: true\n  listen: "127.0.0.1:%d"\n  auth:\n    tokens:\n'
            '      - token: "config-token"\n        scopes: ["*"]\n' % port)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def gateway_lock():
    """Hold the PID lock of an env's config, as a running gateway does."""
    held = []

    def hold(environment):
        lock = PidLock(str(environment.pid_path))
        lock.acquire()
        held.append(lock)

    yield hold
    for lock in held:
        lock.release()


@pytest.fixture
def fake_api():
    api = FakeApi()
    yield api
    api.close()


def test_run_posts_to_a_running_gateways_api(cli, tmp_path, fake_api, gateway_lock, monkeypatch):
    monkeypatch.delenv("DUCTILE_API_KEY", raising=False)
    gateway = make_env(tmp_path, _api_config(fake_api.port))
    gateway_lock(gateway)
    result = run(cli, gateway, "plugin", "run", "echo", "--payload", '{"x": 1}')
    assert result.code == 0, result
    assert result.out == "Queued job job-from-api (echo poll)\n"
    assert fake_api.requests == [("POST", "/plugin/echo/poll", "Bearer config-token", {"payload": {"x": 1}})]
    assert not gateway.db_path.exists()
    monkeypatch.setenv("DUCTILE_API_KEY", "env-token")
    waited = run(cli, gateway, "plugin", "run", "echo", "handle", "--wait", "--json")
    assert waited.code == 0 and waited.json()["result"] == {"ok": 1}
    assert fake_api.requests[1][:3] == ("POST", "/plugin/echo/handle", "Bearer env-token")
    assert fake_api.requests[2][:3] == ("GET", "/job/job-from-api", "Bearer env-token")


def test_run_explicit_api_url_and_http_error(cli, env, tmp_path):
    api = FakeApi(status=404)
    try:
        url = "http://127.0.0.1:%d/" % api.port
        result = run(cli, env, "plugin", "run", "nosuch", "--api-url", url, "--api-key", "k", "--json")
        assert result.code == 1
        body = result.json()
        assert body["error"] == 'API error (404): {"error": "plugin not found"}'
        assert body["context"]["http_status"] == 404 and body["context"]["response"] == {"error": "plugin not found"}
        assert api.requests[0][:3] == ("POST", "/plugin/nosuch/poll", "Bearer k")
        missing_key = run(cli, env, "plugin", "run", "echo", "--api-url", url)
        assert missing_key.code == 1
        assert missing_key.err == "Error: API key required. Use --api-key or DUCTILE_API_KEY env var.\n"
    finally:
        api.close()


def test_run_falls_back_to_the_database_when_the_api_is_not_up(cli, tmp_path, gateway_lock, monkeypatch):
    monkeypatch.delenv("DUCTILE_API_KEY", raising=False)
    port = _free_port()
    gateway = make_env(tmp_path, _api_config(port))
    try:
        gateway_lock(gateway)
        result = run(cli, gateway, "plugin", "run", "echo")
        assert result.code == 0, result
        assert result.err == "API not reachable at http://127.0.0.1:%d; enqueueing into the database\n" % port
        [row] = gateway.rows("SELECT id, submitted_by FROM job_queue")
        assert row["submitted_by"] == "cli" and result.out == "Queued job %s (echo poll)\n" % row["id"]
        explicit = run(cli, gateway, "plugin", "run", "echo", "--api-url", "http://127.0.0.1:%d" % port)
        assert explicit.code == 1 and explicit.err.startswith("Request failed: ")
    finally:
        gateway.close()


@pytest.mark.parametrize("listen, url", [
    ("127.0.0.1:8080", "http://127.0.0.1:8080"),
    ("0.0.0.0:9000", "http://127.0.0.1:9000"),
    (":9000", "http://127.0.0.1:9000"),
    ("[::]:9000", "http://[::1]:9000"),
    ("https://gw.local:8443/", "https://gw.local:8443"),
])
def test_api_base_url(listen, url):
    from ductile_lib.cli.plugin_cmd import api_base_url

    assert api_base_url(listen) == url
