"""The HTTP API against a real gateway on an ephemeral port, with a real HTTP client."""
import http.client
import json
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from conftest import ECHO_PLUGIN_ROOT, wait_for, write_tree
from ductile_lib.gateway import Gateway
from ductile_lib.hashing import blake3_hex

TOKENS = {
    "all": ["*"], "plugin_ro": ["plugin:ro"], "plugin_rw": ["plugin:rw"], "echo_ro": ["echo:ro"],
    "echo_rw": ["echo:rw"], "jobs_ro": ["jobs:ro"], "read_jobs": ["read:jobs"], "events_ro": ["events:ro"],
    "system_ro": ["system:ro"], "system_rw": ["system:rw"], "noscope": [],
}
OPS_KEY = "ops-token-from-tokens-yaml-0001"


def _config(root: Path, extra: str = "") -> Path:
    scope_file = b'{"scopes": ["jobs:ro"]}\n'
    tokens = "\n".join('      - {token: "tok-%s", scopes: %s}' % (name, json.dumps(scopes))
                       for name, scopes in TOKENS.items())
    write_tree(root, {
        "config.yaml": """
            include: [tokens.yaml]
            plugin_roots: [%s]
            state: {path: ./data/state.db}
            service: {max_workers: 2, tick_interval: 1h}
            api:
              enabled: true
              listen: "127.0.0.1:0"
              max_body_size: 64KB
              allowed_origins: ["https://ui.example"]
              auth:
                tokens:
%s
            plugins:
              echo: {enabled: true}
              echo_off: {uses: echo, enabled: false}
%s""" % (ECHO_PLUGIN_ROOT, tokens.replace("      - ", "                  - "), extra),
        "tokens.yaml": """
            tokens:
              - {name: ops, key: "%s", scopes_file: scopes/ops.json, scopes_hash: "blake3:%s"}
        """ % (OPS_KEY, blake3_hex(scope_file)),
        "scopes/ops.json": scope_file.decode(),
    })
    return root


class Client:
    """Keep-alive-free HTTP helper: one connection per request, like curl."""

    def __init__(self, port: int):
        self.port = port

    def request(self, method, path, token=None, body=None, headers=None, raw_body=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        all_headers = dict(headers or {})
        if token:
            all_headers["Authorization"] = "Bearer " + token
        data = raw_body if raw_body is not None else (json.dumps(body).encode() if body is not None else None)
        conn.request(method, path, body=data, headers=all_headers)
        resp = conn.getresponse()
        payload = resp.read()
        conn.close()
        try:
            value = json.loads(payload) if payload else None
        except ValueError:
            value = payload
        return resp.status, value, resp


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    root = _config(tmp_path_factory.mktemp("api"))
    gw = Gateway(config_dir=str(root))
    gw.start()
    yield gw
    gw.shutdown()


@pytest.fixture(scope="module")
def client(gateway):
    return Client(gateway.api_server.port)


@pytest.fixture(scope="module")
def job_id(client):
    status, body, _ = client.request("POST", "/plugin/echo/health", "tok-all")
    assert status == 202
    return body["job_id"]


def wait_job(client, job_id, timeout=20):
    def finished():
        body = client.request("GET", "/job/" + job_id, "tok-all")[1]
        return body if body.get("status") in ("succeeded", "failed", "dead") else None

    return wait_for(finished, timeout, "job %s to finish" % job_id)


# --- the scope matrix ---------------------------------------------------------------------

JOBS = {"all", "jobs_ro", "read_jobs", "ops"}
PLUGIN_READ = {"all", "plugin_ro", "plugin_rw", "echo_ro", "echo_rw"}
PLUGIN_WRITE = {"all", "plugin_rw", "echo_rw"}
ANY = set(TOKENS) | {"ops"}
ROUTES = [
    ("GET", "/plugins", ANY, 200), ("GET", "/skills", ANY, 200), ("GET", "/openapi.json", ANY, 200),
    ("GET", "/.well-known/ai-plugin.json", ANY, 200), ("GET", "/plugin/echo/openapi.json", ANY, 200),
    ("GET", "/plugin/echo", PLUGIN_READ, 200), ("POST", "/plugin/echo/health", PLUGIN_READ, 202),
    ("POST", "/plugin/echo/poll", PLUGIN_WRITE, 202), ("POST", "/pipeline/anything", {"all", "plugin_rw"}, 404),
    ("GET", "/job/{job}", JOBS, 200), ("GET", "/job/{job}/tree", JOBS, 200), ("GET", "/jobs", JOBS, 200),
    ("GET", "/job-logs", JOBS, 200), ("GET", "/scheduler/jobs", JOBS, 200), ("GET", "/analytics/queue", JOBS, 200),
    ("GET", "/analytics/summary", JOBS, 200), ("GET", "/config/view", {"all", "system_ro", "system_rw"}, 200),
    ("POST", "/system/reload", {"all", "system_rw"}, 200),
]


def token_value(name):
    return OPS_KEY if name == "ops" else "tok-" + name


@pytest.mark.parametrize("method, path, allowed, ok", ROUTES, ids=["%s %s" % r[:2] for r in ROUTES])
def test_scope_matrix(client, job_id, method, path, allowed, ok):
    path = path.replace("{job}", job_id)
    assert client.request(method, path)[:2] == (401, {"error": "missing or invalid Authorization header"})
    assert client.request(method, path, "not-a-token")[:2] == (401, {"error": "invalid token"})
    for name in sorted(ANY):
        status, body, _ = client.request(method, path, token_value(name))
        expected = ok if name in allowed else 403
        assert status == expected, (name, status, body)
        if expected == 403:
            assert body == {"error": "insufficient scope"}


def test_open_routes_need_no_token(client):
    assert client.request("GET", "/")[0] == 200
    status, body, _ = client.request("GET", "/healthz")
    assert status == 200 and body["status"] == "ok" and body["plugins_loaded"] == 2


def test_authorization_header_format(client):
    status, body, _ = client.request("GET", "/plugins", headers={"Authorization": "Basic x"})
    assert (status, body) == (401, {"error": "invalid Authorization header format"})
    status, body, _ = client.request("GET", "/plugins", headers={"Authorization": "bearer tok-all"})
    assert (status, body) == (401, {"error": "invalid Authorization header format"})
    assert "WWW-Authenticate" not in client.request("GET", "/plugins")[2].headers


# --- triggering and malformed requests ------------------------------------------------------

def test_trigger_fetch_and_handle_envelope(client, gateway):
    status, body, _ = client.request("POST", "/plugin/echo/handle", "tok-all", {"payload": {"message": "hi"}})
    assert status == 202 and set(body) == {"job_id", "status", "plugin", "command"}
    stored = gateway.queue.get(body["job_id"]).payload
    assert stored["type"] == "api.trigger" and stored["source"] == "api" and stored["payload"] == {"message": "hi"}
    assert stored["event_id"] and stored["timestamp"].endswith("Z")
    done = wait_job(client, body["job_id"])
    assert done["status"] == "succeeded" and done["submitted_by"] == "api" and done["attempt"] == 1
    assert {"created_at", "max_attempts", "result", "started_at", "completed_at"} <= set(done)


@pytest.mark.parametrize("path, body, status, error", [
    ("/plugin/nope/poll", None, 404, "plugin not found"),
    ("/plugin/echo/nope", None, 404, "command not supported by plugin"),
    ("/plugin/echo_off/poll", None, 409, "plugin disabled"),
    ("/plugin/echo/poll", b"[1]", 400, "invalid JSON body"),
    ("/plugin/echo/poll", b"{not json", 400, "invalid JSON body"),
    ("/plugin/echo/poll", b"   ", 400, "invalid JSON body"),
    ("/plugin/echo/handle", b'{"payload": [1]}', 400, "payload must be a JSON object"),
    ("/plugin/echo/poll", b"x" * (65 * 1024), 413, "payload too large"),
])
def test_trigger_errors(client, gateway, path, body, status, error):
    before = job_rows(gateway)
    got = client.request("POST", path, "tok-all", raw_body=body)
    assert got[:2] == (status, {"error": error})
    assert job_rows(gateway) == before  # nothing enqueued
    assert client.request("GET", "/healthz")[0] == 200  # still serving


def job_rows(gateway) -> int:
    with gateway.db.read() as conn:
        return conn.execute("SELECT COUNT(*) FROM job_queue").fetchone()[0]


def test_other_keys_and_null_payload_are_accepted(client):
    assert client.request("POST", "/plugin/echo/poll", "tok-all", {"x": 1})[0] == 202
    assert client.request("POST", "/plugin/echo/poll", "tok-all", raw_body=b"null")[0] == 202


@pytest.mark.parametrize("path, error", [
    ("/jobs?limit=0", "limit must be a positive integer"), ("/jobs?limit=abc", "limit must be a positive integer"),
    ("/job-logs?limit=201", "limit must be <= 200"), ("/jobs?status=weird", "invalid status filter"),
    ("/job-logs?from=2026-01-01T00:00:00", "invalid from timestamp"),
    ("/job-logs?to=yesterday", "invalid to timestamp"),
])
def test_bad_query_values(client, path, error):
    assert client.request("GET", path, "tok-all")[:2] == (400, {"error": error})


def test_status_aliases_and_listing(client, job_id):
    status, body, _ = client.request("GET", "/jobs?status=OK&limit=500", "tok-all")
    assert status == 200 and body["total"] >= 1 and all(j["status"] == "succeeded" for j in body["jobs"])
    assert client.request("GET", "/jobs?status=skipped", "tok-all")[:2] == (200, {"jobs": [], "total": 0})
    logs = client.request("GET", "/job-logs?include_result=TRUE&job_id=" + job_id, "tok-all")[1]
    assert logs["total"] == 1 and "result" in logs["logs"][0]


def test_unknown_job_and_tree(client, job_id):
    assert client.request("GET", "/job/00000000-0000-4000-8000-000000000000", "tok-all")[:2] == (
        404, {"error": "job not found"})
    assert client.request("GET", "/job/00000000-0000-4000-8000-000000000000/tree", "tok-all")[0] == 404
    tree = client.request("GET", "/job/%s/tree" % job_id, "tok-all")[1]
    assert tree[0]["job_id"] == job_id


def test_routing_fallbacks(client):
    assert client.request("GET", "/nope")[:2] == (404, {"error": "not found"})
    assert client.request("GET", "/jobs/", "tok-all")[0] == 404
    status, body, resp = client.request("DELETE", "/jobs")
    assert (status, body) == (405, {"error": "method not allowed"}) and resp.headers.get_all("Allow") == ["GET"]
    assert client.request("GET", "/plugin/echo/poll")[0] == 405


def test_garbage_request_does_not_kill_the_server(gateway, client):
    with socket.create_connection(("127.0.0.1", gateway.api_server.port), timeout=5) as sock:
        sock.sendall(b"THIS IS NOT HTTP\r\n\r\n")
        sock.recv(1024)
    assert client.request("GET", "/healthz")[0] == 200


def test_config_view_redacts(client):
    view = client.request("GET", "/config/view", "tok-all")[1]
    assert list(view)[:5] == ["service", "api", "state", "plugins", "pipelines"]
    assert view["pipelines"] is None and "tok-all" not in json.dumps(view) and OPS_KEY not in json.dumps(view)
    assert view["tokens"] == [{"name": "ops"}]


def test_cors(client):
    status, body, resp = client.request("OPTIONS", "/jobs", headers={"Origin": "https://ui.example",
                                                                      "Access-Control-Request-Method": "GET"})
    assert status == 204 and resp.headers["Access-Control-Allow-Origin"] == "https://ui.example"
    assert resp.headers["Access-Control-Max-Age"] == "300"
    other = client.request("GET", "/healthz", headers={"Origin": "https://evil.example"})[2]
    assert "Access-Control-Allow-Origin" not in other.headers


def test_openapi_document_is_valid(client):
    from openapi_spec_validator import validate
    from openapi_spec_validator.validation import OpenAPIV31SpecValidator

    doc = client.request("GET", "/openapi.json", "tok-all")[1]
    validate(doc, cls=OpenAPIV31SpecValidator)
    assert "/plugin/echo/poll" in doc["paths"] and "/jobs" in doc["paths"]


# --- SSE -----------------------------------------------------------------------------------------

def sse_frames(port, path, headers=None, want=1, timeout=10, event_type=None):
    """Open a stream and read until ``want`` frames (of ``event_type``, if given) arrived."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    conn.request("GET", path, headers=headers or {})
    resp = conn.getresponse()
    assert resp.status == 200 and resp.getheader("Content-Type") == "text/event-stream"
    frames, buffer = [], b""
    deadline = time.monotonic() + timeout
    while len([f for f in frames if "id" in f and event_type in (None, f.get("event"))]) < want \
            and time.monotonic() < deadline:
        chunk = resp.fp.read1(65536) if hasattr(resp.fp, "read1") else resp.read(1)
        if not chunk:
            break
        buffer += chunk
        while b"\n\n" in buffer:
            block, buffer = buffer.split(b"\n\n", 1)
            fields = dict(line.split(": ", 1) for line in block.decode().splitlines() if not line.startswith(":"))
            frames.append(fields)
    conn.close()
    return frames


def test_sse_resume_gets_exactly_the_missed_events(gateway):
    port = gateway.api_server.port
    start = gateway.hub.last_id()
    seen = [gateway.hub.publish("test.event", {"n": n}).id for n in range(3)]
    first = sse_frames(port, "/events?token=tok-events_ro", {"Last-Event-ID": str(start)}, want=3,
                       event_type="test.event")
    received = event_ids(first)[:3]
    assert received == seen  # connected, read three, disconnected
    missed = [gateway.hub.publish("test.event", {"n": n}).id for n in range(3, 8)]
    frames = sse_frames(port, "/events?token=tok-events_ro", {"Last-Event-ID": str(received[-1])},
                        want=len(missed), event_type="test.event")
    assert event_ids(frames)[:len(missed)] == missed  # no gap, no duplicate
    assert not any(f.get("event") == "stream.gap" for f in frames)
    frames = sse_frames(port, "/events?token=tok-all&last_event_id=%d" % missed[-2], want=1,
                        event_type="test.event")
    assert event_ids(frames)[0] == missed[-1]


def event_ids(frames):
    return [int(f["id"]) for f in frames if f.get("event") == "test.event"]


def test_sse_auth_errors_are_json_before_the_stream(client):
    assert client.request("GET", "/events")[:2] == (401, {"error": "missing or invalid Authorization header"})
    assert client.request("GET", "/events?token=tok-jobs_ro")[:2] == (403, {"error": "insufficient scope"})


# --- the Operator Guide's curl examples, verbatim ----------------------------------------------------

@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_operator_guide_curl_examples(gateway):
    base = "http://localhost:%d" % gateway.api_server.port
    out = subprocess.run(["curl", "-s", "-X", "POST", base + "/plugin/echo/poll", "-H", "Authorization: Bearer tok-all",
                          "-H", "Content-Type: application/json", "-d", '{"payload": {"message": "Hello from API"}}'],
                         capture_output=True, text=True, timeout=20)
    job = json.loads(out.stdout)["job_id"]
    fetched = subprocess.run(["curl", "-s", base + "/job/" + job, "-H", "Authorization: Bearer tok-all"],
                             capture_output=True, text=True, timeout=20)
    assert json.loads(fetched.stdout)["job_id"] == job
    stream = subprocess.run(["curl", "-N", "-s", "-m", "2", "-H", "Authorization: Bearer tok-all", base + "/events"],
                            capture_output=True, text=True, timeout=20)
    assert "event: " in stream.stdout and "\nid: " in "\n" + stream.stdout


def test_reload_over_the_api_keeps_sse_ids_rising(client, gateway):
    before = gateway.hub.publish("test.before").id
    status, body, _ = client.request("POST", "/system/reload", "tok-system_rw")
    assert status == 200 and body["status"] == "ok" and body["message"] == "configuration reloaded"
    assert gateway.hub.publish("test.after").id > before
    assert client.request("POST", "/plugin/echo/poll", "tok-all")[0] == 202


def test_connection_cap_answers_503(tmp_path):
    _config(tmp_path)
    # Two open SSE streams fill a cap of 2; the next connection is refused with 503.
    cfg = (tmp_path / "config.yaml").read_text().replace("max_body_size: 64KB", "max_body_size: 64KB\n  max_connections: 2")
    (tmp_path / "config.yaml").write_text(cfg)
    gw = Gateway(config_dir=str(tmp_path))
    gw.start()
    try:
        port = gw.api_server.port
        streams = []
        for _ in range(2):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("GET", "/events?token=tok-all")
            assert conn.getresponse().status == 200
            streams.append(conn)
        status, body, _ = Client(port).request("GET", "/healthz")
        assert (status, body) == (503, {"error": "too many connections"})
        for conn in streams:
            conn.close()
        # A closed client is noticed at the next write: publish until both streams end.
        deadline = time.monotonic() + 10
        while gw.api_server.active_connections() > 0 and time.monotonic() < deadline:
            gw.hub.publish("test.nudge")
            time.sleep(0.05)
        assert Client(port).request("GET", "/healthz")[0] == 200
    finally:
        gw.shutdown()


def test_gateway_runs_the_webhook_listener(tmp_path):
    import hashlib
    import hmac

    _config(tmp_path)
    text = (tmp_path / "config.yaml").read_text()
    (tmp_path / "config.yaml").write_text(text + """
webhooks:
  listen: "127.0.0.1:0"
  endpoints:
    - {path: /hooks/gh, plugin: echo, secret_ref: ops, signature_header: X-Hub-Signature-256}
""")
    gw = Gateway(config_dir=str(tmp_path))
    gw.start()
    try:
        hook = Client(gw.webhook_server.port)
        body = b'{"event": "push"}'
        signature = "sha256=" + hmac.new(OPS_KEY.encode(), body, hashlib.sha256).hexdigest()
        status, reply, _ = hook.request("POST", "/hooks/gh", raw_body=body,
                                        headers={"X-Hub-Signature-256": signature})
        assert status == 202 and set(reply) == {"job_id"}
        job = gw.queue.get(reply["job_id"])
        assert (job.command, job.submitted_by, job.payload) == ("handle", "webhook:/hooks/gh", {"event": "push"})
        assert hook.request("POST", "/hooks/gh", raw_body=body,
                            headers={"X-Hub-Signature-256": "sha256=deadbeef"})[:2] == (403, {"error": "forbidden"})
        assert hook.request("GET", "/healthz")[:2] == (200, {"status": "ok"})
    finally:
        gw.shutdown()
