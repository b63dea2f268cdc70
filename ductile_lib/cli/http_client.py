"""The small HTTP client every API-talking command shares (spec 50 §1.6).

``api``, ``plugin list|run --api-url``, ``system reload --api-url`` and
``system watch`` all resolve a base URL and a bearer key the same way and
report failures with the same words, so that lives here once.  It is
``http.client`` rather than ``urllib``: no redirects followed behind the
operator's back, any method, and the status line's own reason phrase.
"""
from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
from typing import NamedTuple, Optional
from urllib.parse import urlsplit

from ductile_lib.cli.common import EXIT_FAILURE, CliError

DEFAULT_URL = "http://localhost:8080"
DEFAULT_TIMEOUT_S = 30.0
API_KEY_MISSING = "Error: API key required. Use --api-key or DUCTILE_API_KEY env var."
KEY_ENV = "DUCTILE_API_KEY"


class Response(NamedTuple):
    """One HTTP reply: status code, headers (case-insensitive ``get``), raw body."""

    status: int
    headers: http.client.HTTPMessage
    body: bytes
    reason: str = ""


class RequestFailed(Exception):
    """The request never got a reply (refused, unreachable, timed out, bad URL)."""

    def __init__(self, reason: str, refused: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.refused = refused


# --- where and who ---------------------------------------------------------------

def base_url_from_listen(listen: str) -> str:
    """An ``api.listen`` value as a client base URL.

    A gateway listening on every interface (``0.0.0.0``, ``::`` or an empty
    host) is reached through loopback, which is always one of them.
    """
    value = (listen or "").strip()
    scheme = "http"
    if "://" in value:
        scheme, value = value.split("://", 1)
    value = value.rstrip("/")
    host, sep, port = value.rpartition(":")
    if not sep or "]" in port:  # no port at all
        host, port = value, ""
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host in ("::", "[::]"):
        host = "[::1]"
    return "%s://%s%s" % (scheme, host, ":" + port if port else "")


def normalize_base(url: str) -> str:
    """A base URL the operator typed, without the trailing ``/`` paths are appended to."""
    return (url or "").strip().rstrip("/")


def resolve_base_url(explicit: Optional[str], cfg) -> str:
    """``--api-url``, else the config's ``api.listen``, else ``http://localhost:8080``."""
    if explicit:
        return normalize_base(explicit)
    if cfg is not None:
        return base_url_from_listen(cfg.api.listen)
    return DEFAULT_URL


def config_token(cfg) -> str:
    """The config's first inline ``api.auth.tokens`` token ('' when none or no config)."""
    if cfg is None:
        return ""
    inline = [t.token for t in cfg.api.tokens if t.source.startswith("api.auth.tokens")]
    return inline[0] if inline else ""


def resolve_key(explicit: Optional[str], cfg=None) -> str:
    """``--api-key``, else ``$DUCTILE_API_KEY``, else (when a config is given) its first token."""
    return explicit or os.environ.get(KEY_ENV, "") or config_token(cfg)


def require_key(explicit: Optional[str], cfg=None, message: str = API_KEY_MISSING) -> str:
    """The key, or the §1.6 error (exit 1) when there is none."""
    key = resolve_key(explicit, cfg)
    if not key:
        raise CliError(message)
    return key


def bearer(key: str) -> dict:
    return {"Authorization": "Bearer %s" % key} if key else {}


# --- one request -------------------------------------------------------------------

def request(method: str, url: str, body: Optional[bytes] = None, headers: Optional[dict] = None,
            timeout: float = DEFAULT_TIMEOUT_S) -> Response:
    """Send one request and read the whole reply; raise RequestFailed without one.

    Any status is a reply (a 404 is an answer, not a failure): callers
    decide what an error status means for them.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise RequestFailed("unsupported URL %r" % url)
    try:
        port = parts.port
    except ValueError as exc:
        raise RequestFailed("invalid port in %r: %s" % (url, exc)) from None
    path = (parts.path or "/") + ("?" + parts.query if parts.query else "")
    conn = _connection(parts.scheme, parts.hostname, port, timeout)
    try:
        conn.request(method, path, body=body, headers=dict(headers or {}))
        reply = conn.getresponse()
        return Response(reply.status, reply.headers, reply.read(), reply.reason or "")
    except ConnectionRefusedError as exc:
        raise RequestFailed(_describe(exc), refused=True) from None
    except (OSError, http.client.HTTPException) as exc:
        raise RequestFailed(_describe(exc)) from None
    finally:
        conn.close()


def request_json(method: str, url: str, key: str = "", payload=None, timeout: float = DEFAULT_TIMEOUT_S
                 ) -> Response:
    """A request with an optional JSON body and the bearer key: what the commands send."""
    headers = {"Accept": "application/json"}
    headers.update(bearer(key))
    data = None
    if payload is not None:
        data = json.dumps(payload).encode("utf-8")
        headers["Content-Type"] = "application/json"
    return request(method, url, data, headers, timeout)


def _connection(scheme: str, host: str, port: Optional[int], timeout: float):
    if scheme == "https":
        return http.client.HTTPSConnection(host, port, timeout=timeout, context=ssl.create_default_context())
    return http.client.HTTPConnection(host, port, timeout=timeout)


def _describe(exc: BaseException) -> str:
    """A one-line reason: the OS's words when it has them."""
    if isinstance(exc, socket.timeout):
        return "timed out"
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return text


# --- turning replies into CLI errors ------------------------------------------------

def decode_body(body: bytes):
    """The body as JSON when it is JSON, else as text (for ``--json`` error contexts)."""
    text = body.decode("utf-8", "replace")
    try:
        return json.loads(text)
    except ValueError:
        return text


def api_error(response: Response, context: Optional[dict] = None, prefix: str = "API error") -> CliError:
    """``<prefix> (<code>): <body>`` (exit 1) with ``http_status`` and ``response`` in the context."""
    text = response.body.decode("utf-8", "replace").strip()
    return CliError("%s (%d): %s" % (prefix, response.status, text), EXIT_FAILURE,
                    dict(context or {}, http_status=response.status, response=decode_body(response.body)))


def request_failed(exc: RequestFailed, context: Optional[dict] = None) -> CliError:
    """``Request failed: …`` (exit 1)."""
    return CliError("Request failed: %s" % exc.reason, EXIT_FAILURE, dict(context or {}))


def call(method: str, url: str, key: str = "", payload=None, timeout: float = DEFAULT_TIMEOUT_S,
         context: Optional[dict] = None) -> Response:
    """``request_json`` that turns a transport failure or a status >= 400 into a CliError."""
    try:
        response = request_json(method, url, key, payload, timeout)
    except RequestFailed as exc:
        raise request_failed(exc, dict(context or {}, url=url)) from None
    if response.status >= 400:
        raise api_error(response, context)
    return response
