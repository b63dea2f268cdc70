"""The effective config as operators read it (``config show``/``get``, spec 10 §7.3).

Defaults are filled in, durations print in Go's format, paths are absolute,
and every secret is ``[REDACTED]`` by the one rule of decision K4.  The
tree is plain dicts and lists so it prints as YAML or JSON alike.
"""
from __future__ import annotations

from ductile_lib.config import Config, PluginConfig, Schedule
from ductile_lib.config_load import ConfigError
from ductile_lib.durations import format_duration, format_size
from ductile_lib.redact import PLACEHOLDER, redact_tree

SECTION_ORDER = ("include", "environment_vars", "service", "state", "database", "api", "plugin_roots",
                 "tcc_paths", "plugins", "pipelines", "instances", "remote_ingress", "routes", "webhooks")


class PathError(Exception):
    """A ``config get`` path that does not lead anywhere (exit 1)."""


def display_tree(cfg: Config) -> dict:
    """The whole effective config, redacted, in the documented section order."""
    raw = cfg.raw.data
    sections = {
        "include": raw.get("include"),
        "environment_vars": raw.get("environment_vars"),
        "service": _service(cfg),
        "state": {"path": cfg.state_path},
        "database": raw.get("database"),
        "api": _api(cfg),
        "plugin_roots": list(cfg.plugin_roots),
        "tcc_paths": list(cfg.tcc_paths),
        "plugins": {name: plugin_view(p) for name, p in cfg.plugins.items()},
        "pipelines": redact_tree(list(cfg.pipelines)),
        "instances": raw.get("instances"),
        "remote_ingress": raw.get("remote_ingress"),
        "routes": [{"from": r.from_plugin, "event_type": r.event_type, "to": r.to} for r in cfg.routes],
        "webhooks": _webhooks(cfg),
    }
    return {key: sections[key] for key in SECTION_ORDER if not _empty(sections[key])}


def _empty(value) -> bool:
    return value is None or value == [] or value == {}


def _service(cfg: Config) -> dict:
    s = cfg.service
    return {
        "name": s.name,
        "tick_interval": format_duration(s.tick_interval),
        "log_level": s.log_level,
        "log_format": s.log_format,
        "dedupe_ttl": format_duration(s.dedupe_ttl),
        "job_log_retention": format_duration(s.job_log_retention),
        "job_queue_retention": format_duration(s.job_queue_retention),
        "job_transitions_retention": format_duration(s.job_transitions_retention),
        "job_attempts_retention": format_duration(s.job_attempts_retention),
        "breaker_transitions_retention": format_duration(s.breaker_transitions_retention),
        "max_workers": s.max_workers,
        "shutdown_timeout": format_duration(s.shutdown_timeout),
        "max_chain_depth": s.max_chain_depth,
        "strict_mode": s.strict_mode,
        "allow_symlinks": s.allow_symlinks,
    }


def _api(cfg: Config) -> dict:
    a = cfg.api
    inline = [t for t in a.tokens if t.source.startswith("api.")]
    return {
        "enabled": a.enabled,
        "listen": a.listen,
        "auth": {"tokens": [{"token": PLACEHOLDER, "scopes": list(t.scopes)} for t in inline]},
        "max_body_size": format_size(a.max_body_size),
        "sse_replay_size": a.sse_replay_size,
        "max_concurrent_sync": a.max_concurrent_sync,
        "max_sync_timeout": format_duration(a.max_sync_timeout),
        "allowed_origins": list(a.allowed_origins),
        "max_connections": a.max_connections,
    }


def plugin_view(p: PluginConfig) -> dict:
    """One plugin entry with defaults filled and secrets hidden."""
    view = {"enabled": p.enabled}
    if p.uses:
        view["uses"] = p.uses
    view["schedules"] = [_schedule(s) for s in p.schedules]
    view["config"] = redact_tree(dict(p.config))
    if p.timeout:
        view["timeout"] = format_duration(p.timeout)
    view["timeouts"] = {cmd: format_duration(p.timeout_for(cmd)) for cmd in
                        sorted(set(p.timeouts) | {"poll", "handle", "health", "init"})}
    view["retry"] = {"max_attempts": p.max_attempts, "backoff_base": format_duration(p.backoff_base)}
    view["circuit_breaker"] = {"threshold": p.breaker_threshold,
                               "reset_after": format_duration(p.breaker_reset_after)}
    view["max_outstanding_polls"] = p.max_outstanding_polls
    if p.parallelism is not None:
        view["parallelism"] = p.parallelism
    view["notify_on_complete"] = p.notify_on_complete
    return view


def _schedule(s: Schedule) -> dict:
    view = {"id": s.id, "command": s.command}
    for key in ("every", "after"):
        if getattr(s, key) is not None:
            view[key] = format_duration(getattr(s, key))
    for key in ("cron", "at", "only_between", "timezone"):
        if getattr(s, key) is not None:
            view[key] = getattr(s, key)
    if s.jitter:
        view["jitter"] = format_duration(s.jitter)
    view["catch_up"] = s.catch_up
    view["if_running"] = s.if_running
    if s.not_on:
        view["not_on"] = list(s.not_on)
    if s.payload:
        view["payload"] = redact_tree(dict(s.payload))
    return view


def _webhooks(cfg: Config) -> dict:
    result = {}
    if cfg.webhooks_listen:
        result["listen"] = cfg.webhooks_listen
    if cfg.webhooks:
        result["endpoints"] = [_endpoint(h) for h in cfg.webhooks]
    return result


def _endpoint(hook) -> dict:
    view = {"path": hook.path, "plugin": hook.plugin, "secret_ref": hook.secret_ref,
            "signature_header": hook.signature_header, "max_body_size": format_size(hook.max_body_size)}
    if hook.name:
        view = {"name": hook.name, **view}
    return view


def select(cfg: Config, path: str):
    """The node a ``show``/``get`` argument names: an entity or a dot path."""
    if ":" in path:
        return _entity(cfg, path)
    node = display_tree(cfg)
    walked = []
    for part in path.split("."):
        if not isinstance(node, dict):
            raise PathError('path "%s" breaks at "%s" (not a map)' % (path, ".".join(walked)))
        if part not in node:
            raise PathError('path "%s": key "%s" not found' % (path, part))
        node = node[part]
        walked.append(part)
    return node


def _entity(cfg: Config, path: str):
    kind, _, name = path.partition(":")
    if "." in name and kind == "plugin":
        raise PathError('entity "%s": nothing may follow the name (use a dot path such as plugins.%s)'
                        % (path, name.split(".")[0]))
    tree = display_tree(cfg)
    if kind == "plugin":
        plugins = tree.get("plugins", {})
        return plugins if name == "*" else _pick(plugins, name, path)
    if kind == "webhook":
        hooks = tree.get("webhooks", {}).get("endpoints", [])
        if name == "*":
            return hooks
        found = [h for h in hooks if name in (h["path"], h["plugin"], h.get("name"))]
        if not found:
            raise PathError('webhook "%s" not found' % name)
        return found[0] if len(found) == 1 else found
    if kind == "pipeline":
        pipelines = [p for p in tree.get("pipelines", []) if isinstance(p, dict)]
        if name == "*":
            return pipelines
        for pipeline in pipelines:
            if pipeline.get("name") == name:
                return pipeline
        raise PathError('pipeline "%s" not found' % name)
    raise ConfigError('unknown entity kind "%s" (use plugin:, webhook: or pipeline:)' % kind, code=2)


def _pick(mapping: dict, name: str, path: str):
    if name not in mapping:
        raise PathError('%s not found' % path)
    return mapping[name]
