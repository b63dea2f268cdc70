"""A loaded config plus its discovered plugins: what a job runs under.

The gateway builds one :class:`Runtime` at start and a new one on every
reload, then swaps the reference.  Workers keep the runtime they claimed a
job under, so a reload never changes a job half way through (E5).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ductile_lib import plugins
from ductile_lib.config import Config, PluginConfig, require_valid
from ductile_lib.config_check import runtime_issues
from ductile_lib.config_load import ConfigError


@dataclass(frozen=True)
class Runtime:
    """An immutable pairing of config and plugin registry."""

    config: Config
    discovery: plugins.Discovery
    snapshot_id: Optional[str] = None
    routing: object = None  # pipelines.RoutingTable

    @property
    def max_workers(self) -> int:
        return self.config.service.max_workers

    def plugin(self, name: str) -> Optional[plugins.Plugin]:
        return self.discovery.plugins.get(name)

    def plugin_config(self, name: str) -> Optional[PluginConfig]:
        return self.config.plugins.get(name)

    def is_enabled(self, name: str) -> bool:
        """Enabled = configured with ``enabled: true`` and discovered (E4)."""
        entry = self.config.plugins.get(name)
        return bool(entry and entry.enabled and name in self.discovery.plugins)

    def parallelism(self, name: str) -> int:
        """Per-plugin cap by decision C7."""
        entry = self.config.plugins.get(name)
        explicit = entry.parallelism if entry else None
        return plugins.effective_parallelism(explicit, self.plugin(name), self.max_workers)

    def enabled_plugins(self) -> list:
        return [name for name in sorted(self.config.plugins) if self.is_enabled(name)]


def build_runtime(cfg: Config, snapshot_id: Optional[str] = None, log=None) -> Runtime:
    """Validate, discover and check; raise ConfigError (exit 78) on any error.

    Discovery's log records and the config's warnings are written to
    ``log`` so a start or reload tells the operator what it skipped.
    """
    strict = cfg.service.strict_mode
    if strict and cfg.issues:
        raise ConfigError("configuration validation failed: " + "; ".join(i.text() for i in cfg.issues))
    require_valid(cfg)
    try:
        discovery = plugins.discover(list(cfg.plugin_roots), cfg.service.allow_symlinks)
        aliases = {name: p.uses for name, p in cfg.plugins.items() if p.uses}
        discovery = plugins.register_aliases(discovery, aliases)
    except (plugins.DiscoveryError, plugins.AliasError) as exc:
        raise ConfigError(str(exc)) from None
    if log is not None:
        for level, message, fields in discovery.log_records:
            log.log(level, message, **fields)
        for issue in cfg.warnings:
            log.warn(issue.text(), category=issue.category, field=issue.field)
    from ductile_lib.pipelines import PipelineError, compile_routing  # heavy: only when building a runtime

    try:
        routing = compile_routing(cfg, discovery.plugins)
    except PipelineError as exc:
        raise ConfigError("configuration validation failed: " + "; ".join(exc.errors)) from None
    issues = runtime_issues(cfg, discovery)
    errors = [i for i in issues if strict or (i.severity == "error" and i.blocks_start)]
    if errors:
        raise ConfigError("configuration validation failed: " + "; ".join(i.text() for i in errors))
    if strict and routing.warnings:
        raise ConfigError("configuration validation failed: " + "; ".join(routing.warnings))
    if log is not None:
        for issue in issues:
            log.warn(issue.text(), category=issue.category, field=issue.field)
        for warning in routing.warnings:
            log.warn(warning, category="pipelines")
        for name in sorted(routing.pipelines):
            log.info("pipeline registered", pipeline=name)
    return Runtime(cfg, discovery, snapshot_id, routing)
