"""Config loading, composition and validation (spec 10 §1–§4, §8)."""
import os

import pytest

from conftest import config_text, write_tree
from ductile_lib.config import load_config, require_valid
from ductile_lib.config_load import ConfigError, locate, parse_env_file
from ductile_lib.durations import SECOND


def make(tmp_path, files: dict, **env):
    write_tree(tmp_path, files)
    return load_config(config_dir=str(tmp_path), environ=env)


def base(extra: str = "") -> str:
    return config_text(extra)


def messages(cfg, severity="error"):
    return [i.text() for i in cfg.issues if i.severity == severity]


# --- locating ------------------------------------------------------------

def test_both_flags_is_a_usage_error(tmp_path):
    with pytest.raises(ConfigError) as err:
        locate(str(tmp_path), str(tmp_path))
    assert err.value.code == 2
    assert err.value.message == "use only one of --config or --config-dir"


def test_directory_without_config_yaml(tmp_path):
    with pytest.raises(ConfigError, match="directory provided but config.yaml not found: " + str(tmp_path)):
        locate(config_dir=str(tmp_path))


def test_config_file_with_any_name(tmp_path):
    path = tmp_path / "gateway.yml"
    path.write_text("plugin_roots: [x]\n")
    assert locate(config=str(path)) == (str(path), "explicit")
    with pytest.raises(ConfigError, match="config file not found: .*missing.yaml"):
        locate(config=str(tmp_path / "missing.yaml"))


def test_discovery_order(tmp_path):
    env_dir, xdg = tmp_path / "env", tmp_path / "xdg"
    (xdg / "ductile").mkdir(parents=True)
    (xdg / "ductile" / "config.yaml").write_text("{}\n")
    environ = {"DUCTILE_CONFIG_DIR": str(env_dir), "XDG_CONFIG_HOME": str(xdg)}
    # The env dir is missing: fall through to XDG.
    assert locate(environ=environ) == (str(xdg / "ductile" / "config.yaml"), "auto-discovered")
    env_dir.mkdir()
    (env_dir / "config.yaml").write_text("{}\n")
    assert locate(environ=environ) == (str(env_dir / "config.yaml"), "env:DUCTILE_CONFIG_DIR")


def test_nothing_found_lists_candidates(tmp_path):
    environ = {"XDG_CONFIG_HOME": str(tmp_path / "none")}
    if os.path.isdir("/etc/ductile"):
        pytest.skip("/etc/ductile exists on this machine")
    with pytest.raises(ConfigError, match=r"no config found \(checked: .*none/ductile, /etc/ductile\)"):
        locate(environ=environ)


def test_tilde_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    write_tree(tmp_path / "cfg", {"config.yaml": base()})
    root, _ = locate(config_dir="~/cfg")
    assert root == str(tmp_path / "cfg" / "config.yaml")


# --- defaults and values ---------------------------------------------------

def test_defaults(tmp_path):
    cfg = make(tmp_path, {"config.yaml": base()})
    assert cfg.errors == []
    assert cfg.service.tick_interval == 60 * SECOND
    assert cfg.service.dedupe_ttl == 24 * 3600 * SECOND
    assert cfg.service.max_chain_depth == 64
    assert cfg.api.listen == "127.0.0.1:8080" and cfg.api.enabled is False
    assert cfg.api.max_body_size == 1 << 20
    assert cfg.state_path == str(tmp_path / "data" / "state.db")
    assert cfg.pid_path == str(tmp_path / "data" / "state.pid")
    echo = cfg.plugins["echo"]
    assert echo.max_attempts == 4 and echo.backoff_base == 30 * SECOND
    assert echo.timeout_for("poll") == 60 * SECOND and echo.timeout_for("handle") == 120 * SECOND
    assert echo.timeout_for("health") == 10 * SECOND and echo.timeout_for("custom") == 60 * SECOND
    assert echo.schedules[0].id == "default" and echo.schedules[0].command == "poll"


def test_compatibility_keys(tmp_path):
    cfg = make(tmp_path, {"config.yaml": base("""
log_level: debug
plugins:
  echo:
    enabled: "yes"
    timeout: 5s
    timeouts: {handle: 9s}
    max_attempts: 7
""")})
    assert cfg.errors == []
    assert cfg.service.log_level == "debug"
    echo = cfg.plugins["echo"]
    assert echo.enabled is True
    assert echo.timeout_for("poll") == 5 * SECOND and echo.timeout_for("handle") == 9 * SECOND
    assert echo.max_attempts == 7


def test_zero_means_default_and_negative_retention_disables(tmp_path):
    cfg = make(tmp_path, {"config.yaml": base("""
service:
  dedupe_ttl: 0s
  job_queue_retention: -1s
""")})
    assert cfg.errors == []
    assert cfg.service.dedupe_ttl == 24 * 3600 * SECOND
    assert cfg.service.job_queue_retention < 0


@pytest.mark.parametrize("extra, expected", [
    ("service:\n  tick_interval: 5x\n", 'service.tick_interval: invalid duration "5x"'),
    ("service:\n  tick_interval: 60\n", 'service.tick_interval: duration "60" has no unit; add one, e.g. "60s"'),
    ("service:\n  tick_interval: 0s\n", "service.tick_interval must be positive"),
    ("plugins:\n  echo:\n    enabled: true\n    parallelism: 8\n",
     'plugin "echo": parallelism (8) cannot exceed service.max_workers (2)'),
    ("plugins:\n  echo:\n    enabled: true\n    parallelism: 0\n", 'plugin "echo": parallelism must be positive'),
    ("service:\n  max_workers: 0\n", "service.max_workers must be positive"),
    ("service:\n  log_level: loud\n", 'service.log_level must be one of: debug, info, warn, error (got "loud")'),
    ("service:\n  dedupe_ttl: 48h\n", "service.job_queue_retention (24h0m0s) must be >= service.dedupe_ttl"),
    ("service:\n  strict_mode: maybe\n", 'service.strict_mode: expected a boolean, got "maybe"'),
    ("service:\n  max_chain_depth: 1.5\n", "service.max_chain_depth: expected an integer, got 1.5"),
    ("api:\n  max_body_size: 1.5MB\n", 'api.max_body_size: invalid size "1.5MB"'),
    ("plugins:\n  echo:\n    enabled: true\n    retry: {max_attempts: 0}\n",
     'plugin "echo": retry.max_attempts must be positive'),
    ("plugins:\n  echo:\n    enabled: true\n    schedule: {every: 5m}\n",
     'plugin "echo": schedule is no longer supported; use schedules[]'),
])
def test_single_specific_error(tmp_path, extra, expected):
    cfg = make(tmp_path, {"config.yaml": base(extra)})
    errors = messages(cfg)
    assert len(errors) == 1, errors
    assert expected in errors[0]
    assert "config.yaml:" in errors[0]  # names the file and line


@pytest.mark.parametrize("schedule, expected", [
    ("{id: a}", "schedules[0] requires one of every, cron, at, or after"),
    ("{every: 5m, cron: '* * * * *'}", "schedules[0] must set exactly one of every, cron, at, or after"),
    ("{every: 5m, command: handle}", 'schedules[0].command "handle" cannot be scheduled'),
    ("{every: often}", 'schedules[0].every: invalid interval "often"'),
    ("{cron: '61 * * * *'}", 'schedules[0].cron: invalid cron expression "61 * * * *"'),
    ("{cron: '0 0 30 2 *'}", "schedules[0].cron: cron expression never fires"),
    ("{at: '2026-03-15 10:00'}", 'schedules[0].at: invalid timestamp "2026-03-15 10:00" (want RFC 3339 with a zone)'),
    ("{after: 0s}", "schedules[0].after: duration must be positive"),
    ("{every: 5m, only_between: '22:00-22:00'}", 'schedules[0].only_between: invalid window "22:00-22:00"'),
    ("{every: 5m, timezone: Mars/Olympus}", 'schedules[0].timezone: unknown time zone "Mars/Olympus"'),
    ("{every: 5m, not_on: [funday]}", 'schedules[0].not_on: invalid weekday "funday"'),
    ("{cron: '0 * * * *', jitter: 5s}", "schedules[0].jitter: only valid with every"),
    ("{cron: '0 * * * *', catch_up: run_once}", 'schedules[0].catch_up: "run_once" requires every'),
])
def test_schedule_errors(tmp_path, schedule, expected):
    cfg = make(tmp_path, {"config.yaml": base("plugins:\n  echo:\n    enabled: true\n    schedules:\n      - %s\n"
                                              % schedule)})
    errors = messages(cfg)
    assert len(errors) == 1, errors
    assert 'plugin "echo": ' + expected in errors[0]


def test_valid_schedule_forms(tmp_path):
    cfg = make(tmp_path, {"config.yaml": base("""
plugins:
  echo:
    enabled: true
    schedules:
      - {id: a, every: hourly, jitter: 30s, catch_up: run_once, only_between: "07:00-22:00",
         timezone: Europe/Berlin, not_on: [sat, 0, 7]}
      - {id: b, cron: "*/15 9-17 * JAN-MAR mon-fri"}
      - {id: c, at: "2026-03-15T14:00:00Z"}
      - {id: d, after: 30s, payload: {x: 1}}
""")})
    assert cfg.errors == [], messages(cfg)
    ids = [s.id for s in cfg.plugins["echo"].schedules]
    assert ids == ["a", "b", "c", "d"]
    assert cfg.plugins["echo"].schedules[0].not_on == (0, 6)


def test_duplicate_schedule_id(tmp_path):
    cfg = make(tmp_path, {"config.yaml": base(
        "plugins:\n  echo:\n    enabled: true\n    schedules:\n      - {every: 5m}\n      - {every: 6m}\n")})
    assert any('duplicate schedule id "default"' in m for m in messages(cfg))


def test_disabled_plugin_mistakes_are_warnings(tmp_path):
    cfg = make(tmp_path, {"config.yaml": base("plugins:\n  other:\n    enabled: false\n    timeout: 60\n")})
    assert cfg.errors == []
    assert any("other" in m and "has no unit" in m for m in messages(cfg, "warning"))


def test_plugin_roots_required(tmp_path):
    cfg = make(tmp_path, {"config.yaml": "service: {name: x}\n"})
    assert any("plugin_roots is required" in m for m in messages(cfg))


# --- composition -------------------------------------------------------------

def test_includes_merge_by_one_rule(tmp_path):
    cfg = make(tmp_path, {
        "config.yaml": base("include: [a.yaml, more]\n"),
        "a.yaml": """
            service: {tick_interval: 30s}
            plugins:
              echo: {enabled: false}
            routes: [{from: echo, event_type: e1, to: echo}]
        """,
        "more/b.yml": "routes: [{from: echo, event_type: e2, to: echo}]\nservice: {name: null}\n",
        "more/c.yaml": "plugins:\n  echo:\n    enabled: true\n    config: {message: later}\n",
        "more/ignored.txt": "not: yaml: at all",
    })
    assert cfg.errors == [], messages(cfg)
    assert cfg.service.tick_interval == 30 * SECOND
    assert [r.event_type for r in cfg.routes] == ["e1", "e2"]  # lists append
    assert cfg.service.name == "ductile"  # a later null changes nothing
    echo = cfg.plugins["echo"]  # a later plugins.<name> replaces the whole entry
    assert echo.enabled and dict(echo.config) == {"message": "later"} and echo.schedules == ()


def test_diamond_include_is_fine_but_a_cycle_is_not(tmp_path):
    cfg = make(tmp_path, {
        "config.yaml": base("include: [a.yaml, b.yaml]\n"),
        "a.yaml": "include: [shared.yaml]\n",
        "b.yaml": "include: [shared.yaml]\n",
        "shared.yaml": "routes: [{from: echo, event_type: x, to: echo}]\n",
    })
    assert len(cfg.routes) == 1  # merged once
    write_tree(tmp_path / "cyc", {"config.yaml": base("include: [a.yaml]\n"), "a.yaml": "include: [config.yaml]\n"})
    with pytest.raises(ConfigError, match=r"include\[0\] \(a.yaml\): include\[0\]: circular dependency detected: "):
        load_config(config_dir=str(tmp_path / "cyc"), environ={})


def test_missing_include(tmp_path):
    with pytest.raises(ConfigError) as err:
        make(tmp_path, {"config.yaml": base("include: [nope.yaml]\n")})
    assert err.value.code == 78
    assert err.value.message == "include[0]: file not found: %s\nReferenced from: %s" % (tmp_path / "nope.yaml",
                                                                                         tmp_path)


def test_env_var_in_include_path_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"include\[0\]: environment variables are not allowed in include paths"):
        make(tmp_path, {"config.yaml": base('include: ["${DIR}/a.yaml"]\n')}, DIR=str(tmp_path))


def test_interpolation_and_env_files(tmp_path):
    cfg = make(tmp_path, {
        "config.yaml": base("""
environment_vars:
  include: [.env]
include: [plugins.yaml]
service:
  name: ${SERVICE_NAME}
"""),
        ".env": "# comment\nexport SERVICE_NAME = 'from-env-file'\nMESSAGE=\"hi there\"\nPROCESS_WINS=dotenv\n",
        "plugins.yaml": "plugins:\n  echo:\n    enabled: true\n    config: {message: \"${MESSAGE}\", p: \"${PROCESS_WINS}\"}\n",
    }, PROCESS_WINS="process")
    assert cfg.errors == [], messages(cfg)
    assert cfg.service.name == "from-env-file"
    assert dict(cfg.plugins["echo"].config) == {"message": "hi there", "p": "process"}
    assert any(f.kind == "env" and f.path.endswith(".env") for f in cfg.raw.files)


def test_unset_variable_in_enabled_plugin_config(tmp_path):
    cfg = make(tmp_path, {"config.yaml": base(
        'plugins:\n  echo:\n    enabled: true\n    config: {url: "${NOPE_URL}"}\n')})
    assert any('plugin "echo": environment variable ${NOPE_URL} is not set' in m for m in messages(cfg))


def test_env_file_errors(tmp_path):
    assert parse_env_file("A=1\n\n#x\nexport B = \"2\"\nC='3'\nD=\"4'\n", "f") == {
        "A": "1", "B": "2", "C": "3", "D": "\"4'"}
    with pytest.raises(ConfigError, match="invalid env line 2 in f"):
        parse_env_file("A=1\nnonsense\n", "f")
    with pytest.raises(ConfigError, match=r"environment_vars.include\[0\]: file not found"):
        make(tmp_path, {"config.yaml": base("environment_vars: {include: [missing.env]}\n")})


def test_webhooks_plain_list_is_normalised_per_file(tmp_path):
    cfg = make(tmp_path, {
        "config.yaml": base("include: [tokens.yaml, hooks.yaml]\nwebhooks: {listen: '127.0.0.1:9090'}\n"),
        "tokens.yaml": "tokens:\n  - {name: gh, key: s3cret-key-value}\n",
        "hooks.yaml": "webhooks:\n  - {path: /gh, plugin: echo, secret_ref: gh, signature_header: X-Sig}\n",
    })
    assert cfg.errors == [], messages(cfg)
    assert cfg.webhooks_listen == "127.0.0.1:9090"
    assert [(h.path, h.secret_ref) for h in cfg.webhooks] == [("/gh", "gh")]


def test_webhook_cross_references(tmp_path):
    cfg = make(tmp_path, {"config.yaml": base(
        "webhooks:\n  - {path: /a, plugin: ghost, secret_ref: nope, signature_header: X}\n"
        "  - {path: /b, plugin: echo}\n")})
    errors = messages(cfg)
    assert any('webhook[0] (/a): plugin "ghost" does not exist' in m for m in errors)
    assert any('webhook[0] (/a): secret_ref "nope" not found in tokens.yaml' in m for m in errors)
    assert any("webhook[1] (/b): secret_ref is required" in m for m in errors)
    assert any("webhook[1] (/b): signature_header is required" in m for m in errors)


def test_routes_must_name_configured_plugins(tmp_path):
    cfg = make(tmp_path, {"config.yaml": base("routes: [{from: echo, event_type: x, to: ghost}]\n")})
    assert any("route[0]: 'to' plugin \"ghost\" does not exist" in m for m in messages(cfg))


def test_root_only_keys_in_an_include_are_ignored(tmp_path):
    cfg = make(tmp_path, {"config.yaml": base("include: [a.yaml]\n"),
                          "a.yaml": "service: {strict_mode: true}\n"})
    assert cfg.service.strict_mode is False
    assert any("service.strict_mode is only honoured in the root config file" in m
               for m in messages(cfg, "warning"))


def test_unknown_keys_warn_with_file_and_line(tmp_path):
    cfg = make(tmp_path, {"config.yaml": base("include: [a.yaml]\nx-anchors: {a: 1}\n"),
                          "a.yaml": "# c\nservice:\n  tick_intervall: 5s\n"})
    warnings = messages(cfg, "warning")
    assert 'unknown config key "service.tick_intervall" at a.yaml:3' in warnings
    assert not any("x-anchors" in w for w in warnings)


def test_yaml_errors_name_file_line_and_column(tmp_path):
    with pytest.raises(ConfigError, match=r"config.yaml: line 2, column \d+: "):
        make(tmp_path, {"config.yaml": "service:\n\tname: x\n"})


def test_top_level_must_be_a_mapping(tmp_path):
    with pytest.raises(ConfigError, match="config.yaml: top level must be a mapping"):
        make(tmp_path, {"config.yaml": "- a\n- b\n"})


def test_not_utf8(tmp_path):
    (tmp_path / "config.yaml").write_bytes(b"name: \xff\xfe\n")
    with pytest.raises(ConfigError, match="config.yaml: not valid UTF-8"):
        load_config(config_dir=str(tmp_path), environ={})


def test_api_token_rules(tmp_path):
    enabled = make(tmp_path / "a", {"config.yaml": base(
        'api:\n  enabled: true\n  auth:\n    tokens:\n      - {token: "${NO_TOKEN}", scopes: ["*"]}\n'
        '      - {token: "", scopes: ["*"]}\n')})
    errors = messages(enabled)
    assert any("api.auth.tokens[0].token: environment variable ${NO_TOKEN} is not set" in m for m in errors)
    assert any("api.auth.tokens[1].token is empty" in m for m in errors)
    disabled = make(tmp_path / "b", {"config.yaml": base(
        'api:\n  enabled: false\n  auth:\n    tokens:\n      - {token: "${NO_TOKEN}", scopes: ["*"]}\n')})
    assert disabled.errors == []
    assert any(i.category == "env_vars" for i in disabled.warnings)


def test_tokens_yaml_entry_logs_in_only_with_a_matching_scope_file(tmp_path):
    from ductile_lib.hashing import blake3_hex

    scopes = b'{"scopes": ["plugin:ro"], "metadata": {"created_at": "2026-01-01T00:00:00Z"}}\n'
    good = "blake3:" + blake3_hex(scopes)
    cfg = make(tmp_path, {
        "config.yaml": base("include: [tokens.yaml]\napi: {enabled: true}\n"),
        "tokens.yaml": """
            tokens:
              - {name: ops, key: "${OPS_TOKEN}", scopes_file: scopes/ops.json, scopes_hash: "%s"}
              - {name: bad, key: k-bad-0000, scopes_file: scopes/ops.json, scopes_hash: "blake3:00"}
        """ % good,
        "scopes/ops.json": scopes.decode(),
    }, OPS_TOKEN="ops-secret-value")
    logins = {t.source: t for t in cfg.api.tokens}
    assert logins["tokens.yaml:ops"].token == "ops-secret-value"
    assert logins["tokens.yaml:ops"].scopes == ("plugin:ro",)
    assert "tokens.yaml:bad" not in logins
    assert any('token "bad" is disabled' in m for m in messages(cfg, "warning"))


def test_require_valid_joins_errors(tmp_path):
    cfg = make(tmp_path, {"config.yaml": base("service:\n  tick_interval: 5x\n  max_workers: 0\n")})
    with pytest.raises(ConfigError) as err:
        require_valid(cfg)
    assert err.value.message.startswith("invalid configuration: ")
    assert "tick_interval" in err.value.message and "max_workers" in err.value.message


def test_config_is_immutable(tmp_path):
    cfg = make(tmp_path, {"config.yaml": base()})
    with pytest.raises(Exception):
        cfg.service = None
    with pytest.raises(TypeError):
        cfg.plugins["x"] = None
