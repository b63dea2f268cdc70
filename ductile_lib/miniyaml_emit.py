"""The ``miniyaml.dumps`` emitter (spec 10 §9.6), split from the parser.

Block style, 4-space indentation, and a string written plain only when both
``miniyaml.loads`` and PyYAML read it back unchanged; otherwise single- or
double-quoted, or a literal block for multi-line text.
"""
from __future__ import annotations

import math
import re

from ductile_lib.miniyaml import _MAX_KEY_CHARS, _PYYAML_IMPLICIT_RE, MAX_DEPTH, YAMLError, _resolve


def emit_lines(obj) -> list:
    """The YAML lines (without newlines) for ``obj``."""
    out = []
    _emit_root(obj, out)
    return out


_PRINTABLE_RE = re.compile("[\t\x20-\x7e\xa0-\u2027\u202a-\ud7ff\ue000-\ufefe\uff00-\ufffd"
                           "\U00010000-\U0010ffff]*")
_DUMP_ESCAPES = {"\0": "0", "\a": "a", "\b": "b", "\t": "t", "\n": "n", "\v": "v", "\f": "f",
                 "\r": "r", "\x1b": "e", '"': '"', "\\": "\\", "\x85": "N", "\u2028": "L", "\u2029": "P"}
_INDICATORS = "-?:,[]{}#&*!|>'\"%@`"


def _plain_ok(text):
    """Whether ``text`` can be written unquoted and read back as the same string by both parsers."""
    if not (text and _PRINTABLE_RE.fullmatch(text) and "\t" not in text and not text[0].isspace()
            and not text[-1].isspace() and text[0] not in _INDICATORS and ": " not in text
            and " #" not in text and not text.endswith(":") and not text.startswith("...")):
        return False
    if _PYYAML_IMPLICIT_RE.fullmatch(text):
        return False
    try:
        return isinstance(_resolve(text, 0, 0), str)
    except YAMLError:  # a huge decimal integer
        return False


def _double_quoted(text):
    """Double-quoted form with escapes for everything that is not printable."""
    out = []
    for ch in text:
        if ch in _DUMP_ESCAPES:
            out.append("\\" + _DUMP_ESCAPES[ch])
        elif _PRINTABLE_RE.fullmatch(ch):
            out.append(ch)
        elif ord(ch) < 0x100:
            out.append("\\x%02X" % ord(ch))
        elif ord(ch) < 0x10000:
            out.append("\\u%04X" % ord(ch))
        else:
            out.append("\\U%08X" % ord(ch))
    return '"' + "".join(out) + '"'


def _string_lines(text, indent, block_ok):
    """The lines (first one without indentation) that write string ``text`` (§9.6 style order)."""
    if _plain_ok(text):
        return [text]
    printable = _PRINTABLE_RE.fullmatch(text.replace("\n", "")) is not None
    if printable and "\n" not in text:
        return ["'" + text.replace("'", "''") + "'"]
    if block_ok and printable and text[0] not in " \n":
        body = text.rstrip("\n")
        trailing = len(text) - len(body)
        chomp = "-" if trailing == 0 else "" if trailing == 1 else "+"
        pad = " " * (indent + 4)
        lines = [(pad + part) if part else "" for part in text.split("\n")]
        return ["|" + chomp] + (lines[:-1] if text.endswith("\n") else lines)
    return [_double_quoted(text)]


def _scalar_lines(value, indent, block_ok=True):
    """The text of a scalar value (a literal block takes several lines)."""
    if value is None:
        return ["null"]
    if value is True or value is False:
        return ["true" if value else "false"]
    if isinstance(value, int):
        return [str(int(value))]
    if isinstance(value, float):
        if math.isnan(value):
            return [".nan"]
        if math.isinf(value):
            return [".inf" if value > 0 else "-.inf"]
        text = repr(float(value)).lower()
        if "." not in text and "e" in text:
            text = text.replace("e", ".0e", 1)
        return [text]
    if isinstance(value, str):
        return _string_lines(value, indent, block_ok)
    raise TypeError("cannot write %s as YAML" % type(value).__name__)


def _key_text(key):
    """One-line text of a mapping key (scalars only; PyYAML limits implicit keys to 1024 chars)."""
    if isinstance(key, (dict, list, tuple)):
        raise TypeError("cannot write a %s as a YAML mapping key" % type(key).__name__)
    text = _scalar_lines(key, 0, block_ok=False)[0]
    if len(text) > _MAX_KEY_CHARS:
        raise ValueError("mapping key is too long for YAML (%d characters)" % len(text))
    return text


def _emit_root(obj, out):
    """Write the document root: a block collection at column 0, or a scalar or empty collection."""
    if isinstance(obj, dict) and obj:
        _emit_mapping(obj, 0, out, None, [obj])
    elif isinstance(obj, (list, tuple)) and obj:
        _emit_sequence(obj, 0, out, [obj])
    else:
        _emit_entry("", obj, 0, out, [])


def _emit_entry(head, value, col, out, stack):
    """Write ``head`` (`key:`, `-` or '' at the root) and its value; ``col`` is the key/dash column.

    ``stack`` holds the enclosing collections: a value among them is a cycle, and more than
    MAX_DEPTH of them is nesting that loads would refuse; both are ValueError.
    """
    if isinstance(value, (dict, list, tuple)):
        if any(value is seen for seen in stack):
            raise ValueError("cannot write a circular structure as YAML")
        if len(stack) >= MAX_DEPTH:
            raise ValueError("nesting too deep to write as YAML")
    sep = " " if head else ""
    if isinstance(value, dict) and value:
        if head.endswith("-"):
            _emit_mapping(value, col + 2, out, head + " ", stack + [value])
        else:
            out.append(head)
            _emit_mapping(value, col + 4, out, None, stack + [value])
    elif isinstance(value, (list, tuple)) and value:
        out.append(head)
        _emit_sequence(value, col + 4, out, stack + [value])
    elif isinstance(value, dict):
        out.append(head + sep + "{}")
    elif isinstance(value, (list, tuple)):
        out.append(head + sep + "[]")
    else:
        lines = _scalar_lines(value, col)
        out.append(head + sep + lines[0])
        out.extend(lines[1:])


def _emit_mapping(mapping, col, out, first_prefix, stack):
    """Write the pairs of a non-empty dict with keys at ``col``; the first may follow a `- `."""
    for n, (key, value) in enumerate(mapping.items()):
        lead = first_prefix if n == 0 and first_prefix is not None else " " * col
        _emit_entry(lead + _key_text(key) + ":", value, col, out, stack)


def _emit_sequence(items, col, out, stack):
    """Write the items of a non-empty list with their `-` at ``col``."""
    for item in items:
        _emit_entry(" " * col + "-", item, col, out, stack)
