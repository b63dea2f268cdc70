#!/usr/bin/env python3
"""API benchmark: run by hand, prints numbers and ratios against a baseline.

    python3 bench/bench_api.py [--requests 2000] [--clients 8] [--sse-clients 50] [--events 1000]
                               [--in-process-clients]

The load generator runs in a child process by default (as curl or any
real client would), so it does not share the server's GIL.

(a) a bare ``http.server.ThreadingHTTPServer`` (HTTP/1.1 keep-alive, Nagle
    off) answering ``POST /plugin/echo/poll`` with the same 202 JSON the
    gateway sends: the most the standard library can do here, the baseline;
(b) the same load against a real gateway's API (in process, the ``fast``
    test plugin): routing, auth, body parsing, the enqueue transaction and
    the ``job.enqueued`` event — the enqueue path — while its workers run
    the jobs;
(b2) the same again with the dispatcher's intake stopped: the enqueue path
    alone, without the worker threads and plugin processes competing for
    the same cores and GIL;
(c) ``--sse-clients`` streams on ``GET /events`` while ``--events`` events
    are published on the gateway's hub as fast as a loop can: each stream
    must see every one, in order, ids strictly increasing.  A client the
    hub disconnects for falling behind reconnects with ``Last-Event-ID``
    (spec 40 §5) — counted, since that is the designed recovery.

Targets: (b) >= 0.5 x (a) requests/s; (c) every client gets every event.
"""
from __future__ import annotations

import argparse
import http.client
import http.server
import json
import socket
import statistics
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from ductile_lib.gateway import Gateway  # noqa: E402

PLUGIN_ROOT = PROJECT / "tests" / "engine_plugins"
TOKEN = "bench-token"
BODY = b'{"payload": {"message": "bench"}}'


# --- load generation --------------------------------------------------------------

def hammer(port: int, path: str, total: int, clients: int, headers: dict) -> tuple:
    """``total`` POSTs from ``clients`` keep-alive connections: (requests/s, p50 ms, p99 ms)."""
    counter = iter(range(total))
    lock = threading.Lock()
    latencies = []
    errors = []

    def client():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        mine = []
        try:
            while True:
                with lock:
                    if next(counter, None) is None:
                        break
                started = time.perf_counter()
                conn.request("POST", path, body=BODY, headers=headers)
                reply = conn.getresponse()
                reply.read()
                mine.append(time.perf_counter() - started)
                if reply.status != 202:
                    errors.append(reply.status)
        finally:
            conn.close()
            with lock:
                latencies.extend(mine)

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise SystemExit("%d requests failed, e.g. status %s" % (len(errors), errors[0]))
    latencies.sort()
    return total / elapsed, statistics.median(latencies) * 1000, latencies[int(0.99 * (len(latencies) - 1))] * 1000


def hammer_from_process(port: int, path: str, total: int, clients: int, headers: dict) -> tuple:
    """``hammer`` run in a child process, so the load generator does not share the server's GIL."""
    import subprocess

    spec = json.dumps({"port": port, "path": path, "total": total, "clients": clients, "headers": headers})
    proc = subprocess.run([sys.executable, __file__, "--hammer", spec], capture_output=True, text=True,
                          timeout=600)
    if proc.returncode != 0:
        raise SystemExit("load generator failed: %s" % proc.stderr.strip())
    return tuple(json.loads(proc.stdout))


# --- (a) the baseline server -----------------------------------------------------------

class BaselineHandler(http.server.BaseHTTPRequestHandler):
    """Reads the body and answers 202 with the gateway's reply shape; nothing else."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def do_POST(self):  # noqa: N802 - http.server's naming
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        parts = self.path.split("/")
        payload = json.dumps({"job_id": str(uuid.uuid4()), "status": "queued", "plugin": parts[2],
                              "command": parts[3]}, separators=(",", ":")).encode() + b"\n"
        self.send_response(202)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format, *args):  # noqa: A002
        pass


def baseline(load, total: int, clients: int) -> tuple:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), BaselineHandler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        return load(server.server_address[1], "/plugin/echo/poll", total, clients,
                      {"Content-Type": "application/json"})
    finally:
        server.shutdown()
        server.server_close()


# --- (b) the gateway --------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_config(root: Path, port: int) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.yaml").write_text(textwrap.dedent("""
        plugin_roots: [%s]
        state: {path: ./data/state.db}
        service: {log_level: warn, job_queue_retention: 24h}
        api:
          enabled: true
          listen: "127.0.0.1:%d"
          auth:
            tokens:
              - {token: %s, scopes: ["*"]}
        plugins:
          fast: {enabled: true}
    """ % (PLUGIN_ROOT, port, TOKEN)))
    return root


def wait_until_drained(gateway: Gateway, timeout: float = 600) -> None:
    """Let the workers finish the enqueued jobs so (c) runs on a quiet gateway."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with gateway.db.read() as conn:
            left = conn.execute("SELECT count(*) FROM job_queue WHERE status IN ('queued', 'running')").fetchone()[0]
        if not left:
            return
        time.sleep(0.1)
    raise SystemExit("jobs did not drain in time")


# --- (c) SSE fan-out ---------------------------------------------------------------------

class SseClient(threading.Thread):
    """One ``GET /events`` reader that reconnects with Last-Event-ID when cut off."""

    def __init__(self, port: int, resume: int, expected: int, deadline: float):
        super().__init__(daemon=True)
        self.port, self.resume, self.expected, self.deadline = port, resume, expected, deadline
        self.seen_ns = []  # the n of every bench.event, in arrival order
        self.ids = []  # every id received, in arrival order
        self.reconnects = 0
        self.gaps = 0
        self.finished_at = None
        self.error = None

    def run(self):
        try:
            while len(self.seen_ns) < self.expected and time.monotonic() < self.deadline:
                if self._stream():
                    break
                self.reconnects += 1
        except Exception as exc:  # noqa: BLE001 - reported, the benchmark goes on
            self.error = repr(exc)

    def _stream(self) -> bool:
        """Read one connection; True once every expected event has arrived."""
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=30)
        try:
            sock.sendall(("GET /events HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer %s\r\n"
                          "Last-Event-ID: %d\r\n\r\n" % (TOKEN, self.resume)).encode())
            reader = sock.makefile("rb")
            status = reader.readline()
            if b" 200 " not in status:
                raise RuntimeError("SSE connect failed: %r" % status)
            while reader.readline() not in (b"\r\n", b"\n", b""):
                pass
            return self._frames(reader)
        finally:
            sock.close()

    def _frames(self, reader) -> bool:
        frame = {}
        for raw in reader:
            line = raw.decode("utf-8").rstrip("\n")
            if line:
                key, _, value = line.partition(": ")
                frame[key] = value
                continue
            if self._take(frame):
                return True
            frame = {}
        return False  # the server closed the stream: reconnect

    def _take(self, frame: dict) -> bool:
        if frame.get("event") == "stream.gap":
            self.gaps += 1
        if "id" not in frame:
            return False
        event_id = int(frame["id"])
        self.ids.append(event_id)
        self.resume = event_id
        if frame.get("event") == "bench.event":
            self.seen_ns.append(json.loads(frame["data"])["n"])
            if len(self.seen_ns) == self.expected:
                self.finished_at = time.perf_counter()
                return True
        return False

    def in_order(self) -> bool:
        ids_increasing = all(a < b for a, b in zip(self.ids, self.ids[1:]))
        return ids_increasing and self.seen_ns == list(range(self.expected))


def sse_fanout(gateway: Gateway, port: int, clients: int, events: int) -> dict:
    resume = gateway.hub.last_id()
    deadline = time.monotonic() + 120
    readers = [SseClient(port, resume, events, deadline) for _ in range(clients)]
    for reader in readers:
        reader.start()
    while gateway.hub.subscriber_count() < clients and time.monotonic() < deadline:
        time.sleep(0.01)
    started = time.perf_counter()
    for n in range(events):
        gateway.hub.publish("bench.event", {"n": n})
    published = time.perf_counter()
    for reader in readers:
        reader.join(max(0.0, deadline - time.monotonic()))
    ends = [r.finished_at for r in readers if r.finished_at is not None]
    return {
        "complete": sum(1 for r in readers if r.in_order()),
        "publish_s": published - started,
        "last_delivery_s": (max(ends) - started) if ends else float("nan"),
        "reconnects": sum(r.reconnects for r in readers),
        "gaps": sum(r.gaps for r in readers),
        "errors": [r.error for r in readers if r.error],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--sse-clients", type=int, default=50)
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--in-process-clients", action="store_true",
                        help="run the load generator in this process (it then shares the server's GIL)")
    parser.add_argument("--hammer", help=argparse.SUPPRESS)  # internal: the child load generator
    args = parser.parse_args()
    if args.hammer:
        spec = json.loads(args.hammer)
        print(json.dumps(hammer(spec["port"], spec["path"], spec["total"], spec["clients"], spec["headers"])))
        return 0
    load = hammer if args.in_process_clients else hammer_from_process
    base = baseline(load, args.requests, args.clients)
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        gateway = Gateway(config_dir=str(write_config(Path(tmp) / "cfg", port)))
        gateway.start()
        try:
            headers = {"Content-Type": "application/json", "Authorization": "Bearer %s" % TOKEN}
            busy = load(port, "/plugin/fast/poll", args.requests, args.clients, headers)
            wait_until_drained(gateway)
            gateway.dispatcher.stop_intake()  # (b2): the same requests with no job running beside them
            idle = load(port, "/plugin/fast/poll", args.requests, args.clients, headers)
            sse = sse_fanout(gateway, port, args.sse_clients, args.events)
        finally:
            gateway.shutdown()
    _report(args, base, busy, idle, sse)
    return 0 if sse["complete"] == args.sse_clients else 1


def _report(args, base: tuple, busy: tuple, idle: tuple, sse: dict) -> None:
    where = "this process" if args.in_process_clients else "a child process"
    print("requests %d from %d keep-alive clients in %s" % (args.requests, args.clients, where))
    print("(a)  bare ThreadingHTTPServer     %6.0f req/s   p50 %.2f ms  p99 %.2f ms" % base)
    print("(b)  gateway POST /plugin/x/poll  %6.0f req/s   p50 %.2f ms  p99 %.2f ms   ratio %.2f (target >= 0.50)"
          % (busy + (busy[0] / base[0],)))
    print("(b2) same, dispatcher paused      %6.0f req/s   p50 %.2f ms  p99 %.2f ms   ratio %.2f"
          % (idle + (idle[0] / base[0],)))
    print("(c)  SSE %d clients x %d events: %d/%d complete and in order; published in %.3f s, "
          "all delivered after %.3f s; reconnects %d, gap notices %d"
          % (args.sse_clients, args.events, sse["complete"], args.sse_clients, sse["publish_s"],
             sse["last_delivery_s"], sse["reconnects"], sse["gaps"]))
    for error in sse["errors"][:5]:
        print("    client error: %s" % error)


if __name__ == "__main__":
    raise SystemExit(main())
