"""Scope strings and scope files (spec 10 §6.1, §6.3)."""
import pytest

from ductile_lib.hashing import blake3_hex
from ductile_lib.scopes import classify_scope, parse_scope_document, read_scope_file

PLUGINS = {"echo", "gh"}


@pytest.mark.parametrize("scope", ["*", "plugin:ro", "jobs:rw", "events:ro", "system:rw", "echo:ro", "gh:rw",
                                   "read:jobs", "read:echo"])
def test_valid_scopes(scope):
    assert classify_scope(scope, PLUGINS) == ("", "")


@pytest.mark.parametrize("scope", ["trigger:echo", "admin:rw", "echo:allow:poll", "echo:deny:poll", "healthz:ro",
                                   "queue:rw"])
def test_scopes_that_grant_nothing(scope):
    assert classify_scope(scope, PLUGINS) == ("warning", 'scope "%s" grants no access' % scope)


def test_invalid_scopes():
    assert classify_scope("job:ro", PLUGINS) == ("error", 'scope "job:ro" references unknown plugin "job"')
    assert classify_scope("read:nope", PLUGINS)[0] == "error"
    severity, message = classify_scope("plugin:admin", PLUGINS)
    assert severity == "error" and message.startswith('invalid scope "plugin:admin" (expected *,')


def test_scope_file_must_match_its_hash(tmp_path):
    path = tmp_path / "ops.json"
    path.write_bytes(b'{"scopes": ["jobs:ro"]}\n')
    good = "blake3:" + blake3_hex(path.read_bytes())
    assert read_scope_file(str(path), good) == (("jobs:ro",), "")
    scopes, problem = read_scope_file(str(path), "blake3:" + "0" * 64)
    assert scopes == () and "does not match scopes_hash" in problem
    assert "unreadable" in read_scope_file(str(tmp_path / "missing.json"), good)[1]
    path.write_bytes(b"not json")
    assert "is invalid" in read_scope_file(str(path), "blake3:" + blake3_hex(b"not json"))[1]


def test_scope_documents():
    assert parse_scope_document(["a:ro", " b:rw "]) == ["a:ro", "b:rw"]
    with pytest.raises(ValueError):
        parse_scope_document({"scopes": "x"})
