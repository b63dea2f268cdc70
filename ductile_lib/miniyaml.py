"""miniyaml: the YAML subset that Ductile reads and writes (spec 10-config.md §9).

Ductile must run on a bare Python 3.9 with no third-party packages, so it
cannot use PyYAML. Real configs and manifests use a small part of YAML
(§9.1); this module parses exactly that part (§9.3), resolves plain scalars
like PyYAML's YAML 1.1 rules minus the surprising ones (§9.4), refuses the
rest with a line and column (§9.5), and writes YAML back (§9.6).

Design: YAML block structure is line-oriented, so the parser is a small
recursive descent over lines. Each block node knows the indentation of the
block collection that contains it (``parent``); a line deeper than its parent
belongs to it, a line at the same column continues the parent, anything else
is "bad indentation". Flow collections and quoted scalars must end on their
own line, which keeps every scanner a simple loop over one string.

Public API: ``loads``, ``loads_with_positions``, ``dumps``, ``YAMLError``.
"""

from __future__ import annotations

import math
import re

__all__ = ["YAMLError", "loads", "loads_with_positions", "dumps"]

MAX_DEPTH = 100
MAX_ALIAS_NODES = 100_000
_MAX_DECIMAL_DIGITS = 4000  # int() of longer decimal text is slow (and refused on 3.11+)
_MAX_KEY_CHARS = 1024  # PyYAML cannot read a longer implicit key

_CONTROL_RE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff\ufffe\uffff]")
_NAME_RE = re.compile(r"[0-9A-Za-z_-]+")
_NULLS = frozenset(["", "~", "null", "Null", "NULL"])
_BOOLS = {"true": True, "True": True, "TRUE": True, "false": False, "False": False, "FALSE": False}
_INT_RE = re.compile(r"[-+]?(?:0b[01_]+|0x[0-9a-fA-F_]+|0[0-7_]+|0|[1-9][0-9_]*)")
_FLOAT_RE = re.compile(
    r"[-+]?[0-9][0-9_]*\.[0-9_]*(?:[eE][-+][0-9]+)?|\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?"
    r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN)")
# What PyYAML's own resolver (YAML 1.1) turns into a non-string; dumps quotes these.
_PYYAML_IMPLICIT_RE = re.compile(
    r"yes|Yes|YES|no|No|NO|true|True|TRUE|false|False|FALSE|on|On|ON|off|Off|OFF"
    r"|[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?|\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?"
    r"|[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN)"
    r"|[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+"
    r"|[-+]?[1-9][0-9_]*(?::[0-5]?[0-9])+|<<|~|null|Null|NULL|=|"
    r"|[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]"
    r"|[0-9][0-9][0-9][0-9]-[0-9][0-9]?-[0-9][0-9]?(?:[Tt]|[ \t]+)[0-9][0-9]?"
    r":[0-9][0-9]:[0-9][0-9](?:\.[0-9]*)?(?:[ \t]*(?:Z|[-+][0-9][0-9]?(?::[0-9][0-9])?))?")
_ESCAPES = {"0": "\0", "a": "\a", "b": "\b", "t": "\t", "\t": "\t", "n": "\n", "v": "\v", "f": "\f",
            "r": "\r", "e": "\x1b", " ": " ", '"': '"', "/": "/", "\\": "\\", "N": "\x85",
            "_": "\xa0", "L": "\u2028", "P": "\u2029"}
_HEX_ESCAPES = {"x": 2, "u": 4, "U": 8}
_BAD_PLAIN_START = "@`%,]}#|>"  # characters that cannot begin a plain scalar (after the other checks)
_PENDING = object()  # anchor whose node is still being parsed (an alias to it is recursive)
_MERGE = object()  # stands for the `<<` key in duplicate checks (a quoted "<<" is an ordinary key)


class YAMLError(ValueError):
    """A document outside the supported subset, with the 1-based line and column of the problem."""

    def __init__(self, message: str, line: int, column: int) -> None:
        super().__init__(message, line, column)
        self.message = message
        self.line = line
        self.column = column

    def __str__(self) -> str:
        return "line %d, column %d: %s" % (self.line, self.column, self.message)


# --------------------------------------------------------------------------- public API

def loads(text):
    """Parse one YAML document (str, or UTF-8 bytes) into dicts, lists and scalars."""
    return _Parser(text).parse()


def loads_with_positions(text):
    """Parse like ``loads`` and also return where each literal key and item is written.

    The second value maps each path (tuple of keys and 0-based list indices) to
    ``(line, column, end_line)``, 1-based, of the key or ``-`` and of the last
    line of its value; the config layer needs it for file:line warnings and
    for editing values in place. Keys and items that come from an alias or a
    merge have no entry.
    """
    parser = _Parser(text)
    value = parser.parse()
    return value, parser.positions


def dumps(obj) -> str:
    """Write ``obj`` as block-style YAML that both ``loads`` and PyYAML read back equal."""
    from ductile_lib.miniyaml_emit import emit_lines  # the emitter reads our scalar rules

    return "\n".join(emit_lines(obj)) + "\n"


# --------------------------------------------------------------------------- scalar resolution

def _resolve(text, idx, col):
    """Turn plain scalar text into None/bool/int/float/str (§9.4: YAML 1.1 without the surprises)."""
    if text in _NULLS:
        return None
    if text in _BOOLS:
        return _BOOLS[text]
    if _INT_RE.fullmatch(text):
        return _to_int(text, idx, col)
    if _FLOAT_RE.fullmatch(text):
        digits = text.replace("_", "").lower()
        sign = -1.0 if digits[0] == "-" else 1.0
        digits = digits.lstrip("+-")
        if digits == ".inf":
            return sign * math.inf
        if digits == ".nan":
            return math.nan
        return sign * float(digits)
    return text


def _to_int(text, idx, col):
    """Convert text matched by _INT_RE; PyYAML crashes on `0x_`, we keep such text a string."""
    digits = text.replace("_", "")
    sign = -1 if digits[0] == "-" else 1
    digits = digits.lstrip("+-")
    base = 10
    if digits.startswith(("0b", "0x")):
        base, digits = (2 if digits[1] == "b" else 16), digits[2:]
    elif len(digits) > 1 and digits[0] == "0":
        base = 8
    if not digits:
        return text
    if base == 10 and len(digits) > _MAX_DECIMAL_DIGITS:
        raise YAMLError("integer is too large", idx + 1, col + 1)
    return sign * int(digits, base)


# --------------------------------------------------------------------------- parser

def _decode(text):
    """Accept str or UTF-8 bytes; drop a BOM, normalise line breaks, refuse control characters."""
    if isinstance(text, (bytes, bytearray)):
        raw = bytes(text)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            head = raw[:exc.start]
            col = len(head[head.rfind(b"\n") + 1:].decode("utf-8", "replace")) + 1
            raise YAMLError("invalid UTF-8 byte 0x%02X" % raw[exc.start], head.count(b"\n") + 1, col)
    elif not isinstance(text, str):
        raise TypeError("miniyaml needs str or bytes, not %s" % type(text).__name__)
    if text.startswith("\ufeff"):
        text = text[1:]
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    bad = _CONTROL_RE.search(text)
    if bad:
        pos = bad.start()
        raise YAMLError("control character U+%04X is not allowed" % ord(bad.group()),
                        text.count("\n", 0, pos) + 1, pos - text.rfind("\n", 0, pos))
    return text


def _sub(path, key):
    """Child path for positions; None (no recording) stays None, e.g. inside a `<<` value."""
    return None if path is None else path + (key,)


def _copy(value):
    """Independent deep copy of a parsed value (what an alias stands for)."""
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def _merge_mapping(entries):
    """Build a dict from (key, value, is_merge) entries: own keys win wherever they stand."""
    own = {key for key, _, is_merge in entries if not is_merge}
    out = {}
    for key, value, is_merge in entries:
        if not is_merge:
            out[key] = value
            continue
        for mkey, mvalue in value.items():
            if mkey not in own and mkey not in out:
                out[mkey] = mvalue
    return out


class _Parser:
    """One parse of one document: the lines, a cursor, anchors, counters and positions.

    Line and column numbers are 0-based inside the parser and 1-based in
    errors and positions.
    """

    def __init__(self, text):
        text = _decode(text)
        self.lines = text.split("\n")
        self.final_newline = self.lines[-1] == ""
        if self.final_newline:
            self.lines.pop()
        self.i = 0  # next line not yet consumed
        self.end = 0  # last line consumed as part of the current value
        self.depth = 0  # open collections
        self.peak = 0  # deepest nesting seen (for anchors: how deep their value goes)
        self.nodes = 0  # nodes built so far (anchors remember how many they hold)
        self.expanded = 0  # nodes created by alias expansion
        self.anchors = {}
        self.positions = {}
        self.flow_start = None  # (line, column) of the outermost open flow collection

    # ---- small helpers

    def _err(self, message, idx, col):
        """Build the error for 0-based (idx, col)."""
        return YAMLError(message, idx + 1, col + 1)

    def _indent(self, idx):
        """Number of leading spaces of line idx."""
        line = self.lines[idx]
        return len(line) - len(line.lstrip(" "))

    def _skip_ws(self, idx, col):
        """Skip spaces; a tab here is outside any scalar or comment, so it is refused."""
        line = self.lines[idx]
        while col < len(line) and line[col] in " \t":
            if line[col] == "\t":
                raise self._err("tab characters are not allowed here (indent with spaces)", idx, col)
            col += 1
        return col

    def _is_end(self, idx, col):
        """True at the end of the line or at a comment (`#` after a space or at line start)."""
        line = self.lines[idx]
        return col >= len(line) or (line[col] == "#" and (col == 0 or line[col - 1] == " "))

    def _indicator(self, idx, col, chars):
        """True if one of ``chars`` is at col followed by a space or the end of the line (`- `, `: `, `? `)."""
        line = self.lines[idx]
        return line[col:col + 1] in tuple(chars) and line[col + 1:col + 2] in ("", " ")

    def _is_marker(self, idx):
        """True if line idx is a document marker `---` or `...`."""
        line = self.lines[idx]
        return line[:3] in ("---", "...") and line[3:4] in ("", " ", "\t")

    def _next_at(self, indent):
        """The next content line if it sits at column ``indent`` (None if shallower); deeper is an error."""
        idx = self._next_content()
        if idx is None or self._indent(idx) < indent:
            return None
        if self._indent(idx) > indent:
            raise self._err("bad indentation", idx, self._indent(idx))
        return idx

    def _enter(self, idx, col):
        """Open one collection level, refusing documents nested deeper than MAX_DEPTH."""
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self._err("nesting too deep", idx, col)
        self.peak = max(self.peak, self.depth)
        self.nodes += 1

    def _next_content(self):
        """Index of the next line with content, skipping blank and comment lines.

        Returns None at the end of the text or at a document marker; leaves the
        cursor on the returned line without consuming it.
        """
        while self.i < len(self.lines):
            line = self.lines[self.i]
            col = self._indent(self.i)
            if col == len(line) or line[col] == "#":
                self.i += 1
                continue
            if line[col] == "\t":
                raise self._err("tab characters are not allowed here (indent with spaces)", self.i, col)
            if col == 0 and self._is_marker(self.i):
                return None
            if col == 0 and line[0] == "%":
                raise self._err("directives are not supported", self.i, 0)
            return self.i
        return None

    # ---- document

    def parse(self):
        """Parse the whole text: optional `---`, one node, optional `...`."""
        try:
            value = self._parse_document()
        except RecursionError:
            raise self._err("nesting too deep", min(self.i, max(len(self.lines) - 1, 0)), 0) from None
        self._finish()
        return value

    def _parse_document(self):
        """The root node; after `---` it may start on the marker line (`--- |`, `--- [a]`)."""
        idx = self._next_content()
        if idx is not None:
            return self._parse_node(idx, self._indent(idx), -1, (), True)
        if self.i >= len(self.lines) or not self.lines[self.i].startswith("---"):
            self.nodes += 1
            return None
        idx = self.i
        self.i += 1
        col = self._skip_ws(idx, 3)
        if self._is_end(idx, col):
            return self._parse_below(-1, (), False)
        return self._parse_node(idx, col, -1, (), False)

    def _finish(self):
        """After the root node only comments, blank lines and `...` may follow."""
        idx = self._next_content()
        if idx is not None:
            raise self._err("bad indentation", idx, self._indent(idx))
        while self.i < len(self.lines):
            if self.lines[self.i].startswith("---"):
                raise self._err("only one document is allowed", self.i, 0)
            idx = self.i
            self.i += 1
            col = self._skip_ws(idx, 3)
            if not self._is_end(idx, col):
                raise self._err("only one document is allowed", idx, col)
            if self._next_content() is not None:
                raise self._err("only one document is allowed", self.i, self._indent(self.i))

    # ---- block nodes

    def _parse_node(self, idx, col, parent, path, block_ok, in_map=False, anchored=False):
        """Parse the node whose first character is at (idx, col).

        ``parent`` is the column of the enclosing block collection (-1 at the
        root). ``block_ok`` says whether a block mapping or sequence may start
        here (line start or after `- `); after `key: ` only one-line values,
        block scalars and anchored blocks are possible.
        """
        self.i = idx + 1
        line = self.lines[idx]
        ch = line[col]
        if self._indicator(idx, col, "-"):
            if not block_ok:
                raise self._err("sequence entries are not allowed here", idx, col)
            return self._parse_sequence(idx, col, path, False)
        if ch == "&":
            return self._parse_anchor(idx, col, parent, path, in_map)
        if ch in "|>":
            return self._parse_block_scalar(idx, col, parent)
        kind = "plain"
        if ch == "*":
            kind, (value, end) = "alias", self._parse_alias(idx, col, False)
        elif ch in "[{":
            kind, (value, end) = "flow", self._parse_flow(idx, col, path)
        elif ch in "'\"":
            kind, (value, end) = "quoted", self._scan_quoted(idx, col)
        else:
            self._refuse_start(idx, col, False)
            value, end = self._scan_plain(idx, col, False)
        after = self._skip_ws(idx, end)
        if self._indicator(idx, after, ":"):
            if kind in ("alias", "flow") or anchored:
                raise self._err("mapping keys must be plain or quoted scalars", idx, col)
            if not block_ok:
                raise self._err("mapping values are not allowed here (quote the value)", idx, after)
            return self._parse_mapping(idx, col, path)
        if not self._is_end(idx, after):
            raise self._err("unexpected text after value", idx, after)
        if kind == "plain":
            if after == len(line):
                self._check_continuation(idx, parent)
            value = _resolve(value, idx, col)
        if kind in ("plain", "quoted"):
            self.nodes += 1
        self.end = idx
        return value

    def _check_continuation(self, idx, parent):
        """Refuse a deeper line right after a plain scalar: YAML would fold it into the value."""
        k = idx + 1
        while k < len(self.lines) and not self.lines[k].strip(" "):
            k += 1
        if k == len(self.lines):
            return
        col, text = self._indent(k), self.lines[k]
        if col <= parent or text[col] in "#\t" or (col == 0 and self._is_marker(k)):
            return
        if ": " in text or text.rstrip(" ").endswith(":"):
            raise self._err("bad indentation", k, col)
        raise self._err("multi-line plain scalars are not supported; put the value on one line, "
                        "quote it, or use | or >", k, col)

    def _parse_value(self, idx, col, indent, path, in_map):
        """The value after `key:` (in_map) or after `-`: on this line, or a block on the lines below."""
        self.i = idx + 1
        col = self._skip_ws(idx, col)
        if self._is_end(idx, col):
            return self._parse_below(indent, path, in_map)
        return self._parse_node(idx, col, indent, path, not in_map, in_map)

    def _parse_below(self, indent, path, in_map):
        """A node on the following lines deeper than ``indent`` (or a sequence at a key's column), else null."""
        idx = self._next_content()
        if idx is not None:
            col = self._indent(idx)
            if col > indent:
                return self._parse_node(idx, col, indent, path, True)
            if in_map and col == indent and self._indicator(idx, col, "-"):
                return self._parse_sequence(idx, col, path, True)
        self.nodes += 1
        return None

    def _parse_mapping(self, idx, indent, path):
        """Block mapping with keys at column ``indent``; the first key is at (idx, indent)."""
        self._enter(idx, indent)
        entries, seen = [], {}
        while True:
            self.end = idx
            key, text, is_merge, after = self._read_key(idx, indent)
            marker = _MERGE if is_merge else key
            if marker in seen:
                raise self._err('mapping key "%s" already defined at line %d' % (text, seen[marker] + 1),
                                idx, indent)
            seen[marker] = idx
            value = self._parse_value(idx, after, indent, None if is_merge else _sub(path, key), True)
            if is_merge:
                start = self._skip_ws(idx, after)
                value = self._merge_sources(value, idx, indent if self._is_end(idx, start) else start)
            elif path is not None:
                self.positions[path + (key,)] = (idx + 1, indent + 1, self.end + 1)
            entries.append((key, value, is_merge))
            idx = self._next_at(indent)
            if idx is None:
                break
            if self._indicator(idx, indent, "-"):
                raise self._err("sequence entries are not allowed here", idx, indent)
        self.depth -= 1
        return _merge_mapping(entries)

    def _read_key(self, idx, col):
        """Read `key:` at (idx, col); returns (key, key text, is `<<`, column after the colon)."""
        ch = self.lines[idx][col]
        if ch in "&*[{":
            raise self._err("mapping keys must be plain or quoted scalars", idx, col)
        if ch in "'\"":
            key, end = self._scan_quoted(idx, col)
            text, plain = key, False
        else:
            self._refuse_start(idx, col, False)
            text, end = self._scan_plain(idx, col, False)
            key, plain = _resolve(text, idx, col), True
        after = self._skip_ws(idx, end)
        if not self._indicator(idx, after, ":"):
            if plain or self._is_end(idx, after):
                raise self._err('expected "key: value"', idx, col)
            raise self._err("unexpected text after value", idx, after)
        self.nodes += 1
        return key, text, plain and text == "<<", after + 1

    def _merge_sources(self, value, idx, col):
        """Flatten a `<<` value (a mapping or a list of them); earlier sources win over later ones."""
        if isinstance(value, dict):
            sources = [value]
        elif isinstance(value, list) and all(isinstance(v, dict) for v in value):
            sources = value
        else:
            raise self._err("merge key << needs a mapping or a list of mappings", idx, col)
        merged = {}
        for source in sources:
            for key, item in source.items():
                merged.setdefault(key, item)
        return merged

    def _parse_sequence(self, idx, indent, path, indentless):
        """Block sequence with `-` at column ``indent``; indentless ones end at a key of their mapping."""
        self._enter(idx, indent)
        items = []
        while True:
            self.end = idx
            value = self._parse_value(idx, indent + 1, indent, _sub(path, len(items)), False)
            if path is not None:
                self.positions[path + (len(items),)] = (idx + 1, indent + 1, self.end + 1)
            items.append(value)
            idx = self._next_at(indent)
            if idx is None:
                break
            if not self._indicator(idx, indent, "-"):
                if indentless:
                    break
                raise self._err("bad indentation", idx, indent)
        self.depth -= 1
        return items

    # ---- anchors and aliases

    def _read_name(self, idx, col, flow, alias):
        """Anchor or alias name after `&`/`*` at col; returns (name, column after it)."""
        line = self.lines[idx]
        match = _NAME_RE.match(line, col + 1)
        end = match.end() if match else col + 1
        follow = line[end:end + 1]
        if not match or not (follow in ("", " ", "\t") or (flow and follow in ",]}")
                             or (alias and follow == ":")):
            raise self._err("invalid %s name" % ("alias" if alias else "anchor"), idx, col)
        return match.group(), end

    def _anchored(self, name, parse):
        """Run ``parse`` for the node carrying anchor ``name`` and remember its value, size and depth."""
        self.anchors[name] = _PENDING
        nodes, peak = self.nodes, self.peak
        self.peak = self.depth
        result = parse()
        value = result[0] if isinstance(result, tuple) else result
        self.anchors[name] = (value, self.nodes - nodes, self.peak - self.depth)
        self.peak = max(self.peak, peak)
        return result

    def _parse_anchor(self, idx, col, parent, path, in_map):
        """`&name` then a one-line value, or a block on the following lines."""
        name, end = self._read_name(idx, col, False, False)
        start = self._skip_ws(idx, end)
        if self._is_end(idx, start):
            return self._anchored(name, lambda: self._parse_below(parent, path, in_map))
        if self.lines[idx][start] in "&*":
            raise self._err("unexpected text after value", idx, start)
        return self._anchored(name, lambda: self._parse_node(idx, start, parent, path, False, in_map, True))

    def _parse_alias(self, idx, col, flow):
        """`*name`: a deep copy of the anchored value; returns (value, column after the name)."""
        name, end = self._read_name(idx, col, flow, True)
        entry = self.anchors.get(name)
        if entry is None:
            raise self._err('undefined alias "%s"' % name, idx, col)
        if entry is _PENDING:
            raise self._err('recursive alias "%s"' % name, idx, col)
        value, size, depth = entry
        self.expanded += size
        if self.expanded > MAX_ALIAS_NODES:
            raise self._err("alias expansion too large", idx, col)
        if self.depth + depth > MAX_DEPTH:
            raise self._err("nesting too deep", idx, col)
        self.peak = max(self.peak, self.depth + depth)
        self.nodes += size
        return _copy(value), end

    # ---- scalars

    def _refuse_start(self, idx, col, flow):
        """Refuse what cannot begin a plain scalar: indicators, tags, reserved characters.

        In flow context `?` and `:` are always indicators and `- ` is a block entry.
        """
        ch = self.lines[idx][col]
        if ch == "!":
            raise self._err("tags are not supported", idx, col)
        if ch == "?" and (flow or self._indicator(idx, col, "?")):
            raise self._err("complex mapping keys are not supported", idx, col)
        if ch == ":" and not flow and self._indicator(idx, col, ":"):
            raise self._err("mapping values are not allowed here (quote the value)", idx, col)
        if flow and self._indicator(idx, col, "-"):
            raise self._err("sequence entries are not allowed here", idx, col)
        if ch in _BAD_PLAIN_START or (flow and ch == ":"):
            raise self._err('character "%s" cannot start a plain scalar (quote the value)' % ch, idx, col)

    def _scan_plain(self, idx, col, flow):
        """Plain scalar text from col; stops at ` #`, at `: `/final `:`, and in flow at `,[]{}`.

        Returns (text without trailing spaces, column after the text).
        """
        line = self.lines[idx]
        j = end = col
        while j < len(line):
            ch = line[j]
            if ch == " ":
                j += 1
                continue
            if ch == "\t":
                raise self._err("tab characters are not allowed here (indent with spaces)", idx, j)
            if ch == "#" and line[j - 1] == " ":
                break
            follow = line[j + 1:j + 2]
            if ch == ":" and (follow in ("", " ") or flow and follow in tuple(",[]{}")):
                break
            if flow and ch in ",[]{}":
                break
            j += 1
            end = j
        return line[col:end], end

    def _scan_quoted(self, idx, col):
        """Single- or double-quoted scalar that closes on its line; returns (text, column after it)."""
        line, quote = self.lines[idx], self.lines[idx][col]
        out, j = [], col + 1
        while j < len(line):
            ch = line[j]
            if ch == quote:
                if quote == "'" and line[j + 1:j + 2] == "'":
                    out.append("'")
                    j += 2
                    continue
                return "".join(out), j + 1
            if ch == "\\" and quote == '"':
                if j + 1 == len(line):
                    break
                text, j = self._escape(idx, j)
                out.append(text)
                continue
            out.append(ch)
            j += 1
        if self._closes_later(idx, col):
            raise self._err("quoted scalars must end on the line where they start", idx, col)
        raise self._err("unterminated quoted scalar", idx, col)

    def _escape(self, idx, j):
        """Decode the double-quoted escape at j (the backslash); returns (text, next column)."""
        line = self.lines[idx]
        code = line[j + 1]
        if code in _ESCAPES:
            return _ESCAPES[code], j + 2
        size = _HEX_ESCAPES.get(code)
        digits = line[j + 2:j + 2 + size] if size else ""
        if size and len(digits) == size and all(c in "0123456789abcdefABCDEF" for c in digits):
            if int(digits, 16) <= 0x10FFFF:
                return chr(int(digits, 16)), j + 2 + size
        shown = code + "".join(c for c in digits[:size] if c not in "\"\\")
        raise self._err('invalid escape "\\%s"' % shown, idx, j)

    def _closes_later(self, idx, col):
        """Whether an unclosed quote at (idx, col) is closed on a later line (multi-line) or never."""
        quote = self.lines[idx][col]
        rest = "\n".join([self.lines[idx][col + 1:]] + self.lines[idx + 1:])
        rest = rest.replace("''", "") if quote == "'" else re.sub(r"\\.", "", rest, flags=re.S)
        return quote in rest

    def _parse_block_scalar(self, idx, col, parent):
        """Literal `|` or folded `>` scalar: header at (idx, col), content on the following lines."""
        line = self.lines[idx]
        chomp, increment, j = None, None, col + 1
        for _ in range(2):
            ch = line[j:j + 1]
            if ch and ch in "+-" and chomp is None:
                chomp, j = ch, j + 1
            elif ch and ch in "123456789" and increment is None:
                increment, j = int(ch), j + 1
        if j < len(line) and line[j] not in " \t":
            raise self._err("invalid block scalar header", idx, j)
        j = self._skip_ws(idx, j)
        if not self._is_end(idx, j):
            raise self._err("invalid block scalar header", idx, j)
        min_indent = max(parent + 1, 1)
        if increment:
            indent = min_indent + increment - 1
        else:
            indent = self._detect_indent(idx, min_indent)
        text, self.i, last = self._block_lines(idx + 1, indent, line[col] == ">", chomp)
        self.end = last if last is not None else idx
        self.nodes += 1
        return text

    def _detect_indent(self, idx, min_indent):
        """Content indentation from the first non-blank line (PyYAML: also leading blank lines)."""
        k, deepest, deep_line = idx + 1, 0, None
        while k < len(self.lines) and not self.lines[k].strip(" "):
            if len(self.lines[k]) > deepest:
                deepest, deep_line = len(self.lines[k]), k
            k += 1
        first = self._indent(k) if k < len(self.lines) else 0
        if first >= min_indent and deepest > first:
            raise self._err("bad indentation in block scalar", deep_line, first)
        return max(min_indent, deepest, first)

    def _block_lines(self, k, indent, folded, chomp):
        """Collect block scalar content from line k exactly as PyYAML's scanner does.

        Returns (text, first line after the scalar, last content line or None).
        """
        def kind(n):
            """'content' (at least ``indent`` spaces, then text), 'blank' or 'end' (less indented)."""
            line = self.lines[n]
            spaces = len(line) - len(line.lstrip(" "))
            if spaces == len(line):
                return "content" if len(line) > indent else "blank"
            return "content" if spaces >= indent else "end"

        def newline(n):
            """The line break ending line n (none after a last line without one)."""
            return "\n" if n < len(self.lines) - 1 or self.final_newline else ""

        breaks, chunks, line_break, last, text = [], [], "", None, ""
        while True:
            while k < len(self.lines) and kind(k) == "blank":
                breaks.append(newline(k))
                k += 1
            if k == len(self.lines) or kind(k) != "content":
                break
            if last is not None:  # join with the previous content line, folding if `>`
                if folded and line_break == "\n" and text[0] not in " \t" \
                        and self.lines[k][indent] not in " \t":
                    chunks.append("" if breaks else " ")
                else:
                    chunks.append(line_break)
            chunks.extend(breaks)
            text = self.lines[k][indent:]
            chunks.append(text)
            line_break, last, breaks, k = newline(k), k, [], k + 1
        if chomp != "-":
            chunks.append(line_break)
        if chomp == "+":
            chunks.extend(breaks)
        return "".join(chunks), k, last

    # ---- flow collections

    def _flow_ws(self, idx, col):
        """Skip spaces inside a flow collection; the line must not end (or start a comment) here."""
        col = self._skip_ws(idx, col)
        if self._is_end(idx, col):
            raise self._err("flow collections must end on the line where they start", *self.flow_start)
        return col

    def _parse_flow(self, idx, col, path):
        """One-line `[...]` or `{...}` at (idx, col); returns (value, column after the bracket)."""
        outer = self.flow_start is None
        if outer:
            self.flow_start = (idx, col)
        self._enter(idx, col)
        line = self.lines[idx]
        is_map = line[col] == "{"
        close = "}" if is_map else "]"
        items, seen, j = [], {}, col + 1
        while True:
            j = self._flow_ws(idx, j)
            if line[j] == close:
                break
            if line[j] == ",":
                raise self._err("empty flow entry", idx, j)
            if is_map:
                j = self._flow_pair(idx, j, path, items, seen)
            else:
                start = j
                value, j = self._flow_node(idx, j, _sub(path, len(items)))
                if path is not None:
                    self.positions[path + (len(items),)] = (idx + 1, start + 1, idx + 1)
                items.append(value)
            j = self._flow_ws(idx, j)
            if line[j] == ",":
                j += 1
            elif line[j] == ":":
                message = ("mapping values are not allowed here (quote the value)" if is_map
                           else "key: value pairs are not supported inside [ ]")
                raise self._err(message, idx, j)
            elif line[j] != close:
                raise self._err("unexpected text after value", idx, j)
        self.depth -= 1
        if outer:
            self.flow_start = None
        return (_merge_mapping(items) if is_map else items), j + 1

    def _flow_pair(self, idx, j, path, entries, seen):
        """One `key: value` (or lone `key`) entry of a flow mapping; returns the column after it."""
        line = self.lines[idx]
        ch, start = line[j], j
        if ch in "[{*&":
            raise self._err("mapping keys must be plain or quoted scalars", idx, j)
        if ch in "'\"":
            key, j = self._scan_quoted(idx, j)
            text, is_merge = key, False
        else:
            self._refuse_start(idx, j, True)
            text, j = self._scan_plain(idx, j, True)
            key, is_merge = _resolve(text, idx, start), text == "<<"
        marker = _MERGE if is_merge else key
        if marker in seen:
            raise self._err('mapping key "%s" already defined at line %d' % (text, idx + 1), idx, start)
        seen[marker] = idx
        self.nodes += 1
        value, j = None, self._flow_ws(idx, j)
        if line[j] == ":":
            j = self._flow_ws(idx, j + 1)
            if line[j] not in ",}":
                value, j = self._flow_node(idx, j, None if is_merge else _sub(path, key))
            else:
                self.nodes += 1
        else:
            self.nodes += 1
        if is_merge:
            value = self._merge_sources(value, idx, start)
        elif path is not None:
            self.positions[path + (key,)] = (idx + 1, start + 1, idx + 1)
        entries.append((key, value, is_merge))
        return j

    def _flow_node(self, idx, j, path):
        """A value inside a flow collection; returns (value, column after it)."""
        line = self.lines[idx]
        ch = line[j]
        if ch in "[{":
            return self._parse_flow(idx, j, path)
        if ch in "'\"":
            self.nodes += 1
            return self._scan_quoted(idx, j)
        if ch == "*":
            return self._parse_alias(idx, j, True)
        if ch == "&":
            name, end = self._read_name(idx, j, True, False)
            return self._anchored(name, lambda: self._flow_anchored(idx, end, path))
        self._refuse_start(idx, j, True)
        text, end = self._scan_plain(idx, j, True)
        self.nodes += 1
        return _resolve(text, idx, j), end

    def _flow_anchored(self, idx, j, path):
        """The node after `&name` in a flow collection (null if the entry ends there)."""
        j = self._flow_ws(idx, j)
        if self.lines[idx][j] in ",]}":
            self.nodes += 1
            return None, j
        if self.lines[idx][j] in "&*":
            raise self._err("unexpected text after value", idx, j)
        return self._flow_node(idx, j, path)
