"""Plugin discovery, manifests, trust checks, aliases and the echo example.

Every test builds real directories in ``tmp_path`` (real modes, real
symlinks) because discovery's job is to judge what is on disk.
"""
from __future__ import annotations

import json
import os
import subprocess
import textwrap

import pytest

from ductile_lib import plugins
from ductile_lib.plugins import (
    AliasError,
    Command,
    DiscoveryError,
    TrustError,
    check_trust,
    describe,
    discover,
    effective_parallelism,
    expand_schema,
    missing_config_keys,
    register_aliases,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE_PLUGINS = os.path.join(REPO, "examples", "plugins")

SCRIPT = "#!/bin/sh\necho '{\"status\":\"ok\",\"result\":\"ok\"}'\n"


def write_plugin(root, relpath, manifest, entrypoint="run.sh", mode=0o755):
    """A plugin directory with ``manifest`` (dedented) and an entrypoint script."""
    directory = os.path.join(str(root), relpath)
    os.makedirs(directory, exist_ok=True)
    os.chmod(directory, 0o755)
    with open(os.path.join(directory, "manifest.yaml"), "w", encoding="utf-8") as handle:
        handle.write(textwrap.dedent(manifest))
    if entrypoint:
        path = os.path.join(directory, entrypoint)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as handle:
            handle.write(SCRIPT)
        os.chmod(path, mode)
    return directory


def minimal_manifest(name="demo", entrypoint="run.sh", extra=""):
    return (
        "manifest_spec: ductile.plugin\n"
        "manifest_version: 1\n"
        "name: %s\n"
        "version: 0.1.0\n"
        "protocol: 2\n"
        "entrypoint: %s\n"
        "commands:\n"
        "  - name: poll\n"
        "    type: write\n"
        "  - name: health\n"
        "    type: read\n" % (name, entrypoint)
    ) + extra


def only_rejection(discovery):
    assert discovery.plugins == {}
    assert len(discovery.rejected) == 1, discovery.rejected
    return discovery.rejected[0]


# ---------------------------------------------------------------------------
# Realistic manifests (modelled on real Ductile plugins)

FETCH = """\
    manifest_spec: ductile.plugin
    manifest_version: 1
    name: fetch
    version: 0.1.0
    protocol: 2
    entrypoint: run.py
    description: "Fetch raw webpage content via HTTP GET and return HTML, plain text, or markdown"
    concurrency_safe: false
    commands:
      - name: handle
        type: write
        description: "Fetch the URL from the event payload and emit fetch.completed or fetch.failed."
        idempotent: true
        retry_safe: true
        input_schema:
          url: string
        values:
          consume:
            - payload.url
          emit:
            - event: fetch.completed
              values:
                - payload.url
                - payload.final_url
                - payload.status_code
            - event: fetch.failed
              values: [payload.url, payload.error]
      - name: health
        type: read
        description: "Returns plugin health status."
    config_keys:
      required: []
      optional:
        - user_agent
        - follow_redirects   # default false
        - output_format      # html | text | markdown
    """

DISCORD = """\
    manifest_spec: ductile.plugin
    manifest_version: 1
    name: discord_notify
    version: 0.2.0
    protocol: 2
    entrypoint: run.py
    concurrency_safe: true
    description: "Posts messages to a Discord channel via incoming webhook — stateless writer."
    commands:
      - name: handle
        type: write
        input_schema:
          type: object
          properties:
            message:
              type: string
              description: "Primary body. Tried first."
          additionalProperties: true
        output_schema:
          type: object
          properties:
            status:
              type: string
              enum: [ok, error]
          required: [status, logs]
        values:
          consume:
            - payload.message
            - payload.*
          emit: []
      - name: health
        type: read
        input_schema: {}
    config_keys:
      required: [webhook_url]
      optional:
        - default_username
    """

HEALTH_FACTS = """\
    manifest_spec: ductile.plugin
    manifest_version: 1
    name: health_data
    version: "1.2"
    protocol: 2
    entrypoint: bin/collect
    commands:
      - name: poll
        type: write
        output_schema:
          steps: integer
      - name: snapshot
        type: write
    fact_outputs:
      - when:
          command: poll
        from: state_updates
        fact_type: health.daily
      - when: {command: snapshot}
        from: state_updates
        fact_type: health.snapshot
        compatibility_view: mirror_object
    """

SQLITE_CHANGE = """\
    manifest_spec: ductile.plugin
    manifest_version: 1
    name: sqlite_change
    version: 0.1.0
    protocol: 2
    entrypoint: run.py
    concurrency_safe: false
    description: "Monitors a SQLite database via a SQL query."
    commands:
      - name: poll
        type: write
        retry_safe: true
        values:
          emit:
            - event: "<configured event_type>"
              values:
                - payload.db_path
                - payload.detected_at
      - name: health
        type: read
    config_keys:
      required: [db_path, query, event_type]
      optional: [threshold_op, threshold_value]
    """

NESTED_TS = """\
    # comment before the first key
    manifest_spec: ductile.plugin
    manifest_version: 1
    name: ts_greet
    version: 1.0
    protocol: 2
    entrypoint: /run.ts
    author: someone          # unknown keys are ignored
    stopwatch:
      max_subs: 5
    commands:
      - name: greet-user
        description: "type omitted means write"
      - name: greet-user
        type: read
        description: "duplicate name: the first wins"
    """


@pytest.fixture
def realistic_root(tmp_path):
    root = tmp_path / "plugins"
    write_plugin(root, "fetch", FETCH, "run.py")
    write_plugin(root, "discord_notify", DISCORD, "run.py")
    write_plugin(root, "health_data", HEALTH_FACTS, "bin/collect")
    write_plugin(root, "sqlite_change", SQLITE_CHANGE, "run.py")
    write_plugin(root, "vendor/typescript/ts_greet", NESTED_TS, "run.ts")
    return str(root)


def test_realistic_manifests_all_load_in_walk_order(realistic_root):
    discovery = discover([realistic_root])
    assert discovery.rejected == []
    assert list(discovery.plugins) == [
        "discord_notify", "fetch", "health_data", "sqlite_change", "ts_greet"]
    loaded = [r for r in discovery.log_records if r[1] == "loaded plugin"]
    assert loaded[1] == ("INFO", "loaded plugin", {
        "plugin": "fetch", "path": os.path.join(realistic_root, "fetch"),
        "version": "0.1.0", "protocol": 2})


def test_list_of_commands_with_compact_schema_and_values(realistic_root):
    fetch = discover([realistic_root]).plugins["fetch"]
    assert fetch.entrypoint == os.path.join(realistic_root, "fetch", "run.py")
    assert fetch.manifest_path == os.path.join(realistic_root, "fetch", "manifest.yaml")
    assert fetch.concurrency_safe is False
    assert [(c.name, c.type) for c in fetch.commands] == [("handle", "write"), ("health", "read")]
    handle = fetch.command("handle")
    assert handle.input_schema == {"url": "string"}
    assert handle.idempotent is True and handle.retry_safe is True
    assert handle.values == {
        "consume": ["payload.url"],
        "emit": [
            {"event": "fetch.completed",
             "values": ["payload.url", "payload.final_url", "payload.status_code"]},
            {"event": "fetch.failed", "values": ["payload.url", "payload.error"]},
        ],
    }
    assert fetch.command("health").values is None
    assert fetch.config_keys == {
        "required": [], "optional": ["user_agent", "follow_redirects", "output_format"]}
    assert fetch.has_command("health") and not fetch.has_command("poll")
    assert fetch.command("poll") is None


def test_full_json_schemas_are_kept_verbatim(realistic_root):
    discord = discover([realistic_root]).plugins["discord_notify"]
    handle = discord.command("handle")
    assert handle.output_schema["properties"]["status"]["enum"] == ["ok", "error"]
    assert handle.input_schema["additionalProperties"] is True
    assert discord.command("health").input_schema == {}
    assert discord.config_keys == {"required": ["webhook_url"], "optional": ["default_username"]}
    assert discord.concurrency_safe is True
    assert "—" in discord.description


def test_fact_outputs_are_normalised_with_default_view(realistic_root):
    health = discover([realistic_root]).plugins["health_data"]
    assert health.version == "1.2"
    assert health.entrypoint.endswith(os.path.join("health_data", "bin", "collect"))
    assert health.fact_outputs == (
        {"when": {"command": "poll"}, "from": "state_updates", "fact_type": "health.daily",
         "compatibility_view": "mirror_object"},
        {"when": {"command": "snapshot"}, "from": "state_updates",
         "fact_type": "health.snapshot", "compatibility_view": "mirror_object"},
    )
    assert [r["fact_type"] for r in health.fact_rules_for("snapshot")] == ["health.snapshot"]
    assert health.config_keys == {"required": [], "optional": []}
    assert health.concurrency_safe is True


def test_nested_plugin_unknown_keys_default_type_and_duplicate_command(realistic_root):
    ts = discover([realistic_root]).plugins["ts_greet"]
    directory = os.path.join(realistic_root, "vendor", "typescript", "ts_greet")
    assert ts.directory == directory
    assert ts.entrypoint == os.path.join(directory, "run.ts")  # leading "/" stays relative
    assert ts.version == "1.0"
    assert ts.commands == (Command(name="greet-user", type="write",
                                   description="type omitted means write"),)


def test_plugins_are_immutable(realistic_root):
    fetch = discover([realistic_root]).plugins["fetch"]
    with pytest.raises(Exception):
        fetch.name = "other"
    assert isinstance(fetch.commands, tuple)


def test_sqlite_change_placeholder_event_and_required_keys(realistic_root):
    plugin = discover([realistic_root]).plugins["sqlite_change"]
    assert plugin.command("poll").values["emit"][0]["event"] == "<configured event_type>"
    assert missing_config_keys(plugin, {"db_path": "/x.db"}) == ["query", "event_type"]
    assert missing_config_keys(plugin, None) == ["db_path", "query", "event_type"]


# ---------------------------------------------------------------------------
# Manifest rejections

BAD_MANIFESTS = [
    ("missing manifest_spec",
     lambda m: m.replace("manifest_spec: ductile.plugin\n", ""),
     'invalid manifest: manifest_spec must be "ductile.plugin" (missing)'),
    ("wrong manifest_spec",
     lambda m: m.replace("ductile.plugin", "ductile.plugins"),
     'manifest_spec must be "ductile.plugin" (got "ductile.plugins")'),
    ("manifest_version 2",
     lambda m: m.replace("manifest_version: 1", "manifest_version: 2"),
     "manifest_version must be the integer 1 (got 2)"),
    ("manifest_version as text",
     lambda m: m.replace("manifest_version: 1", 'manifest_version: "1"'),
     'manifest_version must be the integer 1 (got "1")'),
    ("protocol 1",
     lambda m: m.replace("protocol: 2", "protocol: 1"),
     "protocol must be 2 (got 1)"),
    ("protocol missing",
     lambda m: m.replace("protocol: 2\n", ""),
     "protocol must be 2 (missing)"),
    ("name as a list",
     lambda m: m.replace("name: demo", "name: [demo]"),
     "name must be a non-empty string (got a list)"),
    ("concurrency_safe maybe",
     lambda m: m + 'concurrency_safe: "maybe"\n',
     'concurrency_safe must be true or false (got "maybe")'),
    ("entrypoint with ..",
     lambda m: m.replace("entrypoint: run.sh", "entrypoint: bin/../run.sh"),
     'entrypoint must not contain ".." (got "bin/../run.sh")'),
    ("entrypoint missing",
     lambda m: m.replace("entrypoint: run.sh\n", ""),
     "entrypoint must be a non-empty string (missing)"),
    ("commands as name-keyed map",
     lambda m: m.split("commands:")[0] + "commands:\n  poll: {type: write}\n",
     "commands must be a non-empty list of mappings (got a mapping keyed by command name"),
    ("commands as bare names",
     lambda m: m.split("commands:")[0] + "commands: [poll, health]\n",
     'commands must be a non-empty list of mappings (commands[0] is "poll"'),
    ("empty commands",
     lambda m: m.split("commands:")[0] + "commands: []\n",
     "commands must be a non-empty list of mappings (got an empty list)"),
    ("no commands",
     lambda m: m.split("commands:")[0],
     "commands must be a non-empty list of mappings (missing)"),
    ("bad command name",
     lambda m: m.replace("name: poll", "name: 9lives"),
     'command "9lives": name must start with a letter'),
    ("command name with a dot",
     lambda m: m.replace("name: poll", "name: po.ll"),
     'command "po.ll": name must start with a letter'),
    ("bad command type",
     lambda m: m.replace("type: write", "type: exec"),
     'command "poll": type must be read or write (got "exec")'),
    ("command type in capitals",
     lambda m: m.replace("type: read", "type: READ"),
     'command "health": type must be read or write (got "READ")'),
    ("idempotent as text",
     lambda m: m.replace("    type: write\n", "    type: write\n    idempotent: yes\n"),
     'command "poll": idempotent must be true or false (got "yes")'),
    ("consume not a payload path",
     lambda m: m.replace("    type: write\n",
                         "    type: write\n    values:\n      consume: [url]\n"),
     'command "poll": values.consume[0]: invalid payload path "url"'),
    ("emit value with a space",
     lambda m: m.replace("    type: write\n",
                         "    type: write\n    values:\n      emit:\n"
                         "        - event: x.done\n          values: [payload.ok, \"payload.a b\"]\n"),
     'command "poll": values.emit[0].values[1]: invalid payload path "payload.a b"'),
    ("emit without event",
     lambda m: m.replace("    type: write\n",
                         "    type: write\n    values:\n      emit:\n"
                         "        - values: [payload.y]\n"),
     'command "poll": values.emit[0].event must be a non-empty string (missing)'),
    ("fact rule for undeclared command",
     lambda m: m + "fact_outputs:\n  - when: {command: sync}\n    from: state_updates\n"
                   "    fact_type: x\n",
     'fact_outputs[0].when.command "sync" is not declared in commands'),
    ("fact rule from result",
     lambda m: m + "fact_outputs:\n  - when: {command: poll}\n    from: result\n"
                   "    fact_type: x\n",
     'fact_outputs[0].from must be "state_updates" (got "result")'),
    ("fact rule with unknown view",
     lambda m: m + "fact_outputs:\n  - when: {command: poll}\n    from: state_updates\n"
                   "    fact_type: x\n    compatibility_view: merge\n",
     'fact_outputs[0].compatibility_view must be "mirror_object" (got "merge")'),
    ("config_keys required not a list",
     lambda m: m + "config_keys:\n  required: token\n",
     'config_keys.required must be a list (got "token")'),
    ("manifest is a list",
     lambda m: "- name: demo\n",
     "manifest must be a mapping of fields (got a list)"),
    ("empty manifest",
     lambda m: "# nothing here\n",
     "invalid manifest: manifest is empty"),
    ("invalid YAML",
     lambda m: m.replace("version: 0.1.0", 'version: "0.1.0'),
     "failed to parse manifest YAML: line 4, column "),
]


@pytest.mark.parametrize("mutate, reason", [case[1:] for case in BAD_MANIFESTS],
                         ids=[case[0] for case in BAD_MANIFESTS])
def test_bad_manifest_is_rejected_with_its_reason(tmp_path, mutate, reason):
    root = tmp_path / "plugins"
    directory = write_plugin(root, "demo", mutate(minimal_manifest()))
    discovery = discover([str(root)])
    rejection = only_rejection(discovery)
    assert rejection.kind == "invalid_manifest"
    assert rejection.path == directory
    assert reason in rejection.reason
    assert ("WARN", "failed to load plugin",
            {"root": str(root), "path": directory, "error": rejection.reason}) \
        in discovery.log_records


def test_the_minimal_manifest_itself_loads(tmp_path):
    """Guards the table above: each case fails only because of its mutation."""
    root = tmp_path / "plugins"
    write_plugin(root, "demo", minimal_manifest())
    assert list(discover([str(root)]).plugins) == ["demo"]


def test_manifest_that_is_not_utf8_is_rejected(tmp_path):
    root = tmp_path / "plugins"
    directory = write_plugin(root, "demo", minimal_manifest())
    with open(os.path.join(directory, "manifest.yaml"), "ab") as handle:
        handle.write(b"description: \xff\n")
    rejection = only_rejection(discover([str(root)]))
    assert "failed to read manifest: not valid UTF-8" in rejection.reason


def test_payload_path_forms():
    valid = ["payload.*", "payload.url", "payload.a.b-c.d_e", " payload.x ", "payload.ünï"]
    invalid = ["payload.", "payload", "url", "payload..x", "payload.a b", "payload.{x}",
               "payload.a.*", "state.x", 3, None]
    assert all(plugins.is_valid_payload_path(p) for p in valid)
    assert not any(plugins.is_valid_payload_path(p) for p in invalid)


def test_command_name_forms():
    assert all(map(plugins.is_valid_command_name, ["poll", "a", "sync-all", "x_1", "échelle"]))
    assert not any(map(plugins.is_valid_command_name, ["", "1x", "_x", "-x", "a.b", "a b"]))


# ---------------------------------------------------------------------------
# Trust checks


def test_non_executable_entrypoint_is_rejected(tmp_path):
    root = tmp_path / "plugins"
    write_plugin(root, "demo", minimal_manifest(), mode=0o644)
    rejection = only_rejection(discover([str(root)]))
    assert rejection.kind == "trust"
    assert rejection.reason.startswith("trust validation failed: entrypoint is not executable: ")


def test_world_writable_plugin_directory_is_rejected(tmp_path):
    root = tmp_path / "plugins"
    directory = write_plugin(root, "demo", minimal_manifest())
    os.chmod(directory, 0o777)
    rejection = only_rejection(discover([str(root)]))
    assert rejection.reason == (
        "trust validation failed: plugin directory is world-writable: %s" % directory)


def test_missing_entrypoint_is_rejected(tmp_path):
    root = tmp_path / "plugins"
    write_plugin(root, "demo", minimal_manifest(entrypoint="nope.sh"))
    assert "trust validation failed: entrypoint not found" in only_rejection(
        discover([str(root)])).reason


def test_directory_as_entrypoint_is_rejected(tmp_path):
    root = tmp_path / "plugins"
    directory = write_plugin(root, "demo", minimal_manifest(entrypoint="bin"))
    os.mkdir(os.path.join(directory, "bin"))
    assert "entrypoint is not a regular file" in only_rejection(discover([str(root)])).reason


def symlinked_entrypoint_plugin(tmp_path):
    root = tmp_path / "plugins"
    directory = write_plugin(root, "demo", minimal_manifest(entrypoint="run"), entrypoint="real.sh")
    os.symlink("real.sh", os.path.join(directory, "run"))
    return root, directory


def test_symlinked_entrypoint_is_rejected_without_allow_symlinks(tmp_path):
    root, directory = symlinked_entrypoint_plugin(tmp_path)
    rejection = only_rejection(discover([str(root)]))
    assert rejection.kind == "trust"
    assert rejection.reason.startswith(
        "trust validation failed: symlink detected for plugin_entrypoint (%s -> %s)"
        % (os.path.join(directory, "run"), os.path.join(directory, "real.sh")))


def test_symlinked_entrypoint_loads_with_a_warning_when_allowed(tmp_path):
    root, directory = symlinked_entrypoint_plugin(tmp_path)
    discovery = discover([str(root)], allow_symlinks=True)
    assert list(discovery.plugins) == ["demo"] and discovery.rejected == []
    assert ("WARN", "symlink detected", {
        "kind": "plugin_entrypoint", "path": os.path.join(directory, "run"),
        "resolved": os.path.join(directory, "real.sh")}) in discovery.log_records


def test_entrypoint_escaping_the_root_through_a_symlink_is_rejected(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "evil.sh").write_text(SCRIPT)
    os.chmod(str(outside / "evil.sh"), 0o755)
    root = tmp_path / "plugins"
    directory = write_plugin(root, "demo", minimal_manifest(entrypoint="run"), entrypoint=None)
    os.symlink(str(outside / "evil.sh"), os.path.join(directory, "run"))
    without = only_rejection(discover([str(root)]))
    assert "symlink detected for plugin_entrypoint" in without.reason
    allowed = only_rejection(discover([str(root)], allow_symlinks=True))
    assert allowed.reason == ("trust validation failed: entrypoint %s is not under plugin root %s"
                              % (outside / "evil.sh", root))


def test_entrypoint_reaching_into_another_plugin_directory_is_rejected(tmp_path):
    root = tmp_path / "plugins"
    other = write_plugin(root, "a_other", minimal_manifest(name="other"))
    directory = write_plugin(root, "demo", minimal_manifest(entrypoint="run"), entrypoint=None)
    os.symlink(os.path.join(other, "run.sh"), os.path.join(directory, "run"))
    discovery = discover([str(root)], allow_symlinks=True)
    assert list(discovery.plugins) == ["other"]
    assert "is not under plugin directory %s" % directory in discovery.rejected[0].reason


def test_symlinked_plugin_directory_is_not_followed_but_reported(tmp_path):
    real = tmp_path / "elsewhere"
    write_plugin(real, "demo", minimal_manifest())
    root = tmp_path / "plugins"
    root.mkdir()
    os.symlink(str(real / "demo"), str(root / "demo"))
    for allow in (False, True):
        rejection = only_rejection(discover([str(root)], allow_symlinks=allow))
        assert rejection.kind == "trust"
        assert rejection.path == str(root / "demo")
        assert "symlinked directories inside a plugin root are not followed" in rejection.reason


def test_check_trust_on_a_symlinked_plugin_directory(tmp_path):
    real = tmp_path / "real"
    write_plugin(tmp_path, "real", minimal_manifest())
    link = tmp_path / "link"
    os.symlink(str(real), str(link))
    entrypoint = str(link / "run.sh")
    with pytest.raises(TrustError, match=r"symlink detected for plugin_dir \(%s -> %s\)"
                       % (link, real)):
        check_trust(str(tmp_path), str(link), entrypoint)
    records = check_trust(str(tmp_path), str(link), entrypoint, allow_symlinks=True)
    assert [fields["kind"] for _, _, fields in records] == ["plugin_dir", "plugin_entrypoint"]


def test_symlinked_root_is_fatal_unless_allowed(tmp_path):
    real = tmp_path / "real_plugins"
    write_plugin(real, "demo", minimal_manifest())
    link = tmp_path / "plugins"
    os.symlink(str(real), str(link))
    with pytest.raises(DiscoveryError, match="symlink detected for plugin_root .*%s" % link):
        discover([str(link)])
    discovery = discover([str(link)], allow_symlinks=True)
    assert discovery.plugins["demo"].directory == str(link / "demo")
    kinds = [f["kind"] for _, msg, f in discovery.log_records if msg == "symlink detected"]
    assert kinds == ["plugin_root", "plugin_dir", "plugin_entrypoint"]


# ---------------------------------------------------------------------------
# Roots: fatal problems, order, duplicates, orphans


def test_missing_root_is_fatal_and_named(tmp_path):
    missing = str(tmp_path / "nope")
    with pytest.raises(DiscoveryError, match="plugin root does not exist: %s" % missing):
        discover([missing])


def test_root_that_is_a_file_is_fatal(tmp_path):
    path = tmp_path / "plugins"
    path.write_text("")
    with pytest.raises(DiscoveryError, match="plugin root is not a directory: %s" % path):
        discover([str(path)])


def test_walk_io_error_is_fatal(tmp_path, monkeypatch):
    root = tmp_path / "plugins"
    write_plugin(root, "demo", minimal_manifest())
    locked = root / "locked"
    locked.mkdir()
    real_scandir = os.scandir

    def scandir(path="."):
        if os.fspath(path) == str(locked):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(plugins.os, "scandir", scandir)
    with pytest.raises(DiscoveryError) as caught:
        discover([str(root)])
    assert str(caught.value) == "failed to scan plugin root %s: %s: Permission denied" % (
        root, locked)


def test_blank_and_repeated_roots_are_dropped(tmp_path):
    root = tmp_path / "plugins"
    write_plugin(root, "demo", minimal_manifest())
    discovery = discover(["", str(root), "  ", str(root) + "/"])
    assert list(discovery.plugins) == ["demo"] and discovery.rejected == []


def test_duplicate_names_first_root_wins(tmp_path):
    first = write_plugin(tmp_path / "one", "z_echo", minimal_manifest(name="echo"))
    second = write_plugin(tmp_path / "two", "a_echo", minimal_manifest(name="echo"))
    discovery = discover([str(tmp_path / "one"), str(tmp_path / "two")])
    assert discovery.plugins["echo"].directory == first
    assert discovery.rejected == [plugins.Rejection(
        path=second, kind="duplicate",
        reason='duplicate plugin name "echo" (keeping first discovered at %s)' % first)]
    assert ("WARN", "duplicate plugin ignored (keeping first discovered)",
            {"plugin": "echo", "ignored_path": second, "kept_path": first}) \
        in discovery.log_records


def test_walk_order_is_lexical_with_files_and_directories_interleaved(tmp_path):
    """Go's WalkDir order: in ``p/``, ``aaa/`` sorts before ``manifest.yaml``."""
    root = tmp_path / "plugins"
    outer = write_plugin(root, "p", minimal_manifest(name="same"))
    inner = write_plugin(root, "p/aaa", minimal_manifest(name="same"))
    later = write_plugin(root, "p/zzz", minimal_manifest(name="same"))
    discovery = discover([str(root)])
    assert discovery.plugins["same"].directory == inner
    assert [r.path for r in discovery.rejected] == [outer, later]


def test_directory_with_entrypoint_but_no_manifest_is_warned_about(tmp_path):
    root = tmp_path / "plugins"
    write_plugin(root, "demo", minimal_manifest())
    orphan = root / "forgotten"
    orphan.mkdir()
    (orphan / "main.py").write_text("print()\n")
    (root / "docs").mkdir()
    (root / "docs" / "README.md").write_text("notes\n")
    (root / "group" / "deep").mkdir(parents=True)
    (root / "group" / "deep" / "run.sh").write_text("")
    discovery = discover([str(root)])
    assert list(discovery.plugins) == ["demo"]
    assert [(r.path, r.kind) for r in discovery.rejected] == [(str(orphan), "missing_manifest")]
    assert "found main.py" in discovery.rejected[0].reason
    assert discovery.log_records[-1] == (
        "WARN", "plugin directory missing manifest.yaml \u2014 directory will be ignored",
        {"path": str(orphan),
         "hint": "add a manifest.yaml or remove the directory from the plugin root"})


# ---------------------------------------------------------------------------
# Aliases


@pytest.fixture
def two_plugins(tmp_path):
    root = tmp_path / "plugins"
    write_plugin(root, "echo", minimal_manifest(name="echo", extra="concurrency_safe: false\n"))
    write_plugin(root, "fetch", minimal_manifest(name="fetch"))
    return discover([str(root)])


def test_alias_copies_the_base_under_its_own_name(two_plugins):
    discovery = register_aliases(two_plugins, {"echo_loud": "echo", "fetch": "", "x": "  "})
    alias, base = discovery.plugins["echo_loud"], discovery.plugins["echo"]
    assert list(discovery.plugins) == ["echo", "fetch", "echo_loud"]
    assert (alias.name, alias.alias_of) == ("echo_loud", "echo")
    assert (alias.directory, alias.entrypoint, alias.commands, alias.concurrency_safe) == \
        (base.directory, base.entrypoint, base.commands, False)
    assert base.alias_of is None
    assert discovery.log_records[-1] == (
        "INFO", "plugin alias registered", {"plugin": "echo_loud", "uses": "echo"})
    assert "echo_loud" not in two_plugins.plugins  # the input is left untouched


@pytest.mark.parametrize("entries, message", [
    ({"loop": "loop"}, 'plugin "loop": uses "loop" names the plugin itself'),
    ({"a": "ghost"}, 'plugin "a": uses "ghost", but no plugin named "ghost" was discovered'),
    ({"a": "echo", "b": "a"},
     'plugin "b": uses "a", which is itself an alias (of "echo")'),
    ({"fetch": "echo"}, 'plugin "fetch": uses "echo": the name "fetch" is already registered'),
])
def test_alias_errors(two_plugins, entries, message):
    with pytest.raises(AliasError) as caught:
        register_aliases(two_plugins, entries)
    assert message in str(caught.value)
    assert len(caught.value.problems) == 1


def test_alias_problems_lists_every_broken_entry(two_plugins):
    problems = plugins.alias_problems(two_plugins, {"a": "a", "ok": "echo", "b": "nope"})
    assert [p.split(":")[0] for p in problems] == ['plugin "a"', 'plugin "b"']


# ---------------------------------------------------------------------------
# Derived views


def test_effective_parallelism(two_plugins):
    echo, fetch = two_plugins.plugins["echo"], two_plugins.plugins["fetch"]
    assert effective_parallelism(3, echo, 8) == 3       # explicit wins over the manifest
    assert effective_parallelism(None, echo, 8) == 1    # concurrency_safe: false
    assert effective_parallelism(None, fetch, 8) == 8   # default: max_workers
    assert effective_parallelism(None, None, 4) == 4    # core.* pseudo-plugins
    assert effective_parallelism(0, fetch, 5) == 5      # 0 means unset here


def test_describe_lists_plugins_and_rejections(tmp_path):
    root = tmp_path / "plugins"
    write_plugin(root, "zeta", minimal_manifest(name="zeta"))
    write_plugin(root, "alpha", minimal_manifest(name="alpha", extra="description: first\n"))
    bad = write_plugin(root, "broken", minimal_manifest().replace("protocol: 2", "protocol: 1"))
    discovery = register_aliases(discover([str(root)]), {"alpha2": "alpha"})
    view = describe(discovery, {"alpha": {"enabled": True}, "alpha2": {"enabled": False}})
    assert [p["name"] for p in view["plugins"]] == ["alpha", "alpha2", "zeta"]
    assert view["plugins"][0] == {
        "name": "alpha", "version": "0.1.0", "description": "first",
        "directory": str(root / "alpha"),
        "commands": [{"name": "poll", "type": "write"}, {"name": "health", "type": "read"}],
        "configured": True, "enabled": True, "alias_of": None}
    assert (view["plugins"][1]["configured"], view["plugins"][1]["enabled"],
            view["plugins"][1]["alias_of"]) == (True, False, "alpha")
    assert (view["plugins"][2]["configured"], view["plugins"][2]["enabled"]) == (False, False)
    assert view["rejected"] == [{"path": bad, "kind": "invalid_manifest",
                                 "reason": "invalid manifest: protocol must be 2 (got 1)"}]
    json.dumps(view)


def test_expand_schema():
    assert expand_schema({"url": "string", "n": {"type": "integer"}}) == {
        "type": "object",
        "properties": {"url": {"type": "string"}, "n": {"type": "integer"}}}
    full = {"type": "object", "properties": {}}
    assert expand_schema(full) is full
    assert expand_schema(None) is None


# ---------------------------------------------------------------------------
# The bundled echo plugin, run for real


@pytest.fixture(scope="module")
def echo():
    discovery = discover([EXAMPLE_PLUGINS])
    assert discovery.rejected == []
    return discovery.plugins["echo"]


def run_plugin(plugin, request_bytes):
    completed = subprocess.run([plugin.entrypoint], input=request_bytes, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, timeout=10)
    assert completed.returncode == 0, completed.stderr
    return json.loads(completed.stdout)


def request(command, **extra):
    body = {"protocol": 2, "job_id": "job-1", "command": command, "config": {},
            "state": {}, "context": {"ductile_plugin": "echo"}}
    body.update(extra)
    return (json.dumps(body) + "\n").encode()


def assert_valid_response(response):
    """The §2.5 shape rules the runner enforces."""
    assert response["status"] in ("ok", "error")
    if response["status"] == "ok":
        assert isinstance(response["result"], str) and response["result"].strip()
    else:
        assert isinstance(response["error"], str) and response["error"].strip()
    for event in response.get("events", []):
        assert isinstance(event["type"], str) and isinstance(event["payload"], dict)
    assert isinstance(response.get("state_updates", {}), dict)
    for log in response.get("logs", []):
        assert set(log) == {"level", "message"}


def test_echo_manifest(echo):
    assert echo.version == "0.1.0" and echo.protocol == 2
    assert [(c.name, c.type) for c in echo.commands] == [
        ("poll", "write"), ("handle", "write"), ("health", "read")]
    assert echo.config_keys == {"required": [], "optional": ["message"]}
    assert echo.command("poll").values["emit"][0]["event"] == "echo.polled"


def test_echo_poll_counts_and_stores_state(echo):
    response = run_plugin(echo, request("poll", config={"message": "hi"},
                                        state={"poll_count": 4}))
    assert_valid_response(response)
    assert response["status"] == "ok"
    assert response["result"].startswith("echo poll at ")
    assert response["events"] == [{"type": "echo.polled",
                                   "payload": {"message": "hi", "count": 5}}]
    assert response["state_updates"]["poll_count"] == 5
    assert response["state_updates"]["last_poll_at"].endswith("Z")
    first = run_plugin(echo, request("poll"))
    assert first["state_updates"]["poll_count"] == 1
    assert first["events"][0]["payload"]["message"] == "hello from echo"


def test_echo_handle_echoes_the_event_payload(echo):
    event = {"type": "api.trigger", "payload": {"text": "hé", "n": 2},
             "timestamp": "2026-01-01T00:00:00Z"}
    response = run_plugin(echo, request("handle", payload=event, event=event))
    assert_valid_response(response)
    assert response["events"] == [{"type": "echo.handled", "payload": {"text": "hé", "n": 2}}]
    assert "api.trigger" in response["result"]


def test_echo_health(echo):
    response = run_plugin(echo, request("health"))
    assert_valid_response(response)
    assert response["status"] == "ok" and "events" not in response


@pytest.mark.parametrize("stdin, message", [
    (b"not json", "stdin is not valid JSON"),
    (b"", "empty request"),
    (b"[1, 2]", "expected a JSON object"),
    (b"\xff\xfe", "not valid UTF-8"),
    (request("dance"), 'unknown command "dance"'),
])
def test_echo_answers_bad_input_with_an_error_response(echo, stdin, message):
    response = run_plugin(echo, stdin)
    assert_valid_response(response)
    assert response["status"] == "error" and response["retry"] is False
    assert message in response["error"]
