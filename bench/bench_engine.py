#!/usr/bin/env python3
"""Engine benchmark: run by hand, prints numbers and ratios against a baseline.

    python3 bench/bench_engine.py [--jobs 400] [--idle-seconds 30]

(a) raw spawn rate of a trivial sh plugin from ``max_workers`` threads
    (plain ``subprocess``: the baseline);
(b) end-to-end jobs/s of a running gateway on the same plugin, jobs
    enqueued through the library from this process;
(c) enqueue→start latency p50/p99 from the ``job_queue`` timestamps, jobs
    enqueued one at a time into an idle gateway;
(d) idle CPU and RSS of a real ``system start`` process over N seconds.

Targets on 2 cores: (b) ≥ 0.6 × (a); p50 ≤ 5 ms, p99 ≤ 50 ms;
idle CPU ≤ 0.5 %; RSS ≤ 40 MB.
"""
from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from ductile_lib.gateway import Gateway  # noqa: E402
from ductile_lib.timefmt import parse_ts  # noqa: E402

PLUGIN_ROOT = PROJECT / "tests" / "engine_plugins"
ENTRYPOINT = PLUGIN_ROOT / "fast" / "run.sh"
REQUEST = b'{"protocol":2,"job_id":"x","command":"poll","config":{},"state":{},"context":{}}\n'


def write_config(root: Path, workers: int) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.yaml").write_text(textwrap.dedent("""
        plugin_roots: [%s]
        state: {path: ./data/state.db}
        service: {max_workers: %d, log_level: warn, job_queue_retention: 24h}
        plugins:
          fast: {enabled: true}
    """ % (PLUGIN_ROOT, workers)))
    return root


def raw_spawn_rate(total: int, workers: int) -> float:
    """(a) Popen + communicate in ``workers`` threads: the best a gateway could do."""
    counter = iter(range(total))
    lock = threading.Lock()

    def worker():
        while True:
            with lock:
                if next(counter, None) is None:
                    return
            proc = subprocess.Popen([str(ENTRYPOINT)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, start_new_session=True)
            proc.communicate(REQUEST)

    started = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return total / (time.perf_counter() - started)


def run_and_wait(gateway: Gateway, count: int, timeout: float = 600, poll_s: float = 0.05) -> list:
    """Enqueue ``count`` jobs and wait until all are terminal.

    One COUNT query every ``poll_s`` keeps the benchmark from competing with
    the gateway's threads for the GIL (a hub subscriber would be woken for
    every event of every job).
    """
    ids = [gateway.queue.enqueue("fast", "poll", {}, "bench").job_id for _ in range(count)]
    gateway.dispatcher.wake()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with gateway.db.read() as conn:
            left = conn.execute("SELECT count(*) FROM job_queue WHERE submitted_by = 'bench' "
                                "AND status IN ('queued', 'running')").fetchone()[0]
        if not left:
            return [gateway.queue.get(i) for i in ids]
        time.sleep(poll_s)
    raise SystemExit("jobs did not finish in time")


def gateway_throughput(gateway: Gateway, total: int) -> float:
    """(b) jobs/s from the first start to the last completion, from the rows."""
    jobs = run_and_wait(gateway, total)
    first = min(parse_ts(j.started_at) for j in jobs)
    last = max(parse_ts(j.completed_at) for j in jobs)
    return total / (last - first).total_seconds()


def dispatch_latency(gateway: Gateway, count: int) -> tuple:
    """(c) started_at − created_at for jobs enqueued one at a time into an idle gateway."""
    latencies = []
    for _ in range(count):
        (job,) = run_and_wait(gateway, 1, poll_s=0.005)
        latencies.append((parse_ts(job.started_at) - parse_ts(job.created_at)).total_seconds() * 1000)
    latencies.sort()
    return statistics.median(latencies), latencies[int(0.99 * (len(latencies) - 1))]


def idle_usage(config_dir: Path, seconds: float) -> tuple:
    """(d) CPU % and RSS (MB) of a real gateway process left idle."""
    proc = subprocess.Popen([sys.executable, str(PROJECT / "ductile.py"), "system", "start", "--config-dir",
                             str(config_dir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(3)  # settle: imports, first schedule pass
        ticks = os.sysconf("SC_CLK_TCK")
        cpu0, wall0 = _cpu_ticks(proc.pid), time.monotonic()
        time.sleep(seconds)
        cpu1, wall1 = _cpu_ticks(proc.pid), time.monotonic()
        rss = _rss_mb(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    return 100.0 * (cpu1 - cpu0) / ticks / (wall1 - wall0), rss


def _cpu_ticks(pid: int) -> int:
    fields = Path("/proc/%d/stat" % pid).read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def _rss_mb(pid: int) -> float:
    for line in Path("/proc/%d/status" % pid).read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=400)
    parser.add_argument("--latency-jobs", type=int, default=200)
    parser.add_argument("--idle-seconds", type=float, default=30.0)
    args = parser.parse_args()
    workers = max(1, (os.cpu_count() or 1) - 1)
    with tempfile.TemporaryDirectory() as tmp:
        config_dir = write_config(Path(tmp) / "cfg", workers)
        raw = raw_spawn_rate(args.jobs, workers)
        gateway = Gateway(config_dir=str(config_dir))
        gateway.start()
        try:
            e2e = gateway_throughput(gateway, args.jobs)
            p50, p99 = dispatch_latency(gateway, args.latency_jobs)
        finally:
            gateway.shutdown()
        idle_config = write_config(Path(tmp) / "idle", workers)
        cpu, rss = idle_usage(idle_config, args.idle_seconds)
    print("max_workers                       %d" % workers)
    print("(a) raw spawn rate                %.1f spawns/s" % raw)
    print("(b) gateway end-to-end            %.1f jobs/s   ratio %.2f (target >= 0.60)" % (e2e, e2e / raw))
    print("(c) enqueue->start latency        p50 %.2f ms (target <= 5)  p99 %.2f ms (target <= 50)" % (p50, p99))
    print("(d) idle gateway over %.0fs        CPU %.3f %% (target <= 0.5)  RSS %.1f MB (target <= 40)"
          % (args.idle_seconds, cpu, rss))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
