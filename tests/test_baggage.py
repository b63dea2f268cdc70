"""Baggage claims, accretion and request shaping (spec 30 §2.3, §7; S1, S13, S15)."""
from __future__ import annotations

import copy
import json

import pytest
from hypothesis import given, strategies as st

from ductile_lib.baggage import (MAX_CONTEXT_BYTES, BaggageError, Claims, accrete, check_size, compile_claims,
                                 event_payload_for_step, merge_branches, request_context, values_equal)

WHERE = 'pipeline "p": steps[0]'


def claims(spec):
    return compile_claims(spec, WHERE)


# --- load-time validation -------------------------------------------------------------

def test_compile_ok_and_empty():
    c = claims({"origin_user": "payload.origin_user", "a.b_2._c": " context.x "})
    assert isinstance(c, Claims) and not c.is_empty()
    assert c.mappings == {"origin_user": "payload.origin_user", "a.b_2._c": "context.x"}
    assert compile_claims({}, WHERE).is_empty()
    assert compile_claims(None, WHERE).is_empty()


@pytest.mark.parametrize("spec, fragment", [
    ({"ductile": "payload.x"}, 'baggage key "ductile" is reserved'),
    ({"ductile.x": "payload.x"}, 'baggage key "ductile.x" is reserved'),
    ({"from": "payload", "namespace": "ductile.ns"}, 'baggage key "ductile.ns" is reserved'),
    ({"from": "payload"}, "baggage from requires namespace"),
    ({"namespace": "ns"}, "baggage namespace requires from"),
    ({"from": "context.a", "namespace": "ns"}, "baggage from"),
    ({"from": "payload..a", "namespace": "ns"}, "baggage from"),
    ({"a-b": "payload.x"}, "dotted identifier"),
    ({"a..b": "payload.x"}, "dotted identifier"),
    ({"1a": "payload.x"}, "dotted identifier"),
    ({"a.": "payload.x"}, "dotted identifier"),
    ({"a": ""}, "baggage.a must be non-empty"),
    ({"a": "   "}, "baggage.a must be non-empty"),
    ({"a": None}, "baggage.a must be non-empty"),
    ({"a": {"b": 1}}, "baggage.a must be a scalar string"),
    ({"a": ["payload.x"]}, "baggage.a must be a scalar string"),
    ({"": "payload.x"}, "baggage keys must be non-empty"),
    (["a"], "baggage must be a mapping"),
])
def test_load_errors(spec, fragment):
    with pytest.raises(BaggageError) as info:
        compile_claims(spec, WHERE)
    assert str(info.value).startswith(WHERE + ": ")
    assert fragment in str(info.value)


def test_ductile_prefixed_identifier_is_not_reserved():
    assert not claims({"ductile_note": "payload.x"}).is_empty()


def test_scalar_values_become_text():
    # A YAML number is a scalar; it is kept as text and simply never resolves.
    assert claims({"a": 3}).mappings == {"a": "3"}


# --- apply (§7.2) ---------------------------------------------------------------------

def test_s1_claim_from_payload():
    c = claims({"origin_user": "payload.origin_user"})
    assert c.apply({"origin_user": "matt"}, {}) == {"origin_user": "matt"}


def test_s13_dotted_keys_and_context():
    q1 = claims({"q.prev": "payload.result"})
    assert q1.apply({"result": "px-done"}, {"p": {"user": "u"}}) == {"q": {"prev": "px-done"}}
    x = claims({"p.user": "payload.user", "p.copy": "context.seed.v"})
    assert x.apply({"user": "u"}, {"seed": {"v": [1]}}) == {"p": {"user": "u", "copy": [1]}}


def test_whole_payload_and_null_values_are_claimable():
    c = claims({"all": "payload", "nothing": "payload.n"})
    assert c.apply({"n": None}, {}) == {"all": {"n": None}, "nothing": None}


@pytest.mark.parametrize("expr, payload, context", [
    ("payload.url", {}, {}),
    ("payload.a.b", {"a": 5}, {}),
    ("payload.l.0", {"l": [1]}, {}),
    ("context.role", {}, {}),
    ("context.role", {}, None),
    ("config.x", {}, {}),
    ("{payload.url}", {"url": "u"}, {}),
    ("payload", None, {}),
])
def test_s15_path_not_found(expr, payload, context):
    c = claims({"web.url": expr})
    with pytest.raises(BaggageError) as info:
        c.apply(payload, context)
    assert str(info.value) == 'resolve baggage web.url from "%s": path not found' % expr


def test_s15_claim_present():
    assert claims({"web.url": "payload.url"}).apply({"url": "https://x"}, {}) == {"web": {"url": "https://x"}}


def test_claims_deep_copy():
    payload = {"obj": {"l": [1]}}
    out = claims({"o": "payload.obj"}).apply(payload, {})
    out["o"]["l"].append(2)
    assert payload == {"obj": {"l": [1]}}


def test_bulk_from_namespace_first_then_mappings():
    c = claims({"from": "payload.meta", "namespace": "whisper", "whisper.extra": "payload.x", "b": "payload.x"})
    payload = {"meta": {"lang": "en"}, "x": 1}
    assert c.apply(payload, {}) == {"whisper": {"lang": "en", "extra": 1}, "b": 1}
    assert payload == {"meta": {"lang": "en"}, "x": 1}


def test_bulk_whole_payload():
    c = claims({"from": "payload", "namespace": "a.b"})
    assert c.apply({"k": "v"}, {}) == {"a": {"b": {"k": "v"}}}


def test_bulk_errors():
    c = claims({"from": "payload.meta", "namespace": "ns"})
    with pytest.raises(BaggageError, match='resolve baggage from "payload.meta": path not found'):
        c.apply({}, {})
    with pytest.raises(BaggageError, match="must resolve to an object"):
        c.apply({"meta": [1]}, {})


def test_scalar_prefix_conflict():
    c = claims({"a": "payload.x", "a.b": "payload.y"})
    with pytest.raises(BaggageError) as info:
        c.apply({"x": 1, "y": 2}, {})
    assert str(info.value) == 'baggage path "a.b" conflicts with scalar prefix "a"'
    bulk = claims({"from": "payload", "namespace": "ns", "ns.k.deep": "payload.y"})
    with pytest.raises(BaggageError, match="conflicts with scalar prefix"):
        bulk.apply({"k": "scalar", "y": 2}, {})


# --- equality (§5.2) ------------------------------------------------------------------

@pytest.mark.parametrize("a, b, equal", [
    (3, 3.0, True), (True, 1, False), (False, 0, False), (True, True, True), ("3", 3, False),
    (None, None, True), (None, 0, False), ([1, 2], [1.0, 2], True), ([1], [1, 2], False),
    ({"a": 1}, {"a": 1.0}, True), ({"a": 1}, {"b": 1}, False), ({"a": True}, {"a": 1}, False),
    ("x", "x", True), ([], {}, False),
])
def test_values_equal(a, b, equal):
    assert values_equal(a, b) is equal
    assert values_equal(b, a) is equal


# --- accretion (§7.3) -----------------------------------------------------------------

def test_accrete_adds_keeps_and_merges():
    parent = {"a": 3, "o": {"x": 1}, "l": [1]}
    out = accrete(parent, {"a": 3.0, "o": {"y": 2}, "l": [1.0], "n": "new"})
    assert out == {"a": 3, "o": {"x": 1, "y": 2}, "l": [1], "n": "new"}
    assert type(out["a"]) is int


@pytest.mark.parametrize("updates, path", [
    ({"a": 4}, "a"),
    ({"a": True}, "a"),
    ({"o": {"x": 2}}, "o.x"),
    ({"o": {"deep": {"k": 1}}}, "o.deep.k"),
    ({"o": "scalar"}, "o"),
    ({"a": {"k": 1}}, "a"),
    ({"l": [1, 2]}, "l"),
])
def test_accrete_immutable(updates, path):
    parent = {"a": 1, "o": {"x": 1, "deep": {"k": 0}}, "l": [1]}
    with pytest.raises(BaggageError) as info:
        accrete(parent, updates)
    assert str(info.value) == 'baggage path "%s" is immutable: inherited value differs from child value' % path


def test_accrete_overwrites_ductile_keys():
    parent = {"ductile": {"pipeline_instance_id": "i", "route_depth": 1, "splits": [{"frame": "f", "branch": 0}]}}
    out = accrete(parent, {"ductile": {"route_depth": 2, "splits": []}})
    assert out == {"ductile": {"pipeline_instance_id": "i", "route_depth": 2, "splits": []}}
    assert accrete({"ductile": 1}, {"ductile": {"a": 1}}) == {"ductile": {"a": 1}}


def test_accrete_does_not_mutate_inputs():
    parent = {"o": {"x": [1]}, "ductile": {"route_depth": 1}}
    updates = {"o": {"y": {"z": 1}}, "ductile": {"route_depth": 2}}
    before_p, before_u = copy.deepcopy(parent), copy.deepcopy(updates)
    out = accrete(parent, updates)
    out["o"]["x"].append(2)
    out["o"]["y"]["z"] = 9
    out["ductile"]["route_depth"] = 7
    assert parent == before_p and updates == before_u


def test_merge_branches():
    b0 = {"ductile": {"route_depth": 2}, "shared": {"a": 1}, "only0": True}
    b1 = {"ductile": {"route_depth": 3}, "shared": {"a": 1.0, "b": 2}, "c": {"first": "worker-done"}}
    out = merge_branches([b0, b1])
    assert out == {"ductile": {"route_depth": 3}, "shared": {"a": 1, "b": 2}, "only0": True,
                   "c": {"first": "worker-done"}}
    assert merge_branches([]) == {}


def test_merge_branches_conflict():
    with pytest.raises(BaggageError, match='baggage path "k.v" is immutable'):
        merge_branches([{"k": {"v": 1}}, {"k": {"v": 2}}])


_json_scalars = st.one_of(st.none(), st.booleans(), st.integers(),
                          st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=5))
_json = st.recursive(_json_scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                            st.dictionaries(st.text(max_size=5), inner, max_size=3)),
                     max_leaves=12)
_objects = st.dictionaries(st.text(max_size=5), _json, max_size=5)


@given(_objects)
def test_accrete_self_is_identity(x):
    snapshot = copy.deepcopy(x)
    assert accrete(x, x) == x
    assert x == snapshot


@given(_objects)
def test_accrete_empty_is_identity(x):
    out = accrete(x, {})
    assert out == x and (out is not x or not x)


@given(_objects, _objects)
def test_accrete_result_contains_both_or_raises(parent, updates):
    try:
        out = accrete(parent, updates)
    except BaggageError:
        return
    for key in parent:
        if key != "ductile" and not isinstance(parent[key], dict):
            assert values_equal(out[key], parent[key])
    for key in updates:
        assert key in out


# --- request context and payload (§7.4) -----------------------------------------------

def test_request_context_without_context():
    assert request_context("echo", {}, None) == {"ductile_plugin": "echo"}


def test_request_context_for_pipeline_step():
    accumulated = {"origin_user": "matt",
                   "ductile": {"pipeline_instance_id": "iid", "route_depth": 1, "route_max_depth": 2,
                               "chain_depth": 1}}
    step = {"pipeline": "chain", "step_id": "s1", "instance_id": "iid", "route_depth": 1, "route_max_depth": 2}
    ctx = request_context("p1", accumulated, step)
    assert ctx == {"ductile_plugin": "p1", "origin_user": "matt", "ductile": accumulated["ductile"],
                   "ductile_pipeline": "chain", "ductile_step_id": "s1", "ductile_pipeline_instance_id": "iid",
                   "ductile_route_depth": 1, "ductile_route_max_depth": 2}
    ctx["ductile"]["route_depth"] = 99
    assert accumulated["ductile"]["route_depth"] == 1


def test_request_context_omits_zero_depths():
    step = {"pipeline": "p", "step_id": "s", "instance_id": "i", "route_depth": 0, "route_max_depth": 0}
    ctx = request_context("x", {}, step)
    assert "ductile_route_depth" not in ctx and "ductile_route_max_depth" not in ctx
    assert ctx["ductile_pipeline"] == "p"


def test_event_payload_for_step_own_keys_win():
    stored = {"result": "pa-done", "ductile_plugin": "mine"}
    ctx = request_context("pd", {"c": {"first": "worker-done"}}, {"pipeline": "p", "step_id": "d",
                                                                   "instance_id": "i", "route_depth": 4})
    out = event_payload_for_step(stored, ctx)
    assert out["result"] == "pa-done" and out["ductile_plugin"] == "mine"
    assert out["c"] == {"first": "worker-done"} and out["ductile_step_id"] == "d"
    assert stored == {"result": "pa-done", "ductile_plugin": "mine"}
    out["c"]["first"] = "changed"
    assert ctx["c"]["first"] == "worker-done"
    assert event_payload_for_step(None, {"a": 1}) == {"a": 1}


def test_s1_downstream_sees_baggage_in_payload():
    accumulated = accrete({"ductile": {"pipeline_instance_id": "i", "route_depth": 1}},
                          claims({"origin_user": "payload.origin_user"}).apply({"origin_user": "matt"}, {}))
    payload = event_payload_for_step({"ductile_upstream_step_id": "s1"},
                                     request_context("p2", accumulated, {"pipeline": "chain", "step_id": "s2",
                                                                         "instance_id": "i", "route_depth": 2}))
    assert payload["origin_user"] == "matt" and payload["ductile_upstream_step_id"] == "s1"


# --- size -----------------------------------------------------------------------------

def test_check_size_boundary():
    overhead = len(json.dumps({"k": ""}, separators=(",", ":")))
    check_size({"k": "x" * (MAX_CONTEXT_BYTES - overhead)})
    with pytest.raises(BaggageError) as info:
        check_size({"k": "x" * (MAX_CONTEXT_BYTES - overhead + 1)})
    assert str(info.value) == "event context exceeds max size (1048576 bytes)"


def test_check_size_counts_utf8_bytes():
    with pytest.raises(BaggageError):
        check_size({"k": "é" * (MAX_CONTEXT_BYTES // 2)})
