"""API credentials, bearer extraction and scope gates (spec 40 §2, decisions A1-A3).

Pure logic: no HTTP server, no clock, no I/O.  The API front calls, per
request and in the order of spec 40 §2.5::

    token, error = extract_bearer(headers.get("Authorization"), query_token, allow_query)
    credential = table.authenticate(token)          # None -> 401 "invalid token"
    allows(credential.scopes, GATE_JOBS)            # False -> 403 "insufficient scope"

The table is rebuilt from every loaded config (start and reload), so a
reload's new tokens apply to the next request without any shared mutable
state here.
"""
from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Iterable, Optional, Tuple

# The one wildcard, and the scope families that are never plugin names (§2.4).
WILDCARD = "*"
FAMILIES = frozenset({"plugin", "jobs", "events", "system"})
RO, RW = "ro", "rw"
_LEGACY_READ = "read:"

# Route gates of the §3 table.
GATE_OPEN = "open"  # no token needed (`/`, `/healthz`)
GATE_ANY = "any"  # any valid token (discovery routes)
GATE_PLUGIN = "plugin"  # `GET /plugin/{p}`, `POST /plugin/{p}/{c}` (route gate)
GATE_PIPELINE = "pipeline"  # `POST /pipeline/{name}`
GATE_JOBS = "jobs"  # job, job-log, scheduler and analytics reads
GATE_EVENTS = "events"  # `GET /events`
GATE_SYSTEM_RO = "system:ro"  # `GET /config/view`
GATE_SYSTEM_RW = "system:rw"  # `POST /system/reload`
GATES = frozenset({GATE_OPEN, GATE_ANY, GATE_PLUGIN, GATE_PIPELINE, GATE_JOBS, GATE_EVENTS,
                   GATE_SYSTEM_RO, GATE_SYSTEM_RW})

# The 401/403 messages of spec 40 §2.2-§2.4, shared so every front says the same.
ERR_FORMAT = "invalid Authorization header format"
ERR_MISSING = "missing or invalid Authorization header"
ERR_INVALID_TOKEN = "invalid token"
ERR_INSUFFICIENT_SCOPE = "insufficient scope"

_BEARER = "Bearer "


def normalize_scopes(scopes: Optional[Iterable[str]]) -> frozenset:
    """The scope set a credential is checked against (§2.4).

    Trim, drop empties and duplicates, rewrite legacy ``read:<x>`` to
    ``<x>:ro``, then add ``<x>:ro`` for every ``<x>:rw`` so that every later
    check is one exact set lookup ("rw implies ro everywhere").
    """
    result = set()
    for scope in scopes or ():
        scope = str(scope).strip()
        if not scope:
            continue
        if scope.startswith(_LEGACY_READ) and scope[len(_LEGACY_READ):].strip():
            scope = scope[len(_LEGACY_READ):].strip() + ":" + RO
        result.add(scope)
    implied = {scope[:-len(RW)] + RO for scope in result if scope.endswith(":" + RW) and len(scope) > 3}
    return frozenset(result | implied)


@dataclass(frozen=True)
class Credential:
    """One usable API credential; ``source`` names where it came from (never the token)."""

    token: str
    scopes: frozenset
    source: str

    def __repr__(self) -> str:  # a credential must never print its token (K4)
        return "Credential(source=%r, scopes=%r)" % (self.source, sorted(self.scopes))


class CredentialTable:
    """The ordered credentials of one config: inline ``api.auth.tokens`` first, then ``tokens.yaml``."""

    def __init__(self, credentials: Iterable[Credential] = ()):
        self.credentials: Tuple[Credential, ...] = tuple(c for c in credentials if c.token)
        self._encoded = tuple(c.token.encode("utf-8") for c in self.credentials)

    @classmethod
    def from_config(cls, cfg) -> "CredentialTable":
        """Built from ``cfg.api.tokens``, which config loading already limited to usable ones, in order."""
        return cls(Credential(t.token, normalize_scopes(t.scopes), t.source) for t in cfg.api.tokens)

    @property
    def is_empty(self) -> bool:
        """True when nothing can log in (WARN ``no API tokens configured``, every protected route 401s)."""
        return not self.credentials

    def authenticate(self, token: Optional[str]) -> Optional[Credential]:
        """The first credential equal to ``token``, or None (§2.3).

        Every credential is compared, in constant time each, even after a
        match: how long a lookup takes must not tell which entry (or which
        prefix) matched.  Bytes, not str, because ``compare_digest`` refuses
        non-ASCII str.
        """
        if not token:
            return None
        given = token.encode("utf-8")
        found = None
        for credential, encoded in zip(self.credentials, self._encoded):
            if hmac.compare_digest(given, encoded) and found is None:
                found = credential
        return found

    def check(self, authorization_header: Optional[str], query_token: Optional[str] = None,
              allow_query: bool = False) -> Tuple[Optional[Credential], Optional[str]]:
        """Extraction plus matching: ``(credential, None)`` or ``(None, <401 message>)``."""
        token, error = extract_bearer(authorization_header, query_token, allow_query)
        if error:
            return None, error
        credential = self.authenticate(token)
        return (credential, None) if credential else (None, ERR_INVALID_TOKEN)


def extract_bearer(authorization_header: Optional[str], query_token: Optional[str],
                   allow_query: bool) -> Tuple[Optional[str], Optional[str]]:
    """``(token, None)`` or ``(None, <401 message>)`` by spec 40 §2.2.

    A non-empty header that is not exactly ``Bearer <x>`` is a format error
    even when ``?token=`` is present: a client that sent the wrong scheme
    should hear about it, not be let in by a fallback.  The query token is
    only for ``GET /events`` (``allow_query``), because EventSource cannot
    set headers.
    """
    header = authorization_header or ""
    if header.strip():
        if not header.startswith(_BEARER):
            return None, ERR_FORMAT
        token = header[len(_BEARER):].strip()
        if token:
            return token, None
    if allow_query and query_token and query_token.strip():
        return query_token.strip(), None
    return None, ERR_MISSING


def _grants(scopes: frozenset, target: str, level: str) -> bool:
    """``<target>:<level>``, where ``rw`` also satisfies ``ro`` (even for un-normalised sets)."""
    if level == RO and target + ":" + RO in scopes:
        return True
    return target + ":" + RW in scopes


def _is_plugin_name(plugin: Optional[str]) -> bool:
    """A family name is never a plugin target: ``jobs:ro`` must not open a plugin called ``jobs``."""
    return bool(plugin) and plugin not in FAMILIES


def _plugin_access(scopes: frozenset, plugin: Optional[str], level: str) -> bool:
    """``*``, ``plugin:<level>`` or ``<plugin>:<level>``."""
    if WILDCARD in scopes or _grants(scopes, "plugin", level):
        return True
    return _is_plugin_name(plugin) and _grants(scopes, plugin, level)


def allows(scopes: frozenset, gate: str, plugin: Optional[str] = None) -> bool:
    """Whether ``scopes`` pass route ``gate`` (spec 40 §2.4 and the §3 table).

    ``scopes`` should be normalised (:func:`normalize_scopes`); rw-implies-ro
    also holds here without it, legacy ``read:`` does not.  Any scope string
    outside the enforced forms grants nothing.  An unknown gate is a bug in
    the caller and raises, so a typo can never open a route.
    """
    if gate not in GATES:
        raise ValueError("unknown scope gate %r" % (gate,))
    if gate in (GATE_OPEN, GATE_ANY):
        return True
    if gate == GATE_PLUGIN:
        return _plugin_access(scopes, plugin, RO)
    if WILDCARD in scopes:
        return True
    if gate == GATE_PIPELINE:
        return _grants(scopes, "plugin", RW)
    if gate == GATE_SYSTEM_RO:
        return _grants(scopes, "system", RO)
    if gate == GATE_SYSTEM_RW:
        return _grants(scopes, "system", RW)
    return _grants(scopes, gate, RO)  # GATE_JOBS, GATE_EVENTS


def can_run_command(scopes: frozenset, plugin: str, command_type: str) -> bool:
    """The handler-level check of ``POST /plugin/{p}/{c}`` (§4.4 step 5, decision A2).

    A ``read`` command needs ro; every other type (``write``, or anything a
    manifest invents) needs rw, so an unknown type fails closed.
    """
    return _plugin_access(scopes, plugin, RO if command_type == "read" else RW)


__all__ = [
    "Credential", "CredentialTable", "ERR_FORMAT", "ERR_INSUFFICIENT_SCOPE", "ERR_INVALID_TOKEN", "ERR_MISSING",
    "FAMILIES", "GATES", "GATE_ANY", "GATE_EVENTS", "GATE_JOBS", "GATE_OPEN", "GATE_PIPELINE", "GATE_PLUGIN",
    "GATE_SYSTEM_RO", "GATE_SYSTEM_RW", "WILDCARD", "allows", "can_run_command", "extract_bearer",
    "normalize_scopes",
]
