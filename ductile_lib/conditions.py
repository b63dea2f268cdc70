"""The ``if:`` predicate language of pipelines and steps (spec 30 §5, decision P5).

A condition is checked once, when the config loads (:func:`compile_condition`),
so that every mistake an operator can make is reported with its location
(``if.all[1].value: gt needs a number``) before anything runs.  The compiled
tree then evaluates with no run-time errors at all: a missing or mistyped value
makes an ordering or string test false, never an exception, because a
``core.switch`` job must always succeed (§4.7).

Semantics worth knowing (they differ from the original Go Ductile on purpose):

* numbers compare by value (``3`` equals ``3.0``) and are never booleans;
* there is no coercion (``"3"`` is not ``3``);
* ``contains``/``startswith``/``endswith`` compare ``str.lower()`` of both
  sides (Unicode lower-casing, the closest Python match for Go's
  ``strings.ToLower``; ``casefold`` would also fold ``ß`` to ``ss``, which Go
  does not);
* ``regex`` is a whole-string match (``re.fullmatch``) of Python's ``re``.

Pure logic: values in, values out; no clock, no I/O, no threads.
"""
from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, Callable, List, Tuple

__all__ = [
    "ConditionError", "Condition", "compile_condition", "unknown_keys",
    "OPERATORS", "ROOTS", "CONDITION_KEYS", "MAX_DEPTH", "MAX_NODES",
]

MAX_DEPTH = 3
"""The root node is depth 1, so ``not: {not: {atomic}}`` is the deepest tree."""

MAX_NODES = 20
"""Every node counts, composites included: ``all`` of 19 atomics is the largest ``all``."""

ROOTS = ("payload", "context", "config")
OPERATORS = ("exists", "eq", "neq", "in", "gt", "gte", "lt", "lte",
             "contains", "startswith", "endswith", "regex")
CONDITION_KEYS = frozenset(("path", "op", "value", "all", "any", "not"))

_ORDERING = {
    "gt": lambda a, b: a > b,
    "gte": lambda a, b: a >= b,
    "lt": lambda a, b: a < b,
    "lte": lambda a, b: a <= b,
}
_TEXT = {
    "contains": lambda text, needle: needle in text,
    "startswith": lambda text, needle: text.startswith(needle),
    "endswith": lambda text, needle: text.endswith(needle),
}


class _Absent:
    """The value of a path that does not resolve; distinct from a present ``null``."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<absent>"


_ABSENT = _Absent()


class ConditionError(ValueError):
    """A condition the loader refuses; ``str()`` is ``"<where>: <message>"``.

    ``where`` is the location in the config (``if.any[0].path``) so the
    pipeline compiler can prefix it with the pipeline and step it came from.
    """

    def __init__(self, where: str, message: str):
        super().__init__("%s: %s" % (where, message))
        self.where = where
        self.message = message


# --------------------------------------------------------------------------
# Value helpers: one notion of "number", "list" and "object" for the module.
# --------------------------------------------------------------------------

def _is_number(value) -> bool:
    """int or float but not bool: ``True`` must never pass for ``1`` (P5)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_list(value) -> bool:
    """JSON arrays; tuples too, so frozen copies of config values still compare."""
    return isinstance(value, (list, tuple))


def _kind(value) -> str:
    """The JSON name of a value's type, for error messages operators understand."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if _is_number(value):
        return "number"
    if isinstance(value, str):
        return "string"
    if _is_list(value):
        return "list"
    if isinstance(value, Mapping):
        return "mapping"
    return type(value).__name__


def _quote(text) -> str:
    """Quote like Go's ``%q`` so messages match what operators know from the original."""
    return json.dumps(str(text), ensure_ascii=False)


def _plain(value):
    """A private, plain (dict/list) deep copy, so no caller can mutate a compiled tree.

    ``copy.deepcopy`` cannot copy ``MappingProxyType``, which frozen configs use.
    """
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if _is_list(value):
        return [_plain(item) for item in value]
    return value


def _equal(left, right) -> bool:
    """The one equality of ``eq``, ``neq`` and ``in`` (§5.2); never raises.

    Types must agree, except that int and float are one type "number"; so
    ``3 == 3.0`` but ``True != 1`` and ``"3" != 3``.  NaN follows IEEE and
    equals nothing (JSON cannot carry it; YAML ``.nan`` can).
    """
    if _is_number(left) or _is_number(right):
        return _is_number(left) and _is_number(right) and left == right
    if isinstance(left, bool) or isinstance(right, bool):
        return isinstance(left, bool) and isinstance(right, bool) and left is right
    if left is None or right is None:
        return left is None and right is None
    if isinstance(left, str) or isinstance(right, str):
        return isinstance(left, str) and isinstance(right, str) and left == right
    if _is_list(left) or _is_list(right):
        return _lists_equal(left, right)
    if isinstance(left, Mapping) and isinstance(right, Mapping):
        return _objects_equal(left, right)
    return False


def _lists_equal(left, right) -> bool:
    """Element-wise, same length; a list never equals a non-list."""
    if not (_is_list(left) and _is_list(right)) or len(left) != len(right):
        return False
    return all(_equal(a, b) for a, b in zip(left, right))


def _objects_equal(left: Mapping, right: Mapping) -> bool:
    """Same keys, and equal values under each key."""
    if len(left) != len(right):
        return False
    for key, value in left.items():
        if key not in right or not _equal(value, right[key]):
            return False
    return True


def _resolve(scope, segments: Tuple[str, ...]):
    """Walk ``segments`` through objects only; anything else on the way is absent.

    Lists are not indexed (``payload.items.0`` is absent), a present ``null``
    is returned as ``None``, and a root missing from ``scope`` is absent.
    """
    current = scope
    for segment in segments:
        if not isinstance(current, Mapping):
            return _ABSENT
        current = current.get(segment, _ABSENT)
        if current is _ABSENT:
            return _ABSENT
    return current


# --------------------------------------------------------------------------
# The compiled tree.
# --------------------------------------------------------------------------

class Condition:
    """A validated, immutable condition tree.

    Build one with :func:`compile_condition`; the subclasses are private.
    """

    __slots__ = ()

    def evaluate(self, scope: Mapping) -> bool:
        """True when the condition holds for ``scope`` (keys ``payload``, ``context``, ``config``).

        Never raises (§5.2): the load step already rejected every malformed
        condition and every operator is total over JSON values; the guard
        below only keeps an exotic scope object from failing a switch job.
        """
        try:
            return bool(self._eval(scope))
        except Exception:  # defensive, see docstring
            return False

    def to_view(self) -> dict:
        """The ``if`` shape of ``/config/view`` compiled_routes (spec 40 §4.10)."""
        raise NotImplementedError

    @property
    def roots(self) -> frozenset:
        """The scope roots the tree reads, e.g. to warn about ``config.*`` where it is absent."""
        raise NotImplementedError

    def _eval(self, scope) -> bool:
        raise NotImplementedError

    def __setattr__(self, name, value):
        raise AttributeError("Condition is immutable")

    def __delattr__(self, name):
        raise AttributeError("Condition is immutable")

    def __repr__(self) -> str:
        return "Condition(%s)" % json.dumps(self.to_view(), ensure_ascii=False, default=str)


class _Atomic(Condition):
    """``{path, op, value?}``: one test on one resolved value."""

    __slots__ = ("_path", "_segments", "_op", "_value", "_test")

    def __init__(self, path: str, op: str, value, test: Callable[[Any], bool]):
        object.__setattr__(self, "_path", path)
        object.__setattr__(self, "_segments", tuple(path.split(".")))
        object.__setattr__(self, "_op", op)
        object.__setattr__(self, "_value", value)
        object.__setattr__(self, "_test", test)

    def _eval(self, scope) -> bool:
        return self._test(_resolve(scope, self._segments))

    def to_view(self) -> dict:
        view = {"path": self._path, "op": self._op}
        if self._op != "exists":
            view["value"] = _plain(self._value)
        return view

    @property
    def roots(self) -> frozenset:
        return frozenset((self._segments[0],))


class _All(Condition):
    """``all: [..]``: true when every child is; stops at the first false."""

    __slots__ = ("_children",)
    _key = "all"

    def __init__(self, children: Tuple[Condition, ...]):
        object.__setattr__(self, "_children", children)

    def _eval(self, scope) -> bool:
        return all(child._eval(scope) for child in self._children)

    def to_view(self) -> dict:
        return {self._key: [child.to_view() for child in self._children]}

    @property
    def roots(self) -> frozenset:
        return frozenset().union(*(child.roots for child in self._children))


class _Any(_All):
    """``any: [..]``: true when some child is; stops at the first true."""

    __slots__ = ()
    _key = "any"

    def _eval(self, scope) -> bool:
        return any(child._eval(scope) for child in self._children)


class _Not(Condition):
    """``not: {..}``: the negation of its one child."""

    __slots__ = ("_child",)

    def __init__(self, child: Condition):
        object.__setattr__(self, "_child", child)

    def _eval(self, scope) -> bool:
        return not self._child._eval(scope)

    def to_view(self) -> dict:
        return {"not": self._child.to_view()}

    @property
    def roots(self) -> frozenset:
        return self._child.roots


# --------------------------------------------------------------------------
# Per-operator tests: each takes the resolved value (or _ABSENT) and is total.
# --------------------------------------------------------------------------

def _exists_test(_value) -> Callable[[Any], bool]:
    return lambda actual: actual is not _ABSENT


def _eq_test(expected) -> Callable[[Any], bool]:
    """Absent compares as null; since ``value`` is never null, absent is never ``eq``."""
    return lambda actual: _equal(None if actual is _ABSENT else actual, expected)


def _neq_test(expected) -> Callable[[Any], bool]:
    eq = _eq_test(expected)
    return lambda actual: not eq(actual)


def _in_test(options) -> Callable[[Any], bool]:
    """Membership under :func:`_equal`; absent is found only where the list holds null."""
    def test(actual) -> bool:
        probe = None if actual is _ABSENT else actual
        return any(_equal(probe, option) for option in options)
    return test


def _ordering_test(op: str, bound) -> Callable[[Any], bool]:
    compare = _ORDERING[op]
    return lambda actual: _is_number(actual) and compare(actual, bound)


def _text_test(op: str, needle: str) -> Callable[[Any], bool]:
    compare, lowered = _TEXT[op], needle.lower()
    return lambda actual: isinstance(actual, str) and compare(actual.lower(), lowered)


def _regex_test(pattern) -> Callable[[Any], bool]:
    return lambda actual: isinstance(actual, str) and pattern.fullmatch(actual) is not None


# --------------------------------------------------------------------------
# Compilation (load-time validation).
# --------------------------------------------------------------------------

class _Budget:
    """Counts nodes across the whole tree; the limit is on the tree, not a branch."""

    __slots__ = ("used",)

    def __init__(self):
        self.used = 0


def compile_condition(node, where: str = "if") -> Condition:
    """Validate ``node`` (the parsed YAML of an ``if:``) and compile it (§5.1).

    Raises :class:`ConditionError` naming the first problem and where it is.
    Keys other than ``path op value all any not`` are ignored here, as the
    original does; :func:`unknown_keys` lists them for a load warning.
    """
    return _compile(node, where, 1, _Budget())


def _compile(node, where: str, depth: int, budget: _Budget) -> Condition:
    """Check the limits first, then the shape, then the one form the node has."""
    if depth > MAX_DEPTH:
        raise ConditionError(where, "nesting deeper than %d" % MAX_DEPTH)
    budget.used += 1
    if budget.used > MAX_NODES:
        raise ConditionError(where, "more than %d nodes" % MAX_NODES)
    if not isinstance(node, Mapping):
        raise ConditionError(where, "must be a mapping with path/op/value, all, any or not (got %s)"
                             % _kind(node))
    form = _form_of(node, where)
    if form == "atomic":
        return _compile_atomic(node, where)
    if form == "not":
        return _Not(_compile(node["not"], where + ".not", depth + 1, budget))
    children = _compile_list(node[form], "%s.%s" % (where, form), depth, budget)
    return _All(children) if form == "all" else _Any(children)


def _given(node: Mapping, key: str) -> bool:
    """Whether ``key`` counts as written: YAML null, blank strings and empty lists do not."""
    value = node.get(key)
    if value is None:
        return False
    if key in ("path", "op") and isinstance(value, str):
        return value.strip() != ""
    if key in ("all", "any") and _is_list(value):
        return len(value) > 0
    return True


def _form_of(node: Mapping, where: str) -> str:
    """Which one of atomic, ``all``, ``any`` or ``not`` the node is; exactly one is allowed."""
    forms = [key for key in ("all", "any", "not") if _given(node, key)]
    if any(_given(node, key) for key in ("path", "op", "value")):
        forms.append("atomic")
    if len(forms) != 1:
        raise ConditionError(where, "must define exactly one of atomic predicate, all, any, or not")
    return forms[0]


def _compile_list(items, where: str, depth: int, budget: _Budget) -> Tuple[Condition, ...]:
    """Compile the children of ``all``/``any``, each located by its index."""
    if not _is_list(items):
        raise ConditionError(where, "must be a list of conditions (got %s)" % _kind(items))
    return tuple(_compile(item, "%s[%d]" % (where, index), depth + 1, budget)
                 for index, item in enumerate(items))


def _compile_atomic(node: Mapping, where: str) -> _Atomic:
    """Validate path, op and value in that order and bind the operator's test."""
    path = _check_path(node.get("path"), where)
    op = _check_op(node.get("op"), where)
    value = node.get("value")
    return _Atomic(path, op, _plain(value), _build_test(op, value, where + ".value"))


def _check_path(path, where: str) -> str:
    """A dotted path: ``payload|context|config`` then at least one non-empty key."""
    if path is None or (isinstance(path, str) and not path.strip()):
        raise ConditionError(where, "path is required")
    if not isinstance(path, str):
        raise ConditionError(where + ".path", "must be a string (got %s)" % _kind(path))
    path = path.strip()
    segments = path.split(".")
    if len(segments) < 2:
        raise ConditionError(where + ".path", "must have at least 2 segments")
    if segments[0] not in ROOTS:
        raise ConditionError(where + ".path", "unsupported root %s (want payload, context or config)"
                             % _quote(segments[0]))
    if any(not segment.strip() for segment in segments):
        raise ConditionError(where + ".path", "empty segment in %s" % _quote(path))
    return path


def _check_op(op, where: str) -> str:
    """One of :data:`OPERATORS`, spelled exactly (the original is case-sensitive too)."""
    if op is None or (isinstance(op, str) and not op.strip()):
        raise ConditionError(where, "op is required")
    if not isinstance(op, str):
        raise ConditionError(where + ".op", "must be a string (got %s)" % _kind(op))
    if op not in OPERATORS:
        raise ConditionError(where + ".op", "unknown operator %s" % _quote(op))
    return op


def _build_test(op: str, value, where: str) -> Callable[[Any], bool]:
    """Check ``value`` against what ``op`` needs and return the operator's test."""
    if op == "exists":
        if value is not None:
            raise ConditionError(where, "exists takes no value")
        return _exists_test(value)
    if value is None:
        raise ConditionError(where, "%s needs a value" % op)
    if op in ("eq", "neq"):
        return (_eq_test if op == "eq" else _neq_test)(_plain(value))
    if op == "in":
        if not _is_list(value):
            raise ConditionError(where, "in needs a list (got %s)" % _kind(value))
        return _in_test(tuple(_plain(value)))
    if op in _ORDERING:
        if not _is_number(value):
            raise ConditionError(where, "%s needs a number" % op)
        return _ordering_test(op, value)
    if not isinstance(value, str):
        raise ConditionError(where, "%s needs a string" % op)
    if op == "regex":
        return _regex_test(_compile_regex(value, where))
    return _text_test(op, value)


def _compile_regex(pattern: str, where: str):
    """Compile with Python's ``re``; what it cannot compile is a load error, not a run-time one."""
    try:
        return re.compile(pattern)
    except (re.error, OverflowError, RecursionError, ValueError) as exc:
        raise ConditionError(where, "regex does not compile: %s" % exc) from None


def unknown_keys(node, where: str = "if") -> List[str]:
    """Locations of keys a condition does not know (``if.all[0].vaule``), for a load warning.

    Kept apart from :func:`compile_condition` because unknown keys are a
    warning (an error only in strict mode, decision C6), never a refusal here.
    """
    found: List[str] = []
    if not isinstance(node, Mapping):
        return found
    for key in node:
        if key not in CONDITION_KEYS:
            found.append("%s.%s" % (where, key))
    for form in ("all", "any"):
        items = node.get(form)
        if _is_list(items):
            for index, item in enumerate(items):
                found.extend(unknown_keys(item, "%s.%s[%d]" % (where, form, index)))
    found.extend(unknown_keys(node.get("not"), where + ".not"))
    return found
