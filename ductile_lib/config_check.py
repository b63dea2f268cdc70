"""Checks that need the discovered plugins (spec 10 §8.3, §8.4).

``config check`` and the gateway's runtime build both call
:func:`runtime_issues`, so an operator sees at check time exactly what
would refuse a start.
"""
from __future__ import annotations

from dataclasses import dataclass

from ductile_lib import durations, plugins
from ductile_lib.config import Config, Issue
from ductile_lib.scopes import classify_scope


@dataclass(frozen=True)
class CheckReport:
    """Every finding, plus the discovery it was made against."""

    issues: tuple
    discovery: object  # plugins.Discovery

    def errors(self, strict: bool = False) -> list:
        """Errors; under strict mode every warning counts as one too."""
        return [i for i in self.issues if strict or i.severity == "error"]

    def warnings(self, strict: bool = False) -> list:
        return [] if strict else [i for i in self.issues if i.severity == "warning"]


def check_config(cfg: Config) -> CheckReport:
    """Config issues plus discovery-dependent ones; DiscoveryError propagates."""
    discovery = plugins.discover(list(cfg.plugin_roots), cfg.service.allow_symlinks)
    issues = list(cfg.issues)
    aliases = {name: p.uses for name, p in cfg.plugins.items() if p.uses}
    try:
        discovery = plugins.register_aliases(discovery, aliases)
    except plugins.AliasError as exc:
        issues.extend(Issue("plugin_refs", problem, "plugins") for problem in exc.problems)
    issues.extend(runtime_issues(cfg, discovery))
    issues.extend(pipeline_issues(cfg, discovery))
    return CheckReport(tuple(issues), discovery)


def pipeline_issues(cfg: Config, discovery) -> list:
    """Pipeline compile errors and warnings (category ``pipelines``; errors refuse start)."""
    from ductile_lib.pipelines import PipelineError, compile_routing

    try:
        table = compile_routing(cfg, discovery.plugins)
    except PipelineError as exc:
        issues = [Issue("pipelines", p.message, p.field, p.location) for p in exc.problems]
        return issues + [Issue("pipelines", w, "pipelines", severity="warning") for w in exc.warnings]
    return [Issue("pipelines", w, "pipelines", severity="warning") for w in table.warnings]


def runtime_issues(cfg: Config, discovery) -> list:
    """Findings about plugins, webhooks, scopes and schedules after discovery."""
    issues = []
    issues.extend(_plugin_issues(cfg, discovery))
    issues.extend(_webhook_issues(cfg, discovery))
    issues.extend(_scope_issues(cfg, discovery))
    issues.extend(_unused_issues(cfg, discovery))
    return issues


def _plugin_issues(cfg: Config, discovery) -> list:
    issues = []
    for name, entry in cfg.plugins.items():
        if not entry.enabled:
            continue
        found = discovery.plugins.get(name)
        if found is None:
            if not entry.uses:  # alias failures were reported by register_aliases
                issues.append(Issue("plugin_refs", 'plugin "%s" is configured but not discoverable' % name,
                                    "plugins.%s" % name))
            continue
        for sched in entry.schedules:
            if not found.has_command(sched.command):
                issues.append(Issue("plugin_refs", 'plugin "%s" schedule "%s" references unsupported command "%s"'
                                    % (name, sched.id, sched.command), "plugins.%s.schedules" % name))
            if sched.every is not None and sched.every < durations.MINUTE:
                issues.append(Issue("schedule", 'plugin "%s" schedule "%s" runs every %s (below 1m)'
                                    % (name, sched.id, sched.every), "plugins.%s.schedules" % name,
                                    severity="warning"))
        for key in plugins.missing_config_keys(found, dict(entry.config)):
            issues.append(Issue("plugin_refs", 'plugin "%s" missing required config key "%s"' % (name, key),
                                "plugins.%s.config" % name, blocks_start=False))
    return issues


def _webhook_issues(cfg: Config, discovery) -> list:
    issues = []
    for index, hook in enumerate(cfg.webhooks):
        if hook.plugin not in discovery.plugins:
            issues.append(Issue("webhooks", 'webhook[%d] (%s): plugin "%s" is not discoverable'
                                % (index, hook.path, hook.plugin), "webhooks.endpoints[%d].plugin" % index))
    return issues


def _scope_issues(cfg: Config, discovery) -> list:
    known = set(discovery.plugins) | set(cfg.plugins)
    issues = []
    sources = [("api.auth.tokens", t.scopes) for t in cfg.api.tokens if t.source.startswith("api.")]
    sources += [("tokens.%s" % e.name, e.scopes) for e in cfg.tokens]
    for field, scopes in sources:
        for scope in scopes:
            severity, message = classify_scope(scope, known)
            if severity:
                issues.append(Issue("token_scopes", message, field, severity=severity, blocks_start=False))
    return issues


def _unused_issues(cfg: Config, discovery) -> list:
    return [Issue("unused", 'plugin "%s" is discovered but not configured' % name, "plugins",
                  severity="warning")
            for name in discovery.plugins if name not in cfg.plugins]
