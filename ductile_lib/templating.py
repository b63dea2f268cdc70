"""`with:` string templates (spec 30 §6).

A step's ``with`` map reshapes the payload just before its plugin runs.  Each
value is literal text with ``{path}`` placeholders.  Templates are parsed when
the config loads so a typo refuses start instead of failing jobs later; only
a missing value at run time is a job error.

Rendering rules that keep values honest:

- no placeholder: the literal string (YAML ``3``/``true`` arrive as text),
- one placeholder and nothing else: the value with its JSON type, so
  ``"{payload.count}"`` hands a plugin the number 3, not ``"3"``,
- mixed text: a string where numbers are written the way people read them
  (``1000000``, not Go's ``1e+06``) and objects as compact JSON (not Go's
  ``map[a:1]``).
"""
from __future__ import annotations

import copy
import json
import math
from typing import Dict, List, Optional, Tuple

ROOTS = ("payload", "context", "config")

_MISSING = object()


class TemplateError(ValueError):
    """A template that cannot parse (at load) or cannot resolve (at run time)."""


# --- path resolution (shared with baggage claims) --------------------------------------

def quote(text: str) -> str:
    """Double-quote like Go's ``%q`` so messages match the original's wording."""
    return json.dumps(text, ensure_ascii=False)


def resolve_path(scope: dict, path: str):
    """The value at a dotted path, or ``_MISSING``.

    Paths walk objects only (a list on the way means absent); a present
    ``null`` is present; a root the scope lacks (or holds as ``None``) is
    absent, as is an unknown root or an empty segment.  Never raises: callers
    turn absence into their own "path not found" message.
    """
    parts = path.strip().split(".")
    current = scope.get(parts[0]) if parts[0] in ROOTS else None
    if current is None:
        return _MISSING
    for segment in parts[1:]:
        if not segment.strip() or not isinstance(current, dict) or segment not in current:
            return _MISSING
        current = current[segment]
    return current


def is_missing(value) -> bool:
    """True for the sentinel ``resolve_path`` returns when nothing is there."""
    return value is _MISSING


# --- value formatting -------------------------------------------------------------------

def format_number(value) -> str:
    """Integers and integral floats as digits; other floats shortest round-trip.

    Python's ``repr`` of a float is already the shortest text that reads back
    to the same float (``2.5``, ``1e-05``), which is what the spec asks for.
    """
    if isinstance(value, float):
        if math.isfinite(value) and value.is_integer():
            return str(int(value))
        return repr(value)
    return str(value)


def _json_ready(value):
    """Integral floats become ints so nested numbers read like scalar ones (3, not 3.0)."""
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_ready(v) for v in value]
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return value


def format_value(value) -> str:
    """How a resolved value reads inside mixed text (§6)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return format_number(value)
    if isinstance(value, (dict, list)):
        return json.dumps(_json_ready(value), ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    return str(value)


def literal_text(value) -> str:
    """The text a non-string YAML scalar stands for (``3`` → ``"3"``, ``true`` → ``"true"``)."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    return format_value(value)


# --- parsing ----------------------------------------------------------------------------

Segment = Tuple[str, str]  # ("text", literal) or ("path", dotted path)


def _check_path(path: str, text: str) -> None:
    """Reject what can never resolve, so the mistake shows at load time."""
    parts = path.split(".")
    if parts[0] not in ROOTS:
        raise TemplateError("unsupported path root %s in template %s" % (quote(parts[0]), quote(text)))
    if any(not p.strip() for p in parts[1:]):
        raise TemplateError("path %s contains empty segment in template %s" % (quote(path), quote(text)))


def _next_placeholder(rest: str, text: str) -> Tuple[int, int, str]:
    """(start, end, path) of the next ``{path}`` in ``rest``, or (-1, -1, "") when none."""
    start, close = rest.find("{"), rest.find("}")
    if close >= 0 and (start < 0 or close < start):
        raise TemplateError("unexpected } in template %s" % quote(text))
    if start < 0:
        return -1, -1, ""
    end = rest.find("}", start)
    if end < 0:
        raise TemplateError("unclosed { in template %s" % quote(text))
    path = rest[start + 1:end].strip()
    if not path:
        raise TemplateError("empty {} in template %s" % quote(text))
    if "{" in path:
        raise TemplateError("nested { in template %s" % quote(text))
    _check_path(path, text)
    return start, end, path


def parse(text: str) -> List[Segment]:
    """Split template text into literal and placeholder segments (§6 grammar)."""
    segments: List[Segment] = []
    rest = text
    while rest:
        start, end, path = _next_placeholder(rest, text)
        if start < 0:
            segments.append(("text", rest))
            break
        if start > 0:
            segments.append(("text", rest[:start]))
        segments.append(("path", path))
        rest = rest[end + 1:]
    return segments


# --- the compiled template --------------------------------------------------------------

class Template:
    """One parsed ``with`` value; immutable and safe to share between threads."""

    __slots__ = ("text", "_segments", "_single")

    def __init__(self, text: str, segments: List[Segment]):
        self.text = text
        self._segments = tuple(segments)
        self._single: Optional[str] = _single_path(text)

    @property
    def paths(self) -> List[str]:
        """Every placeholder path, in order (for config inspection and checks)."""
        return [value for kind, value in self._segments if kind == "path"]

    def render(self, scope: dict):
        """The value for this template against ``scope`` (keys payload/context/config).

        A single placeholder returns a deep copy, so the caller can store it
        in the payload it was read from without creating shared structure.
        """
        if self._single is not None:
            return copy.deepcopy(_resolve(scope, self._single))
        out = []
        for kind, value in self._segments:
            out.append(value if kind == "text" else format_value(_resolve(scope, value)))
        return "".join(out)

    def __repr__(self) -> str:
        return "Template(%r)" % self.text


def _single_path(text: str) -> Optional[str]:
    """The path when the whole text (trimmed) is one placeholder, else None."""
    segments = parse(text.strip())
    if len(segments) == 1 and segments[0][0] == "path":
        return segments[0][1]
    return None


def _resolve(scope: dict, path: str):
    value = resolve_path(scope, path)
    if value is _MISSING:
        raise TemplateError("resolve %s: path not found" % quote(path))
    return value


def compile_template(text) -> Template:
    """Parse and validate one template at load; non-strings become their literal text."""
    text = literal_text(text)
    return Template(text, parse(text))


# --- `with` maps ------------------------------------------------------------------------

def compile_with(mapping: dict, where: str) -> Dict[str, Template]:
    """Compile a step's ``with`` map; errors name the key (``<where>.<key>: …``)."""
    if mapping is None:
        return {}
    if not isinstance(mapping, dict):
        raise TemplateError("%s: must be a mapping" % where)
    compiled: Dict[str, Template] = {}
    for key, value in mapping.items():
        name = literal_text(key)
        if isinstance(value, (dict, list)):
            raise TemplateError("%s.%s: must be a string" % (where, name))
        try:
            compiled[name] = compile_template(value)
        except TemplateError as exc:
            raise TemplateError("%s.%s: %s" % (where, name, exc)) from None
    return compiled


def apply_with(templates: Dict[str, Template], scope: dict) -> dict:
    """Render every template against one snapshot; return ``{key: value}`` to set.

    Keys go in sorted order so the first failure reported is deterministic;
    because nothing is written until all succeed, no key can see another's
    result (the spec's single pre-remap snapshot).
    """
    updates = {}
    for key in sorted(templates):
        try:
            updates[key] = templates[key].render(scope)
        except TemplateError as exc:
            raise TemplateError("%s: %s" % (key, exc)) from None
    return updates
