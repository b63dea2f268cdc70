"""Baggage: durable values that travel along a pipeline run (spec 30 §7).

Payloads are per hop (P9), so anything a later step needs must be *claimed*
into the run's baggage.  This module holds the pure parts:

- ``compile_claims`` checks a step's ``baggage:`` block at load time, so a
  malformed claim refuses start instead of failing a routing transaction;
- ``Claims.apply`` evaluates the claims against the event routed into the
  step and the source baggage;
- ``accrete`` / ``merge_branches`` fold claims into the inherited baggage,
  where an inherited value may be repeated but never changed;
- ``request_context`` / ``event_payload_for_step`` shape what a plugin sees.

No database, clock or threads here: the router and dispatcher own those.
"""
from __future__ import annotations

import copy
import json
import re
from typing import Dict, List, Optional, Tuple

from ductile_lib.templating import is_missing, literal_text, quote, resolve_path

MAX_CONTEXT_BYTES = 1048576
RESERVED = "ductile"

_SEGMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


class BaggageError(ValueError):
    """A claim that cannot load, resolve or accrete; the message is operator-facing."""


# --- equality (§5.2) --------------------------------------------------------------------

def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def values_equal(a, b) -> bool:
    """The conditions equality: numbers by value (3 == 3.0), booleans only booleans.

    Python's ``==`` would call ``True == 1`` equal and compare dicts with it,
    so containers are walked here with the stricter rule.
    """
    if _is_number(a) and _is_number(b):
        return a == b
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(values_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(values_equal(x, y) for x, y in zip(a, b))
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, str) and isinstance(b, str):
        return a == b
    return False


# --- load-time validation (§2.3) --------------------------------------------------------

def _check_key(key: str) -> None:
    """A claim key (or namespace) is a dotted identifier outside ``ductile``."""
    segments = key.split(".")
    if not all(_SEGMENT.match(s) for s in segments):
        raise BaggageError("baggage key %s must be a dotted identifier (segments [A-Za-z_][A-Za-z0-9_]*)"
                           % quote(key))
    if segments[0] == RESERVED:
        raise BaggageError("baggage key %s is reserved" % quote(key))


def _check_from(expr: str) -> None:
    """``from`` reads the routed event's payload, whole or a sub-object."""
    parts = expr.split(".")
    if parts[0] != "payload" or any(not p for p in parts[1:]):
        raise BaggageError("baggage from %s must be payload or a payload.<path>" % quote(expr))


def _scalar_text(key: str, value) -> str:
    """A claim value as trimmed text; objects, lists and empty values are refused."""
    if isinstance(value, (dict, list)):
        raise BaggageError("baggage.%s must be a scalar string" % key)
    text = literal_text(value).strip()
    if not text:
        raise BaggageError("baggage.%s must be non-empty" % key)
    return text


def _split_spec(spec: dict) -> Tuple[Dict[str, str], Optional[str], Optional[str]]:
    """(mappings, from, namespace) with every key and value checked."""
    mappings: Dict[str, str] = {}
    bulk_from = namespace = None
    for raw_key, raw_value in spec.items():
        key = literal_text(raw_key).strip()
        if not key:
            raise BaggageError("baggage keys must be non-empty")
        value = _scalar_text(key, raw_value)
        if key == "from":
            bulk_from = value
        elif key == "namespace":
            namespace = value
        else:
            _check_key(key)
            mappings[key] = value
    return mappings, bulk_from, namespace


def compile_claims(spec: dict, where: str) -> "Claims":
    """Validate a step's ``baggage:`` block; errors read ``<where>: <message>``."""
    if spec is None:
        return Claims({}, None, None)
    try:
        if not isinstance(spec, dict):
            raise BaggageError("baggage must be a mapping")
        mappings, bulk_from, namespace = _split_spec(spec)
        if bulk_from is not None and namespace is None:
            raise BaggageError("baggage from requires namespace")
        if namespace is not None and bulk_from is None:
            raise BaggageError("baggage namespace requires from")
        if bulk_from is not None:
            _check_from(bulk_from)
            _check_key(namespace)
    except BaggageError as exc:
        raise BaggageError("%s: %s" % (where, exc) if where else str(exc)) from None
    return Claims(mappings, bulk_from, namespace)


# --- run time (§7.2) --------------------------------------------------------------------

def _set_path(dst: dict, path: str, value) -> None:
    """Write a deep copy of ``value`` at a dotted path, creating objects on the way."""
    parts = path.split(".")
    current = dst
    for i, part in enumerate(parts[:-1]):
        child = current.setdefault(part, {})
        if not isinstance(child, dict):
            raise BaggageError("baggage path %s conflicts with scalar prefix %s"
                               % (quote(path), quote(".".join(parts[:i + 1]))))
        current = child
    current[parts[-1]] = copy.deepcopy(value)


class Claims:
    """A step's compiled claims: ``{dotted.key: path}`` plus an optional bulk import."""

    __slots__ = ("mappings", "bulk_from", "namespace")

    def __init__(self, mappings: Dict[str, str], bulk_from: Optional[str], namespace: Optional[str]):
        self.mappings = dict(mappings)
        self.bulk_from = bulk_from
        self.namespace = namespace

    def is_empty(self) -> bool:
        return not self.mappings and self.bulk_from is None

    def apply(self, payload, context: dict) -> dict:
        """The nested updates these claims make, read from the routed event and source baggage.

        Bulk first, then mappings in key order, so a mapping may refine the
        namespace (``ns.extra``) and the outcome never depends on YAML order.
        """
        scope = {"payload": payload, "context": context}
        out: dict = {}
        if self.bulk_from is not None:
            _set_path(out, self.namespace, self._bulk_value(scope))
        for key in sorted(self.mappings):
            expr = self.mappings[key]
            value = resolve_path(scope, expr)
            if is_missing(value):
                raise BaggageError("resolve baggage %s from %s: path not found" % (key, quote(expr)))
            _set_path(out, key, value)
        return out

    def _bulk_value(self, scope: dict) -> dict:
        value = resolve_path(scope, self.bulk_from)
        if is_missing(value):
            raise BaggageError("resolve baggage from %s: path not found" % quote(self.bulk_from))
        if not isinstance(value, dict):
            raise BaggageError("baggage from %s must resolve to an object" % quote(self.bulk_from))
        return value

    def __repr__(self) -> str:
        return "Claims(%r, from=%r, namespace=%r)" % (self.mappings, self.bulk_from, self.namespace)


# --- accretion (§7.3) -------------------------------------------------------------------

def _join(prefix: str, key: str) -> str:
    return key if not prefix else prefix + "." + key


def _accrete_into(dst: dict, updates: dict, prefix: str) -> None:
    """Fold ``updates`` into ``dst`` (a private copy) under the immutability rule."""
    for key, new in updates.items():
        path = _join(prefix, key)
        if key not in dst:
            dst[key] = copy.deepcopy(new)
        elif path == RESERVED:
            dst[key] = _control_merge(dst[key], new)
        elif values_equal(dst[key], new):
            continue
        elif isinstance(dst[key], dict) and isinstance(new, dict):
            _accrete_into(dst[key], new, path)
        else:
            raise BaggageError("baggage path %s is immutable: inherited value differs from child value"
                               % quote(path))


def _control_merge(old, new):
    """``ductile.*`` is Ductile's own bookkeeping: each key given is overwritten.

    Keys the update omits are kept; to clear one (an emptied split stack) the
    caller writes it explicitly.
    """
    if isinstance(old, dict) and isinstance(new, dict):
        merged = dict(old)
        merged.update(copy.deepcopy(new))
        return merged
    return copy.deepcopy(new)


def accrete(parent: dict, updates: dict) -> dict:
    """A new accumulated dict: ``parent`` deep-merged with ``updates``; inputs untouched.

    Equal values (3 vs 3.0) keep the parent's; a differing inherited value is
    an error, because downstream steps rely on what earlier steps claimed.
    """
    result = copy.deepcopy(parent) if parent else {}
    _accrete_into(result, updates or {}, "")
    return result


def merge_branches(accumulated: List[dict]) -> dict:
    """A join's baggage: every arrival's accumulated, in branch order, by the accretion rule."""
    result: dict = {}
    for item in accumulated:
        result = accrete(result, item)
    return result


def check_size(accumulated: dict) -> None:
    """Refuse a context over 1 MiB: it would be copied into every later request."""
    text = json.dumps(accumulated, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    if len(text.encode("utf-8")) > MAX_CONTEXT_BYTES:
        raise BaggageError("event context exceeds max size (%d bytes)" % MAX_CONTEXT_BYTES)


# --- what a plugin receives (§7.4) ------------------------------------------------------

_STEP_KEYS = (("pipeline", "ductile_pipeline"), ("step_id", "ductile_step_id"),
              ("instance_id", "ductile_pipeline_instance_id"))
_DEPTH_KEYS = (("route_depth", "ductile_route_depth"), ("route_max_depth", "ductile_route_max_depth"))


def request_context(plugin: str, accumulated: dict, step: Optional[dict]) -> dict:
    """The request's ``context``: plugin name, the baggage, and the step's coordinates.

    Later sources win, as in the original (baggage over ``ductile_plugin``,
    step coordinates over baggage); empty strings and zero depths are left out.
    """
    out = {"ductile_plugin": plugin}
    out.update(copy.deepcopy(accumulated or {}))
    if step:
        for name, key in _STEP_KEYS:
            if step.get(name):
                out[key] = step[name]
        for name, key in _DEPTH_KEYS:
            depth = step.get(name)
            if _is_number(depth) and depth > 0:
                out[key] = depth
    return out


def event_payload_for_step(stored_payload: dict, context: dict) -> dict:
    """The payload as sent: the stored one plus every context key it lacks (own keys win)."""
    out = copy.deepcopy(stored_payload) if stored_payload else {}
    for key, value in (context or {}).items():
        if key not in out:
            out[key] = copy.deepcopy(value)
    return out
