"""The webhook listener on ``webhooks.listen`` (spec 40 §1, §6; decision H3).

``GET /healthz`` answers ``{"status":"ok"}``; ``POST <path>`` of a configured
endpoint checks the body size, then the HMAC-SHA256 signature, then the
target plugin, and enqueues a ``handle`` job (``submitted_by
"webhook:<path>"``).  Endpoints, secrets and plugins are read from the
current runtime on every request, so a reload applies to the next request.

Built on ``http.server`` with one daemon thread per connection.  Three
things the stdlib server does not do are added here, because a webhook
listener faces the internet:

* one deadline (10 s) for reading a whole request, 60 s of idle keep-alive
  and 10 s for writing a response;
* bodies are read only when the route wants them: ``Expect: 100-continue``
  is answered only then, an oversized body is refused unread (413), and a
  connection whose body was not read is closed after a short drain so the
  client still gets to read the reply;
* ``stop()`` works like Go's ``Server.Shutdown``: stop accepting, close idle
  keep-alive connections, give running requests a grace period.

The accept loop sleeps in ``select`` with no timeout and is woken by a
socket pair on stop, so an idle listener uses no CPU (E10).
"""
from __future__ import annotations

import binascii
import errno
import hashlib
import hmac
import json
import re
import selectors
import socket
import socketserver
import sys
import threading
import time
import traceback
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Optional, Tuple
from urllib.parse import unquote, urlsplit

from ductile_lib.logs import get_logger

HEALTH_PATH = "/healthz"
REQUEST_READ_TIMEOUT_S = 10.0
RESPONSE_WRITE_TIMEOUT_S = 10.0
IDLE_TIMEOUT_S = 60.0
SHUTDOWN_GRACE_S = 5.0
# After refusing a body unread, keep reading (and discarding) this much for
# this long before closing: closing a socket with unread input sends a TCP
# reset, which can destroy the reply before the client has read it.
LINGER_MAX_BYTES = 4 * 1024 * 1024
LINGER_S = 2.0
ACCEPT_BACKOFF_S = 0.1
SIGNATURE_PREFIX = "sha256="
COMMAND = "handle"

ERR_NOT_FOUND = "not found"
ERR_METHOD = "method not allowed"
ERR_TOO_LARGE = "payload too large"
ERR_READ = "failed to read request body"
ERR_FORBIDDEN = "forbidden"
ERR_PLUGIN_NOT_FOUND = "plugin not found"
ERR_PLUGIN_DISABLED = "plugin disabled"
ERR_ENQUEUE = "failed to enqueue job"
ERR_INTERNAL = "internal server error"
ERR_BAD_LENGTH = "invalid Content-Length"

_DIGITS = re.compile(r"^[0-9]+$")
_OWS = " \t"
# spec 40 §1.3 [O]: escape like Go's encoding/json so bodies are safe to embed in HTML.
_JSON_ESCAPES = (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                 ("\u2028", "\\u2028"), ("\u2029", "\\u2029"))


# --- pure helpers -----------------------------------------------------------------


def encode_json(value) -> bytes:
    """Compact JSON plus a newline, as every Ductile HTTP response is written (spec 40 §1.3)."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    for raw, escaped in _JSON_ESCAPES:
        text = text.replace(raw, escaped)
    return (text + "\n").encode("utf-8")


def verify_signature(secret: str, body: bytes, header_value: Optional[str]) -> bool:
    """Whether ``header_value`` is the hex HMAC-SHA256 of ``body`` under ``secret`` (§6.3 step 4).

    An optional case-sensitive ``sha256=`` prefix; hex in either case; any
    bad hex, wrong length or empty secret fails.  ``unhexlify`` rather than
    ``bytes.fromhex`` because the latter skips whitespace, and nothing may be
    trimmed from a signature.
    """
    if not secret or not header_value:
        return False
    given = header_value[len(SIGNATURE_PREFIX):] if header_value.startswith(SIGNATURE_PREFIX) else header_value
    try:
        digest = binascii.unhexlify(given)
    except (ValueError, TypeError):  # binascii.Error is a ValueError; non-ASCII str too
        return False
    expected = hmac.new(secret.encode("utf-8"), body, hashlib.sha256).digest()
    return len(digest) == len(expected) and hmac.compare_digest(digest, expected)


def webhook_payload(body: bytes, content_type: Optional[str]):
    """What the ``handle`` job stores (§6.3 step 6).

    A JSON object body is kept as it came (returned as bytes, which the
    queue stores verbatim: key order and numbers untouched); anything else
    (text, empty, a JSON array or scalar) is wrapped as ``{"body", "content_type"}``
    so the plugin always gets an object.  Invalid UTF-8 is replaced, never fatal.
    """
    text = body.decode("utf-8", errors="replace")
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except ValueError:
        value = None
    if isinstance(value, dict):
        return text.encode("utf-8")
    return {"body": text, "content_type": content_type or ""}


def _reject_constant(name: str):
    """NaN and Infinity are not JSON; a body using them is stored as text."""
    raise ValueError("not JSON: %s" % name)


def parse_listen(listen: str) -> Tuple[str, int, int]:
    """``host:port`` (Go syntax: ``:9090``, ``[::1]:9090``) → ``(host, port, family)``.

    An empty host listens on every interface, IPv6 too when the system can
    do both on one socket, as Go does.  A malformed address raises OSError
    so the gateway reports it like any other bind failure.
    """
    host, sep, port_text = (listen or "").strip().rpartition(":")
    if not sep or not _DIGITS.match(port_text) or int(port_text) > 65535:
        raise OSError(errno.EINVAL, "invalid listen address %r (want host:port)" % listen)
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not host:
        if socket.has_dualstack_ipv6():
            return "::", int(port_text), socket.AF_INET6
        return "0.0.0.0", int(port_text), socket.AF_INET
    return host, int(port_text), socket.AF_INET6 if ":" in host else socket.AF_INET


def request_path(target: str) -> str:
    """The URL path of a request target, query and fragment dropped, %-escapes decoded."""
    if target.startswith(("http://", "https://")):
        target = urlsplit(target).path or "/"
    return unquote(target.split("?", 1)[0].split("#", 1)[0])


def find_endpoint(endpoints, path: str):
    """The endpoint whose path is exactly ``path`` (no prefix or trailing-slash matching)."""
    for endpoint in endpoints:
        if endpoint.path == path:
            return endpoint
    return None


def _header(headers, name: str) -> Optional[str]:
    """A header's first value without the optional whitespace HTTP allows around it."""
    value = headers.get(name)
    return None if value is None else value.strip(_OWS)


def _declares_body(headers) -> bool:
    """Whether bytes follow the headers that nobody has read yet."""
    if "chunked" in (headers.get("Transfer-Encoding") or "").lower():
        return True
    length = (headers.get("Content-Length") or "").strip()
    if not length:
        return False
    return not _DIGITS.match(length) or int(length) > 0  # a malformed length may hide a body


# --- the listener -------------------------------------------------------------------


class WebhookServer:
    """The webhook HTTP listener.

    ``runtime`` is called on every request (never cached) so reloads apply
    at once; ``queue`` is a ``JobQueue``; ``wake`` nudges the dispatcher
    after an enqueue.
    """

    def __init__(self, listen: str, runtime: Callable, queue, wake: Callable[[], None], log=None):
        self.listen = listen
        self.runtime = runtime
        self.queue = queue
        self.wake = wake
        self.log = log if log is not None else get_logger("webhook")
        self.connections = _Connections()
        self._httpd: Optional[_HTTPServer] = None
        self._thread: Optional[threading.Thread] = None
        self._wake_pair: Optional[Tuple[socket.socket, socket.socket]] = None

    # -- lifecycle --

    def start(self) -> None:
        """Bind and serve in a daemon thread; OSError when the address is unusable."""
        host, port, family = parse_listen(self.listen)
        self._httpd = _HTTPServer((host, port), _Handler, family, self)
        self._httpd.socket.setblocking(False)
        self._wake_pair = socket.socketpair()
        self._thread = threading.Thread(target=self._serve, args=(self._httpd, self._wake_pair[0]),
                                        name="webhook-listener", daemon=True)
        self._thread.start()
        self.log.debug("webhook listener bound", listen=self.listen, port=self.port)

    @property
    def port(self) -> int:
        """The bound port (the real one when ``listen`` asked for port 0)."""
        return self._httpd.server_address[1] if self._httpd else 0

    def stop(self, grace_s: float = SHUTDOWN_GRACE_S) -> None:
        """Stop accepting, close idle connections, wait up to ``grace_s`` for running requests."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        self._wake_pair[1].send(b"x")
        self._thread.join()
        for end in self._wake_pair:
            end.close()
        httpd.server_close()
        left = self.connections.stop(grace_s)
        if left:
            self.log.warn("webhook listener stopped with requests still open", count=left)
        self.log.info("webhook listener stopped", listen=self.listen)

    @staticmethod
    def _serve(httpd: "_HTTPServer", wake: socket.socket) -> None:
        """Accept until stop() writes to the wake pair; no polling timeout."""
        with selectors.DefaultSelector() as selector:
            selector.register(httpd.socket, selectors.EVENT_READ, "accept")
            selector.register(wake, selectors.EVENT_READ, "stop")
            while True:
                for key, _ in selector.select():
                    if key.data == "stop":
                        return
                    WebhookServer._accept_one(httpd)

    @staticmethod
    def _accept_one(httpd: "_HTTPServer") -> None:
        try:
            request, address = httpd.get_request()
        except BlockingIOError:  # the client left before we got to it
            return
        except OSError as exc:  # e.g. out of file descriptors: back off rather than spin
            httpd.app.log.error("webhook listener cannot accept", error=str(exc))
            time.sleep(ACCEPT_BACKOFF_S)
            return
        try:
            httpd.process_request(request, address)  # starts the connection's thread
        except Exception:  # noqa: BLE001 - e.g. no thread could be started
            httpd.handle_error(request, address)
            httpd.shutdown_request(request)

    # -- routing --

    def route(self, req: "_Handler") -> None:
        """Health check, 404/405 fallbacks, then the signed POST (spec 40 §1.4, §6)."""
        path = request_path(req.path)
        if path == HEALTH_PATH:
            if req.command != "GET":
                return req.send_json(405, {"error": ERR_METHOD}, [("Allow", "GET")])
            return req.send_json(200, {"status": "ok"})
        runtime = self.runtime()
        endpoint = find_endpoint(runtime.config.webhooks, path)
        if endpoint is None:
            return req.send_json(404, {"error": ERR_NOT_FOUND})
        if req.command != "POST":
            return req.send_json(405, {"error": ERR_METHOD}, [("Allow", "POST")])
        status, body = self.accept(runtime, endpoint, req)
        return req.send_json(status, body)

    def accept(self, runtime, endpoint, req: "_Handler") -> Tuple[int, dict]:
        """§6.3 steps 2-7 for one request: ``(status, response body)``."""
        body, failure = req.read_body(endpoint.max_body_size)
        if failure is not None:
            return failure
        entry = runtime.config.token_entry(endpoint.secret_ref)
        secret = entry.key if entry is not None and entry.usable else ""
        if not verify_signature(secret, body, _header(req.headers, endpoint.signature_header)):
            self.log.warn("webhook signature verification failed", path=endpoint.path,
                          reason="no secret" if not secret else "missing or invalid signature")
            return 403, {"error": ERR_FORBIDDEN}
        refusal = self._check_plugin(runtime, endpoint)
        if refusal is not None:
            return refusal
        return self._enqueue(runtime, endpoint, webhook_payload(body, _header(req.headers, "Content-Type")))

    def _check_plugin(self, runtime, endpoint) -> Optional[Tuple[int, dict]]:
        """Only discovered, enabled plugins get work (E4): 404 or 409, nothing enqueued."""
        if runtime.plugin(endpoint.plugin) is None:
            self.log.warn("webhook target plugin not found", path=endpoint.path, plugin=endpoint.plugin)
            return 404, {"error": ERR_PLUGIN_NOT_FOUND}
        if not runtime.is_enabled(endpoint.plugin):
            self.log.warn("webhook target plugin disabled; nothing enqueued", path=endpoint.path,
                          plugin=endpoint.plugin)
            return 409, {"error": ERR_PLUGIN_DISABLED}
        return None

    def _enqueue(self, runtime, endpoint, payload) -> Tuple[int, dict]:
        """Enqueue ``handle`` (no envelope, no dedupe, no SSE event) and wake the dispatcher."""
        plugin_config = runtime.plugin_config(endpoint.plugin)
        submitted_by = "webhook:" + endpoint.path
        try:
            kwargs = {"config_snapshot_id": runtime.snapshot_id}
            if plugin_config is not None:
                kwargs["max_attempts"] = plugin_config.max_attempts
            result = self.queue.enqueue(endpoint.plugin, COMMAND, payload, submitted_by, **kwargs)
        except Exception as exc:  # noqa: BLE001 - any storage failure is a 500, never a dead thread
            self.log.error("webhook enqueue failed", path=endpoint.path, plugin=endpoint.plugin, error=str(exc))
            return 500, {"error": ERR_ENQUEUE}
        self._wake_dispatcher()
        self.log.info("webhook job enqueued", path=endpoint.path, plugin=endpoint.plugin, command=COMMAND,
                      job_id=result.job_id, submitted_by=submitted_by)
        return 202, {"job_id": result.job_id}

    def _wake_dispatcher(self) -> None:
        """The job is durable already; a failing wake only delays it until the next tick."""
        try:
            self.wake()
        except Exception as exc:  # noqa: BLE001
            self.log.error("webhook could not wake the dispatcher", error=str(exc))


class _HTTPServer(ThreadingHTTPServer):
    """The stdlib server with our address family, no reverse DNS at bind, and quiet errors."""

    daemon_threads = True

    def __init__(self, address, handler, family: int, app: WebhookServer):
        self.address_family = family
        self.app = app
        super().__init__(address, handler)

    def server_bind(self) -> None:
        """TCPServer's bind: HTTPServer's ``getfqdn`` can stall start-up on a slow resolver."""
        if self.address_family == socket.AF_INET6 and self.server_address[0] == "::":
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), self.server_address[1]

    def handle_error(self, request, client_address) -> None:
        """A broken connection is routine (DEBUG); anything else is a bug (ERROR); never stderr."""
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):
            self.app.log.debug("webhook connection error", error=str(exc))
        else:
            self.app.log.error("webhook connection failed", error="%s: %s" % (type(exc).__name__, exc),
                               trace=traceback.format_exc(limit=5))


class _Connections:
    """Open connections by state, so stop() can close idle ones and wait for busy ones."""

    def __init__(self):
        self._cond = threading.Condition()
        self._idle: set = set()
        self._busy: set = set()
        self.stopping = False

    def add(self, sock) -> bool:
        with self._cond:
            if not self.stopping:
                self._idle.add(sock)
            return not self.stopping

    def begin(self, sock) -> bool:
        """A request arrived; False when stop() already closed this connection."""
        with self._cond:
            if sock not in self._idle:
                return False
            self._idle.discard(sock)
            self._busy.add(sock)
            return True

    def end(self, sock) -> bool:
        """The response is out; False when the connection must close (stopping)."""
        with self._cond:
            self._busy.discard(sock)
            if not self.stopping:
                self._idle.add(sock)
            self._cond.notify_all()
            return not self.stopping

    def remove(self, sock) -> None:
        with self._cond:
            self._idle.discard(sock)
            self._busy.discard(sock)
            self._cond.notify_all()

    def stop(self, grace_s: float) -> int:
        """Close idle connections now and busy ones after ``grace_s``; the count cut off."""
        with self._cond:
            self.stopping = True
            for sock in self._idle:
                _shutdown(sock)
            self._idle.clear()
            self._cond.wait_for(lambda: not self._busy, timeout=max(0.0, grace_s))
            left = list(self._busy)
        for sock in left:
            _shutdown(sock)
        return len(left)


def _shutdown(sock) -> None:
    """Wake a thread blocked on ``sock`` (its read returns EOF); the owner closes it."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class _DeadlineReader:
    """The connection's reader with one deadline for a whole request (headers and body).

    A socket timeout alone restarts on every received byte, so a client
    trickling bytes could hold a thread for ever; re-arming the timeout with
    what is left of the deadline before each read bounds the request.
    """

    def __init__(self, raw, sock):
        self.raw = raw
        self.sock = sock
        self.deadline: Optional[float] = None

    def start(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    def clear(self) -> None:
        self.deadline = None

    def _arm(self) -> None:
        if self.deadline is None:
            return
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise socket.timeout("request read timed out")
        self.sock.settimeout(remaining)

    def readline(self, limit: int = -1) -> bytes:
        self._arm()
        return self.raw.readline(limit)

    def read(self, size: int = -1) -> bytes:
        self._arm()
        return self.raw.read(size)

    def read1(self, size: int = -1) -> bytes:
        self._arm()
        return self.raw.read1(size)

    def peek(self, size: int = 0) -> bytes:
        return self.raw.peek(size)

    def close(self) -> None:
        self.raw.close()


class _Handler(BaseHTTPRequestHandler):
    """One connection: HTTP/1.1 keep-alive, every method routed, JSON for every reply."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # without it a keep-alive request waits ~40 ms on delayed ACKs
    timeout = IDLE_TIMEOUT_S
    server: _HTTPServer

    def __getattr__(self, name: str):
        """``do_<ANY METHOD>`` routes, so an unknown method gets 404/405 JSON, not a 501 HTML page."""
        if name.startswith("do_"):
            return self._dispatch
        raise AttributeError(name)

    # -- connection lifecycle --

    def setup(self) -> None:
        super().setup()
        self.rfile = _DeadlineReader(self.rfile, self.connection)
        self._linger = False

    def handle(self) -> None:
        connections = self.server.app.connections
        if not connections.add(self.connection):
            return
        try:
            super().handle()
        finally:
            connections.remove(self.connection)

    def handle_one_request(self) -> None:
        """Idle-wait for the next request, then read and answer it under the request deadline."""
        connections = self.server.app.connections
        if not self._await_request() or not connections.begin(self.connection):
            self.close_connection = True
            return
        self._expect_continue = False
        self._body_pending = False
        self._responded = False
        self.rfile.start(REQUEST_READ_TIMEOUT_S)
        try:
            super().handle_one_request()
        finally:
            self.rfile.clear()
            if not connections.end(self.connection):
                self.close_connection = True

    def _await_request(self) -> bool:
        """Up to 60 s for the first byte of a request; False on EOF, timeout or stop."""
        self.connection.settimeout(IDLE_TIMEOUT_S)
        try:
            return bool(self.rfile.peek(1))
        except (OSError, ValueError):
            return False

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            if self._linger:
                _linger(self.connection)

    # -- requests --

    def _dispatch(self) -> None:
        """Route one request; an exception becomes a 500 and never kills the server."""
        self._body_pending = _declares_body(self.headers)
        try:
            self.server.app.route(self)
        except Exception as exc:  # noqa: BLE001
            self.server.app.log.error("webhook handler failed", method=self.command,
                                      path=request_path(self.path), error="%s: %s" % (type(exc).__name__, exc))
            self.close_connection = True
            if not self._responded:
                self.send_json(500, {"error": ERR_INTERNAL})

    def handle_expect_100(self) -> bool:
        """Defer ``100 Continue`` until the body is wanted, so a 404/405/413 never invites the upload."""
        self._expect_continue = True
        return True

    def read_body(self, limit: int) -> Tuple[Optional[bytes], Optional[Tuple[int, dict]]]:
        """``(body, None)`` or ``(None, (status, error body))``; never reads more than ``limit``.

        A chunked body is not read (the request counts as empty and the
        connection closes after the reply, spec 40 §1.6).
        """
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            return b"", None
        lengths = {value.strip() for value in self.headers.get_all("Content-Length") or ()}
        if not lengths:
            return b"", None
        length_text = lengths.pop()
        if lengths or not _DIGITS.match(length_text):
            return None, (400, {"error": ERR_BAD_LENGTH})
        length = int(length_text)
        if length > limit:
            self.server.app.log.warn("webhook payload too large", path=request_path(self.path),
                                     content_length=length, max_body_size=limit)
            return None, (413, {"error": ERR_TOO_LARGE})
        if length == 0:
            return b"", None
        return self._read_exactly(length)

    def _read_exactly(self, length: int) -> Tuple[Optional[bytes], Optional[Tuple[int, dict]]]:
        if self._expect_continue:
            self.send_response_only(100)
            self.end_headers()
        chunks, received = [], 0
        try:
            while received < length:
                chunk = self.rfile.read1(min(65536, length - received))
                if not chunk:
                    break
                chunks.append(chunk)
                received += len(chunk)
        except (OSError, ValueError) as exc:
            self.server.app.log.warn("webhook body read failed", path=request_path(self.path), error=str(exc))
            return None, (500, {"error": ERR_READ})
        if received < length:
            return None, (500, {"error": ERR_READ})
        self._body_pending = False
        return b"".join(chunks), None

    # -- responses --

    def send_json(self, status: int, value, headers=()) -> None:
        """One JSON reply; closes the connection when a body was left unread or we are stopping."""
        body = encode_json(value)
        if self._body_pending:
            self.close_connection = True
            self._linger = True
        if self.server.app.connections.stopping:
            self.close_connection = True
        self._responded = True
        self.connection.settimeout(RESPONSE_WRITE_TIMEOUT_S)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, header_value in headers:
            self.send_header(name, header_value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if getattr(self, "command", None) != "HEAD":
            self.wfile.write(body)

    def send_error(self, code, message=None, explain=None) -> None:
        """Parser errors (bad request line, huge headers) get the JSON shape too (A4) and close."""
        self.close_connection = True
        self._body_pending = True  # the stream is in an unknown state: close, lingering
        try:
            phrase = HTTPStatus(code).phrase.lower()
        except ValueError:
            phrase = "error"
        self.send_json(int(code), {"error": phrase})

    def send_response(self, code, message=None) -> None:
        """No ``Server`` header (the original sends none); ``Date`` as usual."""
        self.log_request(code)
        self.send_response_only(code, message)
        self.send_header("Date", self.date_time_string())

    def log_request(self, code="-", size="-") -> None:
        """DEBUG only, and never the query string (it could hold a token)."""
        self.server.app.log.debug("webhook request", method=getattr(self, "command", None) or "",
                                  status=int(code), path=request_path(getattr(self, "path", None) or ""))

    def log_message(self, format, *args) -> None:  # noqa: A002 - the stdlib's signature
        self.server.app.log.debug("webhook http: " + (format % args))


def _linger(sock) -> None:
    """Half-close, then discard what the client still sends, for a bounded time.

    Closing with unread input makes the kernel send a reset, which can
    destroy our reply in the client's buffers before it reads it (Go's
    server lingers the same way).
    """
    try:
        sock.shutdown(socket.SHUT_WR)
        deadline, total = time.monotonic() + LINGER_S, 0
        while total < LINGER_MAX_BYTES:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            sock.settimeout(remaining)
            chunk = sock.recv(65536)
            if not chunk:
                break
            total += len(chunk)
    except OSError:
        pass


__all__ = ["HEALTH_PATH", "WebhookServer", "encode_json", "find_endpoint", "parse_listen", "request_path",
           "verify_signature", "webhook_payload"]
