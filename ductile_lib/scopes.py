"""Scope strings and scope files (spec 10 §6).

Reading a token's scope file and checking its ``scopes_hash`` lives here so
that config loading, ``config check`` and the API's authorisation share one
reading of what a scope means.
"""
from __future__ import annotations

import json
import re

from ductile_lib.hashing import blake3_hex

RESOURCES = ("plugin", "jobs", "events", "system")
_NO_ACCESS_PREFIXES = ("trigger:", "admin:", "healthz:", "queue:")
_PLUGIN_RULE = re.compile(r"^[^:]+:(allow|deny):[^:]+$")


def read_scope_file(path: str, expected_hash: str):
    """``(scopes, problem)`` for a token's scope file; problem is "" when usable.

    The file must hash to ``expected_hash`` (``blake3:<hex>`` of its bytes),
    so a scope file edited by hand cannot widen a token silently.
    """
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except OSError as exc:
        return (), "scope file %s is unreadable: %s" % (path, exc.strerror or exc)
    actual = "blake3:" + blake3_hex(raw)
    if not expected_hash:
        return (), "scopes_hash is missing (run 'ductile config token rehash')"
    if actual != expected_hash.strip():
        return (), "scope file %s does not match scopes_hash" % path
    try:
        return tuple(parse_scope_document(json.loads(raw.decode("utf-8")))), ""
    except (ValueError, UnicodeDecodeError) as exc:
        return (), "scope file %s is invalid: %s" % (path, exc)


def parse_scope_document(document) -> list:
    """A scope file is ``{"scopes": [...]}`` or a bare JSON array of strings."""
    scopes = document.get("scopes") if isinstance(document, dict) else document
    if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
        raise ValueError('want {"scopes": [...]} or a JSON array of strings')
    return [s.strip() for s in scopes if s.strip()]


def classify_scope(scope: str, plugin_names) -> tuple:
    """``(severity, message)`` for one scope string (spec 10 §6.3).

    severity is "" for a valid enforced scope, "warning" for a legacy form
    that grants nothing, "error" otherwise.
    """
    scope = scope.strip()
    if scope == "*":
        return "", ""
    if scope.startswith(_NO_ACCESS_PREFIXES) or _PLUGIN_RULE.match(scope):
        return "warning", 'scope "%s" grants no access' % scope
    target, access = scope, ""
    if scope.startswith("read:"):
        target, access = scope[len("read:"):], "ro"
    else:
        target, _, access = scope.rpartition(":")
    if access not in ("ro", "rw") or not target:
        return "error", ('invalid scope "%s" (expected *, <resource>:ro|rw, <plugin>:ro|rw or read:<x>)' % scope)
    if target in RESOURCES or target in plugin_names:
        return "", ""
    return "error", 'scope "%s" references unknown plugin "%s"' % (scope, target)
