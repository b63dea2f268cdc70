"""The CLI's conventions (spec 50 §1, decision K1) and the config commands."""
import json
import subprocess
import sys
import zipfile

import pytest

from conftest import ECHO_PLUGIN_ROOT, EXAMPLES, PROJECT, config_text, run_ductile, write_tree


# --- conventions -----------------------------------------------------------

def test_help_and_usage(cli):
    assert cli().code == 2
    result = cli("--help")
    assert result.code == 0 and result.out.startswith("Usage: ductile <noun> <action> [flags]")
    bad = cli("frobnicate")
    assert bad.code == 2 and "Unknown command: frobnicate" in bad.err
    noun = cli("config")
    assert noun.code == 2 and "Usage: ductile config <action>" in noun.err and "Actions: check" in noun.err
    assert cli("config", "help").code == 0
    wrong = cli("config", "explode")
    assert wrong.code == 2 and "Unknown config action: explode" in wrong.err
    early = cli("--config-dir", "x", "config", "check")
    assert early.code == 2


def test_unknown_flag_is_usage_error_and_json_goes_to_stdout(cli):
    result = cli("config", "check", "--bogus", "--json")
    assert result.code == 2 and result.err == ""
    body = result.json()
    assert body["code"] == 2 and "--bogus" in body["error"] and body["context"] == {}


def test_action_help(cli):
    result = cli("config", "check", "--help")
    assert result.code == 0 and "--strict" in result.out


def test_version(cli):
    human = cli("version")
    assert human.code == 0 and human.out.startswith("ductile ")
    assert "commit: " in human.out and "built_at: " in human.out
    body = cli("version", "--json").json()
    assert set(body) == {"version", "commit", "build_time"}
    assert cli("version", "extra").code == 2
    assert cli("--version").code == 0


def test_both_config_flags(cli, config_dir):
    result = cli("config", "check", "--config", config_dir, "--config-dir", config_dir)
    assert result.code == 2 and "use only one of --config or --config-dir" in result.err


def test_no_config_found(cli, tmp_path):
    result = cli("config", "show", "--json", env={"XDG_CONFIG_HOME": str(tmp_path)})
    if "/etc/ductile" in result.out and result.code == 0:
        pytest.skip("/etc/ductile exists")
    assert result.code == 78
    assert result.json()["error"].startswith("Load error: no config found (checked: ")


# --- config check ---------------------------------------------------------------

def test_example_config_is_valid(cli):
    result = cli("config", "check", "--config-dir", EXAMPLES / "config", "--json")
    assert result.code == 0, result
    assert result.json()["valid"] is True


def test_check_human_output(cli, config_dir):
    result = cli("config", "check", "--config-dir", config_dir)
    assert result.code == 0 and result.out.startswith("Configuration valid")


@pytest.mark.parametrize("extra, needle", [
    ("service:\n  tick_interval: 1x\n", 'invalid duration "1x"'),
    ("service:\n  tick_interval: 90\n", 'duration "90" has no unit'),
    ("plugins:\n  echo:\n    enabled: true\n    parallelism: 3\n", "cannot exceed service.max_workers (2)"),
])
def test_check_reports_one_specific_error(cli, tmp_path, extra, needle):
    write_tree(tmp_path, {"config.yaml": config_text(extra)})
    result = cli("config", "check", "--config-dir", tmp_path, "--json")
    assert result.code == 78
    body = result.json()
    assert body["valid"] is False and len(body["errors"]) == 1
    assert needle in body["errors"][0]["message"] and "config.yaml:" in body["errors"][0]["message"]
    human = cli("config", "check", "--config-dir", tmp_path)
    assert human.code == 78 and human.out.startswith("Configuration invalid (1 error(s)")
    assert "  ERROR [service] " in human.out


def test_check_missing_include(cli, tmp_path):
    write_tree(tmp_path, {"config.yaml": config_text("include: [gone.yaml]")})
    result = cli("config", "check", "--config-dir", tmp_path, "--json")
    assert result.code == 78
    assert result.json()["error"].startswith("Config load error: include[0]: file not found: ")


def test_check_discovery_dependent_findings(cli, tmp_path):
    write_tree(tmp_path, {"config.yaml": config_text("""
plugins:
  ghost: {enabled: true}
  echo:
    enabled: true
    schedules: [{every: 30s, command: sync}]
api:
  auth:
    tokens: [{token: abcdefgh, scopes: ["plugin:ro", "nosuch:rw", "bogus", "admin:rw"]}]
""")})
    body = cli("config", "check", "--config-dir", tmp_path, "--json").json()
    errors = [(e["category"], e["message"]) for e in body["errors"]]
    assert ("plugin_refs", 'plugin "ghost" is configured but not discoverable') in errors
    assert ("plugin_refs", 'plugin "echo" schedule "default" references unsupported command "sync"') in errors
    assert ("token_scopes", 'scope "nosuch:rw" references unknown plugin "nosuch"') in errors
    assert any(c == "token_scopes" and m.startswith('invalid scope "bogus"') for c, m in errors)
    warnings = [(w["category"], w["message"]) for w in body["warnings"]]
    assert ("token_scopes", 'scope "admin:rw" grants no access') in warnings
    assert any(c == "schedule" for c, _ in warnings)


def test_strict_counts_warnings(cli, tmp_path):
    write_tree(tmp_path, {"config.yaml": config_text("mystery: 1")})
    assert cli("config", "check", "--config-dir", tmp_path).code == 0
    strict = cli("config", "check", "--config-dir", tmp_path, "--strict", "--json")
    assert strict.code == 78
    assert any(e["category"] == "unknown_keys" for e in strict.json()["errors"])


# --- config show / get ------------------------------------------------------------

SECRET_CONFIG = """
api:
  auth:
    tokens: [{{token: top-secret-token, scopes: ["*"]}}]
plugins:
  echo:
    enabled: true
    config:
      url: https://example.invalid
      api_key: abc123
      nested: [{{password: hunter2, keep: me}}]
    schedules:
      - {{every: 90s, payload: {{auth_header: xyz, n: 1}}}}
"""


@pytest.fixture
def secret_dir(tmp_path):
    return write_tree(tmp_path, {"config.yaml": config_text(SECRET_CONFIG.replace("{{", "{").replace("}}", "}"))})


def test_show_redacts_everywhere(cli, secret_dir):
    for args in (("config", "show"), ("config", "show", "--json"), ("config", "show", "plugin:echo")):
        result = cli(*args, "--config-dir", secret_dir)
        assert result.code == 0, result
        for secret in ("top-secret-token", "abc123", "hunter2", "xyz"):
            assert secret not in result.out
        assert "[REDACTED]" in result.out
    body = cli("config", "show", "--json", "--config-dir", secret_dir).json()
    assert list(body)[:3] == ["service", "state", "api"]
    echo = body["plugins"]["echo"]
    assert echo["config"]["nested"][0] == {"password": "[REDACTED]", "keep": "me"}
    assert echo["schedules"][0]["every"] == "1m30s"


def test_get_values(cli, secret_dir):
    assert cli("config", "get", "service.tick_interval", "--config-dir", secret_dir).out == "1m0s\n"
    assert cli("config", "get", "plugins.echo.retry.max_attempts", "--config-dir", secret_dir).out == "4\n"
    as_json = cli("config", "get", "plugins.echo.config", "--json", "--config-dir", secret_dir)
    assert as_json.json()["api_key"] == "[REDACTED]"
    missing = cli("config", "get", "service.nope", "--config-dir", secret_dir)
    assert missing.code == 1 and 'path "service.nope": key "nope" not found' in missing.err
    through = cli("config", "get", "service.name.x", "--config-dir", secret_dir)
    assert through.code == 1 and 'breaks at "service.name" (not a map)' in through.err


# --- plugin list -------------------------------------------------------------------

def test_plugin_list(cli, tmp_path):
    roots = tmp_path / "plugins"
    write_tree(roots, {"bad/manifest.yaml": "manifest_spec: nope\n", "orphan/run.py": "print(1)\n"})
    write_tree(tmp_path, {"config.yaml": config_text("plugin_roots: [%s, %s]" % (ECHO_PLUGIN_ROOT, roots))})
    body = cli("plugin", "list", "--config-dir", tmp_path, "--json").json()
    echo = next(p for p in body["plugins"] if p["name"] == "echo")
    assert echo["enabled"] is True
    assert {"name": "poll", "type": "write"} in echo["commands"]
    kinds = {r["kind"] for r in body["rejected"]}
    assert {"invalid_manifest", "missing_manifest"} <= kinds
    human = cli("plugin", "list", "--config-dir", tmp_path)
    assert human.code == 0 and human.out.startswith("NAME") and "Rejected:" in human.out


# --- real processes and packaging --------------------------------------------------

def test_entry_points_from_a_plain_copy():
    assert run_ductile("--help").code == 0
    proc = subprocess.run([sys.executable, "-m", "ductile_lib", "version", "--json"], capture_output=True,
                          text=True, cwd=str(PROJECT), timeout=30)
    assert proc.returncode == 0 and json.loads(proc.stdout)["version"]


def test_acceptance_example_check_as_subprocess():
    result = run_ductile("config", "check", "--config-dir", "examples/config", "--json")
    assert result.code == 0, result
    assert result.json()["valid"] is True


def test_wheel_declares_console_script(tmp_path):
    pytest.importorskip("setuptools")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp_path), str(PROJECT)], capture_output=True, text=True, timeout=120)
    if proc.returncode != 0 and "No module named" in proc.stderr:
        pytest.skip("wheel building tools missing: " + proc.stderr[-200:])
    assert proc.returncode == 0, proc.stderr
    wheel = next(tmp_path.glob("ductile-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        entry_points = next(n for n in names if n.endswith("entry_points.txt"))
        assert "ductile = ductile_lib.cli:main" in archive.read(entry_points).decode()
        metadata = archive.read(next(n for n in names if n.endswith("METADATA"))).decode()
    assert "Requires-Python: >=3.9" in metadata and "Requires-Dist: blake3" in metadata
    assert any(n.startswith("ductile_lib/cli/") for n in names)


def test_code_runs_on_python_39():
    vermin = pytest.importorskip("vermin")
    del vermin
    proc = subprocess.run([sys.executable, "-c", "import sys; from vermin import main; sys.exit(main())",
                           "--target=3.9-", "--no-tips", "--violations",
                           str(PROJECT / "ductile_lib"), str(PROJECT / "ductile.py"), str(EXAMPLES / "plugins")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
