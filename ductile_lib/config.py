"""One immutable :class:`Config` from a config directory (spec chapter 10).

``load_config`` locates the root file, merges the include tree
(``config_load``), then reads every key into typed, frozen values with its
default, collecting every problem as an :class:`Issue` that names the key,
the file and the line.  Nothing here raises on a bad value: callers decide
whether errors refuse (``require_valid``) or are reported (``config check``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Optional

from ductile_lib import durations
from ductile_lib.config_keys import dotted, unknown_keys
from ductile_lib.config_load import (ConfigError, RawConfig, expand_path, load_tree, locate,
                                     resolve_relative, unresolved_vars)
from ductile_lib.durations import Duration, DurationError, show_scalar as _show
from ductile_lib.config_schedules import Schedule, read_schedules
from ductile_lib.scopes import read_scope_file

_TRUE_WORDS = {"true", "y", "yes", "on"}
_FALSE_WORDS = {"false", "n", "no", "off"}
LOG_LEVELS = ("debug", "info", "warn", "error")
BUILTIN_TIMEOUTS = {"poll": 60, "handle": 120, "health": 10, "init": 30}
DEFAULT_TIMEOUT = 60


@dataclass(frozen=True)
class Issue:
    """One finding: an error refuses, a warning is reported."""

    category: str
    message: str
    field: str = ""
    location: str = ""  # "file:line" where the offending value is written
    severity: str = "error"
    blocks_start: bool = True  # False: reported by `config check`, only a WARN at start

    def text(self) -> str:
        """The message with its location, as printed to operators."""
        return "%s (%s)" % (self.message, self.location) if self.location else self.message

    def to_json(self) -> dict:
        result = {"category": self.category, "message": self.text()}
        if self.field:
            result["field"] = self.field
        return result


@dataclass(frozen=True)
class ServiceConfig:
    name: str
    tick_interval: Duration
    log_level: str
    log_format: str
    dedupe_ttl: Duration
    job_log_retention: Duration
    job_queue_retention: Duration
    job_transitions_retention: Duration
    job_attempts_retention: Duration
    breaker_transitions_retention: Duration
    max_workers: int
    shutdown_timeout: Duration
    max_chain_depth: int
    strict_mode: bool
    allow_symlinks: bool


@dataclass(frozen=True)
class ApiToken:
    """A credential that can log in to the API (decision A1)."""

    token: str
    scopes: tuple
    source: str  # "api.auth.tokens[<i>]" or "tokens.yaml:<name>"


@dataclass(frozen=True)
class ApiConfig:
    enabled: bool
    listen: str
    tokens: tuple  # of ApiToken, usable ones only
    max_body_size: int
    sse_replay_size: int
    max_concurrent_sync: int
    max_sync_timeout: Duration
    allowed_origins: tuple
    max_connections: int


@dataclass(frozen=True)
class TokenEntry:
    """A ``tokens.yaml`` entry: a named secret, and a login when it has scopes."""

    name: str
    key: str
    scopes_file: str
    scopes_hash: str
    created_at: str
    description: str
    scopes: tuple
    usable: bool  # resolved, non-empty key
    login: bool  # usable and its scope file matches scopes_hash


@dataclass(frozen=True)
class PluginConfig:
    name: str
    enabled: bool
    uses: str
    schedules: tuple
    config: MappingProxyType
    timeout: Optional[Duration]
    timeouts: MappingProxyType
    max_attempts: int
    backoff_base: Duration
    breaker_threshold: int
    breaker_reset_after: Duration
    max_outstanding_polls: int
    parallelism: Optional[int]  # explicit value only; C7 needs the manifest
    notify_on_complete: bool

    def timeout_for(self, command: str) -> Duration:
        """``timeouts.<cmd>`` → plugin ``timeout`` → the built-in default."""
        if self.timeouts.get(command):
            return self.timeouts[command]
        if self.timeout:
            return self.timeout
        return Duration(BUILTIN_TIMEOUTS.get(command, DEFAULT_TIMEOUT) * durations.SECOND)


@dataclass(frozen=True)
class WebhookEndpoint:
    name: str
    path: str
    plugin: str
    secret_ref: str
    signature_header: str
    max_body_size: int


@dataclass(frozen=True)
class Route:
    from_plugin: str
    event_type: str
    to: str


@dataclass(frozen=True)
class Config:
    """Everything the gateway and the CLI need, read once and never mutated."""

    root_file: str
    config_dir: str
    source_label: str
    service: ServiceConfig
    state_path: str
    api: ApiConfig
    plugin_roots: tuple
    plugins: MappingProxyType  # name -> PluginConfig, in name order
    pipelines: tuple
    routes: tuple
    webhooks_listen: str
    webhooks: tuple
    tokens: tuple  # TokenEntry, from tokens.yaml
    tcc_paths: tuple
    raw: RawConfig = field(repr=False, compare=False)
    issues: tuple = ()

    @property
    def errors(self) -> list:
        return [i for i in self.issues if i.severity == "error"]

    @property
    def warnings(self) -> list:
        return [i for i in self.issues if i.severity == "warning"]

    @property
    def pid_path(self) -> str:
        """``data/state.db`` → ``data/state.pid`` (spec 50 §1.3)."""
        return os.path.splitext(self.state_path)[0] + ".pid"

    def token_entry(self, name: str) -> Optional[TokenEntry]:
        for entry in self.tokens:
            if entry.name == name:
                return entry
        return None

    def secret_values(self) -> set:
        """Every secret value this config holds, for scrubbing log lines."""
        values = {t.token for t in self.api.tokens}
        values.update(e.key for e in self.tokens if e.usable)
        return {v for v in values if v}


def load_config(config: str = None, config_dir: str = None, environ=None) -> Config:
    """Locate, load and read a config; raises ConfigError only when unusable.

    Unusable means no file, unreadable YAML, a broken include tree: things
    after which no key can be read.  Bad values become ``Config.issues``.
    """
    root, label = locate(config, config_dir, environ)
    return build_config(load_tree(root, label, environ))


def require_valid(cfg: Config) -> Config:
    """Raise ConfigError listing every error; warnings pass."""
    errors = cfg.errors
    if errors:
        raise ConfigError("invalid configuration: " + "; ".join(issue.text() for issue in errors))
    return cfg


def build_config(raw: RawConfig) -> Config:
    """Read every key of a merged tree into typed values (spec 10 §3, §8)."""
    reader = _Reader(raw)
    for key, message in raw.warnings:
        reader.warn("service", key, message)
    service = _read_service(reader)
    tokens = _read_token_registry(reader)
    plugins = _read_plugins(reader, service, tokens)
    webhooks_listen, webhooks = _read_webhooks(reader, plugins, tokens)
    cfg = Config(
        root_file=raw.root_file,
        config_dir=raw.config_dir,
        source_label=raw.source_label,
        service=service,
        state_path=_read_state_path(reader),
        api=_read_api(reader, tokens),
        plugin_roots=_read_plugin_roots(reader),
        plugins=MappingProxyType(plugins),
        pipelines=tuple(reader.list_of(("pipelines",), "pipelines")),
        routes=_read_routes(reader, plugins),
        webhooks_listen=webhooks_listen,
        webhooks=webhooks,
        tokens=tokens,
        tcc_paths=tuple(resolve_relative(p, raw.config_dir) for p in reader.strings(("tcc_paths",))),
        raw=raw,
    )
    _check_relationships(reader, cfg)
    _check_unknown_keys(reader)
    return Config(**{**cfg.__dict__, "issues": tuple(reader.issues)})


class _Reader:
    """Typed access to the merged map that records an Issue for each bad value."""

    def __init__(self, raw: RawConfig):
        self.raw = raw
        self.issues: list = []

    def get(self, path: tuple, default=None):
        node = self.raw.data
        for key in path:
            if isinstance(node, dict) and key in node:
                node = node[key]
            elif isinstance(node, list) and isinstance(key, int) and key < len(node):
                node = node[key]
            else:
                return default
        return default if node is None else node

    def where(self, path: tuple) -> str:
        for size in range(len(path), 0, -1):
            origin = self.raw.origins.get(path[:size])
            if origin:
                return "%s:%d" % (os.path.relpath(origin[0], self.raw.config_dir)
                                  if origin[0].startswith(self.raw.config_dir) else origin[0], origin[1])
        return ""

    def error(self, category: str, path, message: str) -> None:
        self._add(category, path, message, "error")

    def warn(self, category: str, path, message: str) -> None:
        self._add(category, path, message, "warning")

    def _add(self, category, path, message, severity):
        key = dotted(path) if isinstance(path, tuple) else str(path)
        location = self.where(path) if isinstance(path, tuple) else ""
        self.issues.append(Issue(category, message, key, location, severity))

    def duration(self, path, default: Duration, label: str = None, rule: str = "zero_default",
                 category: str = "service") -> Duration:
        """Read a duration; ``rule`` is ``zero_default`` or ``positive``."""
        value = self.get(path)
        label = label or dotted(path)
        if value is None:
            return default
        try:
            result = durations.parse_duration(value, label)
        except DurationError as exc:
            self.error(category, path, str(exc))
            return default
        if result == 0 and rule == "zero_default":
            return default
        if result <= 0 and rule == "positive":
            self.error(category, path, "%s must be positive" % label)
            return default
        return result

    def integer(self, path, default, label: str = None, positive: bool = False,
                category: str = "service") -> int:
        value = self.get(path)
        label = label or dotted(path)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            self.error(category, path, "%s: expected an integer, got %s" % (label, _show(value)))
            return default
        if positive and value <= 0:
            self.error(category, path, "%s must be positive" % label)
            return default
        return value

    def boolean(self, path, default: bool, label: str = None, category: str = "service") -> bool:
        value = self.get(path)
        if value is None:
            return default
        if isinstance(value, bool):
            return value
        word = str(value).strip().lower()
        if word in _TRUE_WORDS:
            return True
        if word in _FALSE_WORDS:
            return False
        self.error(category, path, '%s: expected a boolean, got "%s"' % (label or dotted(path), _show(value)))
        return default

    def string(self, path, default: str = "") -> str:
        value = self.get(path)
        if value is None:
            return default
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, (dict, list)):
            self.error("service", path, "%s: expected a string, got a %s" % (dotted(path), _kind(value)))
            return default
        return str(value)

    def size(self, path, default: int, category: str = "service") -> int:
        value = self.get(path)
        if value is None:
            return default
        try:
            return durations.parse_size(value, dotted(path))
        except ValueError as exc:
            self.error(category, path, str(exc))
            return default

    def list_of(self, path, label: str) -> list:
        value = self.get(path, [])
        if not isinstance(value, list):
            self.error("service", path, "%s must be a list" % label)
            return []
        return value

    def strings(self, path) -> list:
        """A list of strings; a single string counts as a one-item list."""
        value = self.get(path, [])
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            self.error("service", path, "%s must be a list of strings" % dotted(path))
            return []
        return [str(v).strip() for v in value if v is not None and str(v).strip()]

    def mapping(self, path) -> dict:
        value = self.get(path, {})
        if not isinstance(value, dict):
            self.error("service", path, "%s must be a mapping, got a %s" % (dotted(path), _kind(value)))
            return {}
        return value


def _kind(value) -> str:
    return {dict: "mapping", list: "list"}.get(type(value), type(value).__name__)


def _read_service(r: _Reader) -> ServiceConfig:
    hour = durations.HOUR
    s = ("service",)
    log_level = r.get(s + ("log_level",))
    level_path = s + ("log_level",)
    if log_level is None and r.get(("log_level",)) is not None:
        log_level, level_path = r.get(("log_level",)), ("log_level",)
    log_level = str(log_level if log_level is not None else "info").strip().lower()
    if log_level not in LOG_LEVELS:
        r.error("service", level_path, 'service.log_level must be one of: debug, info, warn, error (got "%s")'
                % log_level)
        log_level = "info"
    log_format = r.string(s + ("log_format",), "json")
    if log_format != "json":
        r.warn("service", s + ("log_format",), 'service.log_format "%s" is not supported; logs are always JSON'
               % log_format)
    service = ServiceConfig(
        name=r.string(s + ("name",), "ductile") or "ductile",
        tick_interval=r.duration(s + ("tick_interval",), Duration(60 * durations.SECOND), rule="positive"),
        log_level=log_level,
        log_format=log_format,
        dedupe_ttl=r.duration(s + ("dedupe_ttl",), Duration(24 * hour)),
        job_log_retention=r.duration(s + ("job_log_retention",), Duration(720 * hour)),
        job_queue_retention=r.duration(s + ("job_queue_retention",), Duration(24 * hour)),
        job_transitions_retention=r.duration(s + ("job_transitions_retention",), Duration(720 * hour)),
        job_attempts_retention=r.duration(s + ("job_attempts_retention",), Duration(720 * hour)),
        breaker_transitions_retention=r.duration(s + ("breaker_transitions_retention",), Duration(2160 * hour)),
        max_workers=r.integer(s + ("max_workers",), max(1, (os.cpu_count() or 1) - 1), positive=True),
        shutdown_timeout=r.duration(s + ("shutdown_timeout",), Duration(30 * durations.SECOND)),
        max_chain_depth=r.integer(s + ("max_chain_depth",), 64, positive=True),
        strict_mode=r.boolean(s + ("strict_mode",), False),
        allow_symlinks=r.boolean(s + ("allow_symlinks",), False),
    )
    if 0 <= service.job_queue_retention < service.dedupe_ttl:
        r.error("service", s + ("job_queue_retention",),
                "service.job_queue_retention (%s) must be >= service.dedupe_ttl (%s) because dedupe checks use "
                "terminal rows in job_queue" % (service.job_queue_retention, service.dedupe_ttl))
    return service


def _read_state_path(r: _Reader) -> str:
    path = r.string(("state", "path")) or r.string(("database", "path")) or "./data/state.db"
    return resolve_relative(path, r.raw.config_dir)


def _read_plugin_roots(r: _Reader) -> tuple:
    roots = []
    for entry in r.strings(("plugin_roots",)):
        resolved = resolve_relative(entry, r.raw.config_dir)
        if resolved not in roots:
            roots.append(resolved)
    if not roots:
        r.error("service", ("plugin_roots",), "plugin_roots is required (list the directories that hold plugins)")
    return tuple(roots)


def _read_api(r: _Reader, registry: tuple) -> ApiConfig:
    a = ("api",)
    enabled = r.boolean(a + ("enabled",), False)
    tokens = []
    for index, item in enumerate(r.list_of(a + ("auth", "tokens"), "api.auth.tokens")):
        token = _read_inline_token(r, index, item, enabled)
        if token:
            tokens.append(token)
    tokens.extend(ApiToken(e.key, e.scopes, "tokens.yaml:" + e.name) for e in registry if e.login)
    return ApiConfig(
        enabled=enabled,
        listen=r.string(a + ("listen",), "127.0.0.1:8080") or "127.0.0.1:8080",
        tokens=tuple(tokens),
        max_body_size=r.size(a + ("max_body_size",), 1024 * 1024),
        sse_replay_size=r.integer(a + ("sse_replay_size",), 1024, positive=True),
        max_concurrent_sync=r.integer(a + ("max_concurrent_sync",), 10, positive=True),
        max_sync_timeout=r.duration(a + ("max_sync_timeout",), Duration(5 * durations.MINUTE)),
        allowed_origins=tuple(r.strings(a + ("allowed_origins",))),
        max_connections=r.integer(a + ("max_connections",), 64) or 64,
    )


def _read_inline_token(r: _Reader, index: int, item, api_enabled: bool) -> Optional[ApiToken]:
    path = ("api", "auth", "tokens", index)
    label = "api.auth.tokens[%d].token" % index
    if not isinstance(item, dict):
        r.error("api", path, "api.auth.tokens[%d] must be a mapping with token and scopes" % index)
        return None
    token = r.string(path + ("token",)).strip()
    scopes = tuple(r.strings(path + ("scopes",)))
    report = r.error if api_enabled else r.warn
    category = "api" if api_enabled else "env_vars"
    missing = unresolved_vars(token)
    if missing:
        report(category, path + ("token",), "%s: environment variable ${%s} is not set" % (label, missing[0]))
        return None
    if not token:
        report(category, path + ("token",), "%s is empty" % label)
        return None
    return ApiToken(token, scopes, "api.auth.tokens[%d]" % index)


def _read_token_registry(r: _Reader) -> tuple:
    """``tokens.yaml`` entries (A1); a broken entry is disabled with a warning."""
    entries, names = [], set()
    for index, item in enumerate(r.list_of(("tokens",), "tokens")):
        path = ("tokens", index)
        if not isinstance(item, dict):
            r.error("api", path, "tokens[%d] must be a mapping with name and key" % index)
            continue
        name = r.string(path + ("name",)).strip()
        if not name:
            r.error("api", path, "tokens[%d].name is required" % index)
            continue
        if name in names:
            r.error("api", path + ("name",), 'duplicate token name "%s"' % name)
            continue
        names.add(name)
        entries.append(_read_token_entry(r, path, name))
    return tuple(entries)


def _read_token_entry(r: _Reader, path: tuple, name: str) -> TokenEntry:
    key = r.string(path + ("key",)).strip()
    scopes_file = r.string(path + ("scopes_file",)).strip()
    scopes_hash = r.string(path + ("scopes_hash",)).strip()
    usable = bool(key) and not unresolved_vars(key)
    scopes, problem = (), ""
    if not usable:
        problem = "its key is empty" if not key else "environment variable ${%s} is not set" % unresolved_vars(key)[0]
    if scopes_file:
        scopes, scope_problem = read_scope_file(resolve_relative(scopes_file, r.raw.config_dir), scopes_hash)
        problem = problem or scope_problem
        if problem:
            r.warn("api", path, 'token "%s" is disabled: %s' % (name, problem))
    elif not usable:
        r.warn("env_vars", path + ("key",), 'token "%s": %s' % (name, problem))
    return TokenEntry(
        name=name, key=key if usable else "", scopes_file=scopes_file, scopes_hash=scopes_hash,
        created_at=r.string(path + ("created_at",)), description=r.string(path + ("description",)),
        scopes=tuple(scopes), usable=usable, login=bool(scopes_file) and not problem,
    )


def _read_plugins(r: _Reader, service: ServiceConfig, tokens: tuple) -> dict:
    entries = r.mapping(("plugins",))
    token_names = {t.name for t in tokens}
    result = {}
    for name in sorted(entries, key=str):
        path = ("plugins", name)
        if not isinstance(entries[name], dict):
            r.error("service", path, 'plugin "%s": entry must be a mapping' % name)
            continue
        result[str(name)] = _read_plugin(r, str(name), path, service, token_names)
    return result


def _read_plugin(r: _Reader, name: str, path: tuple, service: ServiceConfig, token_names: set) -> PluginConfig:
    label = 'plugin "%s": ' % name
    enabled = r.boolean(path + ("enabled",), False, label + "enabled")
    # Disabled plugins never run, so their mistakes are reported, not fatal.
    checker = _Reader(r.raw) if not enabled else r
    plugin = PluginConfig(
        name=name,
        enabled=enabled,
        uses=checker.string(path + ("uses",)).strip(),
        schedules=read_schedules(checker, path, label),
        config=MappingProxyType(dict(checker.mapping(path + ("config",)))),
        timeout=checker.duration(path + ("timeout",), None, label + "timeout") or None,
        timeouts=MappingProxyType(_read_timeouts(checker, path, label)),
        max_attempts=_read_max_attempts(checker, path, label),
        backoff_base=checker.duration(path + ("retry", "backoff_base"), Duration(30 * durations.SECOND),
                                      label + "retry.backoff_base"),
        breaker_threshold=max(0, checker.integer(path + ("circuit_breaker", "threshold"), 3,
                                                 label + "circuit_breaker.threshold")) or 3,
        breaker_reset_after=_positive_or(checker.duration(path + ("circuit_breaker", "reset_after"),
                                                          Duration(30 * durations.MINUTE),
                                                          label + "circuit_breaker.reset_after", rule="any"),
                                         Duration(30 * durations.MINUTE)),
        max_outstanding_polls=checker.integer(path + ("max_outstanding_polls",), 1, label + "max_outstanding_polls"),
        parallelism=_read_parallelism(checker, path, label, service),
        notify_on_complete=checker.boolean(path + ("notify_on_complete",), False, label + "notify_on_complete"),
    )
    if checker is not r:
        for issue in checker.issues:
            r.warn(issue.category, issue.field, issue.message + " (plugin is disabled)")
    _check_plugin_config(r, plugin, path, label, token_names)
    if r.get(path + ("schedule",)) is not None:
        message = label + "schedule is no longer supported; use schedules[]"
        (r.error if enabled else r.warn)("service", path + ("schedule",), message)
    return plugin


def _positive_or(value: Duration, default: Duration) -> Duration:
    return value if value > 0 else default


def _read_timeouts(r: _Reader, path: tuple, label: str) -> dict:
    result = {}
    for command in r.mapping(path + ("timeouts",)):
        value = r.duration(path + ("timeouts", command), Duration(0), label + "timeouts.%s" % command)
        if value > 0:
            result[str(command)] = value
    return result


def _read_max_attempts(r: _Reader, path: tuple, label: str) -> int:
    nested = r.integer(path + ("retry", "max_attempts"), None, label + "retry.max_attempts")
    flat = r.integer(path + ("max_attempts",), None, label + "max_attempts")
    value = nested if nested is not None else flat
    if value is None:
        return 4
    if value <= 0:
        key = "retry.max_attempts" if nested is not None else "max_attempts"
        r.error("service", path + tuple(key.split(".")), label + "retry.max_attempts must be positive")
        return 4
    return value


def _read_parallelism(r: _Reader, path: tuple, label: str, service: ServiceConfig) -> Optional[int]:
    value = r.integer(path + ("parallelism",), None, label + "parallelism")
    if value is None:
        return None
    if value <= 0:
        r.error("service", path + ("parallelism",), label + "parallelism must be positive")
        return None
    if value > service.max_workers:
        r.error("service", path + ("parallelism",), label + "parallelism (%d) cannot exceed service.max_workers (%d)"
                % (value, service.max_workers))
        return None
    return value


def _check_plugin_config(r: _Reader, plugin: PluginConfig, path: tuple, label: str, token_names: set) -> None:
    """``${VAR}`` left unresolved, and ``*_ref`` keys that must name tokens."""
    if plugin.enabled:
        for var in sorted(set(unresolved_vars(dict(plugin.config)))):
            r.error("service", path + ("config",), label + "environment variable ${%s} is not set" % var)
    for key, value in plugin.config.items():
        if not str(key).endswith("_ref"):
            continue
        if not isinstance(value, str):
            r.error("service", path + ("config", key), label + 'config field "%s" must be a string' % key)
        elif value not in token_names:
            r.error("service", path + ("config", key), label + 'references token "%s" not found in tokens.yaml' % value)


def _read_webhooks(r: _Reader, plugins: dict, tokens: tuple):
    w = ("webhooks",)
    hooks = r.get(w, {})
    if not isinstance(hooks, dict):
        r.error("webhooks", w, "webhooks must be a mapping with listen and endpoints, or a list of endpoints")
        return "", ()
    listen = r.string(w + ("listen",)).strip()
    endpoints = []
    seen_paths = {}
    for index, item in enumerate(r.list_of(w + ("endpoints",), "webhooks.endpoints")):
        endpoint = _read_endpoint(r, index, item, plugins, tokens)
        if endpoint is None:
            continue
        normal = endpoint.path.rstrip("/") or "/"
        if normal in seen_paths:
            r.error("webhooks", w + ("endpoints", index, "path"), "webhook[%d] (%s): duplicate path (also webhook[%d])"
                    % (index, endpoint.path, seen_paths[normal]))
        seen_paths[normal] = index
        endpoints.append(endpoint)
    return listen, tuple(endpoints)


def _read_endpoint(r: _Reader, index: int, item, plugins: dict, tokens: tuple) -> Optional[WebhookEndpoint]:
    path = ("webhooks", "endpoints", index)
    if not isinstance(item, dict):
        r.error("webhooks", path, "webhook[%d] must be a mapping" % index)
        return None
    hook_path = r.string(path + ("path",)).strip()
    label = "webhook[%d] (%s)" % (index, hook_path)
    before = len(r.issues)
    if not hook_path.startswith("/") or " " in hook_path:
        r.error("webhooks", path + ("path",), label + ": path must start with / and contain no spaces")
    plugin = r.string(path + ("plugin",)).strip()
    if plugin not in plugins:
        r.error("webhooks", path + ("plugin",), label + ': plugin "%s" does not exist' % plugin)
    secret_ref = r.string(path + ("secret_ref",)).strip()
    if not secret_ref:
        r.error("webhooks", path, label + ": secret_ref is required")
    else:
        entry = next((t for t in tokens if t.name == secret_ref), None)
        if entry is None:
            r.error("webhooks", path + ("secret_ref",), label + ': secret_ref "%s" not found in tokens.yaml' % secret_ref)
        elif not entry.usable:
            r.error("webhooks", path + ("secret_ref",), label + ': secret_ref "%s" has an empty or unset key'
                    % secret_ref)
    header = r.string(path + ("signature_header",)).strip()
    if not header:
        r.error("webhooks", path, label + ": signature_header is required")
    size = r.size(path + ("max_body_size",), 1024 * 1024, category="webhooks")
    if len(r.issues) != before:
        return None
    return WebhookEndpoint(r.string(path + ("name",)).strip(), hook_path, plugin, secret_ref, header, size)


def _read_routes(r: _Reader, plugins: dict) -> tuple:
    routes = []
    for index, item in enumerate(r.list_of(("routes",), "routes")):
        path = ("routes", index)
        if not isinstance(item, dict):
            r.error("routes", path, "route[%d] must be a mapping with from, event_type and to" % index)
            continue
        route = Route(r.string(path + ("from",)).strip(), r.string(path + ("event_type",)).strip(),
                      r.string(path + ("to",)).strip())
        ok = True
        for end, value in (("from", route.from_plugin), ("to", route.to)):
            if value not in plugins:
                r.error("routes", path + (end,), "route[%d]: '%s' plugin \"%s\" does not exist" % (index, end, value))
                ok = False
        if not route.event_type:
            r.error("routes", path, "route[%d]: event_type is required" % index)
            ok = False
        if ok:
            routes.append(route)
    return tuple(routes)


def _check_relationships(r: _Reader, cfg: Config) -> None:
    """Rules that span sections: the API needs a credential, routes may loop."""
    if cfg.api.enabled and not cfg.api.tokens:
        r.warn("api", ("api", "auth", "tokens"), "no API tokens configured (every protected route will answer 401)")
    edges = {}
    for route in cfg.routes:
        edges.setdefault(route.from_plugin, set()).add(route.to)
    for cycle_start in sorted(edges):
        if _reaches(edges, cycle_start, cycle_start):
            r.warn("routes", ("routes",), 'routes form a cycle through plugin "%s" (stopped by '
                   'service.max_chain_depth at run time)' % cycle_start)
            break


def _reaches(edges: dict, start: str, goal: str) -> bool:
    stack, seen = list(edges.get(start, ())), set()
    while stack:
        node = stack.pop()
        if node == goal:
            return True
        if node not in seen:
            seen.add(node)
            stack.extend(edges.get(node, ()))
    return False


def _check_unknown_keys(r: _Reader) -> None:
    for path in unknown_keys(r.raw.data):
        message = 'unknown config key "%s" at %s' % (dotted(path), r.where(path) or "?")
        r.issues.append(Issue("unknown_keys", message, dotted(path), "", "warning"))


__all__ = [
    "ApiConfig", "ApiToken", "Config", "ConfigError", "Issue", "PluginConfig", "Route", "Schedule",
    "ServiceConfig", "TokenEntry", "WebhookEndpoint", "build_config", "expand_path", "load_config",
    "require_valid",
]
