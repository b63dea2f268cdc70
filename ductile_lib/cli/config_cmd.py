"""``ductile config check|show|get`` (spec 10 §7.2, §7.3)."""
from __future__ import annotations

import sys

from ductile_lib import miniyaml, plugins
from ductile_lib.cli.common import (EXIT_CONFIG, EXIT_FAILURE, Action, CliError, add_config_flags, add_json_flag,
                                    load_config_from_args, print_json)
from ductile_lib.config_check import check_config
from ductile_lib.config_load import ConfigError
from ductile_lib.config_view import PathError, display_tree, select
from ductile_lib.durations import show_scalar


def _configure_check(parser) -> None:
    add_config_flags(parser)
    add_json_flag(parser)
    parser.add_argument("--strict", action="store_true", help="count warnings as errors")
    parser.add_argument("--format", choices=("human", "json"), default="human")


def run_check(args) -> int:
    """Load, discover, check; 0 when valid (warnings allowed), 78 on errors."""
    as_json = args.json or args.format == "json"
    try:
        cfg = load_config_from_args(args)
    except ConfigError as exc:
        if exc.code != EXIT_CONFIG:
            raise
        raise CliError("Config load error: %s" % exc.message, EXIT_CONFIG, {"path": args.config or args.config_dir})
    try:
        report = check_config(cfg)
    except plugins.DiscoveryError as exc:
        raise CliError("Plugin discovery error: %s" % exc, EXIT_CONFIG, {"config": cfg.root_file})
    strict = args.strict or cfg.service.strict_mode
    errors, warnings = report.errors(strict), report.warnings(strict)
    if as_json:
        result = {"valid": not errors}
        if errors:
            result["errors"] = [i.to_json() for i in errors]
        if warnings:
            result["warnings"] = [i.to_json() for i in warnings]
        print_json(result)
    else:
        _print_check(errors, warnings)
    return EXIT_CONFIG if errors else 0


def _print_check(errors: list, warnings: list) -> None:
    if errors:
        print("Configuration invalid (%d error(s), %d warning(s))" % (len(errors), len(warnings)))
    elif warnings:
        print("Configuration valid (%d warning(s))" % len(warnings))
    else:
        print("Configuration valid.")
    for label, issues in (("ERROR", errors), ("WARN ", warnings)):
        for issue in issues:
            field = "%s: " % issue.field if issue.field else ""
            print("  %s [%s] %s%s" % (label, issue.category, field, issue.text()))


def _configure_show(parser) -> None:
    add_config_flags(parser)
    add_json_flag(parser)
    parser.add_argument("entity", nargs="?", help="plugin:<name>, webhook:<path>, or a dot path")


def run_show(args) -> int:
    """The effective config (or one node of it) as YAML or JSON, redacted."""
    cfg = load_config_from_args(args)
    node = _select(cfg, args.entity) if args.entity else display_tree(cfg)
    _print_node(node, args.json)
    return 0


def _configure_get(parser) -> None:
    add_config_flags(parser)
    add_json_flag(parser)
    parser.add_argument("path", help="dot path such as service.tick_interval, or plugin:<name>")


def run_get(args) -> int:
    """One value: scalars print bare, collections as YAML (or JSON)."""
    cfg = load_config_from_args(args)
    node = _select(cfg, args.path)
    if not args.json and not isinstance(node, (dict, list)):
        print(show_scalar(node))
        return 0
    _print_node(node, args.json)
    return 0


def _select(cfg, path: str):
    try:
        return select(cfg, path)
    except PathError as exc:
        raise CliError(str(exc), EXIT_FAILURE, {"path": path})


def _print_node(node, as_json: bool) -> None:
    if as_json:
        print_json(node)
    else:
        sys.stdout.write(miniyaml.dumps(node))


ACTIONS = {
    "check": Action("validate the configuration and plugins", _configure_check, run_check),
    "show": Action("print the effective configuration (secrets redacted)", _configure_show, run_show),
    "get": Action("print one value of the effective configuration", _configure_get, run_get),
}
