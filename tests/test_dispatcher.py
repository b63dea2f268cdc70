"""The dispatcher running real plugin subprocesses against a real SQLite file."""
import json
import time
from pathlib import Path

import pytest

from conftest import wait_for, write_tree
from ductile_lib.config import load_config
from ductile_lib.db import Database
from ductile_lib.dispatcher import Dispatcher
from ductile_lib.events import EventHub
from ductile_lib.queue import JobQueue
from ductile_lib.runtime import build_runtime
from ductile_lib.state import StateStore

ENGINE_PLUGINS = Path(__file__).resolve().parent / "engine_plugins"
TERMINAL = ("succeeded", "failed", "dead")

CONFIG = """
plugin_roots: [%s]
state: {path: ./data/state.db}
service: {max_workers: 2}
plugins:
  behave:
    enabled: true
    timeout: 1s
    retry: {max_attempts: 3, backoff_base: 10ms}
  fast:
    enabled: true
  off:
    uses: fast
    enabled: false
"""


class Engine:
    """A dispatcher wired to real parts, plus helpers to wait on outcomes."""

    def __init__(self, root: Path):
        write_tree(root, {"config.yaml": CONFIG % ENGINE_PLUGINS})
        self.runtime = build_runtime(load_config(config_dir=str(root)))
        self.db = Database(self.runtime.config.state_path)
        self.queue = JobQueue(self.db)
        self.state = StateStore(self.db)
        self.hub = EventHub(ring_size=10_000)
        self.finished = []
        self.dispatcher = Dispatcher(lambda: self.runtime, self.queue, self.state, self.hub,
                                     on_terminal=lambda job, status: self.finished.append((job.id, status)))
        self.dispatcher.start()

    def submit(self, plugin="behave", command="poll", payload=None, max_attempts=3):
        job_id = self.queue.enqueue(plugin, command, payload or {}, "test", max_attempts=max_attempts).job_id
        self.dispatcher.wake()
        return job_id

    def wait_terminal(self, job_ids, timeout=30.0):
        deadline = time.monotonic() + timeout
        sub = self.hub.subscribe(last_event_id=0, queue_size=100_000)
        try:
            while time.monotonic() < deadline:
                jobs = [self.queue.get(j) for j in job_ids]
                if all(j.status in TERMINAL for j in jobs):
                    return jobs
                sub.get(timeout=min(0.5, max(0.01, deadline - time.monotonic())))
        finally:
            sub.close()
        raise AssertionError("jobs not terminal in time: %s" % [self.queue.get(j).status for j in job_ids])

    def close(self):
        self.dispatcher.stop_intake()
        self.dispatcher.drain(10)
        self.db.close()


@pytest.fixture
def engine(tmp_path):
    eng = Engine(tmp_path)
    yield eng
    eng.close()


def test_ok_job_succeeds_with_log_row(engine):
    (job,) = engine.wait_terminal([engine.submit()])
    assert job.status == "succeeded" and job.last_error is None
    log = engine.queue.job_log_for(job.id)
    assert json.loads(log["result"])["result"] == "done poll"
    assert [t["to_status"] for t in engine.queue.transitions(job.id)] == ["queued", "running", "succeeded"]
    assert (job.id, "succeeded") in engine.finished


def test_retryable_error_backs_off_then_ends_dead(engine):
    (job,) = engine.wait_terminal([engine.submit(payload={"mode": "error"})])
    assert job.status == "dead" and job.attempt == 3 and job.last_error == "asked to fail"
    statuses = [t["to_status"] for t in engine.queue.transitions(job.id)]
    assert statuses == ["queued", "running", "queued", "running", "queued", "running", "dead"]
    assert len(engine.queue.attempts(job.id)) == 3
    types = [e.type for e in engine.hub.recent(1000) if e.data.get("job_id") == job.id]
    assert types.count("job.retry_scheduled") == 2 and "job.retry_exhausted" in types and "job.failed" in types


@pytest.mark.parametrize("payload, status, error", [
    ({"mode": "error_no_retry"}, "failed", "permanent failure"),
    ({"mode": "exit78"}, "failed", "bad config"),
])
def test_non_retryable_failures(engine, payload, status, error):
    (job,) = engine.wait_terminal([engine.submit(payload=payload)])
    assert (job.status, job.attempt, job.last_error) == (status, 1, error)


def test_exit78_keeps_stderr(engine):
    (job,) = engine.wait_terminal([engine.submit(payload={"mode": "exit78"})])
    assert "configuration is wrong" in engine.queue.job_log_for(job.id)["stderr"]


@pytest.mark.parametrize("payload, needle", [
    ({"mode": "garbage"}, "plugin spawn failed: decode response: plugin output is not valid JSON"),
    ({"mode": "empty"}, "plugin produced no output on stdout"),
])
def test_protocol_errors_retry_then_die(engine, payload, needle):
    (job,) = engine.wait_terminal([engine.submit(payload=payload)])
    assert job.status == "dead" and job.attempt == 3 and needle in job.last_error


@pytest.mark.timeout(60)
def test_hang_times_out_and_ends_dead(engine):
    (job,) = engine.wait_terminal([engine.submit(payload={"mode": "sleep", "seconds": 30}, max_attempts=1)],
                                  timeout=40)
    assert job.status == "dead" and job.last_error == "plugin execution timed out after 1s"
    assert any(e.type == "job.timed_out" and e.data["job_id"] == job.id for e in engine.hub.recent(100))


def test_state_updates_shallow_merge_and_facts(engine):
    engine.wait_terminal([engine.submit(payload={"mode": "state", "updates": {"a": 1, "b": {"x": 1}}})])
    engine.wait_terminal([engine.submit(payload={"mode": "state", "updates": {"b": 2}})])
    assert engine.state.get_state("behave") == {"a": 1, "b": 2}
    engine.wait_terminal([engine.submit(command="health", payload={"mode": "state", "updates": {"up": True}})])
    assert engine.state.get_state("behave") == {"up": True}  # fact rule mirrors the object (E9)
    (fact,) = engine.state.facts("behave")
    assert fact.fact_type == "health.snapshot" and fact.fact == {"up": True}


def test_disabled_and_unknown_plugins_never_run(engine):
    disabled, unknown = engine.submit(plugin="off"), engine.submit(plugin="ghost")
    jobs = engine.wait_terminal([disabled, unknown])
    assert [(j.status, j.last_error) for j in jobs] == [("dead", 'plugin "off" is disabled'),
                                                       ("dead", "plugin removed")]


def test_undeclared_command_fails_without_retry(engine):
    (job,) = engine.wait_terminal([engine.submit(command="sync")])
    assert job.status == "failed" and "does not support command" in job.last_error


def test_handle_gets_the_event_envelope(engine, tmp_path):
    marker = tmp_path / "seen"
    envelope = {"type": "x.happened", "payload": {"mode": "ok", "path": str(marker)}}
    (job,) = engine.wait_terminal([engine.submit(command="handle", payload=envelope)])
    assert job.status == "succeeded" and marker.read_text().strip() == job.id


def test_workers_respect_max_workers(engine):
    ids = [engine.submit(payload={"mode": "sleep", "seconds": 0.3}) for _ in range(6)]
    jobs = engine.wait_terminal(ids)
    assert all(j.status == "succeeded" for j in jobs)
    # Peak overlap of [started_at, completed_at] intervals, from the rows themselves.
    edges = sorted([(j.started_at, 1) for j in jobs] + [(j.completed_at, -1) for j in jobs],
                   key=lambda e: (e[0], e[1]))
    running = peak = 0
    for _, step in edges:
        running += step
        peak = max(peak, running)
    assert peak == 2


def test_interrupt_requeues_with_attempt_kept(engine):
    job_id = engine.submit(payload={"mode": "sleep", "seconds": 20})
    wait_for(lambda: engine.queue.get(job_id).status == "running", 10, "the job to start")
    engine.dispatcher.stop_intake()
    assert not engine.dispatcher.drain(0.2)
    engine.dispatcher.interrupt_all()
    assert engine.dispatcher.drain(15)
    job = engine.queue.get(job_id)
    assert (job.status, job.attempt, job.last_error) == ("queued", 1, "interrupted by shutdown")
    assert engine.queue.job_log_for(job_id) is None
