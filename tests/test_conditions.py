"""The ``if:`` language: S17, the §5.2 table, every load error, the limits, and properties."""
from __future__ import annotations

import math
from types import MappingProxyType

import pytest
from hypothesis import given, settings, strategies as st

from ductile_lib.conditions import (MAX_DEPTH, MAX_NODES, OPERATORS, Condition, ConditionError,
                                    compile_condition, unknown_keys)


def atom(path="payload.n", op="eq", value=3, **extra):
    node = {"path": path, "op": op}
    if value is not None:
        node["value"] = value
    node.update(extra)
    return node


def holds(node, payload=None, context=None, config=None, **scope):
    """Evaluate ``node`` with only the roots that are given (the rest absent)."""
    for name, value in (("payload", payload), ("context", context), ("config", config)):
        if value is not None:
            scope[name] = value
    return compile_condition(node).evaluate(scope)


def load_error(node, where="if"):
    with pytest.raises(ConditionError) as info:
        compile_condition(node, where)
    return str(info.value)


# --------------------------------------------------------------------------
# S17 Condition typing.
# --------------------------------------------------------------------------

S17_PAYLOAD = {"n": 3, "flag": True, "name": "Alpha"}


@pytest.mark.parametrize("node, expected", [
    (atom("payload.n", "eq", 3.0), True),
    (atom("payload.n", "eq", "3"), False),
    (atom("payload.flag", "eq", 1), False),
    (atom("payload.n", "in", [1, 3]), True),
    (atom("payload.missing", "gt", 5), False),
    ({"not": atom("payload.missing", "gt", 5)}, True),
    (atom("payload.name", "contains", "ALP"), True),
    (atom("payload.n", "contains", "3"), False),
])
def test_s17_typing(node, expected):
    assert holds(node, S17_PAYLOAD) is expected


def test_s17_config_scope():
    node = atom("config.mode", "eq", "fast")
    assert holds(node, S17_PAYLOAD, config={"mode": "fast"}) is True
    assert holds(node, S17_PAYLOAD) is False  # config absent (groups, call, relay)


@pytest.mark.parametrize("node, where, message", [
    (atom("payload.n", "gt", "5"), "if.value", "gt needs a number"),
    (atom("payload.name", "regex", "("), "if.value", "regex does not compile: "),
    ({"not": {"not": {"not": atom()}}}, "if.not.not.not", "nesting deeper than 3"),
    ({"all": [atom()] * 20}, "if.all[19]", "more than 20 nodes"),
])
def test_s17_load_errors(node, where, message):
    with pytest.raises(ConditionError) as info:
        compile_condition(node)
    assert info.value.where == where
    assert info.value.message.startswith(message)
    assert str(info.value) == "%s: %s" % (info.value.where, info.value.message)
    assert isinstance(info.value, ValueError)


# --------------------------------------------------------------------------
# §5.2 semantics, table-driven.
# --------------------------------------------------------------------------

DOC = {
    "i": 3, "f": 3.0, "half": 2.5, "neg": -1, "big": 10 ** 30, "zero": 0,
    "t": True, "fa": False, "nul": None, "s": "Alpha Beta", "empty": "", "num_s": "3",
    "lst": [1, "a", None], "obj": {"a": 1, "b": [1, 2], "c": {"d": None}},
    "nested": {"deep": {"x": "y"}}, "items": [{"id": 1}], "uni": "\u00c9COLE",
}

SEMANTICS = [
    # exists: present (null included), absent, lists not walked, scalars not walked
    ("payload.i exists", atom("payload.i", "exists", None), True),
    ("null is present", atom("payload.nul", "exists", None), True),
    ("missing key", atom("payload.nope", "exists", None), False),
    ("nested present", atom("payload.nested.deep.x", "exists", None), True),
    ("nested missing", atom("payload.nested.deep.z", "exists", None), False),
    ("lists are not indexed", atom("payload.items.0", "exists", None), False),
    ("lists are not walked", atom("payload.items.id", "exists", None), False),
    ("scalar is not walked", atom("payload.s.x", "exists", None), False),
    ("through null is absent", atom("payload.nul.x", "exists", None), False),
    ("root absent", atom("context.i", "exists", None), False),
    # eq: numbers by value, never booleans; strings exact; no coercion
    ("int eq float", atom("payload.i", "eq", 3.0), True),
    ("float eq int", atom("payload.f", "eq", 3), True),
    ("int eq int", atom("payload.i", "eq", 3), True),
    ("number ne number", atom("payload.half", "eq", 2), False),
    ("big int exact", atom("payload.big", "eq", 10 ** 30), True),
    ("big int vs float", atom("payload.big", "eq", 10 ** 30 + 1), False),
    ("true ne 1", atom("payload.t", "eq", 1), False),
    ("false ne 0", atom("payload.fa", "eq", 0), False),
    ("zero ne false", atom("payload.zero", "eq", False), False),
    ("true eq true", atom("payload.t", "eq", True), True),
    ("false eq false", atom("payload.fa", "eq", False), True),
    ("true ne false", atom("payload.t", "eq", False), False),
    ("string exact", atom("payload.s", "eq", "Alpha Beta"), True),
    ("string case matters", atom("payload.s", "eq", "alpha beta"), False),
    ("no coercion str→num", atom("payload.num_s", "eq", 3), False),
    ("no coercion num→str", atom("payload.i", "eq", "3"), False),
    ("empty string ne false", atom("payload.empty", "eq", False), False),
    ("null ne anything", atom("payload.nul", "eq", 0), False),
    ("null ne empty string", atom("payload.nul", "eq", ""), False),
    ("list element-wise", atom("payload.lst", "eq", [1.0, "a", None]), True),
    ("list order matters", atom("payload.lst", "eq", ["a", 1, None]), False),
    ("list length matters", atom("payload.lst", "eq", [1, "a"]), False),
    ("list elements typed", atom("payload.lst", "eq", [True, "a", None]), False),
    ("object by keys/values", atom("payload.obj", "eq", {"c": {"d": None}, "b": [1, 2.0], "a": 1}), True),
    ("object extra key", atom("payload.obj", "eq", {"a": 1, "b": [1, 2], "c": {"d": None}, "e": 1}), False),
    ("object missing key", atom("payload.obj", "eq", {"a": 1, "b": [1, 2]}), False),
    ("object value differs", atom("payload.obj", "eq", {"a": 1, "b": [1, 2], "c": {"d": 0}}), False),
    ("object ne list", atom("payload.obj", "eq", [1]), False),
    ("absent eq is false", atom("payload.nope", "eq", 3), False),
    # neq is the negation of eq, absent included
    ("neq differs", atom("payload.i", "neq", 4), True),
    ("neq same value", atom("payload.i", "neq", 3.0), False),
    ("neq true vs 1", atom("payload.t", "neq", 1), True),
    ("absent neq is true", atom("payload.nope", "neq", 3), True),
    ("absent root neq is true", atom("context.x", "neq", "a"), True),
    # in: same equality, absent as null
    ("in by value", atom("payload.i", "in", [1, 3.0]), True),
    ("in no bool", atom("payload.t", "in", [1, 0]), False),
    ("in strings", atom("payload.s", "in", ["x", "Alpha Beta"]), True),
    ("in not there", atom("payload.s", "in", ["x"]), False),
    ("in empty list", atom("payload.i", "in", []), False),
    ("in lists", atom("payload.lst", "in", [[1, "a", None]]), True),
    ("absent in list with null", atom("payload.nope", "in", [1, None]), True),
    ("absent in list without null", atom("payload.nope", "in", [1, 2]), False),
    ("null in list with null", atom("payload.nul", "in", [None]), True),
    # ordering: numeric only
    ("gt", atom("payload.i", "gt", 2), True),
    ("gt equal", atom("payload.i", "gt", 3), False),
    ("gte equal", atom("payload.i", "gte", 3.0), True),
    ("lt", atom("payload.half", "lt", 3), True),
    ("lte equal", atom("payload.f", "lte", 3), True),
    ("lte less", atom("payload.neg", "lte", -2), False),
    ("big int vs float bound", atom("payload.big", "gt", 1e29), True),
    ("gt absent", atom("payload.nope", "gt", 5), False),
    ("lt absent", atom("payload.nope", "lt", 5), False),
    ("gt string", atom("payload.num_s", "gt", 1), False),
    ("lt string", atom("payload.num_s", "lt", 100), False),
    ("gt bool", atom("payload.t", "gt", 0), False),
    ("gte bool", atom("payload.fa", "gte", 0), False),
    ("gt null", atom("payload.nul", "gt", -1), False),
    ("lt list", atom("payload.lst", "lt", 10), False),
    # string operators: lower-cased both sides, strings only
    ("contains ci", atom("payload.s", "contains", "PHA b"), True),
    ("contains no", atom("payload.s", "contains", "gamma"), False),
    ("contains empty", atom("payload.s", "contains", ""), True),
    ("contains unicode", atom("payload.uni", "contains", "\u00e9co"), True),
    ("startswith ci", atom("payload.s", "startswith", "aLPHA"), True),
    ("startswith no", atom("payload.s", "startswith", "Beta"), False),
    ("endswith ci", atom("payload.s", "endswith", "BETA"), True),
    ("endswith no", atom("payload.s", "endswith", "Alpha"), False),
    ("contains number", atom("payload.i", "contains", "3"), False),
    ("contains absent", atom("payload.nope", "contains", ""), False),
    ("contains null", atom("payload.nul", "contains", ""), False),
    ("contains list", atom("payload.lst", "contains", "a"), False),
    ("startswith bool", atom("payload.t", "startswith", "t"), False),
    ("endswith absent", atom("payload.nope", "endswith", ""), False),
    # regex: whole string, inline flags, strings only
    ("regex whole", atom("payload.s", "regex", "Alpha.*"), True),
    ("regex partial is not enough", atom("payload.s", "regex", "Alpha"), False),
    ("regex anchored alternation", atom("payload.s", "regex", "x|Alpha Beta"), True),
    ("regex case-sensitive", atom("payload.s", "regex", "alpha.*"), False),
    ("regex inline flag", atom("payload.s", "regex", "(?i)alpha.*"), True),
    ("regex empty matches empty", atom("payload.empty", "regex", ""), True),
    ("regex number", atom("payload.i", "regex", "3"), False),
    ("regex absent", atom("payload.nope", "regex", ".*"), False),
    ("regex null", atom("payload.nul", "regex", ".*"), False),
    # composites
    ("all true", {"all": [atom("payload.i", "eq", 3), atom("payload.t", "eq", True)]}, True),
    ("all one false", {"all": [atom("payload.i", "eq", 3), atom("payload.t", "eq", False)]}, False),
    ("any one true", {"any": [atom("payload.i", "eq", 4), atom("payload.t", "eq", True)]}, True),
    ("any none true", {"any": [atom("payload.i", "eq", 4), atom("payload.t", "eq", False)]}, False),
    ("not true", {"not": atom("payload.i", "eq", 3)}, False),
    ("not false", {"not": atom("payload.i", "eq", 4)}, True),
    ("not not", {"not": {"not": atom("payload.i", "eq", 3)}}, True),
    ("mixed", {"all": [{"any": [atom("payload.nope", "exists", None), atom("payload.s", "contains", "beta")]},
                       {"not": atom("payload.i", "gt", 5)}]}, True),
]


@pytest.mark.parametrize("label, node, expected", SEMANTICS, ids=[case[0] for case in SEMANTICS])
def test_semantics(label, node, expected):
    assert holds(node, DOC) is expected


@pytest.mark.parametrize("label, node, expected", SEMANTICS, ids=[case[0] for case in SEMANTICS])
def test_semantics_through_frozen_mappings(label, node, expected):
    """Config values arrive as MappingProxyType; they must walk and compare like dicts."""
    def freeze(value):
        if isinstance(value, dict):
            return MappingProxyType({k: freeze(v) for k, v in value.items()})
        if isinstance(value, list):
            return tuple(freeze(v) for v in value)
        return value
    assert compile_condition(node).evaluate(MappingProxyType({"payload": freeze(DOC)})) is expected


def test_scopes_roots_are_independent():
    node = {"all": [atom("payload.a", "eq", 1), atom("context.role", "eq", "admin"),
                    atom("config.channel", "eq", "#ops")]}
    scope = {"payload": {"a": 1}, "context": {"role": "admin"}, "config": {"channel": "#ops"}}
    assert compile_condition(node).evaluate(scope) is True
    for missing in scope:
        partial = {k: v for k, v in scope.items() if k != missing}
        assert compile_condition(node).evaluate(partial) is False


@pytest.mark.parametrize("scope", [{}, {"payload": None}, {"payload": [1, 2]}, {"payload": "x"},
                                   {"context": {"a": 1}}, None, [], "payload", 42])
def test_odd_scopes_are_absent_not_errors(scope):
    assert compile_condition(atom("payload.a", "exists", None)).evaluate(scope) is False
    assert compile_condition(atom("payload.a", "neq", 1)).evaluate(scope) is True
    assert compile_condition(atom("payload.a", "gt", 1)).evaluate(scope) is False


def test_a_scope_that_raises_is_false_not_an_exception():
    class Hostile(dict):
        def get(self, *args):
            raise RuntimeError("boom")
    assert compile_condition(atom("payload.a", "neq", 1)).evaluate(Hostile(payload={})) is False


def test_all_and_any_short_circuit():
    """A child that is never reached must not be evaluated (observable via a counting scope)."""
    seen = []

    class Counting(dict):
        def get(self, key, default=None):
            seen.append(key)
            return dict.get(self, key, default)

    scope = Counting(payload=Counting(a=1, b=2))
    compile_condition({"all": [atom("payload.a", "eq", 2), atom("payload.b", "eq", 2)]}).evaluate(scope)
    assert "b" not in seen
    seen.clear()
    compile_condition({"any": [atom("payload.a", "eq", 1), atom("payload.b", "eq", 2)]}).evaluate(scope)
    assert "b" not in seen
    seen.clear()
    compile_condition({"any": [atom("payload.a", "eq", 2), atom("payload.b", "eq", 2)]}).evaluate(scope)
    assert "b" in seen


def test_nan_equals_nothing_and_orders_false():
    scope = {"payload": {"x": float("nan")}}
    assert compile_condition(atom("payload.x", "eq", 1)).evaluate(scope) is False
    assert compile_condition(atom("payload.x", "gt", 0)).evaluate(scope) is False
    assert compile_condition(atom("payload.x", "lte", 0)).evaluate(scope) is False
    assert compile_condition(atom("payload.i", "lt", float("inf"))).evaluate({"payload": {"i": 10 ** 400}}) is True


def test_path_with_surrounding_space_is_trimmed():
    cond = compile_condition(atom(" payload.i ", "eq", 3))
    assert cond.evaluate({"payload": {"i": 3}}) is True
    assert cond.to_view()["path"] == "payload.i"


# --------------------------------------------------------------------------
# Load errors, every one, with location.
# --------------------------------------------------------------------------

SHAPE = "must define exactly one of atomic predicate, all, any, or not"

LOAD_ERRORS = [
    ({}, "if: " + SHAPE),
    ({"all": []}, "if: " + SHAPE),
    ({"any": [], "all": []}, "if: " + SHAPE),
    ({"not": None}, "if: " + SHAPE),
    ({"path": "", "op": "  "}, "if: " + SHAPE),
    ({"value": None}, "if: " + SHAPE),
    ({"all": [atom()], "any": [atom()]}, "if: " + SHAPE),
    ({"all": [atom()], "not": atom()}, "if: " + SHAPE),
    (dict(atom(), all=[atom()]), "if: " + SHAPE),
    (dict(atom(), **{"not": atom()}), "if: " + SHAPE),
    ({"not": {}}, "if.not: " + SHAPE),
    ({"all": [atom(), {}]}, "if.all[1]: " + SHAPE),
    (None, "if: must be a mapping with path/op/value, all, any or not (got null)"),
    ([atom()], "if: must be a mapping with path/op/value, all, any or not (got list)"),
    ("payload.x eq 1", "if: must be a mapping with path/op/value, all, any or not (got string)"),
    ({"any": [atom(), 7]}, "if.any[1]: must be a mapping with path/op/value, all, any or not (got number)"),
    ({"not": [atom()]}, "if.not: must be a mapping with path/op/value, all, any or not (got list)"),
    ({"all": atom()}, "if.all: must be a list of conditions (got mapping)"),
    ({"any": "x"}, "if.any: must be a list of conditions (got string)"),
    ({"op": "eq", "value": 1}, "if: path is required"),
    ({"path": "  ", "op": "eq", "value": 1}, "if: path is required"),
    ({"path": 5, "op": "eq", "value": 1}, "if.path: must be a string (got number)"),
    (atom("payload"), "if.path: must have at least 2 segments"),
    (atom("foo.bar"), 'if.path: unsupported root "foo" (want payload, context or config)'),
    (atom("Payload.x"), 'if.path: unsupported root "Payload" (want payload, context or config)'),
    (atom(".x"), 'if.path: unsupported root "" (want payload, context or config)'),
    (atom("payload..x"), 'if.path: empty segment in "payload..x"'),
    (atom("payload.x."), 'if.path: empty segment in "payload.x."'),
    (atom("payload. .x"), 'if.path: empty segment in "payload. .x"'),
    ({"path": "payload.x", "value": 1}, "if: op is required"),
    ({"path": "payload.x"}, "if: op is required"),
    (atom(op=3), "if.op: must be a string (got number)"),
    (atom(op="like"), 'if.op: unknown operator "like"'),
    (atom(op="EQ"), 'if.op: unknown operator "EQ"'),
    (atom(op="exists", value=True), "if.value: exists takes no value"),
    (atom(op="exists", value=""), "if.value: exists takes no value"),
    (atom(op="eq", value=None), "if.value: eq needs a value"),
    (atom(op="neq", value=None), "if.value: neq needs a value"),
    (atom(op="in", value=None), "if.value: in needs a value"),
    (atom(op="in", value="abc"), "if.value: in needs a list (got string)"),
    (atom(op="in", value={"a": 1}), "if.value: in needs a list (got mapping)"),
    (atom(op="gt", value=None), "if.value: gt needs a value"),
    (atom(op="gt", value="5"), "if.value: gt needs a number"),
    (atom(op="gte", value=True), "if.value: gte needs a number"),
    (atom(op="lt", value=[1]), "if.value: lt needs a number"),
    (atom(op="lte", value={"a": 1}), "if.value: lte needs a number"),
    (atom(op="contains", value=3), "if.value: contains needs a string"),
    (atom(op="startswith", value=None), "if.value: startswith needs a value"),
    (atom(op="startswith", value=False), "if.value: startswith needs a string"),
    (atom(op="endswith", value=["a"]), "if.value: endswith needs a string"),
    (atom(op="regex", value=1), "if.value: regex needs a string"),
    (atom(op="regex", value="("), "if.value: regex does not compile: missing ), unterminated subpattern"),
    (atom(op="regex", value="a{2,1}"), "if.value: regex does not compile: "),
    (atom(op="regex", value="[z-a]"), "if.value: regex does not compile: "),
    (atom(op="regex", value="(?<=a+)b"), "if.value: regex does not compile: look-behind requires fixed-width"),
    ({"all": [atom(), {"any": [atom(), atom(op="gt", value="x")]}]}, "if.all[1].any[1].value: gt needs a number"),
    ({"any": [{"not": atom("x.y")}]}, 'if.any[0].not.path: unsupported root "x" (want payload, context or config)'),
]


@pytest.mark.parametrize("node, message", LOAD_ERRORS, ids=[str(i) for i in range(len(LOAD_ERRORS))])
def test_load_errors(node, message):
    assert load_error(node).startswith(message)


def test_where_prefix_is_the_callers():
    with pytest.raises(ConditionError) as info:
        compile_condition({"all": [atom(), atom(op="like")]}, where='pipeline "p" step "s" if')
    assert info.value.where == 'pipeline "p" step "s" if.all[1].op'
    assert info.value.message == 'unknown operator "like"'


def test_first_error_wins_in_document_order():
    node = {"all": [atom(op="gt", value="a"), atom("nope.x")]}
    assert load_error(node) == "if.all[0].value: gt needs a number"


def test_input_is_not_mutated_and_tree_is_private():
    value = [1, {"a": [2]}]
    node = {"all": [atom("payload.x", "in", value)]}
    cond = compile_condition(node)
    value[1]["a"].append(3)
    assert cond.evaluate({"payload": {"x": {"a": [2]}}}) is True
    view = cond.to_view()
    view["all"][0]["value"].append("junk")
    assert cond.to_view()["all"][0]["value"] == [1, {"a": [2]}]
    assert node == {"all": [atom("payload.x", "in", [1, {"a": [2, 3]}])]}


def test_condition_is_immutable():
    cond = compile_condition(atom())
    with pytest.raises(AttributeError):
        cond._op = "neq"
    with pytest.raises(AttributeError):
        cond.anything = 1
    with pytest.raises(AttributeError):
        del cond._op
    assert isinstance(cond, Condition)
    assert "payload.n" in repr(cond)


def test_unknown_keys_are_listed_not_refused():
    node = {"all": [dict(atom(), vaule=1), {"not": dict(atom(), note="x")}], "comment": "hi"}
    compile_condition(node)
    assert unknown_keys(node) == ["if.comment", "if.all[0].vaule", "if.all[1].not.note"]
    assert unknown_keys(atom()) == []
    assert unknown_keys("junk") == []


def test_roots_lists_the_scopes_read():
    cond = compile_condition({"any": [atom("payload.a"), {"not": atom("config.b")}]})
    assert cond.roots == frozenset({"payload", "config"})


# --------------------------------------------------------------------------
# Limits, exactly at the boundary.
# --------------------------------------------------------------------------

def nest_not(levels):
    node = atom()
    for _ in range(levels):
        node = {"not": node}
    return node


def test_depth_three_passes_four_fails():
    assert MAX_DEPTH == 3
    compile_condition(nest_not(2))
    assert load_error(nest_not(3)) == "if.not.not.not: nesting deeper than 3"


def test_depth_counts_all_and_any_alike():
    compile_condition({"all": [{"any": [atom()]}]})
    assert load_error({"all": [{"any": [{"not": atom()}]}]}) == "if.all[0].any[0].not: nesting deeper than 3"


def test_depth_is_checked_before_shape():
    assert load_error({"not": {"not": {"not": {}}}}) == "if.not.not.not: nesting deeper than 3"


def test_node_limit_counts_composites():
    assert MAX_NODES == 20
    compile_condition({"all": [atom()] * 19})            # 20 nodes
    assert load_error({"all": [atom()] * 20}) == "if.all[19]: more than 20 nodes"  # 21
    compile_condition({"any": [atom()] * 19})
    assert load_error({"any": [atom()] * 20}) == "if.any[19]: more than 20 nodes"


def test_node_limit_is_on_the_whole_tree():
    # root + 2 groups of (1 + 8 atoms) = 19; one more atom anywhere = 20 passes; two more fails.
    groups = [{"any": [atom()] * 8}, {"any": [atom()] * 8}]
    compile_condition({"all": groups})
    compile_condition({"all": groups + [atom()]})
    assert load_error({"all": groups + [atom(), {"not": atom()}]}) == "if.all[3]: more than 20 nodes"


# --------------------------------------------------------------------------
# to_view: the compiled_routes `if` shape, and it round-trips.
# --------------------------------------------------------------------------

@pytest.mark.parametrize("node, view", [
    (atom("payload.n", "eq", 3), {"path": "payload.n", "op": "eq", "value": 3}),
    (atom("payload.n", "exists", None), {"path": "payload.n", "op": "exists"}),
    (atom("payload.n", "eq", False), {"path": "payload.n", "op": "eq", "value": False}),
    ({"not": atom("payload.n", "in", [1, None])},
     {"not": {"path": "payload.n", "op": "in", "value": [1, None]}}),
    ({"all": [atom(), {"any": [atom("context.r", "regex", "(?i)a")]}], "any": []},
     {"all": [{"path": "payload.n", "op": "eq", "value": 3},
              {"any": [{"path": "context.r", "op": "regex", "value": "(?i)a"}]}]}),
])
def test_to_view_shape(node, view):
    got = compile_condition(node).to_view()
    assert got == view
    assert set(got) <= {"path", "op", "value", "all", "any", "not"}


# --------------------------------------------------------------------------
# Properties.
# --------------------------------------------------------------------------

KEYS = st.sampled_from(["a", "b", "n", "s", "x"])
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.integers(),
                    st.floats(allow_nan=False, allow_infinity=False),
                    st.sampled_from([0.0, 3.0, 3, -0.0]), st.text(max_size=6))
JSON = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(KEYS, inner, max_size=4)), max_leaves=12)
NON_NULL = JSON.filter(lambda v: v is not None)
ANYTHING = st.one_of(JSON, st.floats(), st.just(float("nan")))
SCOPES = st.dictionaries(st.sampled_from(["payload", "context", "config", "other"]),
                         st.one_of(st.dictionaries(KEYS, ANYTHING, max_size=5), ANYTHING), max_size=4)
PATHS = st.builds(lambda root, rest: ".".join([root] + rest),
                  st.sampled_from(["payload", "context", "config"]), st.lists(KEYS, min_size=1, max_size=3))
REGEXES = st.sampled_from(["", ".*", "(?i)a.*", "a|b", "[0-9]+", "x?y*", "\\w+", "(a)(b)?"])


def _value_for(op):
    if op == "exists":
        return st.none()
    if op in ("eq", "neq"):
        return NON_NULL
    if op == "in":
        return st.lists(JSON, max_size=4)
    if op in ("gt", "gte", "lt", "lte"):
        return st.one_of(st.integers(), st.floats(allow_nan=True))
    if op == "regex":
        return REGEXES
    return st.text(max_size=4)


ATOMS = st.sampled_from(OPERATORS).flatmap(
    lambda op: st.builds(lambda p, v: atom(p, op, v), PATHS, _value_for(op)))


def _conditions(depth=1):
    if depth == MAX_DEPTH:
        return ATOMS
    inner = _conditions(depth + 1)
    return st.one_of(
        ATOMS,
        st.builds(lambda c: {"not": c}, inner),
        st.builds(lambda cs: {"all": cs}, st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda cs: {"any": cs}, st.lists(inner, min_size=1, max_size=3)),
    )


CONDITIONS = _conditions()  # at most 1 + 3 + 9 = 13 nodes, so always within the limit
SHALLOW = _conditions(2)    # one level less, so a `not` can wrap it


@settings(max_examples=150, deadline=None)
@given(CONDITIONS, SCOPES)
def test_evaluate_never_raises_and_returns_bool(node, scope):
    assert compile_condition(node).evaluate(scope) in (True, False)


@settings(max_examples=100, deadline=None)
@given(SHALLOW, SCOPES)
def test_not_is_negation(node, scope):
    assert compile_condition({"not": node}).evaluate(scope) is (not compile_condition(node).evaluate(scope))


@settings(max_examples=100, deadline=None)
@given(CONDITIONS)
def test_to_view_round_trips(node):
    view = compile_condition(node).to_view()
    assert compile_condition(view).to_view() == view


def _eq(left, right):
    return compile_condition(atom("payload.v", "eq", right)).evaluate({"payload": {"v": left}})


@settings(max_examples=150, deadline=None)
@given(NON_NULL)
def test_eq_is_reflexive(value):
    assert _eq(value, value) is True


@settings(max_examples=150, deadline=None)
@given(NON_NULL, NON_NULL)
def test_eq_is_symmetric_and_neq_is_its_negation(left, right):
    forward = _eq(left, right)
    assert forward is _eq(right, left)
    neq = compile_condition(atom("payload.v", "neq", right)).evaluate({"payload": {"v": left}})
    assert neq is (not forward)


@settings(max_examples=100, deadline=None)
@given(NON_NULL, st.lists(JSON, max_size=4))
def test_in_is_any_eq(value, options):
    found = compile_condition(atom("payload.v", "in", options)).evaluate({"payload": {"v": value}})
    assert found is any(o is not None and _eq(value, o) for o in options)


@settings(max_examples=100, deadline=None)
@given(st.one_of(st.integers(), st.floats(allow_nan=False)), st.one_of(st.integers(), st.floats(allow_nan=False)))
def test_numbers_compare_by_value(left, right):
    scope = {"payload": {"v": left}}
    assert compile_condition(atom("payload.v", "eq", right)).evaluate(scope) is (left == right)
    assert compile_condition(atom("payload.v", "lt", right)).evaluate(scope) is (left < right)
    assert compile_condition(atom("payload.v", "gte", right)).evaluate(scope) is (left >= right)


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=8), st.text(max_size=3))
def test_string_ops_are_lowercased(text, needle):
    scope = {"payload": {"v": text}}
    assert compile_condition(atom("payload.v", "contains", needle)).evaluate(scope) is \
        (needle.lower() in text.lower())
    assert compile_condition(atom("payload.v", "startswith", needle)).evaluate(scope) is \
        text.lower().startswith(needle.lower())


def test_reflexive_property_excludes_only_nan():
    assert math.isnan(float("nan")) and _eq(float("nan"), float("nan")) is False
