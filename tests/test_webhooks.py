"""The webhook listener over real HTTP, a real config and a real SQLite queue (spec 40 §6, §8 item 8)."""
from __future__ import annotations

import dataclasses
import hashlib
import hmac
import http.client
import io
import json
import socket
import threading
import time

import pytest

from conftest import config_text, write_tree
from ductile_lib import webhooks
from ductile_lib.config import load_config
from ductile_lib.db import Database
from ductile_lib.logs import Logger, LogSink
from ductile_lib.queue import JobQueue
from ductile_lib.runtime import build_runtime
from ductile_lib.webhooks import WebhookServer, verify_signature, webhook_payload

pytestmark = pytest.mark.timeout(20)

SECRET = "hook-secret-value-0123"
GH = "/hooks/gh"
SMALL = "/hooks/small"
QUIET = "/hooks/quiet"
MIB = 1024 * 1024

HOOKS_CONFIG = """
include: [tokens.yaml]
webhooks:
  listen: "127.0.0.1:0"
  endpoints:
    - {name: github, path: /hooks/gh, plugin: echo, secret_ref: gh, signature_header: X-Hub-Signature-256}
    - {path: /hooks/small, plugin: echo, secret_ref: gh, signature_header: X-Sig, max_body_size: 16}
    - {path: /hooks/quiet, plugin: quiet, secret_ref: gh, signature_header: X-Sig}
plugins:
  echo:
    enabled: true
    retry: {max_attempts: 7}
  quiet:
    enabled: false
    uses: echo
"""


def sign(body: bytes, secret: str = SECRET) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def wait_until(predicate, timeout: float = 5.0) -> bool:
    """Poll a condition with a deadline (no bare sleeps in tests)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        threading.Event().wait(0.01)
    return predicate()


class Harness:
    """A running WebhookServer plus what a test needs to talk to it and inspect the queue."""

    def __init__(self, tmp_path):
        root = write_tree(tmp_path / "cfg", {
            "config.yaml": config_text(HOOKS_CONFIG),
            "tokens.yaml": "tokens:\n  - {name: gh, key: %s}\n" % SECRET,
        })
        self.cfg = load_config(config_dir=str(root))
        self.runtime = build_runtime(self.cfg)
        self.db = Database(tmp_path / "state.db")
        self.logs = io.StringIO()
        log = Logger("webhook", LogSink(self.logs, level="DEBUG"))
        self.queue = JobQueue(self.db, log=log)
        self.woken = threading.Event()
        self.server = WebhookServer(self.cfg.webhooks_listen, lambda: self.runtime, self.queue,
                                    self.woken.set, log=log)
        self.server.start()

    def connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=10)

    def request(self, method: str, path: str, body: bytes = None, headers: dict = None):
        """One request on a fresh connection → (status, headers, parsed JSON or raw bytes)."""
        conn = self.connect()
        try:
            conn.request(method, path, body=body, headers=headers or {})
            return read_reply(conn.getresponse())
        finally:
            conn.close()

    def post(self, path: str, body: bytes, signature: str = None, header: str = "X-Hub-Signature-256",
             content_type: str = None):
        headers = {}
        if signature is not None:
            headers[header] = signature
        if content_type is not None:
            headers["Content-Type"] = content_type
        return self.request("POST", path, body, headers)

    def rows(self):
        with self.db.read() as conn:
            return [dict(r) for r in conn.execute("SELECT * FROM job_queue ORDER BY rowid").fetchall()]

    def count(self) -> int:
        return len(self.rows())

    def log_text(self) -> str:
        return self.logs.getvalue()

    def close(self):
        self.server.stop(grace_s=1.0)
        self.db.close()


def read_reply(response):
    raw = response.read()
    try:
        body = json.loads(raw)
    except ValueError:
        body = raw
    return response.status, response.headers, body


@pytest.fixture
def hook(tmp_path):
    harness = Harness(tmp_path)
    yield harness
    harness.close()


def raw_exchange(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send raw bytes, hang up our side, and read until the server closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        return read_until_closed(sock)


def read_until_closed(sock) -> bytes:
    chunks = []
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    except OSError:
        pass
    return b"".join(chunks)


# --- accepted deliveries ------------------------------------------------------------------


@pytest.mark.parametrize("signature", [
    lambda body: "sha256=" + sign(body),
    lambda body: sign(body),
    lambda body: "sha256=" + sign(body).upper(),
])
def test_valid_signature_enqueues_handle_with_the_body_as_is(hook, signature):
    body = b'{"event": "push", "n": 1.50, "z": 1, "a": 2}'
    status, headers, reply = hook.post(GH, body, signature(body), content_type="application/json")
    assert status == 202
    assert list(reply) == ["job_id"]
    assert headers["Content-Type"] == "application/json"
    [row] = hook.rows()
    assert row["id"] == reply["job_id"]
    assert (row["plugin"], row["command"], row["status"]) == ("echo", "handle", "queued")
    assert row["submitted_by"] == "webhook:/hooks/gh"
    assert row["max_attempts"] == 7
    assert row["dedupe_key"] is None
    assert bytes(row["payload"]) == body  # stored verbatim: order, spacing, 1.50
    assert hook.woken.is_set()


@pytest.mark.parametrize("body, content_type, expected", [
    (b"hello world", "text/plain", {"body": "hello world", "content_type": "text/plain"}),
    (b"[1, 2]", "application/json", {"body": "[1, 2]", "content_type": "application/json"}),
    (b'"just a string"', None, {"body": '"just a string"', "content_type": ""}),
    (b"", "text/plain", {"body": "", "content_type": "text/plain"}),
    (b"NaN", None, {"body": "NaN", "content_type": ""}),
    (b"a=1&b=\xff", "application/x-www-form-urlencoded",
     {"body": "a=1&b=\ufffd", "content_type": "application/x-www-form-urlencoded"}),
])
def test_non_object_bodies_are_wrapped(hook, body, content_type, expected):
    status, _, reply = hook.post(GH, body, "sha256=" + sign(body), content_type=content_type)
    assert status == 202, reply
    [row] = hook.rows()
    assert json.loads(bytes(row["payload"]).decode("utf-8")) == expected
    assert row["id"] == reply["job_id"]


def test_keep_alive_serves_several_requests_on_one_connection(hook):
    conn = hook.connect()
    try:
        for index in range(3):
            body = json.dumps({"n": index}).encode()
            conn.request("POST", GH, body=body, headers={"X-Hub-Signature-256": sign(body)})
            status, headers, _ = read_reply(conn.getresponse())
            assert status == 202
            assert headers.get("Connection") != "close"
        conn.request("GET", "/healthz")
        assert read_reply(conn.getresponse())[0] == 200
    finally:
        conn.close()
    assert hook.count() == 3


def test_signature_header_name_is_case_insensitive(hook):
    body = b'{"a":1}'
    status, _, _ = hook.post(GH, body, sign(body), header="x-hub-signature-256")
    assert status == 202


def test_query_string_does_not_change_the_route(hook):
    body = b'{"a":1}'
    status, _, _ = hook.request("POST", GH + "?source=x", body, {"X-Hub-Signature-256": sign(body)})
    assert status == 202
    assert hook.rows()[0]["submitted_by"] == "webhook:/hooks/gh"


def test_new_endpoints_apply_without_restart(hook, tmp_path):
    """Endpoints come from the runtime on every request (reload applies at once)."""
    moved = dataclasses.replace(hook.runtime.config.webhooks[0], path="/hooks/new")
    hook.runtime = dataclasses.replace(hook.runtime, config=dataclasses.replace(hook.cfg, webhooks=(moved,)))
    body = b'{"a":1}'
    assert hook.post(GH, body, sign(body))[0] == 404
    status, _, _ = hook.post("/hooks/new", body, sign(body))
    assert status == 202
    assert hook.rows()[0]["submitted_by"] == "webhook:/hooks/new"


# --- rejected deliveries: nothing enqueued ------------------------------------------------


@pytest.mark.parametrize("signature", [
    "sha256=deadbeef",
    None,
    "",
    "sha256=",
    "SHA256=" + sign(b'{"event":"push"}'),
    " " * 3,
    "sha256=" + sign(b'{"event":"push"}', secret="wrong"),
    "sha256=" + sign(b'{"event":"push"}')[:-2],
    "sha256=" + sign(b'{"event":"push"}')[:-1] + "g",
    "sha256=" + "zz" * 32,
])
def test_bad_or_missing_signature_is_forbidden(hook, signature):
    status, _, reply = hook.post(GH, b'{"event":"push"}', signature)
    assert (status, reply) == (403, {"error": "forbidden"})
    assert hook.count() == 0
    assert not hook.woken.is_set()


def test_signatures_never_reach_the_log(hook):
    body = b'{"event":"push"}'
    hook.post(GH, body, "sha256=" + sign(body))
    hook.post(GH, body, "sha256=" + "ab" * 32)
    text = hook.log_text()
    assert sign(body) not in text and "ab" * 32 not in text and SECRET not in text
    assert "webhook signature verification failed" in text


def test_oversized_body_is_413_before_the_signature(hook):
    body = b"x" * (2 * MIB)
    status, headers, reply = hook.post(GH, body)  # unsigned: the size check comes first
    assert (status, reply) == (413, {"error": "payload too large"})
    assert headers["Connection"] == "close"
    assert hook.count() == 0


def test_small_cap_counts_bytes_exactly(hook):
    exact, over = b'{"k":"123456789"}'[:16], b"x" * 17
    assert len(exact) == 16
    assert hook.post(SMALL, exact, sign(exact), header="X-Sig")[0] == 202
    assert hook.post(SMALL, over, sign(over), header="X-Sig")[:3:2] == (413, {"error": "payload too large"})


def test_oversized_announcement_is_refused_without_reading_or_100_continue(hook):
    head = ("POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\nExpect: 100-continue\r\n\r\n"
            % (GH, 2 * MIB)).encode()
    reply = raw_exchange(hook.server.port, head)
    assert reply.startswith(b"HTTP/1.1 413 ")
    assert b"100 Continue" not in reply
    assert reply.endswith(b'{"error":"payload too large"}\n')
    assert hook.count() == 0


def test_expect_continue_is_answered_when_the_body_is_wanted(hook):
    body = b'{"a":1}'
    head = ("POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\nExpect: 100-continue\r\n"
            "X-Hub-Signature-256: %s\r\nConnection: close\r\n\r\n" % (GH, len(body), sign(body))).encode()
    with socket.create_connection(("127.0.0.1", hook.server.port), timeout=5) as sock:
        sock.sendall(head)
        interim = sock.recv(100)
        assert interim.startswith(b"HTTP/1.1 100 Continue")
        sock.sendall(body)
        rest = read_until_closed(sock)
    assert b" 202 " in rest
    assert hook.count() == 1


def test_chunked_body_is_not_read(hook):
    """A chunked body counts as empty; its signature is checked over b"" and the connection closes."""
    head = ("POST %s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nX-Hub-Signature-256: %s\r\n\r\n"
            % (GH, sign(b""))).encode()
    reply = raw_exchange(hook.server.port, head + b"7\r\n{\"a\":1}\r\n0\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 202 ")
    assert b"Connection: close" in reply
    [row] = hook.rows()
    assert json.loads(bytes(row["payload"])) == {"body": "", "content_type": ""}


def test_short_body_is_a_read_error(hook):
    head = ("POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\nX-Hub-Signature-256: %s\r\n\r\nabc"
            % (GH, sign(b"abc"))).encode()
    reply = raw_exchange(hook.server.port, head)
    assert reply.startswith(b"HTTP/1.1 500 ")
    assert reply.endswith(b'{"error":"failed to read request body"}\n')
    assert hook.count() == 0


@pytest.mark.parametrize("length", ["abc", "-1", "1, 2"])
def test_invalid_content_length_is_400(hook, length):
    head = "POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: %s\r\n\r\n" % (GH, length)
    reply = raw_exchange(hook.server.port, head.encode())
    assert reply.startswith(b"HTTP/1.1 400 ")
    assert hook.count() == 0


def test_disabled_plugin_is_409_and_nothing_enqueued(hook):
    body = b'{"a":1}'
    status, _, reply = hook.post(QUIET, body, sign(body), header="X-Sig")
    assert (status, reply) == (409, {"error": "plugin disabled"})
    assert hook.count() == 0
    assert "webhook target plugin disabled" in hook.log_text()


def test_undiscovered_plugin_is_404(hook):
    gone = {k: v for k, v in hook.runtime.discovery.plugins.items() if k != "echo"}
    hook.runtime = dataclasses.replace(hook.runtime,
                                       discovery=dataclasses.replace(hook.runtime.discovery, plugins=gone))
    body = b'{"a":1}'
    assert hook.post(GH, body, sign(body))[:3:2] == (404, {"error": "plugin not found"})
    assert hook.count() == 0


def test_missing_secret_is_forbidden(hook):
    hook.runtime = dataclasses.replace(hook.runtime, config=dataclasses.replace(hook.cfg, tokens=()))
    body = b'{"a":1}'
    assert hook.post(GH, body, sign(body))[:3:2] == (403, {"error": "forbidden"})
    assert hook.count() == 0


def test_enqueue_failure_is_500(hook):
    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    hook.queue.enqueue = broken
    body = b'{"a":1}'
    assert hook.post(GH, body, sign(body))[:3:2] == (500, {"error": "failed to enqueue job"})
    assert not hook.woken.is_set()


# --- routing, health and robustness ------------------------------------------------------


def test_healthz(hook):
    status, headers, reply = hook.request("GET", "/healthz")
    assert (status, reply) == (200, {"status": "ok"})
    assert headers["Content-Type"] == "application/json"
    assert headers["Content-Length"] == str(len(b'{"status":"ok"}\n'))


@pytest.mark.parametrize("method, path", [("GET", "/nope"), ("POST", "/nope"), ("POST", "/hooks/gh/"),
                                          ("POST", "/hooks"), ("GET", "/healthz/")])
def test_unknown_path_is_404_json(hook, method, path):
    status, headers, reply = hook.request(method, path, b"{}" if method == "POST" else None)
    assert (status, reply) == (404, {"error": "not found"})
    assert headers["Content-Type"] == "application/json"
    assert hook.count() == 0


@pytest.mark.parametrize("method, path, allow", [("GET", GH, "POST"), ("PUT", GH, "POST"), ("FOO", GH, "POST"),
                                                 ("POST", "/healthz", "GET"), ("DELETE", "/healthz", "GET")])
def test_wrong_method_is_405_with_allow(hook, method, path, allow):
    status, headers, reply = hook.request(method, path)
    assert (status, reply) == (405, {"error": "method not allowed"})
    assert headers.get_all("Allow") == [allow]
    assert hook.count() == 0


def test_head_gets_headers_only(hook):
    status, headers, reply = hook.request("HEAD", "/healthz")
    assert status == 405 and reply == b""
    assert headers["Allow"] == "GET"


def test_handler_exception_is_500_and_the_server_lives_on(hook):
    def explode():
        raise RuntimeError("boom")

    good = hook.server.runtime
    hook.server.runtime = explode
    assert hook.request("POST", GH, b"{}")[:3:2] == (500, {"error": "internal server error"})
    assert '"level": "ERROR"' in hook.log_text() and "boom" in hook.log_text()
    hook.server.runtime = good
    assert hook.request("GET", "/healthz")[0] == 200


@pytest.mark.parametrize("garbage", [
    b"GARBAGE\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64,  # a TLS ClientHello
    b"GET / HTTP/9.9\r\n\r\n",
    b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nX-Big: " + b"h" * 70000 + b"\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(150)) + b"\r\n",
    b"POST /hooks/gh HTTP/1.1\r\nContent-Length: 5\r\n\r\n",  # a body that never comes
])
def test_malformed_requests_do_not_kill_the_server(hook, garbage):
    reply = raw_exchange(hook.server.port, garbage)
    if reply.startswith(b"HTTP/1.1 4"):
        assert reply.rstrip().endswith(b"}")  # JSON error bodies there too
    assert hook.request("GET", "/healthz")[:3:2] == (200, {"status": "ok"})
    assert hook.count() == 0


def test_huge_headers_get_a_json_431(hook):
    reply = raw_exchange(hook.server.port, b"GET /healthz HTTP/1.1\r\nX-Big: " + b"h" * 70000 + b"\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 431 ")
    assert reply.endswith(b'{"error":"request header fields too large"}\n')


def test_slow_request_is_cut_at_the_read_deadline(hook, monkeypatch):
    monkeypatch.setattr(webhooks, "REQUEST_READ_TIMEOUT_S", 0.3)
    with socket.create_connection(("127.0.0.1", hook.server.port), timeout=5) as sock:
        sock.sendall(b"POST /hooks/gh HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        assert sock.recv(100) == b""  # closed by the server, no reply
        assert time.monotonic() - started < 4
    assert hook.request("GET", "/healthz")[0] == 200


def test_slow_body_is_cut_at_the_read_deadline(hook, monkeypatch):
    monkeypatch.setattr(webhooks, "REQUEST_READ_TIMEOUT_S", 0.3)
    with socket.create_connection(("127.0.0.1", hook.server.port), timeout=5) as sock:
        sock.sendall(b"POST /hooks/gh HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
        reply = read_until_closed(sock)
    assert reply.startswith(b"HTTP/1.1 500 ")
    assert reply.endswith(b'{"error":"failed to read request body"}\n')
    assert hook.count() == 0


def test_idle_keep_alive_connection_is_closed(hook, monkeypatch):
    monkeypatch.setattr(webhooks, "IDLE_TIMEOUT_S", 0.3)
    with socket.create_connection(("127.0.0.1", hook.server.port), timeout=5) as sock:
        assert sock.recv(100) == b""


# --- lifecycle -----------------------------------------------------------------------------


def test_bind_failure_raises_oserror(hook):
    other = WebhookServer("127.0.0.1:%d" % hook.server.port, lambda: hook.runtime, hook.queue, lambda: None)
    with pytest.raises(OSError):
        other.start()


@pytest.mark.parametrize("listen", ["nonsense", "127.0.0.1:http", "127.0.0.1:70000", ""])
def test_bad_listen_address_raises_oserror(hook, listen):
    with pytest.raises(OSError):
        WebhookServer(listen, lambda: hook.runtime, hook.queue, lambda: None).start()


def test_stop_closes_idle_connections_and_the_port(hook):
    conn = hook.connect()
    conn.request("GET", "/healthz")
    assert read_reply(conn.getresponse())[0] == 200  # now an idle keep-alive connection
    port = hook.server.port
    started = time.monotonic()
    hook.server.stop(grace_s=5.0)
    assert time.monotonic() - started < 2  # idle connections do not hold up the stop
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    assert conn.sock.recv(10) == b""
    conn.close()
    hook.server.stop()  # idempotent


def test_stop_waits_for_a_running_request(hook):
    entered, release = threading.Event(), threading.Event()
    real = hook.queue.enqueue

    def slow(*args, **kwargs):
        entered.set()
        release.wait(5)
        return real(*args, **kwargs)

    hook.queue.enqueue = slow
    body = b'{"a":1}'
    result = {}
    client = threading.Thread(target=lambda: result.update(reply=hook.post(GH, body, sign(body))))
    client.start()
    assert entered.wait(5)
    stopper = threading.Thread(target=hook.server.stop, kwargs={"grace_s": 5.0})
    stopper.start()
    assert wait_until(lambda: hook.server.connections.stopping)
    release.set()
    stopper.join(5)
    client.join(5)
    status, headers, _ = result["reply"]
    assert status == 202 and headers["Connection"] == "close"
    assert hook.count() == 1


# --- pure helpers --------------------------------------------------------------------------


def test_verify_signature_rules():
    body = b"payload"
    good = sign(body)
    assert verify_signature(SECRET, body, good)
    assert verify_signature(SECRET, body, "sha256=" + good.upper())
    assert not verify_signature("", body, good)
    assert not verify_signature(SECRET, body, "Sha256=" + good)
    assert not verify_signature(SECRET, body, good + " ")
    assert not verify_signature(SECRET, body, "sha256= " + good)
    assert not verify_signature(SECRET, body, "é" * 64)
    assert not verify_signature(SECRET, body + b" ", good)


def test_webhook_payload_keeps_objects_verbatim():
    assert webhook_payload(b' {"b":1,  "a":2} ', "x") == b' {"b":1,  "a":2} '
    assert webhook_payload(b'{"a":"\xff"}', None) == '{"a":"\ufffd"}'.encode()
    assert webhook_payload(b"{broken", "text/plain") == {"body": "{broken", "content_type": "text/plain"}
    assert webhook_payload(b"null", None) == {"body": "null", "content_type": ""}


def test_parse_listen():
    assert webhooks.parse_listen("127.0.0.1:9090") == ("127.0.0.1", 9090, socket.AF_INET)
    assert webhooks.parse_listen("[::1]:9090") == ("::1", 9090, socket.AF_INET6)
    host, port, _ = webhooks.parse_listen(":9090")
    assert host in ("::", "0.0.0.0") and port == 9090


def test_encode_json_escapes_like_go():
    assert webhooks.encode_json({"error": "<a&b>"}) == b'{"error":"\\u003ca\\u0026b\\u003e"}\n'
    assert webhooks.encode_json({"x": "é"}) == '{"x":"é"}\n'.encode()
