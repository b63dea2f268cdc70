"""The HTTP API server (spec 40 §1–§5): routing, auth, limits, encoding.

Routes come from ``openapi.API_ROUTES`` (one table, so the OpenAPI
document cannot drift from what is served); handlers live in
``api_handlers``.  Every request goes through the same checks in the
order of spec 40 §2.5: routing (404/405) → authentication (401) → scope
gate (403) → body cap (413) → handler.  Standard library only:
``ThreadingHTTPServer`` with HTTP/1.1 keep-alive, one thread per
connection, and Nagle disabled (keep-alive requests otherwise wait ~40 ms
for a delayed ACK).
"""
from __future__ import annotations

import http.server
import socket
import threading
import time
import traceback
from typing import Callable, Optional
from urllib.parse import parse_qsl, urlsplit

from ductile_lib import api_handlers as handlers
from ductile_lib import auth, openapi, sse
from ductile_lib.api_handlers import ApiRequest, HttpError
from ductile_lib.jsonwire import body as json_body
from ductile_lib.logs import get_logger
from ductile_lib.timefmt import utc_now

REQUEST_READ_TIMEOUT_S = 10.0
IDLE_KEEPALIVE_S = 60.0

HANDLERS = {
    "root": handlers.root, "healthz": handlers.healthz, "plugins": handlers.list_plugins,
    "skills": handlers.skills, "openapi": handlers.openapi_document, "ai_plugin": handlers.ai_plugin,
    "plugin_openapi": handlers.plugin_openapi, "plugin_run": handlers.run_plugin_command,
    "plugin_get": handlers.get_plugin, "pipeline_run": handlers.run_pipeline, "job_get": handlers.get_job,
    "job_tree": handlers.job_tree, "jobs": handlers.list_jobs, "job_logs": handlers.job_logs,
    "scheduler_jobs": handlers.scheduler_jobs, "analytics_summary": handlers.analytics_summary,
    "analytics_queue": handlers.analytics_queue, "system_reload": handlers.system_reload,
    "config_view": handlers.config_view,
}
GATES = {
    "open": auth.GATE_OPEN, "any": auth.GATE_ANY, "plugin": auth.GATE_PLUGIN, "pipeline": auth.GATE_PIPELINE,
    "jobs": auth.GATE_JOBS, "events": auth.GATE_EVENTS, "system_ro": auth.GATE_SYSTEM_RO,
    "system_rw": auth.GATE_SYSTEM_RW,
}
CORS_METHODS = "GET, POST, PUT, DELETE, OPTIONS"
CORS_HEADERS = "Accept, Authorization, Content-Type, X-CSRF-Token"


class ApiContext:
    """What handlers need from the running gateway, behind small callables."""

    def __init__(self, runtime: Callable, queue, db, hub, *, wake: Callable = lambda: None,
                 reload: Optional[Callable] = None, config_label: str = "", router=None):
        self.runtime = runtime
        self.queue = queue
        self.db = db
        self.hub = hub
        self.wake = wake
        self.reload = reload  # () -> Optional[str] error
        self.config_label = config_label
        self.started_monotonic = time.monotonic()
        self.started_at_utc = utc_now()
        self.stopping = threading.Event()
        self.router = router
        self._credentials = (None, None)  # (config identity, CredentialTable)
        self._sync_slots = (0, None)  # (limit, semaphore): synchronous pipeline slots (H5)

    def sync_slots(self) -> threading.BoundedSemaphore:
        """The semaphore for ``api.max_concurrent_sync``; a reload's new limit gets a new one."""
        limit = self.runtime().config.api.max_concurrent_sync
        current_limit, semaphore = self._sync_slots
        if semaphore is None or current_limit != limit:
            semaphore = threading.BoundedSemaphore(limit)
            self._sync_slots = (limit, semaphore)
        return semaphore

    def uptime_seconds(self) -> int:
        return int(time.monotonic() - self.started_monotonic)

    def credentials(self) -> auth.CredentialTable:
        """The credential table of the current config, rebuilt after a reload."""
        cfg = self.runtime().config
        cached_for, table = self._credentials
        if cached_for is not cfg:
            table = auth.CredentialTable.from_config(cfg)
            self._credentials = (cfg, table)
        return table


def match_route(method: str, path: str):
    """``(route, params)`` or raise 404/405 (§1.4: before authentication)."""
    route, params, allowed = openapi.match_route(method, path)
    if route is not None:
        return route, params
    if allowed:
        raise _MethodNotAllowed(sorted(allowed))
    raise HttpError(404, "not found")


class _MethodNotAllowed(HttpError):
    def __init__(self, allowed: list):
        super().__init__(405, "method not allowed")
        self.allowed = allowed


class ApiServer(http.server.ThreadingHTTPServer):
    """The API listener with a connection cap (``api.max_connections``)."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128  # SSE clients reconnect in bursts; the default backlog of 5 drops them

    def __init__(self, listen: str, ctx: ApiContext, log=None):
        host, port = split_listen(listen)
        self.ctx = ctx
        self.log = log or get_logger("api")
        self._active = 0
        self._active_lock = threading.Condition()
        self._idle: set = set()  # sockets waiting for their next request (keep-alive)
        self._thread: Optional[threading.Thread] = None
        super().__init__((host, port), ApiHandler)

    @property
    def port(self) -> int:
        return self.server_address[1]

    def start(self) -> None:
        self._thread = threading.Thread(target=self.serve_forever, name="api", daemon=True)
        self._thread.start()

    def stop(self, grace_s: float = 10.0) -> None:
        """Stop accepting, end SSE streams, give open requests ``grace_s``."""
        self.ctx.stopping.set()
        self.shutdown()
        with self._active_lock:
            idle = list(self._idle)
        for sock in idle:  # idle keep-alive connections have nothing to finish
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        with self._active_lock:
            self._active_lock.wait_for(lambda: self._active == 0, timeout=grace_s)
        self.server_close()

    def mark_idle(self, sock, idle: bool) -> None:
        with self._active_lock:
            (self._idle.add if idle else self._idle.discard)(sock)

    def active_connections(self) -> int:
        with self._active_lock:
            return self._active

    def process_request(self, request, client_address):
        """Refuse past the cap with 503 instead of queueing silently."""
        cap = self.ctx.runtime().config.api.max_connections
        with self._active_lock:
            over = self._active >= cap
            if not over:
                self._active += 1
        if over:
            _refuse_connection(request)
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._active_lock:
                self._active -= 1
                self._active_lock.notify_all()


def _refuse_connection(sock) -> None:
    payload = json_body({"error": "too many connections"})
    head = ("HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
            "Connection: close\r\n\r\n" % len(payload)).encode("ascii")
    try:
        sock.settimeout(1.0)
        sock.sendall(head + payload)
    except OSError:
        pass


def split_listen(listen: str):
    """``host:port`` (``[::1]:8080`` too); an empty value means 127.0.0.1:8080."""
    listen = (listen or "").strip() or "127.0.0.1:8080"
    host, _, port = listen.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port)


class ApiHandler(http.server.BaseHTTPRequestHandler):
    """One connection; each request runs the §2.5 pipeline."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server_version = "ductile"
    sys_version = ""

    # --- plumbing -------------------------------------------------------------

    def handle_one_request(self):
        """Idle keep-alive waits 60 s; once a request starts it has 10 s to arrive."""
        self.server.mark_idle(self.connection, True)
        try:
            self.connection.settimeout(IDLE_KEEPALIVE_S)
            self.raw_requestline = self.rfile.readline(65537)
            self.connection.settimeout(REQUEST_READ_TIMEOUT_S)
        except (socket.timeout, OSError):
            self.close_connection = True
            return
        finally:
            self.server.mark_idle(self.connection, False)
        if len(self.raw_requestline) > 65536:
            self.send_error(414)
            return
        if not self.raw_requestline:
            self.close_connection = True
            return
        if not self.parse_request():
            return
        self._dispatch()
        try:
            self.wfile.flush()
        except OSError:
            self.close_connection = True

    def log_message(self, format, *args):  # noqa: A002 - http.server's signature
        """Silence the stderr access log; requests are logged as JSON below."""

    def send_error(self, code, message=None, explain=None):
        """Malformed requests get the JSON error shape too (§1.3)."""
        text = {400: "bad request", 414: "request line too long", 431: "request header fields too large",
                505: "http version not supported"}.get(code, message or "error")
        self.close_connection = True
        try:
            self._send_json(code, {"error": text})
        except OSError:
            pass

    def _dispatch(self) -> None:
        started = time.monotonic()
        status = 500
        try:
            status = self._route_and_run()
        except Exception as exc:
            self.server.log.error("api handler failed", path=self._path_only(), error=str(exc),
                                  traceback=traceback.format_exc())
            status = self._safe_error(500, "internal server error")
        self.server.log.debug("api request", method=self.command, path=self._path_only(), status=status,
                              duration_ms=int((time.monotonic() - started) * 1000))

    def _path_only(self) -> str:
        return urlsplit(self.path).path

    # --- the §2.5 pipeline ------------------------------------------------------------

    def _route_and_run(self) -> int:
        ctx = self.server.ctx
        url = urlsplit(self.path)
        cors = self._cors_headers(ctx)
        if cors is not None and self.command == "OPTIONS" and self.headers.get("Access-Control-Request-Method"):
            return self._send_preflight(cors)
        try:
            route, params = match_route(self.command, url.path)
            query = _query(url.query)
            credential = self._authenticate(ctx, route, query)
            self._gate(route, credential, params)
            body = self._read_body(ctx)
            request = ApiRequest(ctx, self.command, url.path, params, query, self.headers, body, credential)
            if route.name == "events":
                return self._stream_events(ctx, request)
            status, value = HANDLERS[route.name](request)
        except HttpError as exc:
            return self._send_error_reply(exc, cors)
        self._send_json(status, value, cors)
        return status

    def _authenticate(self, ctx, route, query):
        if route.gate == "open":
            return None
        token, error = auth.extract_bearer(self.headers.get("Authorization"), query.get("token"),
                                           allow_query=route.name == "events")
        if error:
            raise HttpError(401, error)
        credential = ctx.credentials().authenticate(token)
        if credential is None:
            raise HttpError(401, "invalid token")
        return credential

    def _gate(self, route, credential, params) -> None:
        if credential is None:
            return
        if not auth.allows(credential.scopes, GATES[route.gate], params.get("plugin")):
            raise HttpError(403, "insufficient scope")

    def _read_body(self, ctx) -> Optional[bytes]:
        """Read a body only when Content-Length > 0; above the cap → 413 unread."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            self.close_connection = True
            return None
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self.close_connection = True
            raise HttpError(400, "invalid Content-Length") from None
        if length <= 0:
            return None
        if length > ctx.runtime().config.api.max_body_size:
            self.close_connection = True
            raise HttpError(413, "payload too large")
        try:
            data = self.rfile.read(length)
        except (socket.timeout, OSError):
            self.close_connection = True
            raise HttpError(400, "failed to read request body") from None
        if len(data) < length:
            self.close_connection = True
            raise HttpError(400, "failed to read request body")
        return data

    # --- SSE --------------------------------------------------------------------------

    def _stream_events(self, ctx, request: ApiRequest) -> int:
        resume = sse.parse_resume_point(self.headers.get("Last-Event-ID"), request.query.get("last_event_id"))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "keep-alive")
        self.send_header("X-Accel-Buffering", "no")
        self._write_cors(self._cors_headers(ctx))
        self.end_headers()
        self.wfile.flush()
        self.close_connection = True  # no Content-Length: the stream ends the connection
        self.connection.settimeout(None)

        def write(chunk: bytes) -> None:
            self.wfile.write(chunk)
            self.wfile.flush()

        reason = sse.stream_events(write, ctx.hub, resume, stop=ctx.stopping)
        self.server.log.debug("sse stream ended", reason=reason)
        return 200

    # --- responses ----------------------------------------------------------------------

    def _send_json(self, status: int, value, cors=None, extra_headers=()) -> None:
        payload = json_body(value)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for name, header_value in extra_headers:
            self.send_header(name, header_value)
        self._write_cors(cors)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(payload)

    def _send_error_reply(self, exc: HttpError, cors) -> int:
        headers = [("Allow", method) for method in getattr(exc, "allowed", ())]
        self._send_json(exc.status, {"error": exc.message}, cors, headers)
        return exc.status

    def _safe_error(self, status: int, message: str) -> int:
        try:
            self.close_connection = True
            self._send_json(status, {"error": message})
        except OSError:
            pass
        return status

    # --- CORS (§1.5) -----------------------------------------------------------------------

    def _cors_headers(self, ctx):
        origin = self.headers.get("Origin")
        if not origin or origin not in ctx.runtime().config.api.allowed_origins:
            return None
        return [("Vary", "Origin"), ("Access-Control-Allow-Origin", origin),
                ("Access-Control-Allow-Credentials", "true"), ("Access-Control-Expose-Headers", "Link")]

    def _write_cors(self, cors) -> None:
        for name, value in cors or ():
            self.send_header(name, value)

    def _send_preflight(self, cors) -> int:
        self.send_response(204)
        self._write_cors(cors)
        for name, value in (("Vary", "Access-Control-Request-Method"), ("Vary", "Access-Control-Request-Headers"),
                            ("Access-Control-Allow-Methods", CORS_METHODS),
                            ("Access-Control-Allow-Headers", CORS_HEADERS), ("Access-Control-Max-Age", "300"),
                            ("Content-Length", "0")):
            self.send_header(name, value)
        self.end_headers()
        return 204


def _query(text: str) -> dict:
    """First value wins; an empty value counts as absent (§1.4)."""
    result = {}
    for key, value in parse_qsl(text, keep_blank_values=True):
        if key not in result and value != "":
            result[key] = value
    return result
