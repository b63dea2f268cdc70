"""``ductile plugin list`` — the local discovery view (spec 50 §11)."""
from __future__ import annotations

from ductile_lib import plugins
from ductile_lib.cli.common import EXIT_CONFIG, Action, CliError, add_config_flags, add_json_flag, print_json
from ductile_lib.cli.common import load_config_from_args


def _configure_list(parser) -> None:
    add_config_flags(parser)
    add_json_flag(parser)


def run_list(args) -> int:
    """Every discovered plugin and every rejected directory with its reason."""
    cfg = load_config_from_args(args)
    try:
        discovery = plugins.discover(list(cfg.plugin_roots), cfg.service.allow_symlinks)
        aliases = {n: p.uses for n, p in cfg.plugins.items() if p.uses}
        discovery = plugins.register_aliases(discovery, aliases)
    except (plugins.DiscoveryError, plugins.AliasError) as exc:
        raise CliError("Plugin discovery error: %s" % exc, EXIT_CONFIG, {"config": cfg.root_file})
    configured = {name: {"enabled": p.enabled} for name, p in cfg.plugins.items()}
    view = plugins.describe(discovery, configured)
    if args.json:
        print_json(view)
    else:
        _print_table(view)
    return 0


def _print_table(view: dict) -> None:
    rows = [("NAME", "VERSION", "ENABLED", "COMMANDS")]
    for plugin in view["plugins"]:
        commands = ",".join("%s:%s" % (c["name"], c["type"]) for c in plugin["commands"])
        name = plugin["name"] + (" (alias of %s)" % plugin["alias_of"] if plugin.get("alias_of") else "")
        rows.append((name, plugin.get("version") or "-", "yes" if plugin["enabled"] else "no", commands))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:3])) + "  " + row[3])
    if view["rejected"]:
        print()
        print("Rejected:")
        for item in view["rejected"]:
            print("  %s [%s] %s" % (item["path"], item["kind"], item["reason"]))


ACTIONS = {
    "list": Action("list discovered plugins and rejected directories", _configure_list, run_list),
}
