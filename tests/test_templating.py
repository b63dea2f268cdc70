"""`with:` templates (spec 30 §6, scenario S16)."""
from __future__ import annotations

import json

import pytest
from hypothesis import given, strategies as st

from ductile_lib.templating import TemplateError, apply_with, compile_template, compile_with


def render(text, payload=None, context=None, config=None):
    scope = {"payload": payload if payload is not None else {}, "context": context, "config": config}
    return compile_template(text).render(scope)


# --- S16 ------------------------------------------------------------------------------

S16_PAYLOAD = {"count": 3, "big": 1000000, "ratio": 2.5}


def test_s16_with_values():
    templates = compile_with({"n": "{payload.count}", "s": "n={payload.count}", "k": "const",
                              "b": "v={payload.big}", "r": "{payload.ratio}x"}, 'pipeline "P" step "S": with')
    out = apply_with(templates, {"payload": S16_PAYLOAD})
    assert out == {"n": 3, "s": "n=3", "k": "const", "b": "v=1000000", "r": "2.5x"}
    assert type(out["n"]) is int


def test_s16_missing_path_message():
    templates = compile_with({"m": "{payload.missing}"}, "with")
    with pytest.raises(TemplateError) as info:
        apply_with(templates, {"payload": S16_PAYLOAD})
    assert str(info.value) == 'm: resolve "payload.missing": path not found'


def test_s16_big_number_from_float_json():
    # A plugin's JSON "1e6" decodes to a float; it still reads as digits.
    assert render("v={payload.big}", {"big": 1e6}) == "v=1000000"


# --- grammar errors at load -----------------------------------------------------------

@pytest.mark.parametrize("text, fragment", [
    ("a}b", "unexpected }"),
    ("}{payload.x}", "unexpected }"),
    ("{payload.x}}", "unexpected }"),
    ("x {payload.x", "unclosed {"),
    ("{", "unclosed {"),
    ("a {} b", "empty {}"),
    ("{   }", "empty {}"),
    ("{payload.{x}}", "nested {"),
    ("{{payload.x}}", "nested {"),
    ("{foo.bar}", 'unsupported path root "foo"'),
    ("{payloadx}", 'unsupported path root "payloadx"'),
    ("hi {event.x}", 'unsupported path root "event"'),
    ("{payload..x}", "empty segment"),
])
def test_grammar_errors(text, fragment):
    with pytest.raises(TemplateError) as info:
        compile_template(text)
    assert fragment in str(info.value)


def test_compile_with_names_the_key():
    with pytest.raises(TemplateError) as info:
        compile_with({"ok": "{payload.a}", "bad": "x}"}, 'pipeline "p" step "s": with')
    assert str(info.value).startswith('pipeline "p" step "s": with.bad: unexpected }')


def test_compile_with_rejects_non_mapping_and_nested_values():
    with pytest.raises(TemplateError):
        compile_with(["a"], "with")
    with pytest.raises(TemplateError) as info:
        compile_with({"a": {"b": 1}}, "with")
    assert "with.a:" in str(info.value)
    assert compile_with(None, "with") == {}


@pytest.mark.parametrize("root", ["payload", "context", "config"])
def test_supported_roots(root):
    scope = {"payload": {}, "context": {}, "config": {}}
    scope[root] = {"v": "ok"}
    assert compile_template("{%s.v}" % root).render(scope) == "ok"


def test_placeholder_path_is_trimmed():
    assert render("{ payload.a }", {"a": 7}) == 7
    assert render("x{ payload.a }", {"a": 7}) == "x7"


# --- literals -------------------------------------------------------------------------

@pytest.mark.parametrize("value, text", [(3, "3"), (True, "true"), (False, "false"), (2.5, "2.5"),
                                         ("plain", "plain"), ("", ""), (None, "")])
def test_non_placeholder_values_are_literal_strings(value, text):
    assert compile_template(value).render({}) == text


def test_literal_needs_no_scope():
    assert compile_template("const").render({}) == "const"


# --- single placeholder keeps the JSON type -------------------------------------------

@pytest.mark.parametrize("value", [{"a": [1, {"b": None}]}, [1, "two", 3.5], True, False, None, 0, 2.5, "s"])
def test_single_placeholder_typed(value):
    out = render("{payload.v}", {"v": value})
    assert out == value and type(out) is type(value)


def test_single_placeholder_after_trim():
    assert render("  {payload.v}\n", {"v": 3}) == 3


def test_single_placeholder_is_a_copy():
    payload = {"obj": {"a": [1]}}
    out = render("{payload.obj}", payload)
    out["a"].append(2)
    assert payload == {"obj": {"a": [1]}}


def test_whole_root():
    payload = {"a": 1}
    out = render("{payload}", payload)
    assert out == payload and out is not payload


def test_present_null_is_not_missing():
    assert render("{payload.v}", {"v": None}) is None
    assert render("a{payload.v}b", {"v": None}) == "ab"


# --- mixed text -----------------------------------------------------------------------

@pytest.mark.parametrize("value, text", [
    (3, "3"), (3.0, "3"), (1000000, "1000000"), (1e6, "1000000"), (2.5, "2.5"), (1e-05, "1e-05"),
    (0.1, "0.1"), (-4.0, "-4"), (True, "true"), (False, "false"), (None, ""), ("héllo", "héllo"),
    ({"b": 1, "a": [1, 2.0]}, '{"a":[1,2],"b":1}'), ([1, "x", None], '[1,"x",null]'),
])
def test_mixed_formatting(value, text):
    assert render("<{payload.v}>", {"v": value}) == "<%s>" % text


def test_mixed_multiple_placeholders_and_roots():
    scope = {"payload": {"subject": "t"}, "context": {"p": {"user": "u"}}, "config": {"channel": "#ops"}}
    tpl = compile_template("{payload.subject} by {context.p.user} in {config.channel}")
    assert tpl.render(scope) == "t by u in #ops"
    assert tpl.paths == ["payload.subject", "context.p.user", "config.channel"]


# --- missing paths at run time --------------------------------------------------------

@pytest.mark.parametrize("text, scope, path", [
    ("{payload.x}", {"payload": {}}, "payload.x"),
    ("a {payload.x.y}", {"payload": {"x": 1}}, "payload.x.y"),
    ("{payload.l.0}", {"payload": {"l": [1]}}, "payload.l.0"),
    ("{config.channel}", {"payload": {}}, "config.channel"),
    ("{context.a}", {"payload": {}, "context": None}, "context.a"),
    ("{context}", {"payload": {}}, "context"),
])
def test_missing_path(text, scope, path):
    with pytest.raises(TemplateError) as info:
        compile_template(text).render(scope)
    assert str(info.value) == 'resolve "%s": path not found' % path


# --- apply_with -----------------------------------------------------------------------

def test_apply_with_uses_one_snapshot_in_sorted_order():
    templates = compile_with({"b": "{payload.a}", "a": "new", "c": "{payload.b}"}, "with")
    scope = {"payload": {"a": "old", "b": "orig-b"}}
    assert apply_with(templates, scope) == {"a": "new", "b": "old", "c": "orig-b"}
    assert scope == {"payload": {"a": "old", "b": "orig-b"}}
    assert list(apply_with(templates, scope)) == ["a", "b", "c"]


def test_apply_with_reports_first_failing_key_in_sorted_order():
    templates = compile_with({"z": "{payload.nope}", "a": "{payload.gone}"}, "with")
    with pytest.raises(TemplateError) as info:
        apply_with(templates, {"payload": {}})
    assert str(info.value).startswith("a: ")


def test_s2_with_config():
    templates = compile_with({"content": "branch true for {payload.subject}", "status": "{payload.status}",
                              "channel": "{config.channel}"}, "with")
    scope = {"payload": {"run_processor": True, "subject": "t", "status": "approved"},
             "context": {"ductile_plugin": "content_processor"}, "config": {"channel": "#ops"}}
    assert apply_with(templates, scope) == {"content": "branch true for t", "status": "approved",
                                            "channel": "#ops"}


# --- properties -----------------------------------------------------------------------

_json_scalars = st.one_of(st.none(), st.booleans(), st.integers(),
                          st.floats(allow_nan=False, allow_infinity=False), st.text())
_json = st.recursive(_json_scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                            st.dictionaries(st.text(), inner, max_size=3)),
                     max_leaves=10)


@given(_json)
def test_single_placeholder_round_trips_any_json(value):
    assert render("{payload.v}", {"v": value}) == value


@given(st.text().filter(lambda s: "{" not in s and "}" not in s))
def test_brace_free_text_is_literal(text):
    assert compile_template(text).render({}) == text


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_mixed_float_reads_back(value):
    text = render("={payload.v}", {"v": value})[1:]
    assert float(text) == value
    if value.is_integer():
        assert "." not in text and "e" not in text


@given(_json)
def test_mixed_container_is_json(value):
    if isinstance(value, (dict, list)):
        json.loads(render("={payload.v}", {"v": value})[1:])
