"""Tests for ductile_lib.miniyaml (spec 10-config.md §9).

PyYAML is the oracle: `Oracle` is yaml.SafeLoader with the §9.4 resolution
changes applied (no yes/no/on/off booleans, no sexagesimal numbers, no
timestamps, `=` a string), so on the supported subset `loads(t) == oracle(t)`
must hold exactly. Duplicate keys and the refusals of §9.5 are tested apart.
"""

import math
import pathlib
import re

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ductile_lib import miniyaml
from ductile_lib.miniyaml import YAMLError, dumps, loads, loads_with_positions

CORPUS = pathlib.Path(__file__).parent / "yaml_corpus"
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --------------------------------------------------------------------------- oracle

class Oracle(yaml.SafeLoader):
    """PyYAML's safe loader with the §9.4 differences applied."""


_DROPPED = {"tag:yaml.org,2002:" + t for t in ("bool", "int", "float", "timestamp", "value")}
Oracle.yaml_implicit_resolvers = {
    first: [r for r in resolvers if r[0] not in _DROPPED]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
Oracle.add_implicit_resolver("tag:yaml.org,2002:bool",
                             re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
Oracle.add_implicit_resolver("tag:yaml.org,2002:int", re.compile(
    r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$"),
    list("-+0123456789"))
Oracle.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(
    r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?|\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?"
    r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"), list("-+0123456789."))


def oracle(text):
    """Adjusted PyYAML reading of text."""
    return yaml.load(text, Loader=Oracle)


def norm(value):
    """Make NaN comparable and keep bool/int/float apart (True == 1 == 1.0 in Python)."""
    if isinstance(value, float):
        return ("float", "nan") if math.isnan(value) else ("float", value)
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, dict):
        return {norm(k): norm(v) for k, v in value.items()}
    if isinstance(value, list):
        return [norm(v) for v in value]
    return value


def assert_conforms(text):
    """loads(text) must equal the adjusted PyYAML result, types included."""
    ours = loads(text)
    assert norm(ours) == norm(oracle(text))
    return ours


# --------------------------------------------------------------------------- corpus (§9.1, §9.3)

CORPUS_FILES = sorted(p.name for p in CORPUS.glob("*.yaml"))


def test_corpus_is_present():
    assert len(CORPUS_FILES) >= 7


@pytest.mark.parametrize("name", CORPUS_FILES)
def test_corpus_file_matches_oracle(name):
    raw = (CORPUS / name).read_bytes()
    ours = assert_conforms(raw.decode("utf-8"))
    assert loads(raw) == ours  # bytes in, same result
    assert loads(raw.replace(b"\n", b"\r\n")) == ours  # CRLF
    assert loads(b"\xef\xbb\xbf" + raw) == ours  # BOM


def test_corpus_config_root_values():
    data = loads((CORPUS / "config_root.yaml").read_text(encoding="utf-8"))
    assert data["api"]["listen"] == "127.0.0.1:8080"
    assert data["api"]["auth"]["tokens"][0]["token"] == "${DUCTILE_ADMIN_TOKEN}"
    assert data["api"]["auth"]["tokens"][1]["scopes"] == ["read:jobs", "read:events", "plugin:echo:rw"]
    assert data["empty_key"] is None and data["database"] == {"path": None}
    assert data["plugin_roots"][0] == "~/ductile/plugins"
    assert data["service"]["max_workers"] == 4 and data["service"]["strict_mode"] is False


def test_corpus_plugins_values():
    data = loads((CORPUS / "plugins.yaml").read_text(encoding="utf-8"))["plugins"]
    assert data["withings"]["config"]["note"] == "Weight — body fat — muscle mass"
    assert data["withings"]["schedules"][0]["cron"] == "0 7 * * *"
    assert data["withings"]["schedules"][0]["only_between"] == "07:00-22:00"
    assert data["git_sync"]["config"]["script"][0] == (
        "set -eu\ngit fetch --all\n\ngit rebase origin/main\n")
    assert data["git_sync"]["schedules"] == [{"id": "every-15", "every": "15m"}]
    assert data["notify"]["config"]["server"] == "http://ntfy.lan:80"
    deep = data["nested"]["config"]["level1"]["level2"]["level3"]["level4"]["level5"]
    assert deep["list"] == ["a", {"b": "c", "d": "e"}]


def test_corpus_on_keys_stay_strings():
    data = loads((CORPUS / "pipelines.yaml").read_text(encoding="utf-8"))
    assert [p.get("on") for p in data["pipelines"]] == [
        "withings.measured", "ductile.schedule.fired", None, "git_sync.pushed"]
    assert True not in data["pipelines"][0]
    assert data["pipelines"][3]["if"]["any"][1]["value"] == "fix: "
    assert yaml.safe_load("on: x") == {True: "x"}  # what plain PyYAML would have done


def test_corpus_anchors_and_merges():
    data = loads((CORPUS / "anchors.yaml").read_text(encoding="utf-8"))["plugins"]
    assert data["weather"] == {"enabled": True, "timeout": "2m", "retry": {"max_attempts": 5,
                               "backoff_base": "10s"}, "config": {"city": "Leeds", "tags": ["home", "lab"]},
                               "schedules": [{"id": "hourly", "every": "1h"},
                                             {"id": "daily", "every": "daily"}]}
    assert data["lights"]["enabled"] is True  # earlier merge source wins
    assert data["lights"]["circuit_breaker"] == {"threshold": 3, "reset_after": "30m"}
    assert data["energy"] == {"enabled": False, "timeout": "5s", "parallelism": 2,
                              "retry": {"max_attempts": 1, "backoff_base": "10s"}}
    # merged keys stand at the `<<`, an overridden one where its own key is written
    assert list(data["weather"]) == ["enabled", "retry", "timeout", "config", "schedules"]


def test_corpus_constructs_values():
    data = loads((CORPUS / "constructs.yaml").read_text(encoding="utf-8"))
    assert data["plain"] == "hello world"
    assert data["escapes"] == ("\\ \" / \0 \a \b \t \n \v \f \r \x1b   \x85 \xa0 \u2028 \u2029 A é "
                               "\U0001F600 \tend")
    assert data["spaced key"] == "spaced value"
    assert data["lone_key_flow"] == {"k": None, "other": 1}
    assert data["seq_odd_items"] == [None, "-c", "--", {"nested": "block"}, [["deep"]], {"k": "v"}]
    assert data["keep_first"] == "y\n\n\n"
    assert data["alias_seq"] == [1, 2] and data["alias_seq"] is not data["anchored_seq"]
    assert data["merged"] == {"k": "v", "extra": True}


# --------------------------------------------------------------------------- §9.3 constructs, one by one

CONSTRUCTS = [
    "", "# only a comment\n", "---\n", "---\n...\n", "--- # c\na: 1\n", "a: 1\n...\n", "--- [1, 2]\n",
    "--- |\n  text\n", "hello\n", "'quoted root'\n", "a: 1\r\nb:\r\n  - x\r\n", "a: 1\rb: |\r  x\r",
    "a:\n  b:\n    c: 1\n", "a:\n    b:\n        c: 1\n", "a:\n b:\n  c: 1\n", "a:\n      b: 1\n      c: 2\n",
    "k:\n  - a\n  - b\n", "k:\n- a\n- b\nj: 1\n", "- a: 1\n  b: 2\n- c: 3\n", "-   a: 1\n    b: 2\n",
    "- - x\n  - y\n- - z\n", "-\n- a\n-\n", "-\n  a: 1\n", "-\n  - x\n", "- -c\n- --x\n", "- k:\n  - a\n  j: 1\n",
    "a: b c d   \n", "a: a:b\n", "a: http://x/y?q=1#f\n", "a: a#b\n", "a: x # c\n", "a: ?x\n", "a: -x\n",
    "a: b,c\n", "a: x[y]\n", "a: :x\n",
    "a: 'it''s'\n", "a: ''\n", "a: \"\"\n", "a: 'x' # c\n", "a: \"x\" # c\n", "'k': 1\n", "\"k\": 1\n",
    "\"k\" : 1\n", "a: \"\\x41\\u00e9\\U0001F600\"\n", "a: \"\\\t\"\n", "a: 'a\tb'\n", "a: \"a\tb\"\n",
    "a: [a, \"b\", 1]\n", "a: {k: v, \"k2\": 'v'}\n", "a: {\"k\":1}\n", "a: {k}\n", "a: []\n", "a: {}\n",
    "a: [[1, [2]], {b: [c]}]\n", "a: [a, b,]\n", "a: {a: 1,}\n", "a: [a:b, c]\n", "a: {a:b}\n", "a: {a: }\n",
    "a: [ a , b ]\n", "a: [-]\n", "a: [-a, b]\n", "a: {\"a\": [1, {b: 2}]}\n", "a: [\"x\", 'y''z']\n",
    "a:\n", "a: ~\n", "a:\n# c\nb: 1\n", "a: # c\n  b: 1\n", "a: x!\n",
    "a: |\n  x\n  y\n", "a: |-\n  x\n", "a: |+\n  x\n\n\n", "a: >\n  x\n  y\n\n  z\n", "a: >-\n  x\n   y\n  z\n",
    "a: >+\n  x\n\n", "a: |2\n    x\n   y\n", "a: |-1\n  x\n", "a: |1-\n  x\n", "a: | # c\n  x\n",
    "a: |\n  x\n\n  y\n", "a: |\n\n  x\n", "a: |\n  x\n     \n  y\n", "a: |\n  x\n  # not a comment\n",
    "a: |\n", "a: |+\n\n\nb: 1\n", "a: |\n     \nb: 1\n", "a: |+\n     \n\nb: 1\n",
    "- >\n    \n- x\n", "a: >\n  x\n\n  \ty\n", "- |\n  a\n\n  b\n- >-\n  c\n  d\n",
    "a:\n  |\n   x\n", "a: |\n x\nb: 2\n", "a: |\n  \tx\n",
    "a: &x 1\nb: *x\n", "a: &x\n  k: v\nb: *x\n", "- &x\n  - 1\n- *x\n", "a: &x [1, 2]\nb: [*x, *x]\n",
    "a: &x {k: v}\nb:\n  <<: *x\n  j: 1\n", "a: &x {k: v}\nb:\n  k: own\n  <<: *x\n",
    "a: &x {k: 1, j: 1}\nb: &y {k: 2, m: 2}\nc:\n  <<: [*x, *y]\n", "c:\n  <<: {k: v}\n  j: 1\n",
    "c:\n  <<:\n    k: v\n", "a: &x {k: v}\nc: {<<: *x, j: 1}\n", "\"<<\": 1\n", "a: &x\nb: *x\n",
    "a: [&x 1, *x]\n", "x-base: &base\n  a: 1\nx-more: &more\n  <<: *base\n  b: 2\nuse:\n  <<: *more\n",
    "key with spaces: 1\n", "a-b.c/d: 1\n", "1: one\n", "~: null key\n", "true: t\n", "1.5: f\n",
    "k: v   # trailing spaces then comment\n", "a:    \n", "   \n\na: 1\n\n   \n",
]


@pytest.mark.parametrize("text", CONSTRUCTS)
def test_construct_matches_oracle(text):
    assert_conforms(text)


@pytest.mark.parametrize("text, expected", [
    ("", None), ("# c\n\n", None), ("---\n", None), ("...\n", None), ("---\n...\n", None),
    ("a: 1\n...\n# after\n", {"a": 1}), ("--- 5\n", 5),
    ("a: 1\r\nb: |\r\n  x\r\n  y\r\n", {"a": 1, "b": "x\ny\n"}),
    ("a: {k}\n", {"a": {"k": None}}),
    ("a: [x?y]\n", {"a": ["x?y"]}),  # PyYAML ends flow plain scalars at "?"; §9.3 only at ,[]{}
    ("a: &x 1\nb: &x 2\nc: *x\n", {"a": 1, "b": 2, "c": 2}),  # re-defining an anchor is allowed
    ("b: &b {x: 1}\nc: &c {x: 2, y: 3}\nd:\n  y: 0\n  <<: [*b, *c]\n  z: 9\n",
     {"b": {"x": 1}, "c": {"x": 2, "y": 3}, "d": {"y": 0, "x": 1, "z": 9}}),
])
def test_construct_explicit_values(text, expected):
    assert loads(text) == expected


def test_merge_order_is_document_order():
    data = loads("a: &a {p: 1, q: 2}\nb: &b {r: 3}\nc:\n  z: 0\n  <<: [*a, *b]\n  q: own\n")
    assert list(data["c"].items()) == [("z", 0), ("p", 1), ("r", 3), ("q", "own")]


def test_aliases_are_independent_copies():
    data = loads("a: &x {k: [1]}\nb: *x\nc: *x\n")
    data["b"]["k"].append(2)
    assert data["a"] == {"k": [1]} and data["c"] == {"k": [1]}


def test_dict_order_is_document_order():
    assert list(loads("z: 1\na: 2\nm: 3\n")) == ["z", "a", "m"]


def test_input_types():
    assert loads(b"a: 1") == {"a": 1}
    assert loads(bytearray(b"a: 1")) == {"a": 1}
    assert loads("\ufeffa: 1") == {"a": 1}
    assert loads("a: caf\u00e9 \u2014 ok".encode("utf-8")) == {"a": "café — ok"}
    with pytest.raises(TypeError):
        loads(12)


# --------------------------------------------------------------------------- §9.4 scalars

NAN = float("nan")
SCALARS = [
    ("~", None), ("null", None), ("Null", None), ("NULL", None), ("nULL", "nULL"), ("", None),
    ("true", True), ("True", True), ("TRUE", True), ("false", False), ("False", False), ("FALSE", False),
    ("tRUE", "tRUE"),
    ("0", 0), ("12", 12), ("-0", 0), ("+12", 12), ("-12", -12), ("0x1F", 31), ("0x1f", 31), ("-0x10", -16),
    ("0b101", 5), ("-0b1", -1), ("0755", 493), ("00", 0), ("0_7", 7), ("1_000", 1000), ("1__0", 10),
    ("08", "08"), ("0X1F", "0X1F"), ("0o17", "0o17"), ("0x", "0x"), ("0b2", "0b2"), ("0b", "0b"),
    ("_1", "_1"), ("1_", 1), ("0x_", "0x_"), ("0b_", "0b_"),
    ("1.5", 1.5), ("10.", 10.0), (".5", 0.5), ("1_0.5", 10.5), ("1.0e+3", 1000.0), ("1.0E+3", 1000.0),
    ("-1.5e-3", -0.0015), ("+1.5", 1.5), ("-0.0", -0.0), ("0.", 0.0), ("1.e+2", 100.0), (".5e-1", 0.05),
    (".inf", math.inf), ("-.Inf", -math.inf), ("+.INF", math.inf), (".Inf", math.inf),
    (".nan", NAN), (".NaN", NAN), (".NAN", NAN),
    ("1e3", "1e3"), ("1e+20", "1e+20"), ("-.5", "-.5"), ("2.5.1", "2.5.1"), ("1.0e3", "1.0e3"), (".", "."),
    ("-.nan", "-.nan"), ("._5", "._5"), ("1.0e+3_", "1.0e+3_"), ("inf", "inf"), ("nan", "nan"),
    ("yes", "yes"), ("Yes", "Yes"), ("YES", "YES"), ("no", "no"), ("No", "No"), ("NO", "NO"),
    ("on", "on"), ("On", "On"), ("ON", "ON"), ("off", "off"), ("Off", "Off"), ("OFF", "OFF"),
    ("y", "y"), ("Y", "Y"), ("n", "n"), ("N", "N"),
    ("12:30", "12:30"), ("1:2:3", "1:2:3"), ("-12:30", "-12:30"), ("1:30.5", "1:30.5"),
    ("2026-03-15", "2026-03-15"), ("2026-03-15T14:00:00Z", "2026-03-15T14:00:00Z"),
    ("2026-03-15 14:00:00", "2026-03-15 14:00:00"), ("=", "="), ("<<", "<<"),
    ("${VAR}", "${VAR}"), ("host:8080", "host:8080"), ("a b", "a b"), ("--", "--"),
]


def _same(got, expected):
    if isinstance(expected, float) and math.isnan(expected):
        return isinstance(got, float) and math.isnan(got)
    return type(got) is type(expected) and got == expected and (
        not isinstance(expected, float) or math.copysign(1, got) == math.copysign(1, expected))


@pytest.mark.parametrize("text, expected", SCALARS, ids=[repr(t) for t, _ in SCALARS])
def test_scalar_resolution_as_value(text, expected):
    doc = "v: %s\n" % text
    assert _same(loads(doc)["v"], expected)
    assert _same(loads("- %s\n" % text)[0], expected)
    if text not in ("<<", "0x_", "0b_"):  # PyYAML fails on these (merge tag as a value; int(""))
        assert norm(oracle(doc)) == norm(loads(doc))


@pytest.mark.parametrize("text, expected", [c for c in SCALARS if c[0] and c[0] != "<<"
                                            and not (isinstance(c[1], float) and math.isnan(c[1]))],
                         ids=lambda v: repr(v))
def test_scalar_resolution_as_key(text, expected):
    (key,) = loads("%s: 1\n" % text)
    assert _same(key, expected)
    if not text.startswith(":") and not set(text) & set("{}[],"):
        (key,) = loads("{%s: 1}\n" % text)
        assert _same(key, expected)


@pytest.mark.parametrize("text, pyyaml_value", [
    ("yes", True), ("No", False), ("on", True), ("OFF", False), ("12:30", 750), ("1:30.5", 90.5),
    ("=", None), ("2026-03-15", "date"), ("2026-03-15T14:00:00Z", "datetime"),
])
def test_scalar_differences_from_pyyaml_are_real(text, pyyaml_value):
    """The §9.4 differences: plain PyYAML reads these otherwise (or fails), we keep the string."""
    assert loads("v: %s" % text) == {"v": text}
    try:
        got = yaml.safe_load("v: %s" % text)["v"]
    except yaml.YAMLError:
        got = None  # `=` as a value: PyYAML has no constructor for it
    if pyyaml_value in ("date", "datetime"):
        assert type(got).__name__ == pyyaml_value
    else:
        assert got == pyyaml_value


def test_quoted_scalars_are_always_strings():
    assert loads("a: '1'\nb: \"true\"\nc: '~'\nd: \"\"\n") == {"a": "1", "b": "true", "c": "~", "d": ""}


def test_duplicate_key_is_an_error_where_pyyaml_overwrites():
    assert yaml.safe_load("a: 1\na: 2") == {"a": 2}
    with pytest.raises(YAMLError, match=r'mapping key "a" already defined at line 1'):
        loads("a: 1\na: 2")


# --------------------------------------------------------------------------- §9.5 refusals

TAB = "tab characters are not allowed here (indent with spaces)"
MULTI_PLAIN = ("multi-line plain scalars are not supported; put the value on one line, quote it, "
               "or use | or >")
REJECTIONS = [
    ("a:\n\tb: 1\n", TAB, 2, 1), ("a:\tb\n", TAB, 1, 3), ("a: b\t\n", TAB, 1, 5), ("\t# c\n", TAB, 1, 1),
    ("a: 1\n  \t\n", TAB, 2, 3), ("- a\t# c\n", TAB, 1, 4), ("a: [1,\t2]\n", TAB, 1, 7),
    ("a: 1\nb: 2\na: 3\n", 'mapping key "a" already defined at line 1', 3, 1),
    ("x:\n  'k': 1\n  \"k\": 2\n", 'mapping key "k" already defined at line 2', 3, 3),
    ("1: a\n01: b\n", 'mapping key "01" already defined at line 1', 2, 1),
    ("a: {b: 1, b: 2}\n", 'mapping key "b" already defined at line 1', 1, 11),
    ("a: &x {k: 1}\nb:\n  <<: *x\n  <<: *x\n", 'mapping key "<<" already defined at line 3', 4, 3),
    ("a: 1\n  b: 2\n", "bad indentation", 2, 3), ("a:\n    b: 1\n  c: 2\n", "bad indentation", 3, 3),
    ("a:\n  - x\n - y\n", "bad indentation", 3, 2), ("  a: 1\nb: 2\n", "bad indentation", 2, 1),
    ("a:\n  - x\n  b: 1\n", "bad indentation", 3, 3), ("a: \"x\"\n  b\n", "bad indentation", 2, 3),
    ("a:\n  b: 1\n    c: 2\n", "bad indentation", 3, 5),
    ("a: b: c\n", "mapping values are not allowed here (quote the value)", 1, 5),
    ("a: b:\n", "mapping values are not allowed here (quote the value)", 1, 5),
    ("- a: b: c\n", "mapping values are not allowed here (quote the value)", 1, 7),
    ("a: {b: c: d}\n", "mapping values are not allowed here (quote the value)", 1, 9),
    ("a: - b\n", "sequence entries are not allowed here", 1, 4),
    ("a: 1\n- b\n", "sequence entries are not allowed here", 2, 1),
    ("a: [- b]\n", "sequence entries are not allowed here", 1, 5),
    ("a: b\n  c\n", MULTI_PLAIN, 2, 3), ("- a\n  b\n", MULTI_PLAIN, 2, 3), ("a\nb\n", MULTI_PLAIN, 2, 1),
    ("a: b\n\n  c\n", MULTI_PLAIN, 3, 3),
    ("a: \"b\n  c\"\n", "quoted scalars must end on the line where they start", 1, 4),
    ("a: 'b\n  c'\n", "quoted scalars must end on the line where they start", 1, 4),
    ("a: \"b\\\n  c\"\n", "quoted scalars must end on the line where they start", 1, 4),
    ("a: [1,\n  2]\n", "flow collections must end on the line where they start", 1, 4),
    ("a: {k: v\n  }\n", "flow collections must end on the line where they start", 1, 4),
    ("a: [1, # c\n  2]\n", "flow collections must end on the line where they start", 1, 4),
    ("a: [a: 1]\n", "key: value pairs are not supported inside [ ]", 1, 6),
    ("a: [\"a\":1]\n", "key: value pairs are not supported inside [ ]", 1, 8),
    ("a: [a,,b]\n", "empty flow entry", 1, 7), ("a: [,]\n", "empty flow entry", 1, 5),
    ("a: {,}\n", "empty flow entry", 1, 5),
    ("a: \"b\" c\n", "unexpected text after value", 1, 8), ("a: 'b'c\n", "unexpected text after value", 1, 7),
    ("x: &x 1\na: *x y\n", "unexpected text after value", 2, 7),
    ("a: [b] c\n", "unexpected text after value", 1, 8), ("a: [\"b\" c]\n", "unexpected text after value", 1, 9),
    ("a: \"abc\n", "unterminated quoted scalar", 1, 4), ("a: 'abc\nb: 1\n", "unterminated quoted scalar", 1, 4),
    ("a: \"\\q\"\n", 'invalid escape "\\q"', 1, 5), ("a: \"\\x4g\"\n", 'invalid escape "\\x4g"', 1, 5),
    ("a: \"\\UFFFFFFFF\"\n", 'invalid escape "\\UFFFFFFFF"', 1, 5),
    ("a: |\n    \n  x\n", "bad indentation in block scalar", 2, 3),
    ("a: |x\n", "invalid block scalar header", 1, 5), ("a: |0\n", "invalid block scalar header", 1, 5),
    ("a: |++\n", "invalid block scalar header", 1, 6), ("a: | x\n", "invalid block scalar header", 1, 6),
    ("a: |#c\n", "invalid block scalar header", 1, 5), ("a: >12\n", "invalid block scalar header", 1, 6),
    ("a: !x y\n", "tags are not supported", 1, 4), ("a: !!str y\n", "tags are not supported", 1, 4),
    ("- !x\n", "tags are not supported", 1, 3), ("a: [!x]\n", "tags are not supported", 1, 5),
    ("%YAML 1.2\n---\na: 1\n", "directives are not supported", 1, 1),
    ("a: 1\n%TAG x\n", "directives are not supported", 2, 1),
    ("a: 1\n---\nb: 2\n", "only one document is allowed", 2, 1),
    ("a: 1\n...\nb: 2\n", "only one document is allowed", 3, 1),
    ("---\n---\n", "only one document is allowed", 2, 1),
    ("? a\n: b\n", "complex mapping keys are not supported", 1, 1),
    ("a: {? b: c}\n", "complex mapping keys are not supported", 1, 5),
    ("[a]: b\n", "mapping keys must be plain or quoted scalars", 1, 1),
    ("{a: 1}: b\n", "mapping keys must be plain or quoted scalars", 1, 1),
    ("x: &x 1\n*x : b\n", "mapping keys must be plain or quoted scalars", 2, 1),
    ("&x a: b\n", "mapping keys must be plain or quoted scalars", 1, 4),
    ("- &x a: b\n", "mapping keys must be plain or quoted scalars", 1, 6),
    ("a: {[b]: c}\n", "mapping keys must be plain or quoted scalars", 1, 5),
    ("a: *nope\n", 'undefined alias "nope"', 1, 4), ("a: [*nope]\n", 'undefined alias "nope"', 1, 5),
    ("a: &x\n  b: *x\n", 'recursive alias "x"', 2, 6), ("a: &x [1, *x]\n", 'recursive alias "x"', 1, 11),
    ("<<: 1\n", "merge key << needs a mapping or a list of mappings", 1, 5),
    ("<<: [1]\n", "merge key << needs a mapping or a list of mappings", 1, 5),
    ("<<:\n", "merge key << needs a mapping or a list of mappings", 1, 1),
    ("a: {<<: [a]}\n", "merge key << needs a mapping or a list of mappings", 1, 5),
    ("a: @x\n", 'character "@" cannot start a plain scalar (quote the value)', 1, 4),
    ("a: `x\n", 'character "`" cannot start a plain scalar (quote the value)', 1, 4),
    ("a: %x\n", 'character "%" cannot start a plain scalar (quote the value)', 1, 4),
    ("a: ,x\n", 'character "," cannot start a plain scalar (quote the value)', 1, 4),
    ("a: ]x\n", 'character "]" cannot start a plain scalar (quote the value)', 1, 4),
    ("a: }x\n", 'character "}" cannot start a plain scalar (quote the value)', 1, 4),
    ("- @x\n", 'character "@" cannot start a plain scalar (quote the value)', 1, 3),
    ("a: [@x]\n", 'character "@" cannot start a plain scalar (quote the value)', 1, 5),
    ("a: \x01\n", "control character U+0001 is not allowed", 1, 4),
    ("a: 1\n# \x00\n", "control character U+0000 is not allowed", 2, 3),
    ("a: 'x\x7fy'\n", "control character U+007F is not allowed", 1, 6),
    ("a: \x85\n", "control character U+0085 is not allowed", 1, 4),
    ("a: \x1b[0m\n", "control character U+001B is not allowed", 1, 4),
    ("a: x\u2028y\n", "control character U+2028 is not allowed", 1, 5),
    ("a: \ud800\n", "control character U+D800 is not allowed", 1, 4),
    ("a: 1\r\nb: \x0c\r\n", "control character U+000C is not allowed", 2, 4),
]


@pytest.mark.parametrize("text, message, line, column", REJECTIONS, ids=[repr(r[0]) for r in REJECTIONS])
def test_rejection(text, message, line, column):
    with pytest.raises(YAMLError) as info:
        loads(text)
    err = info.value
    assert (err.message, err.line, err.column) == (message, line, column)
    assert str(err) == "line %d, column %d: %s" % (line, column, message)


def test_error_object():
    err = YAMLError("boom", 3, 7)
    assert isinstance(err, ValueError)
    assert (err.message, err.line, err.column, str(err)) == ("boom", 3, 7, "line 3, column 7: boom")


def test_invalid_utf8_is_a_yaml_error():
    with pytest.raises(YAMLError) as info:
        loads(b"a: 1\nb: caf\xc3\n")
    assert (info.value.line, info.value.column) == (2, 7)
    assert "UTF-8" in info.value.message


# --------------------------------------------------------------------------- hostile input

def test_nesting_cap_block_and_flow():
    ok_block = "".join("  " * d + "k%d:\n" % d for d in range(99)) + "  " * 99 + "k: v\n"
    value = loads(ok_block)
    for d in range(99):
        value = value["k%d" % d]
    assert value == {"k": "v"}
    assert loads("[" * 100 + "]" * 100) is not None
    with pytest.raises(YAMLError, match="nesting too deep"):
        loads("".join("  " * d + "k:\n" for d in range(101)) + "  " * 101 + "x\n")
    with pytest.raises(YAMLError, match="nesting too deep"):
        loads("[" * 101 + "]" * 101)
    with pytest.raises(YAMLError, match="nesting too deep"):
        loads("- " * 5000 + "x")
    with pytest.raises(YAMLError, match="nesting too deep"):
        loads("a: " + "[" * 200000)


def test_nesting_cap_through_aliases():
    text = "a: &a " + "[" * 60 + "]" * 60 + "\nb: &b " + "[" * 30 + "*a" + "]" * 30 + "\n"
    assert loads(text + "c: " + "[" * 9 + "*b" + "]" * 9 + "\n")  # 1 + 9 + 90 levels
    with pytest.raises(YAMLError, match="nesting too deep") as info:
        loads(text + "c: " + "[" * 10 + "*b" + "]" * 10 + "\n")
    assert (info.value.line, info.value.column) == (3, 14)


def test_alias_bomb_is_capped():
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for n in range(1, 10):
        lines.append("a%d: &a%d [%s]" % (n, n, ", ".join(["*a%d" % (n - 1)] * 10)))
    with pytest.raises(YAMLError) as info:
        loads("\n".join(lines))
    assert info.value.message == "alias expansion too large"
    small = "\n".join(lines[:4])  # 10**3 leaves: fine
    assert len(loads(small)["a3"]) == 10


def test_alias_expansion_cap_is_exact():
    anchor = "a: &a [%s]\n" % ", ".join(["x"] * 999)  # 1000 nodes
    assert len(loads(anchor + "b: [%s]\n" % ", ".join(["*a"] * 100))["b"]) == 100
    with pytest.raises(YAMLError) as info:
        loads(anchor + "b: [%s]\n" % ", ".join(["*a"] * 101))
    assert (info.value.message, info.value.line, info.value.column) == ("alias expansion too large", 2, 405)


def test_huge_integer_is_refused_quickly():
    with pytest.raises(YAMLError, match="integer is too large"):
        loads("a: " + "1" * 100000)
    assert loads("a: 0x" + "f" * 1000)["a"] == int("f" * 1000, 16)


def test_long_lines_and_many_lines():
    assert loads("a: " + "x" * 1000000)["a"] == "x" * 1000000
    big = "".join("k%d: [%d, v, {a: b}]\n" % (n, n) for n in range(20000))
    assert len(loads(big)) == 20000


@FAST
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_crash(data):
    try:
        loads(data)
    except YAMLError:
        pass


YAMLISH = st.text(alphabet=list(" \n\t\r-:#[]{},&*!|>'\"%@`?~.0123456789abxyén_\\<=+") + ["\x00", "\x85"],
                  max_size=80)


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.text(max_size=80), YAMLISH))
def test_arbitrary_text_returns_or_raises_yaml_error(text):
    try:
        loads_with_positions(text)
    except YAMLError as err:
        assert err.line >= 1 and err.column >= 1 and str(err).startswith("line ")


def _mutations():
    seed_docs = [(CORPUS / n).read_text(encoding="utf-8") for n in CORPUS_FILES]
    return st.tuples(st.sampled_from(seed_docs), st.lists(
        st.tuples(st.floats(0, 1), st.sampled_from(list(" \n-:#[]{},&*!|>'\"\t%@?") + [": ", "- ", "\n  "]),
                  st.booleans()), min_size=1, max_size=4))


@settings(max_examples=300, deadline=None)
@given(_mutations())
def test_mutated_corpus_agrees_with_oracle_or_refuses(case):
    """Damaged real documents: an error is fine, a result must equal PyYAML's (when it has one)."""
    text, edits = case
    for where, piece, delete in edits:
        pos = int(where * len(text))
        text = text[:pos] + (text[pos + 1:] if delete else piece + text[pos:])
    try:
        ours = loads(text)
    except YAMLError:
        return
    try:
        theirs = oracle(text)
    except (yaml.YAMLError, ValueError):
        return  # outside PyYAML's reach (e.g. a re-defined anchor): nothing to compare
    assert norm(ours) == norm(theirs)


# --------------------------------------------------------------------------- positions

POS_DOC = """\
# header
service:
  name: gw
  tags: [a, b]
plugins:
  echo:
    enabled: true
    schedules:
      - id: one
        every: 5m

      - id: two
    note: |
      line 1

      line 3
  other: {k: v}
list:
- x
-
  - y
x-base: &b
  p: 1
use:
  <<: *b
  q: 2
alias: *b
empty:
  # only a comment
"""


def test_positions_of_keys_and_items():
    value, pos = loads_with_positions(POS_DOC)
    assert value["plugins"]["echo"]["schedules"][1] == {"id": "two"}
    assert pos[("service",)] == (2, 1, 4)
    assert pos[("service", "name")] == (3, 3, 3)
    assert pos[("service", "tags")] == (4, 3, 4)
    assert pos[("service", "tags", 1)] == (4, 13, 4)
    assert pos[("plugins",)] == (5, 1, 17)
    assert pos[("plugins", "echo")] == (6, 3, 16)
    assert pos[("plugins", "echo", "schedules")] == (8, 5, 12)
    assert pos[("plugins", "echo", "schedules", 0)] == (9, 7, 10)
    assert pos[("plugins", "echo", "schedules", 0, "every")] == (10, 9, 10)
    assert pos[("plugins", "echo", "schedules", 1)] == (12, 7, 12)
    assert pos[("plugins", "echo", "note")] == (13, 5, 16)
    assert pos[("plugins", "other", "k")] == (17, 11, 17)
    assert pos[("list",)] == (18, 1, 21)
    assert pos[("list", 1)] == (20, 1, 21)
    assert pos[("list", 1, 0)] == (21, 3, 21)
    assert pos[("use", "q")] == (26, 3, 26)
    assert pos[("empty",)] == (28, 1, 28)


def test_positions_omit_alias_and_merge_content():
    value, pos = loads_with_positions(POS_DOC)
    assert value["use"] == {"p": 1, "q": 2} and value["alias"] == {"p": 1}
    assert ("use", "p") not in pos and ("use", "<<") not in pos
    assert ("alias", "p") not in pos and pos[("alias",)] == (27, 1, 27)
    assert ("x-base", "p") in pos


def test_positions_cover_every_literal_key_and_item():
    value, pos = loads_with_positions((CORPUS / "plugins.yaml").read_text(encoding="utf-8"))

    def paths(node, prefix):
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
        for key, child in items:
            yield prefix + (key,)
            yield from paths(child, prefix + (key,))
    assert set(paths(value, ())) == set(pos)


# --------------------------------------------------------------------------- dumps (§9.6)

def test_dumps_layout():
    data = {"service": {"name": "gw", "max_workers": 4}, "plugin_roots": ["/opt/p", "~/p"],
            "plugins": [{"name": "echo", "config": {"a": 1}, "tags": ["x"]}, [1, []], {}],
            "empty_map": {}, "empty_list": [], "n": None, "t": True, "f": 1.5, "big": 1e20,
            "inf": float("-inf"), "text": "line1\nline2\n"}
    assert dumps(data) == """\
service:
    name: gw
    max_workers: 4
plugin_roots:
    - /opt/p
    - ~/p
plugins:
    - name: echo
      config:
          a: 1
      tags:
          - x
    -
        - 1
        - []
    - {}
empty_map: {}
empty_list: []
n: null
t: true
f: 1.5
big: 1.0e+20
inf: -.inf
text: |
    line1
    line2
"""


@pytest.mark.parametrize("value, text", [
    (None, "null\n"), (True, "true\n"), (0, "0\n"), (-7, "-7\n"), (1.0, "1.0\n"), (1e-05, "1.0e-05\n"),
    (float("inf"), ".inf\n"), (float("nan"), ".nan\n"), ({}, "{}\n"), ([], "[]\n"), ((1, 2), "- 1\n- 2\n"),
    ("plain", "plain\n"), ("", "''\n"), ("yes", "'yes'\n"), ("on", "'on'\n"), ("12:30", "'12:30'\n"),
    ("2026-03-15", "'2026-03-15'\n"), ("=", "'='\n"), ("<<", "'<<'\n"), ("0755", "'0755'\n"),
    ("0x1F", "'0x1F'\n"), ("1e3", "1e3\n"), ("123", "'123'\n"), ("1.5", "'1.5'\n"), ("null", "'null'\n"),
    ("~", "'~'\n"), ("a: b", "'a: b'\n"), ("a #b", "'a #b'\n"), ("a#b", "a#b\n"), ("a:b", "a:b\n"),
    (" lead", "' lead'\n"), ("trail ", "'trail '\n"), ("-x", "'-x'\n"), ("it's", "it's\n"),
    ("'q'", "'''q'''\n"), ("x:", "'x:'\n"), ("...", "'...'\n"), ("a\tb", "'a\tb'\n"),
    ("café — ok", "café — ok\n"), ("a\nb", "|-\n    a\n    b\n"), ("a\nb\n", "|\n    a\n    b\n"),
    ("a\nb\n\n", "|+\n    a\n    b\n\n"), ("\nb", '"\\nb"\n'), (" a\nb", '" a\\nb"\n'),
    ("bell\a", '"bell\\a"\n'), ("\x00\x1b\x7f\x85\u2028\ufeff\U0001F600", '"\\0\\e\\x7F\\N\\L\\uFEFF\U0001F600"\n'),
    ("a\r\nb", '"a\\r\\nb"\n'), ("\ud800", '"\\uD800"\n'),
])
def test_dumps_scalars(value, text):
    assert dumps(value) == text
    back = loads(text)
    if isinstance(value, float) and math.isnan(value):
        assert math.isnan(back)
        return
    expected = list(value) if isinstance(value, tuple) else value
    assert norm(back) == norm(expected)
    assert norm(yaml.safe_load(text)) == norm(expected)


def test_dumps_keys():
    data = {None: 1, True: 2, 3: 3, 1.5: 4, "yes": 5, "a b": 6, "multi\nline": 7, "": 8, "x: y": 9}
    text = dumps(data)
    assert text == ("null: 1\ntrue: 2\n3: 3\n1.5: 4\n'yes': 5\na b: 6\n\"multi\\nline\": 7\n'': 8\n"
                    "'x: y': 9\n")
    assert loads(text) == data == yaml.safe_load(text)


def test_dumps_nested_literal_blocks():
    data = {"a": ["x\ny", {"k": "p\n\nq\n", "j": ["m\nn\n\n\n"]}], "b": "last\n\n"}
    text = dumps(data)
    assert loads(text) == data == yaml.safe_load(text)
    assert "    - k: |\n          p\n\n          q\n      j:\n" in text


def test_dumps_refusals():
    for bad in ({1, 2}, b"x", object(), {"k": {1}}, {(1, 2): "tuple key"}):
        with pytest.raises(TypeError):
            dumps(bad)
    loop = []
    loop.append(loop)
    with pytest.raises(ValueError, match="circular"):
        dumps(loop)
    cyc = {}
    cyc["me"] = {"again": cyc}
    with pytest.raises(ValueError, match="circular"):
        dumps(cyc)
    deep = []
    for _ in range(99):
        deep = {"k": deep}
    assert loads(dumps(deep)) == deep  # 100 levels: the most loads accepts
    with pytest.raises(ValueError, match="nesting too deep"):
        dumps([deep])
    with pytest.raises(ValueError, match="too long"):
        dumps({"k" * 2000: 1})
    assert loads(dumps({"k" * 1024: 1})) == {"k" * 1024: 1} == yaml.safe_load(dumps({"k" * 1024: 1}))


def test_dumps_shared_substructure_is_not_a_cycle():
    shared = {"a": 1}
    assert loads(dumps({"x": shared, "y": [shared, shared]})) == {"x": {"a": 1}, "y": [{"a": 1}] * 2}


TRICKY = ["yes", "No", "on", "OFF", "y", "n", "12:30", "1:2:3", "0755", "08", "0x1F", "0b1", "=", "<<", "~",
          "null", "", " ", "  lead", "trail  ", "a: b", "a:", ":a", "a #b", "#a", "a#b", "- x", "-", "--", "---",
          "...", "? x", "?", "!x", "&a", "*a", "|", ">", "'", '"', "%x", "@x", "`x", ",x", "[x]", "{x}", "]",
          "line\nline", "\n", "x\n", "x\n\n", "\nx", " x\ny", "tab\there", "\t", "\r", "a\r\nb", "\x00",
          "\x85", "\u2028", "\ufeff", "\xa0", "é — ü", "\U0001F600", "1e3", "1.0e+3", ".5", "-.5", ".inf",
          ".nan", "2026-03-15", "2026-03-15T14:00:00Z", "${VAR}", "host:port", "http://x/#f", "0x_", "+1",
          "1_000", "\\", '"q"', "'q'", "a  b", "k: v\nj: w", "- a\n- b", "|\n x"]

_texts = st.one_of(st.sampled_from(TRICKY), st.text(max_size=12),
                   st.text(alphabet=list(" \n\t-:#'\"ab01.\\yesonf"), max_size=10),
                   st.lists(st.sampled_from(TRICKY), min_size=2, max_size=3).map(" ".join),
                   st.lists(st.sampled_from(TRICKY + ["text"]), min_size=2, max_size=3).map("\n".join))
_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2 ** 63, 2 ** 63),
                     st.floats(allow_nan=False), _texts)
_keys = st.one_of(st.none(), st.booleans(), st.integers(-1000, 1000), st.floats(allow_nan=False), _texts)
_values = st.recursive(_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(_keys, inner, max_size=4)), max_leaves=15)


@settings(max_examples=400, deadline=None)
@given(_values)
def test_dumps_round_trips_through_both_parsers(value):
    text = dumps(value)
    assert text.endswith("\n")
    assert norm(loads(text)) == norm(value)
    assert norm(yaml.safe_load(text)) == norm(value)


@FAST
@given(_texts)
def test_dumps_plain_only_when_safe(text):
    out = dumps({"k": text})
    written = out[3:-1]
    if written == text:  # written plain: both parsers must agree it is that string
        assert loads(out) == {"k": text} == yaml.safe_load(out)
        assert text and text.strip() == text and ": " not in text and " #" not in text


# --------------------------------------------------------------------------- styled documents

def _quote(text, r):
    """A quoted form of text valid on one line (single if possible, else double with escapes)."""
    if "\n" not in text and all(c == "\t" or (" " <= c <= "~") or c in "é—ü" for c in text) and r.random() < .5:
        return "'" + text.replace("'", "''") + "'"
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif " " <= ch <= "~" or ch in "é—ü":
            out.append(ch)
        elif ord(ch) < 0x10000 and r.random() < .5:
            out.append("\\u%04x" % ord(ch))
        else:
            out.append("\\U%08x" % ord(ch))
    return '"' + "".join(out) + '"'


def _scalar(value, r, flow):
    """Some valid spelling of a scalar."""
    if value is None:
        return r.choice(["~", "null", "Null", "NULL"])
    if isinstance(value, bool):
        return r.choice(["true", "True", "TRUE"] if value else ["false", "False", "FALSE"])
    if isinstance(value, int):
        return r.choice([str(value), ("-" if value < 0 else "") + "0x%x" % abs(value),
                         ("-" if value < 0 else "") + "0b" + bin(abs(value))[2:]])
    if isinstance(value, float):
        return dumps(value).strip()
    plain_re = r"[A-Za-z_/~$(][A-Za-z0-9_ ./~$()é—-]*" if flow else r"[A-Za-z_/~$(][^\t\n#]*"
    if (re.fullmatch(plain_re, value) and value.strip() == value and ": " not in value
            and not value.endswith(":") and r.random() < .7):
        try:
            if yaml.safe_load("k: " + value) == {"k": value}:
                return value
        except yaml.YAMLError:
            pass
    return _quote(value, r)


def _flowable(value):
    if isinstance(value, dict):
        return all(_flowable(k) and _flowable(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_flowable(v) for v in value)
    return True


def _flow(value, r):
    if isinstance(value, dict):
        return "{" + ", ".join("%s: %s" % (_scalar(k, r, True), _flow(v, r)) for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_flow(v, r) for v in value) + (", ]" if value and r.random() < .2 else "]")
    return _scalar(value, r, True)


def _render_value(head, value, col, r, out, in_map):
    """Append `head` plus value at key/dash column col in a random but valid style."""
    literal_ok = (isinstance(value, str) and "\n" in value and value[0] not in " \n"
                  and all(c == "\n" or " " <= c <= "~" for c in value))
    if isinstance(value, (dict, list)) and value and not (_flowable(value) and r.random() < .2):
        if r.random() < .15:
            out.append("# comment")  # column 0: deeper, it could land inside a preceding literal block
        if isinstance(value, list) and in_map and r.random() < .4:
            out.append(head)
            _render_seq(value, col, r, out)
            return
        step = r.choice([1, 2, 3, 4])
        if head.endswith("-") and r.random() < .6:
            spaces = r.choice([1, 1, 2, 3])
            if isinstance(value, dict):
                _render_map(value, col + 1 + spaces, r, out, head + " " * spaces)
            else:
                _render_seq(value, col + 1 + spaces, r, out, head + " " * spaces)
            return
        out.append(head + (" # c" if r.random() < .1 else ""))
        (_render_map if isinstance(value, dict) else _render_seq)(value, col + step, r, out)
    elif isinstance(value, (dict, list)):
        out.append(head + " " + _flow(value, r))
    elif literal_ok and r.random() < .7:
        body = value.rstrip("\n")
        trailing = len(value) - len(body)
        out.append(head + " |" + ("-" if trailing == 0 else "" if trailing == 1 else "+"))
        pad = " " * (col + r.choice([1, 2, 4]))
        out.extend(pad + line if line else "" for line in body.split("\n"))
        out.extend([""] * (trailing - 1))
    elif value is None and r.random() < .3:
        out.append(head)
    else:
        out.append(head + " " + _scalar(value, r, False) + (" # c" if r.random() < .1 else ""))


def _render_map(value, col, r, out, first=None):
    for n, (key, item) in enumerate(value.items()):
        lead = first if n == 0 and first is not None else " " * col
        _render_value(lead + _scalar(key, r, False) + ":", item, col, r, out, True)


def _render_seq(value, col, r, out, first=None):
    for n, item in enumerate(value):
        lead = first if n == 0 and first is not None else " " * col
        _render_value(lead + "-", item, col, r, out, False)


_docs = st.one_of(st.dictionaries(_keys, _values, min_size=1, max_size=5),
                  st.lists(_values, min_size=1, max_size=5))


@settings(max_examples=300, deadline=None)
@given(_docs, st.randoms(use_true_random=False))
def test_styled_documents_read_back(value, r):
    """Hand-style renderings (any indent step, indentless and compact sequences, flow, literal blocks,
    comments, alternative spellings of scalars) must read back as the value, like PyYAML."""
    out = []
    (_render_map if isinstance(value, dict) else _render_seq)(value, 0, r, out)
    text = "\n".join(out) + "\n"
    assert norm(loads(text)) == norm(value), text
    assert norm(oracle(text)) == norm(value), text


# --------------------------------------------------------------------------- module hygiene

def test_module_is_stdlib_only():
    source = pathlib.Path(miniyaml.__file__).read_text(encoding="utf-8")
    imports = set(re.findall(r"^(?:from|import) (\w+)", source, re.M))
    assert imports <= {"__future__", "math", "re"}


@pytest.mark.parametrize("name", CORPUS_FILES)
def test_corpus_round_trips_through_dumps(name):
    value = loads((CORPUS / name).read_text(encoding="utf-8"))
    text = dumps(value)
    assert norm(loads(text)) == norm(value) == norm(yaml.safe_load(text))
