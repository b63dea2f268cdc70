"""Find the config, read every file of its tree, and merge them into one map.

This is steps 1–2 of spec 10 §2: locating the root file, then per file
reading bytes, reading ``include`` and ``.env`` lists from the
un-interpolated parse, interpolating ``${VAR}``, parsing again with
positions and merging by the one rule of decision C3.  The result keeps,
for every merged key and list item, the file and line it came from, so
later messages can say where a bad value lives.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from ductile_lib import miniyaml
from ductile_lib.logs import get_logger

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
ROOT_ONLY_KEYS = ("strict_mode", "allow_symlinks")


class ConfigError(Exception):
    """A configuration the gateway cannot use; exit 78 unless ``code`` says 2."""

    def __init__(self, message: str, code: int = 78, hint: str = ""):
        super().__init__(message)
        self.message = message
        self.code = code
        self.hint = hint


@dataclass(frozen=True)
class LoadedFile:
    """One file read while loading: ``path`` as reached, ``data`` its raw bytes."""

    path: str
    kind: str  # "config" or "env"
    data: bytes


@dataclass
class RawConfig:
    """The merged, interpolated map plus where every piece of it came from."""

    root_file: str
    config_dir: str
    source_label: str
    data: dict
    origins: dict  # path tuple -> (file, line)
    files: list
    env: dict  # variables visible to interpolation (process + .env)
    warnings: list = field(default_factory=list)  # (field, message)


def locate(config: str = None, config_dir: str = None, environ=None):
    """Return ``(root_file, source_label)`` per decision C1 / spec 10 §1."""
    environ = os.environ if environ is None else environ
    if config and config_dir:
        raise ConfigError("use only one of --config or --config-dir", code=2)
    if config:
        return _root_from_path(expand_path(config)), "explicit"
    if config_dir:
        return _root_from_dir(expand_path(config_dir)), "explicit"
    candidates = _candidate_dirs(environ)
    for candidate, label in candidates:
        if os.path.isdir(candidate):
            return _root_from_dir(candidate), label
    checked = ", ".join(c for c, _ in candidates)
    raise ConfigError("no config found (checked: %s)" % checked,
                      hint="create one with 'ductile config init' or pass --config-dir")


def _candidate_dirs(environ):
    """The discovery order: $DUCTILE_CONFIG_DIR, XDG config home, /etc."""
    candidates = []
    env_dir = environ.get("DUCTILE_CONFIG_DIR", "")
    if env_dir:
        candidates.append((expand_path(env_dir), "env:DUCTILE_CONFIG_DIR"))
        if not os.path.isdir(expand_path(env_dir)):
            get_logger("main").warn("DUCTILE_CONFIG_DIR does not exist; trying the next location",
                                    path=expand_path(env_dir))
    xdg = environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    candidates.append((os.path.join(expand_path(xdg), "ductile"), "auto-discovered"))
    candidates.append(("/etc/ductile", "auto-discovered"))
    return candidates


def _root_from_dir(directory: str) -> str:
    root = os.path.join(os.path.abspath(directory), "config.yaml")
    if not os.path.isfile(root):
        raise ConfigError("directory provided but config.yaml not found: %s" % os.path.abspath(directory),
                          hint="create it with 'ductile config init --config-dir %s'" % directory)
    return root


def _root_from_path(path: str) -> str:
    if os.path.isdir(path):
        return _root_from_dir(path)
    path = os.path.abspath(path)
    if not os.path.isfile(path):
        raise ConfigError("config file not found: %s" % path,
                          hint="create a config with 'ductile config init'")
    return path


def expand_path(value: str) -> str:
    """Expand a leading ``~`` or ``~user``; nothing else (no ``$VAR``)."""
    value = str(value).strip()
    return os.path.expanduser(value) if value.startswith("~") else value


def load_tree(root_file: str, source_label: str = "explicit", environ=None) -> RawConfig:
    """Read the root file and every include, and merge them (spec 10 §2, §4)."""
    environ = dict(os.environ if environ is None else environ)
    loader = _TreeLoader(environ)
    loader.load_file(os.path.abspath(root_file), chain=(), is_root=True)
    return RawConfig(
        root_file=os.path.abspath(root_file),
        config_dir=os.path.dirname(os.path.abspath(root_file)),
        source_label=source_label,
        data=loader.data,
        origins=loader.origins,
        files=loader.files,
        env=loader.env,
        warnings=loader.warnings,
    )


class _TreeLoader:
    """Walks the include tree depth-first, merging as it goes."""

    def __init__(self, environ: dict):
        self.process_env = environ
        self.env = dict(environ)
        self.data: dict = {}
        self.origins: dict = {}
        self.files: list = []
        self.warnings: list = []
        self.seen: set = set()

    def load_file(self, path: str, chain: tuple, is_root: bool = False) -> None:
        real = os.path.realpath(path)
        if real in chain:
            raise ConfigError("circular dependency detected: %s" % path)
        if real in self.seen:
            return  # reached again by another route: merged once already
        self.seen.add(real)
        text = self._read(path)
        first = _parse(text, path)
        includes = _path_list(first, ("include",), path)
        env_files = _path_list(first, ("environment_vars", "include"), path)
        self._load_env_files(env_files, path)
        value, positions = _parse(_VAR.sub(self._substitute, text), path, with_positions=True)
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise ConfigError("%s: top level must be a mapping" % path)
        value, positions = _normalise_webhooks(value, positions)
        if not is_root:
            self._drop_root_only(value, path, positions)
        if "tokens" in value and os.path.basename(path) != "tokens.yaml":
            del value["tokens"]
            self.warnings.append(("tokens", "tokens is only read from a file named tokens.yaml "
                                  "(ignored in %s)" % path))
        self._merge_file(value, positions, path)
        for index, entry in enumerate(includes):
            self._include(index, entry, path, chain + (real,))

    def _read(self, path: str) -> str:
        try:
            with open(path, "rb") as handle:
                raw = handle.read()
        except OSError as exc:
            raise ConfigError("%s: cannot read: %s" % (path, exc.strerror or exc)) from None
        self.files.append(LoadedFile(path, "config", raw))
        try:
            return raw.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise ConfigError("%s: not valid UTF-8" % path) from None

    def _substitute(self, match) -> str:
        """``${NAME}`` → its value; an unset variable keeps the literal."""
        value = self.env.get(match.group(1))
        return match.group(0) if value is None else value

    def _include(self, index: int, entry: str, declaring: str, chain: tuple) -> None:
        base = os.path.dirname(declaring)
        target = os.path.join(base, expand_path(entry))
        target = os.path.normpath(target)
        if not os.path.exists(target):
            raise ConfigError("include[%d]: file not found: %s\nReferenced from: %s" % (index, target, base))
        try:
            if os.path.isdir(target):
                for name in sorted(os.listdir(target)):
                    child = os.path.join(target, name)
                    if name.endswith((".yaml", ".yml")) and os.path.isfile(child):
                        self.load_file(child, chain)
            else:
                self.load_file(target, chain)
        except ConfigError as exc:
            if exc.message.startswith("circular dependency detected"):
                raise ConfigError("include[%d]: %s" % (index, exc.message)) from None
            raise ConfigError("include[%d] (%s): %s" % (index, entry, exc.message), exc.code, exc.hint) from None

    def _load_env_files(self, entries: list, declaring: str) -> None:
        base = os.path.dirname(declaring)
        for index, entry in enumerate(entries):
            target = os.path.normpath(os.path.join(base, expand_path(entry)))
            if not os.path.isfile(target):
                raise ConfigError("environment_vars.include[%d]: file not found: %s" % (index, target))
            with open(target, "rb") as handle:
                raw = handle.read()
            self.files.append(LoadedFile(target, "env", raw))
            for name, value in parse_env_file(raw.decode("utf-8", "replace"), target).items():
                if name not in self.process_env:  # the process environment always wins
                    self.env[name] = value

    def _drop_root_only(self, value: dict, path: str, positions: dict) -> None:
        service = value.get("service")
        if not isinstance(service, dict):
            return
        for key in ROOT_ONLY_KEYS:
            if key in service:
                del service[key]
                line = positions.get(("service", key), (0,))[0]
                self.warnings.append(("service.%s" % key, "service.%s is only honoured in the root config file "
                                      "(ignored in %s:%d)" % (key, path, line)))

    def _merge_file(self, value: dict, positions: dict, path: str) -> None:
        merge_into(self.data, value, self.origins, _OriginSource(positions, path))


class _OriginSource:
    """Position lookups for one file, turned into ``(file, line)`` origins."""

    def __init__(self, positions: dict, path: str):
        self.positions = positions
        self.path = path

    def origin(self, src_path: tuple):
        pos = self.positions.get(src_path)
        return (self.path, pos[0]) if pos else None


def merge_into(dst: dict, src: dict, origins: dict, source: _OriginSource,
               dst_path: tuple = (), src_path: tuple = ()) -> None:
    """Merge ``src`` into ``dst`` by decision C3, recording each value's origin.

    Maps merge recursively, lists append, scalars take the later value, a
    later null changes nothing, differing kinds replace, and a whole
    ``plugins.<name>`` entry replaces the earlier one.
    """
    for key, value in src.items():
        here_dst, here_src = dst_path + (key,), src_path + (key,)
        if value is None and key in dst:
            continue
        old = dst.get(key)
        replace_whole = dst_path == ("plugins",)
        if isinstance(old, dict) and isinstance(value, dict) and not replace_whole:
            _record(origins, source, here_dst, here_src, value, shallow=True)
            merge_into(old, value, origins, source, here_dst, here_src)
        elif isinstance(old, list) and isinstance(value, list):
            offset = len(old)
            old.extend(value)
            for index, item in enumerate(value):
                _record(origins, source, here_dst + (offset + index,), here_src + (index,), item)
        else:
            _forget(origins, here_dst)
            dst[key] = value
            _record(origins, source, here_dst, here_src, value)


def _record(origins: dict, source: _OriginSource, dst_path: tuple, src_path: tuple, value,
            shallow: bool = False) -> None:
    """Remember where ``value`` (and, unless shallow, everything in it) came from."""
    origin = source.origin(src_path)
    if origin:
        origins[dst_path] = origin
    if shallow:
        return
    if isinstance(value, dict):
        for key, child in value.items():
            _record(origins, source, dst_path + (key,), src_path + (key,), child)
    elif isinstance(value, list):
        for index, child in enumerate(value):
            _record(origins, source, dst_path + (index,), src_path + (index,), child)


def _forget(origins: dict, prefix: tuple) -> None:
    """Drop origins under a replaced value so none point at stale lines."""
    size = len(prefix)
    for path in [p for p in origins if p[:size] == prefix and len(p) > size]:
        del origins[path]


def _parse(text: str, path: str, with_positions: bool = False):
    try:
        if with_positions:
            return miniyaml.loads_with_positions(text)
        return miniyaml.loads(text)
    except miniyaml.YAMLError as exc:
        raise ConfigError("%s: %s" % (path, exc)) from None


def _path_list(parsed, keys: tuple, path: str) -> list:
    """An include-style list (``include``, ``environment_vars.include``)."""
    node = parsed
    for key in keys:
        if not isinstance(node, dict):
            return []
        node = node.get(key)
    label = ".".join(keys)
    if node is None:
        return []
    if isinstance(node, str):
        node = [node]
    if not isinstance(node, list):
        raise ConfigError("%s: %s must be a list of paths" % (path, label))
    entries = []
    for index, entry in enumerate(node):
        if not isinstance(entry, str) or not entry.strip():
            raise ConfigError("%s: %s[%d] must be a non-empty path" % (path, label, index))
        if "${" in entry:
            raise ConfigError("%s[%d]: environment variables are not allowed in include paths" % (label, index))
        entries.append(entry.strip())
    return entries


def _normalise_webhooks(value: dict, positions: dict):
    """A plain-list ``webhooks:`` becomes ``{endpoints: [...]}`` (decision C5)."""
    hooks = value.get("webhooks")
    if not isinstance(hooks, list):
        return value, positions
    value = dict(value)
    value["webhooks"] = {"endpoints": hooks}
    moved = {}
    for path, pos in positions.items():
        if len(path) >= 2 and path[0] == "webhooks":
            moved[("webhooks", "endpoints") + path[1:]] = pos
        else:
            moved[path] = pos
    return value, moved


def parse_env_file(text: str, path: str) -> dict:
    """Parse a ``.env`` file by the rules of spec 10 §4.3."""
    result = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export "):].lstrip()
        name, sep, value = line.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not name:
            raise ConfigError("invalid env line %d in %s" % (number, path))
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        result[name] = value
    return result


def unresolved_vars(value) -> list:
    """Names of ``${VAR}`` references still present anywhere in ``value``."""
    found = []
    if isinstance(value, str):
        found.extend(_VAR.findall(value))
    elif isinstance(value, dict):
        for child in value.values():
            found.extend(unresolved_vars(child))
    elif isinstance(value, list):
        for child in value:
            found.extend(unresolved_vars(child))
    return found


def resolve_relative(path_value: str, base_dir: str) -> str:
    """An absolute path for a config path value, relative to ``base_dir``."""
    expanded = expand_path(path_value)
    return os.path.normpath(expanded if os.path.isabs(expanded) else os.path.join(base_dir, expanded))


__all__ = [
    "ConfigError", "LoadedFile", "RawConfig", "locate", "load_tree", "merge_into",
    "parse_env_file", "unresolved_vars", "resolve_relative", "expand_path",
]
