"""Plugin discovery: find manifests under ``plugin_roots``, validate, trust-check.

A plugin is any directory holding a ``manifest.yaml``; the manifest names an
executable entrypoint that speaks protocol v2 (one JSON request on stdin, one
JSON response on stdout).  Plugins are third-party code that Ductile runs
with the operator's privileges, so discovery is strict in two ways:

* the manifest must be well formed (engine spec §1.2): a plugin whose
  manifest we half-understand is skipped with a reason, never guessed at;
* the entrypoint must pass the trust checks (§1.3): no unexpected symlinks,
  strictly inside its root and its own directory, executable, in a
  directory that other users cannot write to.

A bad plugin never stops the gateway: it is recorded as a :class:`Rejection`
and the rest load.  Only a broken *root* (missing, not a directory, a
symlink without ``allow_symlinks``, unreadable) is fatal, because then the
operator's whole plugin set is in doubt.

Discovery does not log.  It returns its log records so the caller decides
where they go (the gateway logs them; ``plugin list`` shows rejections).
"""
from __future__ import annotations

import dataclasses
import os
import stat
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Tuple

from ductile_lib import miniyaml

MANIFEST_FILENAME = "manifest.yaml"
SUPPORTED_MANIFEST_SPEC = "ductile.plugin"
SUPPORTED_MANIFEST_VERSION = 1
SUPPORTED_PROTOCOL = 2
COMMAND_TYPES = ("read", "write")
DEFAULT_COMMAND_TYPE = "write"
FACT_SOURCE = "state_updates"
DEFAULT_COMPATIBILITY_VIEW = "mirror_object"

# Files that make a directory look like a plugin; if one sits in an immediate
# subdirectory of a root without a manifest, the operator probably forgot it.
ORPHAN_ENTRYPOINT_NAMES = (
    "run.py", "run.sh", "main.go", "main.py", "index.js", "index.ts", "run.js", "run.ts",
)
ORPHAN_HINT = "add a manifest.yaml or remove the directory from the plugin root"

REJECTION_KINDS = ("invalid_manifest", "trust", "duplicate", "missing_manifest")

LogRecord = Tuple[str, str, Dict[str, object]]


class DiscoveryError(Exception):
    """A plugin root is unusable; the gateway must refuse to start (exit 78)."""


class AliasError(Exception):
    """A ``plugins.<alias>.uses`` entry cannot be registered (exit 78).

    ``problems`` lists every broken entry so ``config check`` can report them
    all; ``str()`` joins them.
    """

    def __init__(self, problems: List[str]):
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


class PluginRejected(Exception):
    """One plugin directory cannot load; ``reason`` and ``kind`` become a Rejection."""

    def __init__(self, reason: str, kind: str):
        super().__init__(reason)
        self.reason = reason
        self.kind = kind


class ManifestError(ValueError):
    """The manifest breaks a §1.2 rule; the message names the field."""


class TrustError(ValueError):
    """The plugin fails a §1.3 trust check; the message says which."""


# ---------------------------------------------------------------------------
# Data model


@dataclass(frozen=True)
class Command:
    """One command a plugin declares.

    ``values`` is ``None`` when the manifest declares none, else
    ``{"consume": [...], "emit": [{"event": ..., "values": [...]}]}``.
    Schemas are kept exactly as written (any YAML); API discovery serves them.
    """

    name: str
    type: str = DEFAULT_COMMAND_TYPE
    description: str = ""
    input_schema: object = None
    output_schema: object = None
    values: Optional[dict] = None
    idempotent: Optional[bool] = None
    retry_safe: Optional[bool] = None


@dataclass(frozen=True)
class Plugin:
    """A discovered plugin (or a ``uses:`` alias of one).

    ``directory`` and ``entrypoint`` are absolute paths as found by the walk
    (not symlink-resolved), like the original.  ``fact_outputs`` holds the
    manifest's rules normalised to
    ``{"when": {"command": c}, "from": "state_updates", "fact_type": t,
    "compatibility_view": "mirror_object"}``.  ``config_keys`` is always
    ``{"required": [...], "optional": [...]}``.
    """

    name: str
    version: str
    description: str
    protocol: int
    directory: str
    entrypoint: str
    manifest_path: str
    commands: Tuple[Command, ...]
    concurrency_safe: bool = True
    fact_outputs: Tuple[dict, ...] = ()
    config_keys: dict = field(default_factory=lambda: {"required": [], "optional": []})
    alias_of: Optional[str] = None

    def command(self, name: str) -> Optional[Command]:
        """The declared command called ``name``, or ``None``."""
        for command in self.commands:
            if command.name == name:
                return command
        return None

    def has_command(self, name: str) -> bool:
        """Whether the manifest declares ``name`` (scheduling and API checks)."""
        return self.command(name) is not None

    def command_names(self) -> List[str]:
        """Declared command names in manifest order."""
        return [command.name for command in self.commands]

    def fact_rules_for(self, command: str) -> List[dict]:
        """The ``fact_outputs`` rules that apply to a job of ``command`` (§7)."""
        return [rule for rule in self.fact_outputs if rule["when"]["command"] == command]


@dataclass(frozen=True)
class Rejection:
    """A directory that did not become a plugin, and why.

    ``kind`` is one of ``invalid_manifest``, ``trust``, ``duplicate`` or
    ``missing_manifest`` so ``plugin list`` can group them.
    """

    path: str
    reason: str
    kind: str


@dataclass(frozen=True)
class Discovery:
    """The outcome of one discovery pass.

    ``plugins`` maps name → :class:`Plugin` in discovery order (aliases after
    the discovered plugins).  ``log_records`` are ``(level, msg, fields)``
    tuples with levels ``INFO``/``WARN`` for the caller to log.
    """

    plugins: Dict[str, Plugin]
    rejected: List[Rejection]
    log_records: List[LogRecord]


# ---------------------------------------------------------------------------
# Discovery


def discover(plugin_roots: List[str], allow_symlinks: bool = False) -> Discovery:
    """Walk every root and return the plugins that load, plus what was rejected.

    Roots are processed in the given order (blanks and repeats dropped), each
    walked recursively in lexical order; the first plugin found with a name
    wins.  Raises :class:`DiscoveryError` for an unusable root.
    """
    plugins: Dict[str, Plugin] = {}
    rejected: List[Rejection] = []
    records: List[LogRecord] = []
    for root in _distinct_roots(plugin_roots):
        records.extend(_check_root(root, allow_symlinks))
        for kind, path in _walk_root(root):
            if kind == "symlinked_dir":
                _reject(rejected, records, root, path, _symlinked_dir_reason(path), "trust")
                continue
            _load_into(plugins, rejected, records, root, path, allow_symlinks)
        _warn_orphan_dirs(root, rejected, records)
    return Discovery(plugins=plugins, rejected=rejected, log_records=records)


def _distinct_roots(plugin_roots: List[str]) -> List[str]:
    """Absolute roots with blanks and repeats removed, order kept (§1.1)."""
    seen = set()
    roots = []
    for root in plugin_roots:
        if not isinstance(root, str) or not root.strip():
            continue
        absolute = os.path.abspath(root)
        if absolute not in seen:
            seen.add(absolute)
            roots.append(absolute)
    return roots


def _check_root(root: str, allow_symlinks: bool) -> List[LogRecord]:
    """Fail fast on a root that is missing, not a directory, or a forbidden symlink."""
    try:
        info = os.stat(root)
    except FileNotFoundError:
        raise DiscoveryError("plugin root does not exist: %s" % root) from None
    except OSError as err:
        raise DiscoveryError(
            "failed to stat plugin root %s: %s" % (root, _os_detail(err))) from None
    if not stat.S_ISDIR(info.st_mode):
        raise DiscoveryError("plugin root is not a directory: %s" % root)
    try:
        return _symlink_records("plugin_root", root, allow_symlinks)
    except TrustError as err:
        raise DiscoveryError(str(err)) from None


def _walk_root(root: str) -> Iterator[Tuple[str, str]]:
    """Yield ``("manifest", path)`` / ``("symlinked_dir", path)`` in walk order.

    The order is Go's ``filepath.WalkDir`` order (entries of a directory
    sorted by name, files and subdirectories interleaved), because duplicate
    names are settled by it and must match the original.  Symlinked
    directories are never entered; one that holds a manifest is reported so
    the operator is not left wondering why the plugin is missing.
    """
    stack = [iter(_sorted_entries(root, root))]
    while stack:
        entry = next(stack[-1], None)
        if entry is None:
            stack.pop()
            continue
        if entry.is_dir(follow_symlinks=False):
            stack.append(iter(_sorted_entries(entry.path, root)))
        elif entry.name == MANIFEST_FILENAME:
            yield "manifest", entry.path
        elif entry.is_symlink() and os.path.isfile(os.path.join(entry.path, MANIFEST_FILENAME)):
            yield "symlinked_dir", entry.path


def _sorted_entries(directory: str, root: str) -> List[os.DirEntry]:
    """A directory's entries in byte order of their names; I/O errors are fatal."""
    try:
        with os.scandir(directory) as scan:
            entries = list(scan)
    except OSError as err:
        raise DiscoveryError(
            "failed to scan plugin root %s: %s: %s" % (root, directory, _os_detail(err))
        ) from None
    return sorted(entries, key=lambda entry: os.fsencode(entry.name))


def _symlinked_dir_reason(path: str) -> str:
    resolved = os.path.realpath(path)
    return (
        "trust validation failed: plugin directory %s is a symlink (-> %s); "
        "symlinked directories inside a plugin root are not followed" % (path, resolved)
    )


def _load_into(plugins, rejected, records, root, manifest_path, allow_symlinks) -> None:
    """Load one manifest and file the outcome: registered, duplicate or rejected."""
    plugin_dir = os.path.dirname(manifest_path)
    try:
        plugin, trust_records = load_plugin(manifest_path, root, allow_symlinks)
    except PluginRejected as err:
        _reject(rejected, records, root, plugin_dir, err.reason, err.kind)
        return
    records.extend(trust_records)
    kept = plugins.get(plugin.name)
    if kept is not None:
        _record_duplicate(rejected, records, plugin, kept)
        return
    plugins[plugin.name] = plugin
    records.append((
        "INFO", "loaded plugin",
        {"plugin": plugin.name, "path": plugin.directory,
         "version": plugin.version, "protocol": plugin.protocol},
    ))


def _reject(rejected, records, root, path, reason, kind) -> None:
    rejected.append(Rejection(path=path, reason=reason, kind=kind))
    records.append(("WARN", "failed to load plugin", {"root": root, "path": path, "error": reason}))


def _record_duplicate(rejected, records, plugin: Plugin, kept: Plugin) -> None:
    reason = 'duplicate plugin name "%s" (keeping first discovered at %s)' % (
        plugin.name, kept.directory)
    rejected.append(Rejection(path=plugin.directory, reason=reason, kind="duplicate"))
    records.append((
        "WARN", "duplicate plugin ignored (keeping first discovered)",
        {"plugin": plugin.name, "ignored_path": plugin.directory, "kept_path": kept.directory},
    ))


def _warn_orphan_dirs(root: str, rejected, records) -> None:
    """Flag immediate subdirectories that look like plugins but lack a manifest.

    Such a directory is invisible to discovery, so edits to it silently do
    nothing; the original warns about it and so do we.
    """
    try:
        with os.scandir(root) as scan:
            subdirs = sorted(
                (entry.path for entry in scan if entry.is_dir(follow_symlinks=False)),
                key=os.fsencode,
            )
    except OSError:
        return
    for directory in subdirs:
        if os.path.exists(os.path.join(directory, MANIFEST_FILENAME)):
            continue
        found = next((name for name in ORPHAN_ENTRYPOINT_NAMES
                      if os.path.exists(os.path.join(directory, name))), None)
        if found is None:
            continue
        reason = "missing manifest.yaml (found %s); directory will be ignored: %s" % (
            found, ORPHAN_HINT)
        rejected.append(Rejection(path=directory, reason=reason, kind="missing_manifest"))
        records.append((
            "WARN", "plugin directory missing manifest.yaml \u2014 directory will be ignored",
            {"path": directory, "hint": ORPHAN_HINT},
        ))


# ---------------------------------------------------------------------------
# One plugin


def load_plugin(manifest_path: str, root: str,
                allow_symlinks: bool = False) -> Tuple[Plugin, List[LogRecord]]:
    """Read, validate and trust-check the plugin whose manifest is ``manifest_path``.

    Returns the plugin and the ``symlink detected`` records its trust check
    produced.  Raises ``PluginRejected`` (reason + kind) when it must be skipped.
    """
    plugin_dir = os.path.dirname(os.path.abspath(manifest_path))
    data = _read_manifest(manifest_path)
    try:
        fields = validate_manifest(data)
    except ManifestError as err:
        raise PluginRejected("invalid manifest: %s" % err, "invalid_manifest") from None
    entrypoint = entrypoint_path(plugin_dir, fields["entrypoint"])
    try:
        records = check_trust(root, plugin_dir, entrypoint, allow_symlinks)
    except TrustError as err:
        raise PluginRejected("trust validation failed: %s" % err, "trust") from None
    plugin = Plugin(
        name=fields["name"], version=fields["version"], description=fields["description"],
        protocol=fields["protocol"], directory=plugin_dir, entrypoint=entrypoint,
        manifest_path=os.path.join(plugin_dir, MANIFEST_FILENAME),
        commands=fields["commands"], concurrency_safe=fields["concurrency_safe"],
        fact_outputs=fields["fact_outputs"], config_keys=fields["config_keys"],
    )
    return plugin, records


def _read_manifest(manifest_path: str) -> object:
    """The parsed YAML document, or a rejection naming the read or parse error."""
    kind = "invalid_manifest"
    try:
        with open(manifest_path, "rb") as handle:
            text = handle.read().decode("utf-8")
    except OSError as err:
        raise PluginRejected("failed to read manifest: %s" % _os_detail(err), kind) from None
    except UnicodeDecodeError as err:
        raise PluginRejected("failed to read manifest: not valid UTF-8 (%s)" % err.reason,
                             kind) from None
    try:
        return miniyaml.loads(text)
    except miniyaml.YAMLError as err:
        raise PluginRejected("failed to parse manifest YAML: %s" % err, kind) from None


def entrypoint_path(plugin_dir: str, entrypoint: str) -> str:
    """Join the manifest's entrypoint onto the plugin directory.

    A leading ``/`` is still relative to the plugin directory (as in the
    original's ``filepath.Join``), so a manifest can never point at an
    arbitrary absolute path.
    """
    return os.path.normpath(os.path.join(plugin_dir, entrypoint.lstrip("/")))


# ---------------------------------------------------------------------------
# Manifest validation (§1.2)


def validate_manifest(data: object) -> dict:
    """Check a parsed manifest and return its normalised fields.

    Keys: ``name, version, description, protocol, entrypoint,
    concurrency_safe, commands, fact_outputs, config_keys``.  Unknown keys
    are ignored (manifests carry extras such as ``stopwatch``); a known key
    of the wrong type is an error, never coerced into something else.
    """
    if data is None:
        raise ManifestError("manifest is empty")
    if not isinstance(data, dict):
        raise ManifestError("manifest must be a mapping of fields (got %s)" % _describe(data))
    _check_manifest_spec(data.get("manifest_spec"))
    _check_manifest_version(data.get("manifest_version"))
    name = _required_string(data.get("name"), "name")
    protocol = _check_protocol(data.get("protocol"))
    entrypoint = _check_entrypoint(data.get("entrypoint"))
    commands = parse_commands(data.get("commands"))
    return {
        "name": name,
        "version": _free_text(data.get("version"), "version"),
        "description": _free_text(data.get("description"), "description"),
        "protocol": protocol,
        "entrypoint": entrypoint,
        "concurrency_safe": _optional_bool(data.get("concurrency_safe"), "concurrency_safe", True),
        "commands": commands,
        "fact_outputs": parse_fact_outputs(data.get("fact_outputs"), commands),
        "config_keys": parse_config_keys(data.get("config_keys")),
    }


def _check_manifest_spec(value: object) -> None:
    if value != SUPPORTED_MANIFEST_SPEC:
        raise ManifestError('manifest_spec must be "%s" (%s)' % (
            SUPPORTED_MANIFEST_SPEC, _got(value)))


def _check_manifest_version(value: object) -> None:
    if not _is_int(value) or value != SUPPORTED_MANIFEST_VERSION:
        raise ManifestError("manifest_version must be the integer %d (%s)" % (
            SUPPORTED_MANIFEST_VERSION, _got(value)))


def _check_protocol(value: object) -> int:
    if not _is_int(value) or value != SUPPORTED_PROTOCOL:
        raise ManifestError("protocol must be %d (%s)" % (SUPPORTED_PROTOCOL, _got(value)))
    return value


def _check_entrypoint(value: object) -> str:
    entrypoint = _required_string(value, "entrypoint")
    if ".." in entrypoint:
        raise ManifestError('entrypoint must not contain ".." (got %s)' % _describe(entrypoint))
    if "\x00" in entrypoint:
        raise ManifestError("entrypoint must not contain a NUL character")
    return entrypoint


def parse_commands(value: object) -> Tuple[Command, ...]:
    """The ``commands`` list as :class:`Command` objects; later duplicates dropped.

    Only a sequence of mappings is accepted: the old name-keyed map and the
    list of bare names are refused by the original too, and accepting them
    here would let a manifest work on one implementation but not the other.
    """
    _check_command_list_shape(value)
    commands: List[Command] = []
    seen = set()
    for index, item in enumerate(value):
        command = _parse_command(index, item)
        if command.name not in seen:
            seen.add(command.name)
            commands.append(command)
    return tuple(commands)


def _check_command_list_shape(value: object) -> None:
    base = "commands must be a non-empty list of mappings"
    if value is None:
        raise ManifestError(base + " (missing)")
    if isinstance(value, dict):
        raise ManifestError(base + " (got a mapping keyed by command name; "
                            "write each command as '- name: <name>' with a type)")
    if not isinstance(value, list):
        raise ManifestError(base + " (%s)" % _got(value))
    if not value:
        raise ManifestError(base + " (got an empty list)")
    for index, item in enumerate(value):
        if not isinstance(item, dict):
            raise ManifestError(base + " (commands[%d] is %s; write '- name: <name>' with a type)"
                                % (index, _describe(item)))


def _parse_command(index: int, item: dict) -> Command:
    raw_name = item.get("name")
    if not isinstance(raw_name, str) or not raw_name.strip():
        raise ManifestError("commands[%d].name must be a non-empty string (%s)" % (
            index, _got(raw_name)))
    name = raw_name.strip()
    where = 'command "%s"' % name
    if not is_valid_command_name(name):
        raise ManifestError("%s: name must start with a letter and contain only letters, "
                            "digits, '_' or '-'" % where)
    return Command(
        name=name,
        type=_command_type(item.get("type"), where),
        description=_free_text(item.get("description"), where + ": description"),
        input_schema=item.get("input_schema"),
        output_schema=item.get("output_schema"),
        values=parse_values(item.get("values"), where),
        idempotent=_optional_bool(item.get("idempotent"), where + ": idempotent", None),
        retry_safe=_optional_bool(item.get("retry_safe"), where + ": retry_safe", None),
    )


def is_valid_command_name(name: str) -> bool:
    """A letter, then letters, digits, ``_`` or ``-`` (Unicode letters and digits count)."""
    if not name or not name[0].isalpha():
        return False
    return all(char.isalpha() or char.isdecimal() or char in "_-" for char in name[1:])


def _command_type(value: object, where: str) -> str:
    if value is None:
        return DEFAULT_COMMAND_TYPE
    if not isinstance(value, str) or value not in COMMAND_TYPES:
        raise ManifestError("%s: type must be read or write (%s)" % (where, _got(value)))
    return value


def parse_values(value: object, where: str) -> Optional[dict]:
    """A command's ``values`` block normalised to ``{consume, emit}``, or ``None``."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ManifestError("%s: values must be a mapping with consume and emit (%s)" % (
            where, _got(value)))
    consume = _payload_paths(value.get("consume"), "%s: values.consume" % where)
    emit_list = _optional_list(value.get("emit"), "%s: values.emit" % where)
    emit = [_parse_emit(index, item, where) for index, item in enumerate(emit_list)]
    return {"consume": consume, "emit": emit}


def _parse_emit(index: int, item: object, where: str) -> dict:
    label = "%s: values.emit[%d]" % (where, index)
    if not isinstance(item, dict):
        raise ManifestError("%s must be a mapping with event and values (%s)" % (label, _got(item)))
    event = item.get("event")
    if not isinstance(event, str) or not event.strip():
        raise ManifestError("%s.event must be a non-empty string (%s)" % (label, _got(event)))
    return {"event": event, "values": _payload_paths(item.get("values"), label + ".values")}


def _payload_paths(value: object, label: str) -> List[str]:
    paths = _optional_list(value, label)
    for index, path in enumerate(paths):
        if not is_valid_payload_path(path):
            raise ManifestError("%s[%d]: invalid payload path %s (expected payload.<name> "
                                "or payload.*)" % (label, index, _describe(path)))
    return [path.strip() for path in paths]


def is_valid_payload_path(path: object) -> bool:
    """``payload.*`` or ``payload.<seg>(.<seg>)*``; segments of letters, digits, ``_``, ``-``.

    Surrounding whitespace is tolerated, as in the original.
    """
    if not isinstance(path, str):
        return False
    path = path.strip()
    if path == "payload.*":
        return True
    if not path.startswith("payload.") or path == "payload.":
        return False
    segments = path[len("payload."):].split(".")
    return all(segment and all(char.isalpha() or char.isdecimal() or char in "_-"
                               for char in segment)
               for segment in segments)


def parse_fact_outputs(value: object, commands: Tuple[Command, ...]) -> Tuple[dict, ...]:
    """Validate ``fact_outputs`` rules (§7.1) and fill in the default view (E9)."""
    rules = _optional_list(value, "fact_outputs")
    declared = {command.name for command in commands}
    return tuple(_parse_fact_rule(index, rule, declared) for index, rule in enumerate(rules))


def _parse_fact_rule(index: int, rule: object, declared: set) -> dict:
    label = "fact_outputs[%d]" % index
    if not isinstance(rule, dict):
        raise ManifestError("%s must be a mapping with when, from and fact_type (%s)" % (
            label, _got(rule)))
    when = rule.get("when")
    if not isinstance(when, dict):
        raise ManifestError("%s.when must be a mapping with command (%s)" % (label, _got(when)))
    command = _required_string(when.get("command"), label + ".when.command").strip()
    if command not in declared:
        raise ManifestError('%s.when.command "%s" is not declared in commands' % (label, command))
    source = rule.get("from")
    if not isinstance(source, str) or source.strip() != FACT_SOURCE:
        raise ManifestError('%s.from must be "%s" (%s)' % (label, FACT_SOURCE, _got(source)))
    fact_type = _required_string(rule.get("fact_type"), label + ".fact_type").strip()
    view = rule.get("compatibility_view")
    if view is None or (isinstance(view, str) and not view.strip()):
        view = DEFAULT_COMPATIBILITY_VIEW
    if not isinstance(view, str) or view.strip() != DEFAULT_COMPATIBILITY_VIEW:
        raise ManifestError('%s.compatibility_view must be "%s" (%s)' % (
            label, DEFAULT_COMPATIBILITY_VIEW, _got(view)))
    return {"when": {"command": command}, "from": FACT_SOURCE, "fact_type": fact_type,
            "compatibility_view": DEFAULT_COMPATIBILITY_VIEW}


def parse_config_keys(value: object) -> dict:
    """``config_keys`` as ``{"required": [...], "optional": [...]}`` (both always present)."""
    if value is None:
        return {"required": [], "optional": []}
    if not isinstance(value, dict):
        raise ManifestError("config_keys must be a mapping with required and optional lists (%s)"
                            % _got(value))
    return {group: _string_list(value.get(group), "config_keys." + group)
            for group in ("required", "optional")}


def _string_list(value: object, label: str) -> List[str]:
    items = _optional_list(value, label)
    for index, item in enumerate(items):
        if not isinstance(item, str) or not item.strip():
            raise ManifestError("%s[%d] must be a non-empty string (%s)" % (
                label, index, _got(item)))
    return list(items)


# -- small typed readers ----------------------------------------------------


def _required_string(value: object, label: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ManifestError("%s must be a non-empty string (%s)" % (label, _got(value)))
    return value


def _free_text(value: object, label: str) -> str:
    """An optional free-text field; numbers are kept as text (``version: 1.0``)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if _is_int(value) or isinstance(value, float):
        return str(value)
    raise ManifestError("%s must be a string (%s)" % (label, _got(value)))


def _optional_bool(value: object, label: str, default):
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ManifestError("%s must be true or false (%s)" % (label, _got(value)))
    return value


def _optional_list(value: object, label: str) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ManifestError("%s must be a list (%s)" % (label, _got(value)))
    return value


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _got(value: object) -> str:
    return "missing" if value is None else "got %s" % _describe(value)


def _describe(value: object) -> str:
    """A short, quoted rendering of a YAML value for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"%s"' % (value if len(value) <= 80 else value[:77] + "...")
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


# ---------------------------------------------------------------------------
# Trust checks (§1.3)


def check_trust(root: str, plugin_dir: str, entrypoint: str,
                allow_symlinks: bool = False) -> List[LogRecord]:
    """Apply the §1.3 checks; return ``symlink detected`` records or raise TrustError.

    The plugin runs with the gateway's privileges, so its entrypoint must be
    exactly the file the operator put in the plugin directory: not reached
    through a symlink (unless allowed), not outside the root or the
    directory, executable, and in a directory no other user can rewrite.
    """
    records = _symlink_records("plugin_dir", plugin_dir, allow_symlinks)
    if not os.path.lexists(entrypoint):
        raise TrustError("entrypoint not found: %s" % entrypoint)
    records += _symlink_records("plugin_entrypoint", entrypoint, allow_symlinks)
    resolved_entrypoint = os.path.realpath(entrypoint)
    resolved_root = os.path.realpath(root)
    resolved_dir = os.path.realpath(plugin_dir)
    if not _strictly_inside(resolved_entrypoint, resolved_root):
        raise TrustError("entrypoint %s is not under plugin root %s" % (
            resolved_entrypoint, resolved_root))
    if not _strictly_inside(resolved_entrypoint, resolved_dir):
        raise TrustError("entrypoint %s is not under plugin directory %s" % (
            resolved_entrypoint, resolved_dir))
    _check_executable(resolved_entrypoint)
    _check_not_world_writable(resolved_dir)
    return records


def _symlink_records(kind: str, path: str, allow_symlinks: bool) -> List[LogRecord]:
    """A warning record if ``path`` goes through a symlink and that is allowed; else raise."""
    resolved = os.path.realpath(path)
    if resolved == os.path.normpath(path):
        return []
    if allow_symlinks:
        return [("WARN", "symlink detected", {"kind": kind, "path": path, "resolved": resolved})]
    raise TrustError("symlink detected for %s (%s -> %s); set service.allow_symlinks=true "
                     "to allow" % (kind, path, resolved))


def _strictly_inside(path: str, parent: str) -> bool:
    prefix = parent if parent.endswith(os.sep) else parent + os.sep
    return path != parent and path.startswith(prefix)


def _check_executable(path: str) -> None:
    try:
        info = os.stat(path)
    except OSError as err:
        raise TrustError("entrypoint not found: %s (%s)" % (path, _os_detail(err))) from None
    if not stat.S_ISREG(info.st_mode):
        raise TrustError("entrypoint is not a regular file: %s" % path)
    if not info.st_mode & 0o111:
        raise TrustError("entrypoint is not executable: %s" % path)


def _check_not_world_writable(directory: str) -> None:
    try:
        info = os.stat(directory)
    except OSError as err:
        raise TrustError("plugin directory not found: %s (%s)" % (
            directory, _os_detail(err))) from None
    if info.st_mode & 0o002:
        raise TrustError("plugin directory is world-writable: %s" % directory)


def _os_detail(err: OSError) -> str:
    return err.strerror or str(err)


# ---------------------------------------------------------------------------
# Aliases (§1.4)


def alias_problems(discovery: Discovery, entries: Dict[str, str]) -> List[str]:
    """Every reason the ``uses:`` entries cannot be registered, in entry order.

    ``entries`` maps a config plugin name to its ``uses`` value.  Separate
    from :func:`register_aliases` so ``config check`` can list them all.
    """
    problems = []
    for alias, base in _alias_entries(entries):
        problem = _alias_problem(discovery.plugins, entries, alias, base)
        if problem:
            problems.append(problem)
    return problems


def _alias_entries(entries: Dict[str, str]) -> List[Tuple[str, str]]:
    return [(alias, base.strip()) for alias, base in entries.items()
            if isinstance(base, str) and base.strip()]


def _alias_problem(plugins: Dict[str, Plugin], entries, alias: str, base: str) -> Optional[str]:
    where = 'plugin "%s"' % alias
    if base == alias:
        return '%s: uses "%s" names the plugin itself' % (where, base)
    if alias in plugins:
        return ('%s: uses "%s": the name "%s" is already registered (a discovered plugin '
                'has it); choose another name for the alias' % (where, base, alias))
    base_uses = _uses_of(entries, base) or (plugins[base].alias_of if base in plugins else None)
    if base_uses:
        return ('%s: uses "%s", which is itself an alias (of "%s"); an alias must name a '
                'discovered plugin' % (where, base, base_uses))
    if base not in plugins:
        return '%s: uses "%s", but no plugin named "%s" was discovered' % (where, base, base)
    return None


def _uses_of(entries: Dict[str, str], name: str) -> Optional[str]:
    value = entries.get(name)
    return value.strip() if isinstance(value, str) and value.strip() else None


def register_aliases(discovery: Discovery, entries: Dict[str, str]) -> Discovery:
    """A new Discovery with each ``uses:`` alias registered after the discovered plugins.

    An alias shares the base's code (directory, entrypoint, commands,
    ``fact_outputs``, ``concurrency_safe``) but is a plugin of its own name,
    so it gets its own config, state, facts, schedules and breakers.
    Raises :class:`AliasError` if any entry breaks a §1.4 rule.
    """
    problems = alias_problems(discovery, entries)
    if problems:
        raise AliasError(problems)
    plugins = dict(discovery.plugins)
    records = list(discovery.log_records)
    for alias, base in _alias_entries(entries):
        plugins[alias] = dataclasses.replace(plugins[base], name=alias, alias_of=base)
        records.append(("INFO", "plugin alias registered", {"plugin": alias, "uses": base}))
    return Discovery(plugins=plugins, rejected=list(discovery.rejected), log_records=records)


# ---------------------------------------------------------------------------
# Derived views


def effective_parallelism(explicit: Optional[int], plugin: Optional[Plugin],
                          max_workers: int) -> int:
    """How many jobs of one plugin may run at once (decision C7).

    The configured ``parallelism`` wins; otherwise a manifest that says
    ``concurrency_safe: false`` gets 1; otherwise the global worker cap.
    """
    if explicit is not None and explicit > 0:
        return explicit
    if plugin is not None and not plugin.concurrency_safe:
        return 1
    return max(1, max_workers)


def missing_config_keys(plugin: Plugin, plugin_config: Optional[dict]) -> List[str]:
    """The manifest's ``config_keys.required`` entries absent from the plugin's config."""
    present = plugin_config if isinstance(plugin_config, dict) else {}
    return [key for key in plugin.config_keys.get("required", []) if key not in present]


def expand_schema(schema: object) -> object:
    """A command schema as full JSON Schema, for API discovery.

    Manifests often write the compact form ``{url: string}``; like the
    original, a mapping without ``type`` is read as property → type (a
    non-string value is kept as that property's schema).
    """
    if not isinstance(schema, dict) or "type" in schema:
        return schema
    properties = {key: ({"type": value} if isinstance(value, str) else value)
                  for key, value in schema.items()}
    return {"type": "object", "properties": properties}


def describe(discovery: Discovery, configured: Dict[str, dict]) -> dict:
    """The local ``plugin list`` view: every plugin (by name) and every rejection.

    ``configured`` maps a config plugin name to its entry (``enabled`` read
    from it).  The result is plain JSON-able data for ``--json`` and the
    human table alike.
    """
    plugins = [_describe_plugin(plugin, configured)
               for _, plugin in sorted(discovery.plugins.items())]
    rejected = [{"path": item.path, "kind": item.kind, "reason": item.reason}
                for item in discovery.rejected]
    return {"plugins": plugins, "rejected": rejected}


def _describe_plugin(plugin: Plugin, configured: Dict[str, dict]) -> dict:
    entry = configured.get(plugin.name)
    return {
        "name": plugin.name,
        "version": plugin.version,
        "description": plugin.description,
        "directory": plugin.directory,
        "commands": [{"name": command.name, "type": command.type} for command in plugin.commands],
        "configured": entry is not None,
        "enabled": isinstance(entry, dict) and entry.get("enabled") is True,
        "alias_of": plugin.alias_of,
    }
