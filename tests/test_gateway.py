"""Real gateway processes: start, schedules, signals, kill -9 recovery, reload."""
import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import EXAMPLES, PROJECT, wait_for, write_tree

ENGINE_PLUGINS = Path(__file__).resolve().parent / "engine_plugins"
TERMINAL = ("succeeded", "failed", "dead")


class GatewayProcess:
    """``python3 ductile.py system start`` with its log in a file."""

    def __init__(self, config_dir: Path, log_path: Path):
        self.config_dir = config_dir
        self.log_path = log_path
        env = {k: v for k, v in os.environ.items() if not k.startswith("DUCTILE_")}
        self.log_file = open(log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, str(PROJECT / "ductile.py"), "system", "start",
                                      "--config-dir", str(config_dir)], stdout=self.log_file,
                                     stderr=subprocess.STDOUT, cwd=str(PROJECT), env=env)
        wait_for(lambda: self.logged("ductile running") or self.proc.poll() is not None, 30, "gateway start")
        assert self.proc.poll() is None, self.log_path.read_text()

    def lines(self):
        return [json.loads(line) for line in self.log_path.read_text().splitlines() if line.startswith("{")]

    def logged(self, msg, level=None):
        return any(r["msg"].startswith(msg) and (level is None or r["level"] == level) for r in self.lines())

    def signal(self, signum):
        self.proc.send_signal(signum)

    def wait(self, timeout=60):
        code = self.proc.wait(timeout=timeout)
        self.log_file.close()
        return code

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.log_file.close()


def rows(db_path, sql, args=()):
    conn = sqlite3.connect(str(db_path), timeout=10)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def engine_config(root: Path, extra: str = "", workers: int = 2) -> Path:
    write_tree(root, {"config.yaml": """
        plugin_roots: [%s]
        state: {path: ./data/state.db}
        service: {max_workers: %d, shutdown_timeout: 20s, tick_interval: 1s}
        plugins:
          behave:
            enabled: true
            timeout: 20s
            retry: {max_attempts: 2, backoff_base: 50ms}
%s""" % (ENGINE_PLUGINS, workers, extra)})
    return root


@pytest.fixture
def gateways():
    started = []

    def start(config_dir, log_name="gateway.log"):
        gw = GatewayProcess(config_dir, config_dir / log_name)
        started.append(gw)
        return gw

    yield start
    for gw in started:
        gw.kill()


@pytest.mark.timeout(90)
def test_readme_start_runs_the_echo_schedule_and_ctrl_c_exits_0(tmp_path, gateways):
    config_dir = tmp_path / "config"
    write_tree(config_dir, {name: (EXAMPLES / "config" / name).read_text()
                            for name in ("config.yaml", "api.yaml", "plugins.yaml", "pipelines.yaml")})
    (config_dir / "config.yaml").write_text((config_dir / "config.yaml").read_text().replace(
        "../plugins", str(EXAMPLES / "plugins")))
    gw = gateways(config_dir)
    db = config_dir / "data" / "ductile.db"
    wait_for(lambda: rows(db, "SELECT status FROM job_queue WHERE plugin='echo' AND status='succeeded'"),
             30, "scheduled echo poll")
    state = json.loads(rows(db, "SELECT state FROM plugin_state WHERE plugin_name='echo'")[0][0])
    assert state["poll_count"] == 1
    gw.signal(signal.SIGINT)
    assert gw.wait(30) == 0
    assert gw.logged("ductile stopped")


@pytest.mark.timeout(90)
def test_sigint_lets_in_flight_jobs_finish(tmp_path, gateways):
    root = engine_config(tmp_path, """
            schedules: [{every: 1h, payload: {mode: sleep, seconds: 2}}]
""")
    gw = gateways(root)
    db = root / "data" / "state.db"
    wait_for(lambda: rows(db, "SELECT 1 FROM job_queue WHERE status='running'"), 20, "running job")
    gw.signal(signal.SIGINT)
    assert gw.wait(40) == 0
    assert rows(db, "SELECT status FROM job_queue") == [("succeeded",)]


@pytest.mark.timeout(60)
def test_second_start_fails_on_the_pid_lock(tmp_path, gateways):
    root = engine_config(tmp_path)
    gw = gateways(root)
    proc = subprocess.run([sys.executable, str(PROJECT / "ductile.py"), "system", "start", "--config-dir",
                           str(root)], capture_output=True, text=True, timeout=30, cwd=str(PROJECT))
    assert proc.returncode == 1
    assert "Failed to acquire PID lock" in proc.stderr and "pid %d" % gw.proc.pid in proc.stderr
    status = subprocess.run([sys.executable, str(PROJECT / "ductile.py"), "system", "status", "--json",
                             "--config-dir", str(root)], capture_output=True, text=True, timeout=30)
    body = json.loads(status.stdout)
    assert status.returncode == 0 and body["running"] is True and body["pid"] == gw.proc.pid


def enqueue_many(db_path, count, payload):
    """Insert queued jobs the way `plugin run` does without a gateway."""
    from ductile_lib.db import Database
    from ductile_lib.queue import JobQueue

    db = Database(str(db_path))
    queue = JobQueue(db)
    ids = [queue.enqueue("behave", "poll", payload, "cli", max_attempts=2).job_id for _ in range(count)]
    db.close()
    return ids


@pytest.mark.timeout(180)
def test_kill_9_loses_nothing(tmp_path, gateways):
    root = engine_config(tmp_path)
    db = root / "data" / "state.db"
    gw = gateways(root, "first.log")
    ids = enqueue_many(db, 200, {"mode": "sleep", "seconds": 0.05})
    gw.signal(signal.SIGHUP)  # any wake works; the tick would pick them up within 1s anyway
    wait_for(lambda: rows(db, "SELECT count(*) FROM job_queue WHERE status IN ('succeeded','running')")[0][0] >= 10,
             60, "some progress")
    gw.proc.kill()  # kill -9 mid-flight
    gw.wait(10)
    gw2 = gateways(root, "second.log")
    wait_for(lambda: rows(db, "SELECT count(*) FROM job_queue WHERE status NOT IN ('succeeded','failed','dead')")
             [0][0] == 0, 150, "all jobs terminal")
    statuses = dict(rows(db, "SELECT id, status FROM job_queue"))
    assert set(ids) <= set(statuses)
    assert all(statuses[i] in TERMINAL for i in ids)
    assert rows(db, "PRAGMA integrity_check") == [("ok",)]
    log_ids = {r[0] for r in rows(db, "SELECT job_id FROM job_log")}
    assert set(ids) <= log_ids
    gw2.signal(signal.SIGTERM)
    assert gw2.wait(30) == 0


@pytest.mark.timeout(120)
def test_sighup_applies_valid_edits_and_rejects_broken_ones(tmp_path, gateways):
    root = engine_config(tmp_path, """
            schedules: [{id: slow, every: 1h, payload: {mode: sleep, seconds: 3}}]
""")
    db = root / "data" / "state.db"
    gw = gateways(root)
    wait_for(lambda: rows(db, "SELECT 1 FROM job_queue WHERE status='running'"), 20, "in-flight job")
    engine_config(tmp_path, """
            parallelism: 1
            schedules:
              - {id: slow, every: 1h, payload: {mode: sleep, seconds: 3}}
              - {id: quick, every: 1h, command: health}
""")
    gw.signal(signal.SIGHUP)
    wait_for(lambda: gw.logged("config reloaded successfully"), 20, "reload")
    wait_for(lambda: rows(db, "SELECT status FROM job_queue WHERE command='health' AND status='succeeded'"),
             30, "the new schedule's job")
    wait_for(lambda: rows(db, "SELECT status FROM job_queue WHERE command='poll'") == [("succeeded",)],
             30, "in-flight job finished, not dropped")
    # parallelism 1 now: two slow handle jobs must not overlap.
    enqueue_many(db, 2, {"mode": "sleep", "seconds": 0.5})
    gw.signal(signal.SIGHUP)
    wait_for(lambda: rows(db, "SELECT count(*) FROM job_queue WHERE submitted_by='cli' AND status='succeeded'")
             [0][0] == 2, 30, "cli jobs")
    spans = rows(db, "SELECT started_at, completed_at FROM job_queue WHERE submitted_by='cli' ORDER BY started_at")
    assert spans[0][1] <= spans[1][0]
    (root / "config.yaml").write_text((root / "config.yaml").read_text() + "\n  broken: [\n")
    gw.signal(signal.SIGHUP)
    wait_for(lambda: gw.logged("config reload failed", "ERROR"), 20, "reload failure logged")
    assert gw.proc.poll() is None
    gw.signal(signal.SIGTERM)
    assert gw.wait(30) == 0
