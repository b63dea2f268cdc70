"""Credentials, bearer extraction and scope gates (spec 40 §2, decisions A1-A3)."""
from __future__ import annotations

import hmac

import pytest

from ductile_lib import auth
from ductile_lib.auth import (GATE_ANY, GATE_EVENTS, GATE_JOBS, GATE_OPEN, GATE_PIPELINE, GATE_PLUGIN,
                              GATE_SYSTEM_RO, GATE_SYSTEM_RW, Credential, CredentialTable, allows,
                              can_run_command, extract_bearer, normalize_scopes)
from ductile_lib.config import load_config
from conftest import config_text, write_tree

pytestmark = pytest.mark.timeout(10)

N = normalize_scopes


# --- normalisation -------------------------------------------------------------------


@pytest.mark.parametrize("raw, expected", [
    ([], set()),
    (None, set()),
    (["  jobs:ro  ", "", "   ", "jobs:ro"], {"jobs:ro"}),
    (["read:jobs"], {"jobs:ro"}),
    (["read:echo"], {"echo:ro"}),
    (["read: events "], {"events:ro"}),
    (["jobs:rw"], {"jobs:rw", "jobs:ro"}),
    (["echo:rw", "plugin:rw"], {"echo:rw", "echo:ro", "plugin:rw", "plugin:ro"}),
    (["*"], {"*"}),
    (["read:"], {"read:"}),  # nothing to rewrite; grants nothing
    (["echo:allow:poll", "trigger:x"], {"echo:allow:poll", "trigger:x"}),
])
def test_normalize_scopes(raw, expected):
    result = normalize_scopes(raw)
    assert isinstance(result, frozenset)
    assert result == expected


def test_normalize_is_idempotent():
    once = normalize_scopes(["read:jobs", "system:rw", " echo:rw "])
    assert normalize_scopes(once) == once


# --- gates: every scope form x every gate ----------------------------------------------

ROUTE_GATES = [GATE_PLUGIN, GATE_PIPELINE, GATE_JOBS, GATE_EVENTS, GATE_SYSTEM_RO, GATE_SYSTEM_RW]

# scope -> the gates it passes (plugin gate checked for plugin "echo").
GRANTS = {
    "*": set(ROUTE_GATES),
    "plugin:ro": {GATE_PLUGIN},
    "plugin:rw": {GATE_PLUGIN, GATE_PIPELINE},
    "echo:ro": {GATE_PLUGIN},
    "echo:rw": {GATE_PLUGIN},
    "other:rw": set(),
    "jobs:ro": {GATE_JOBS},
    "jobs:rw": {GATE_JOBS},
    "read:jobs": {GATE_JOBS},
    "events:ro": {GATE_EVENTS},
    "events:rw": {GATE_EVENTS},
    "read:events": {GATE_EVENTS},
    "system:ro": {GATE_SYSTEM_RO},
    "system:rw": {GATE_SYSTEM_RO, GATE_SYSTEM_RW},
    "read:system": {GATE_SYSTEM_RO},
    "read:plugin": {GATE_PLUGIN},
    "read:echo": {GATE_PLUGIN},
    # Forms that grant nothing (§2.4): rules, legacy prefixes, typos, case.
    "echo:allow:poll": set(),
    "echo:deny:poll": set(),
    "trigger:echo": set(),
    "admin:all": set(),
    "queue:rw": set(),
    "healthz:ro": set(),
    "job:ro": set(),
    "JOBS:RO": set(),
    "plugins:rw": set(),
    "**": set(),
    "echo": set(),
    "jobs": set(),
}


@pytest.mark.parametrize("scope", sorted(GRANTS))
@pytest.mark.parametrize("gate", ROUTE_GATES)
def test_scope_gate_table(scope, gate):
    scopes = normalize_scopes([scope])
    assert allows(scopes, gate, plugin="echo") is (gate in GRANTS[scope])


@pytest.mark.parametrize("scope", sorted(GRANTS) + [""])
def test_open_and_any_gates_pass_every_token(scope):
    scopes = normalize_scopes([scope])
    assert allows(scopes, GATE_OPEN) and allows(scopes, GATE_ANY)


def test_no_scopes_reach_only_open_and_any_routes():
    assert [g for g in ROUTE_GATES if allows(frozenset(), g, plugin="echo")] == []


def test_plugin_scope_is_only_for_that_plugin():
    scopes = normalize_scopes(["echo:rw"])
    assert allows(scopes, GATE_PLUGIN, plugin="echo")
    assert not allows(scopes, GATE_PLUGIN, plugin="other")
    assert not allows(scopes, GATE_PLUGIN)  # no plugin named: only family/wildcard pass
    assert allows(normalize_scopes(["plugin:ro"]), GATE_PLUGIN)


@pytest.mark.parametrize("family", sorted(auth.FAMILIES))
def test_a_plugin_named_like_a_family_is_reached_through_plugin_scopes(family):
    """A plugin called ``jobs`` is reachable only through plugin:* scopes or *."""
    assert allows(normalize_scopes(["plugin:ro"]), GATE_PLUGIN, plugin=family)
    assert can_run_command(normalize_scopes(["plugin:rw"]), family, "write")
    assert can_run_command(normalize_scopes(["*"]), family, "write")


@pytest.mark.parametrize("family", ["jobs", "events", "system"])
def test_family_scopes_never_open_a_plugin_named_after_them(family):
    scopes = normalize_scopes([family + ":rw"])
    assert not allows(scopes, GATE_PLUGIN, plugin=family)
    assert not can_run_command(scopes, family, "read")
    assert not can_run_command(scopes, family, "write")


def test_rw_implies_ro_even_without_normalisation():
    assert allows(frozenset({"jobs:rw"}), GATE_JOBS)
    assert allows(frozenset({"system:rw"}), GATE_SYSTEM_RO)
    assert allows(frozenset({"echo:rw"}), GATE_PLUGIN, plugin="echo")


def test_ro_never_implies_rw():
    assert not allows(normalize_scopes(["system:ro"]), GATE_SYSTEM_RW)
    assert not allows(normalize_scopes(["plugin:ro"]), GATE_PIPELINE)


def test_unknown_gate_fails_loudly():
    with pytest.raises(ValueError):
        allows(normalize_scopes(["*"]), "jobz")


# --- command-level check ------------------------------------------------------------

@pytest.mark.parametrize("scope, read_ok, write_ok", [
    ("*", True, True),
    ("plugin:ro", True, False),
    ("plugin:rw", True, True),
    ("echo:ro", True, False),
    ("echo:rw", True, True),
    ("read:echo", True, False),
    ("read:plugin", True, False),
    ("other:rw", False, False),
    ("jobs:rw", False, False),
    ("echo:allow:poll", False, False),
    ("", False, False),
])
def test_can_run_command(scope, read_ok, write_ok):
    scopes = normalize_scopes([scope])
    assert can_run_command(scopes, "echo", "read") is read_ok
    assert can_run_command(scopes, "echo", "write") is write_ok
    assert can_run_command(scopes, "echo", "mystery") is write_ok  # unknown types need rw


def test_checklist_item_3():
    """Spec 40 §8 item 3 expressed on the gates."""
    ro = normalize_scopes(["plugin:ro"])
    assert can_run_command(ro, "echo", "read") and not can_run_command(ro, "echo", "write")
    assert not allows(ro, GATE_PIPELINE) and not allows(ro, GATE_JOBS)
    echo_rw = normalize_scopes(["echo:rw"])
    assert can_run_command(echo_rw, "echo", "write") and not allows(echo_rw, GATE_PLUGIN, plugin="other")
    for scope in ("read:jobs", "jobs:rw"):
        assert allows(normalize_scopes([scope]), GATE_JOBS)
    system_rw = normalize_scopes(["system:rw"])
    assert allows(system_rw, GATE_SYSTEM_RO) and allows(system_rw, GATE_SYSTEM_RW)


# --- extraction -----------------------------------------------------------------------

@pytest.mark.parametrize("header, query, allow_query, expected", [
    ("Bearer abc", None, False, ("abc", None)),
    ("Bearer   abc  ", None, False, ("abc", None)),
    ("Basic x", None, False, (None, auth.ERR_FORMAT)),
    ("bearer abc", None, False, (None, auth.ERR_FORMAT)),
    ("BEARER abc", None, False, (None, auth.ERR_FORMAT)),
    ("Bearer", None, False, (None, auth.ERR_FORMAT)),
    ("Bearerabc", None, False, (None, auth.ERR_FORMAT)),
    ("Basic x", "qtok", True, (None, auth.ERR_FORMAT)),  # a wrong scheme is never rescued by ?token=
    ("Bearer ", None, False, (None, auth.ERR_MISSING)),
    ("Bearer    ", None, False, (None, auth.ERR_MISSING)),
    (None, None, False, (None, auth.ERR_MISSING)),
    ("", None, False, (None, auth.ERR_MISSING)),
    ("   ", None, False, (None, auth.ERR_MISSING)),
    (None, "qtok", False, (None, auth.ERR_MISSING)),  # query token only where allowed (GET /events)
    (None, "qtok", True, ("qtok", None)),
    (None, "", True, (None, auth.ERR_MISSING)),
    ("Bearer ", "qtok", True, ("qtok", None)),
    ("Bearer htok", "qtok", True, ("htok", None)),  # the header wins
])
def test_extract_bearer(header, query, allow_query, expected):
    assert extract_bearer(header, query, allow_query) == expected


# --- the credential table -------------------------------------------------------------

def _table(*pairs):
    return CredentialTable(Credential(tok, normalize_scopes(scopes), "src%d" % i)
                           for i, (tok, scopes) in enumerate(pairs))


def test_authenticate_matches_exactly_and_first_wins():
    table = _table(("alpha", ["jobs:ro"]), ("beta", ["*"]), ("alpha", ["system:rw"]))
    assert table.authenticate("alpha").source == "src0"
    assert table.authenticate("beta").scopes == {"*"}
    for wrong in ("alph", "alphaa", "ALPHA", " alpha", "", None):
        assert table.authenticate(wrong) is None


def test_empty_credentials_never_match_and_empty_table_is_empty():
    table = _table(("", ["*"]))
    assert table.is_empty and table.authenticate("") is None
    assert not _table(("x", [])).is_empty


def test_non_ascii_tokens_compare_without_error():
    table = _table(("sécret", ["*"]))
    assert table.authenticate("sécret").source == "src0"
    assert table.authenticate("secret") is None


def test_every_credential_is_compared_in_constant_time(monkeypatch):
    """A match on the first entry still compares against the rest (no early exit)."""
    calls = []
    real = hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    table = _table(("one", []), ("two", []), ("three", []))
    assert table.authenticate("one").source == "src0"
    assert [b for _, b in calls] == [b"one", b"two", b"three"]
    calls.clear()
    assert table.authenticate("nope") is None
    assert len(calls) == 3


def test_check_combines_extraction_and_matching():
    table = _table(("tok", ["events:ro"]))
    assert table.check("Bearer tok")[0].source == "src0"
    assert table.check("Bearer bad") == (None, auth.ERR_INVALID_TOKEN)
    assert table.check("Basic tok") == (None, auth.ERR_FORMAT)
    assert table.check(None) == (None, auth.ERR_MISSING)
    assert table.check(None, "tok", allow_query=True)[0].source == "src0"


def test_credential_repr_hides_the_token():
    assert "s3cret" not in repr(Credential("s3cret", frozenset({"*"}), "api.auth.tokens[0]"))


def test_from_config_orders_inline_first_then_tokens_yaml(tmp_path):
    from ductile_lib.hashing import blake3_hex

    scope_bytes = b'{"scopes": ["read:jobs", "echo:rw"]}\n'
    root = write_tree(tmp_path / "cfg", {
        "config.yaml": config_text("""
            include: [tokens.yaml]
            api:
              enabled: true
              auth:
                tokens:
                  - {token: inline-token, scopes: [" system:rw ", ""]}
        """),
        "tokens.yaml": """
            tokens:
              - {name: ops, key: shared-token, scopes_file: scopes/ops.json, scopes_hash: "blake3:%s"}
              - {name: secret-only, key: hook-secret}
              - {name: broken, key: broken-key, scopes_file: scopes/ops.json, scopes_hash: "blake3:00"}
        """ % blake3_hex(scope_bytes),
    })
    (root / "scopes").mkdir()
    (root / "scopes" / "ops.json").write_bytes(scope_bytes)
    table = CredentialTable.from_config(load_config(config_dir=str(root)))
    assert [c.source for c in table.credentials] == ["api.auth.tokens[0]", "tokens.yaml:ops"]
    assert table.authenticate("inline-token").scopes == {"system:rw", "system:ro"}
    assert table.authenticate("shared-token").scopes == {"jobs:ro", "echo:rw", "echo:ro"}
    assert table.authenticate("hook-secret") is None  # a secret without scopes_file is not a login
    assert table.authenticate("broken-key") is None  # hash mismatch disables the token
