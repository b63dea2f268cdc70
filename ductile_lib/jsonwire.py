"""JSON exactly as Ductile writes it on the wire (API spec §1.3).

Clients of the original Go Ductile see compact JSON with ``<``, ``>`` and
``&`` written as ``\\u003c``, ``\\u003e`` and ``\\u0026`` (Go's encoder does
this so JSON can sit inside HTML), every other character raw UTF-8, and a
newline after each response body.  Byte-for-byte fixtures and SSE ``data:``
lines compare against that, so every HTTP surface encodes through here.
"""
from __future__ import annotations

import json

# The three characters Go's encoder escapes.  They can only occur inside JSON
# strings (never in the syntax), so replacing them in the encoded text is safe.
_HTML_ESCAPES = (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"))


def dumps(obj: object, sort_keys: bool = False) -> str:
    """Compact JSON text with Go's HTML escapes; NaN and infinities are refused.

    ``sort_keys`` is for free-form maps (event data, plugin payloads); fixed
    objects keep the insertion order the spec shows.  Like Go, a float that
    JSON cannot represent raises (``ValueError``) instead of writing ``NaN``.
    """
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"),
                      sort_keys=sort_keys, allow_nan=False)
    for raw, escaped in _HTML_ESCAPES:
        if raw in text:
            text = text.replace(raw, escaped)
    return text


def body(obj: object, sort_keys: bool = False) -> bytes:
    """A response body: ``dumps`` plus a newline, UTF-8 encoded.

    A lone surrogate (undecodable bytes smuggled in a ``str``) is replaced
    rather than failing the whole response, as Go replaces invalid UTF-8.
    """
    return (dumps(obj, sort_keys=sort_keys) + "\n").encode("utf-8", "replace")
