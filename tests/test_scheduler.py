"""The scheduler's decisions, driven pass by pass with a fake clock and a real DB."""
import random
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from conftest import write_tree
from ductile_lib.config import load_config
from ductile_lib.db import Database
from ductile_lib.events import EventHub
from ductile_lib.queue import JobQueue
from ductile_lib.runtime import build_runtime
from ductile_lib.schedule_entries import load_entry
from ductile_lib.scheduler import Scheduler

ENGINE_PLUGINS = Path(__file__).resolve().parent / "engine_plugins"
T0 = datetime(2026, 3, 2, 10, 0, 0, tzinfo=timezone.utc)  # a Monday


class Clock:
    def __init__(self, now):
        self.now = now

    def __call__(self):
        return self.now

    def advance(self, **delta):
        self.now += timedelta(**delta)


class WakeRecorder:
    """Stands in for the dispatcher (not the component under test)."""

    def __init__(self):
        self.wakes = 0
        self.terminated = []

    def wake(self):
        self.wakes += 1

    def terminate(self, job_id):
        self.terminated.append(job_id)
        return True


class Harness:
    def __init__(self, root: Path, schedules: str, plugin_extra: str = ""):
        write_tree(root, {"config.yaml": """
            plugin_roots: [%s]
            state: {path: ./data/state.db}
            service: {max_workers: 2, tick_interval: 1h}
            plugins:
              behave:
                enabled: true
%s
                schedules:
%s
""" % (ENGINE_PLUGINS, plugin_extra, schedules)})
        self.runtime = build_runtime(load_config(config_dir=str(root)))
        self.db = Database(self.runtime.config.state_path)
        self.clock = Clock(T0)
        self.queue = JobQueue(self.db, clock=self.clock)
        self.hub = EventHub(ring_size=10_000)
        self.dispatcher = WakeRecorder()
        self.scheduler = Scheduler(lambda: self.runtime, self.queue, self.hub, self.dispatcher, clock=self.clock,
                                   rng=random.Random(7))

    def jobs(self, status=None):
        with self.db.read() as conn:
            sql = "SELECT id, status, dedupe_key, submitted_by FROM job_queue"
            rows = conn.execute(sql + (" WHERE status = ?" if status else "") + " ORDER BY created_at",
                                (status,) if status else ()).fetchall()
        return [dict(r) for r in rows]

    def finish(self, status="succeeded"):
        """Claim the next job and end it, reporting to the scheduler."""
        job = self.queue.claim(lambda p: 10)
        assert job is not None
        if status == "succeeded":
            done = self.queue.complete(job, "succeeded", result="ok")
        else:
            done = self.queue.fail(job, "boom", retryable=False, reason="plugin_retry_false", backoff_base_s=1).job
        self.scheduler.job_finished(done, status)
        return done

    def skipped(self):
        return [e.data["reason"] for e in self.hub.recent(10_000) if e.type == "scheduler.skipped"]


@pytest.fixture
def make(tmp_path):
    made = []

    def build(schedules, plugin_extra=""):
        h = Harness(tmp_path / ("h%d" % len(made)), schedules, plugin_extra)
        made.append(h)
        return h

    yield build
    for h in made:
        h.db.close()


def test_every_fires_at_once_then_after_completion_plus_interval(make):
    h = make("                  - {id: s, every: 10m}")
    h.scheduler.start(background=False)
    assert [j["dedupe_key"] for j in h.jobs()] == ["behave:poll:s"]
    assert h.jobs()[0]["submitted_by"] == "ductile"
    h.clock.advance(minutes=2)
    h.finish()
    row = load_entry(h.db, "behave", "s", "poll")
    assert row.next_run_at == T0 + timedelta(minutes=12)  # completed_at + interval
    assert row.last_success_at == T0 + timedelta(minutes=2)
    h.clock.advance(minutes=9)
    h.scheduler.run_once()
    assert len(h.jobs()) == 1
    h.clock.advance(minutes=1)
    h.scheduler.run_once()
    assert len(h.jobs()) == 2


def test_skip_policy_while_outstanding(make):
    h = make("                  - {id: s, every: 1m}")
    h.scheduler.start(background=False)
    h.clock.advance(minutes=5)
    h.scheduler.run_once()
    assert len(h.jobs()) == 1
    assert "already_running" in h.skipped()


def test_cancel_policy_kills_outstanding_then_enqueues(make):
    h = make("                  - {id: s, every: 1m, if_running: cancel}")
    h.scheduler.start(background=False)
    first = h.jobs()[0]["id"]
    h.queue.claim(lambda p: 10)
    h.clock.advance(minutes=2)
    h.scheduler.run_once()
    assert h.queue.get(first).status == "dead"
    assert h.queue.get(first).last_error == "cancelled by scheduler (if_running=cancel)"
    assert h.dispatcher.terminated == [first]
    assert len(h.jobs("queued")) == 1


def test_queue_policy_respects_max_outstanding(make):
    h = make("                  - {id: s, every: 1m, if_running: queue}", "                max_outstanding_polls: 1")
    h.scheduler.start(background=False)
    h.clock.advance(minutes=2)
    h.scheduler.run_once()
    assert len(h.jobs()) == 1 and "outstanding_limit" in h.skipped()


def test_cron_waits_for_its_minute(make):
    h = make('                  - {id: c, cron: "30 10 * * *", timezone: UTC}')
    h.scheduler.start(background=False)
    assert h.jobs() == []
    assert load_entry(h.db, "behave", "c", "poll").next_run_at == T0 + timedelta(minutes=30)
    h.clock.advance(minutes=30)
    h.scheduler.run_once()
    assert len(h.jobs()) == 1
    assert load_entry(h.db, "behave", "c", "poll").next_run_at == T0 + timedelta(days=1, minutes=30)


def test_at_fires_once_then_is_exhausted(make):
    h = make('                  - {id: once, at: "2026-03-02T10:05:00Z"}')
    h.scheduler.start(background=False)
    assert h.jobs() == []
    h.clock.advance(minutes=5)
    h.scheduler.run_once()
    h.finish()
    h.clock.advance(days=1)
    h.scheduler.reload()
    h.scheduler.run_once()
    assert len(h.jobs()) == 1
    row = load_entry(h.db, "behave", "once", "poll")
    assert (row.status, row.reason) == ("exhausted", "one_shot_exhausted")
    assert "schedule_exhausted" in h.skipped()


def test_after_fires_once_per_process_start(make):
    h = make("                  - {id: a, after: 30s}")
    h.scheduler.start(background=False)
    h.clock.advance(seconds=29)
    h.scheduler.run_once()
    assert h.jobs() == []
    h.clock.advance(seconds=1)
    h.scheduler.run_once()
    assert len(h.jobs()) == 1


def test_window_and_weekday_constraints(make):
    h = make('                  - {id: w, every: 1m, only_between: "12:00-13:00", timezone: UTC, not_on: [sat]}')
    h.scheduler.start(background=False)
    assert h.jobs() == [] and h.skipped()[-1] == "outside_time_window"
    assert h.scheduler._wake_at[("behave", "w")] == T0.replace(hour=12)
    h.clock.now = T0.replace(hour=12)
    h.scheduler.run_once()
    assert len(h.jobs()) == 1


def test_breaker_opens_after_threshold_and_probes_after_cooldown(make):
    h = make("                  - {id: s, every: 1m}",
             "                circuit_breaker: {threshold: 2, reset_after: 10m}")
    h.scheduler.start(background=False)
    for _ in range(2):
        h.clock.advance(seconds=10)
        h.finish("failed")
        h.clock.advance(minutes=2)
        h.scheduler.run_once()
    assert "circuit_open" in h.skipped()
    types = [e.type for e in h.hub.recent(1000)]
    assert "scheduler.circuit_state_changed" in types
    before = len(h.jobs())
    h.clock.advance(minutes=10)
    h.scheduler.run_once()
    assert len(h.jobs()) == before + 1
    assert "scheduler.circuit_half_open" in [e.type for e in h.hub.recent(1000)]


def test_catch_up_run_all_enqueues_missed_slots(make):
    h = make("                  - {id: s, every: 10m, catch_up: run_all}")
    h.scheduler.start(background=False)
    h.finish()
    h.db.close()
    later = Harness.__new__(Harness)
    later.__dict__.update(h.__dict__)
    later.db = Database(h.runtime.config.state_path)
    later.clock = Clock(T0 + timedelta(minutes=45))
    later.queue = JobQueue(later.db, clock=later.clock)
    later.hub = EventHub()
    later.scheduler = Scheduler(lambda: h.runtime, later.queue, later.hub, WakeRecorder(), clock=later.clock)
    later.scheduler.start(background=False)
    keys = [j["dedupe_key"] for j in later.jobs()]
    catchups = [k for k in keys if ":catchup:" in k]
    assert catchups == ["behave:poll:s:catchup:2026-03-02T10:10:00Z", "behave:poll:s:catchup:2026-03-02T10:20:00Z",
                        "behave:poll:s:catchup:2026-03-02T10:30:00Z", "behave:poll:s:catchup:2026-03-02T10:40:00Z"]
    h.db = later.db


def test_tick_publishes_and_wakes_the_dispatcher(make):
    h = make("                  - {id: s, every: 6h}")
    h.scheduler.start(background=False)
    wakes = h.dispatcher.wakes
    h.clock.advance(hours=1)
    h.scheduler.run_once()
    assert h.dispatcher.wakes > wakes
    assert [e.type for e in h.hub.recent(100)].count("scheduler.tick") == 2
    assert "not_due" in h.skipped()
