"""``ductile api <endpoint>``: a curl for the gateway's API (spec 50 §12).

It exists so that operators need neither curl nor the token at hand: the
URL and the key come from the config, ``-f`` builds the JSON body, and the
reply is pretty-printed.  It talks only to this machine or the private
network (the key it sends is the gateway's admin token), so the URL is
checked before anything is sent.
"""
from __future__ import annotations

import ipaddress
import json
import re
import sys
from typing import Optional
from urllib.parse import urlsplit

from ductile_lib.cli import http_client
from ductile_lib.cli.common import EXIT_FAILURE, EXIT_USAGE, Action, CliError, UsageError

TIMEOUT_S = 30.0
_INTEGER = re.compile(r"^-?[0-9]+$")


def _configure(parser) -> None:
    parser.add_argument("endpoint", nargs="?", default="", help="API path, e.g. /healthz or /jobs?limit=5")
    parser.add_argument("-X", "--method", help="HTTP method (default GET, POST with a body or fields)")
    parser.add_argument("-f", "--field", action="append", default=[], metavar="KEY=VALUE",
                        help="add a field to the JSON body (repeatable)")
    parser.add_argument("-H", "--header", action="append", default=[], metavar="'NAME: VALUE'",
                        help="add a request header (repeatable)")
    parser.add_argument("-b", "--body", help="raw request body; - reads stdin")
    parser.add_argument("-c", "--config", metavar="PATH", help="config file or directory (for URL and key)")
    parser.add_argument("--config-dir", metavar="DIR", help="config directory (for URL and key)")
    parser.add_argument("--api-url", help="base URL (default: api.listen of the config, else localhost:8080)")
    parser.add_argument("--api-key", help="bearer token (else $DUCTILE_API_KEY, else the config's first token)")
    parser.add_argument("-v", "--verbose", action="store_true", help="more output")


def run(args) -> int:
    """Send one request; the body goes to stdout, an error status also to stderr (exit 1)."""
    endpoint = (args.endpoint or "").strip()
    if not endpoint:
        raise UsageError("endpoint is required (e.g. ductile api /healthz)")
    fields = parse_fields(args.field)
    headers = parse_headers(args.header)
    body = _request_body(args.body, fields)
    method = (args.method or ("POST" if body is not None else "GET")).strip().upper()
    cfg = _config_or_none(args.config, args.config_dir)
    base = http_client.resolve_base_url(args.api_url, cfg)
    check_url(base)
    url = base + (endpoint if endpoint.startswith("/") else "/" + endpoint)
    response = _send(method, url, body, _final_headers(headers, body, http_client.resolve_key(args.api_key, cfg)))
    _print_body(response.body)
    if response.status >= 400:
        sys.stderr.write("Response Status: %d %s\n" % (response.status, response.reason))
        return EXIT_FAILURE
    return 0


# --- inputs ----------------------------------------------------------------------------

def parse_fields(items: list) -> Optional[dict]:
    """``key=value`` pairs as a flat object; ``true``/``false`` and integers keep their type."""
    if not items:
        return None
    fields = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError('Invalid field format "%s", expected key=value' % item)
        fields[key.strip()] = _field_value(value)
    return fields


def _field_value(text: str):
    if text in ("true", "false"):
        return text == "true"
    if _INTEGER.match(text):
        return int(text)
    return text


def parse_headers(items: list) -> list:
    """``Name: value`` lines as (name, value) pairs, in the order given."""
    headers = []
    for item in items:
        name, sep, value = item.partition(":")
        if not sep or not name.strip():
            raise UsageError('Invalid header format "%s", expected Header: value' % item)
        headers.append((name.strip(), value.strip()))
    return headers


def _request_body(text: Optional[str], fields: Optional[dict]) -> Optional[bytes]:
    """``-b`` (``-`` = stdin) wins over ``-f``; neither means no body."""
    if text is not None:
        if text == "-":
            text = sys.stdin.read()
        return text.encode("utf-8")
    if fields is not None:
        return json.dumps(fields, ensure_ascii=False).encode("utf-8")
    return None


def _config_or_none(config: Optional[str], config_dir: Optional[str]):
    """The config for URL and key; any problem just means "no config" (the API may be remote)."""
    from ductile_lib.config import load_config
    from ductile_lib.config_load import ConfigError

    attempts = [(config, config_dir)]
    if not config and not config_dir:
        attempts.append((".", None))
    for flag_config, flag_dir in attempts:
        try:
            return load_config(flag_config, flag_dir)
        except (ConfigError, OSError, ValueError):
            continue
    return None


def _final_headers(headers: list, body: Optional[bytes], key: str) -> dict:
    """The bearer key and a JSON content type by default; the operator's -H values win."""
    final = {"Accept": "application/json"}
    final.update(http_client.bearer(key))
    if body is not None:
        final["Content-Type"] = "application/json"
    lowered = {name.lower(): name for name in final}
    for name, value in headers:
        final.pop(lowered.get(name.lower(), name), None)
        final[name] = value
    return final


# --- the URL guard ---------------------------------------------------------------------

def check_url(url: str) -> None:
    """Refuse anything but http(s) to localhost or a loopback/private/link-local IP (exit 2)."""
    reason = url_problem(url)
    if reason:
        raise CliError("Invalid API URL: %s" % reason, EXIT_USAGE, {"url": url})


def url_problem(url: str) -> str:
    """Why ``url`` may not be used ('' when it may)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        return "cannot parse %r: %s" % (url, exc)
    if parts.scheme not in ("http", "https"):
        return 'unsupported scheme "%s" (want http or https)' % parts.scheme
    host = parts.hostname or ""
    if not host:
        return "missing host in %r" % url
    if host.lower() == "localhost":
        return ""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return 'host "%s" must be localhost or an IP literal' % host
    if address.is_loopback or address.is_private or address.is_link_local:
        return ""
    return 'host "%s" is not a loopback, private or link-local address' % host


# --- the exchange ------------------------------------------------------------------------

def _send(method: str, url: str, body: Optional[bytes], headers: dict):
    try:
        return http_client.request(method, url, body, headers, TIMEOUT_S)
    except http_client.RequestFailed as exc:
        raise http_client.request_failed(exc, {"url": url, "method": method}) from None


def _print_body(body: bytes) -> None:
    """JSON pretty-printed with 2 spaces; anything else as it came (plus a final newline)."""
    if not body:
        return
    text = body.decode("utf-8", "replace")
    try:
        text = json.dumps(json.loads(text), indent=2, ensure_ascii=False)
    except ValueError:
        pass
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    sys.stdout.flush()


ACTION = Action("call the gateway's HTTP API (curl-like)", _configure, run)
