"""``ductile <noun> <action> [positionals] [options]`` (spec 50 §1).

The noun and action are dispatched by hand so that the messages and exit
codes of K1 hold exactly; each action then parses its own flags with
argparse.  Nouns live in one module each.
"""
from __future__ import annotations

import sys

from ductile_lib.cli import api_cmd, config_cmd, job_cmd, plugin_cmd, system_cmd, version_cmd
from ductile_lib.cli.common import (EXIT_CONFIG, EXIT_OK, EXIT_USAGE, CliError, Parser, UsageError,
                                    report_error)
from ductile_lib.config_load import ConfigError

NOUNS = {
    "system": system_cmd.ACTIONS,
    "config": config_cmd.ACTIONS,
    "job": job_cmd.ACTIONS,
    "plugin": plugin_cmd.ACTIONS,
}
_HELP_WORDS = ("help", "-h", "--help")


def top_usage() -> str:
    """Top-level usage: one section per noun, listing its actions."""
    lines = ["Usage: ductile <noun> <action> [flags]", ""]
    for noun, actions in NOUNS.items():
        lines.append("%s:" % noun)
        for name, action in actions.items():
            lines.append("  ductile %s %-10s %s" % (noun, name, action.summary))
        lines.append("")
    lines.append("version:")
    lines.append("  ductile version [--json]  print version information")
    lines.append("")
    lines.append("api:")
    lines.append("  ductile api <endpoint> [-X METHOD] [-f key=value]... [-H 'Name: value']... [-b BODY]")
    lines.append("                            %s" % api_cmd.ACTION.summary)
    lines.append("")
    lines.append("Every command takes --config PATH or --config-dir DIR; read commands take --json.")
    return "\n".join(lines) + "\n"


def noun_usage(noun: str) -> str:
    actions = NOUNS[noun]
    lines = ["Usage: ductile %s <action>" % noun, "Actions: %s" % ", ".join(actions), ""]
    for name, action in actions.items():
        lines.append("  %-12s %s" % (name, action.summary))
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    """Run one command; returns the exit status (never raises for bad input)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return _dispatch(argv)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_OK


def _dispatch(argv: list) -> int:
    as_json = "--json" in argv
    if not argv:
        sys.stderr.write(top_usage())
        return EXIT_USAGE
    first = argv[0]
    if first in _HELP_WORDS:
        sys.stdout.write(top_usage())
        return EXIT_OK
    if first == "--version":
        return version_cmd.run_version(Parser(prog="ductile version").parse_args([]))
    if first == "version":
        return _run_action("version", version_cmd.ACTION, argv[1:], as_json)
    if first == "api":  # a noun without actions: `ductile api /healthz`
        rest = argv[1:]
        return _run_action("api", api_cmd.ACTION, ["--help"] if rest[:1] == ["help"] else rest, as_json)
    if first.startswith("-"):
        return _usage_failure("options go after the command: %s" % first, top_usage(), as_json)
    if first not in NOUNS:
        return _usage_failure("Unknown command: %s" % first, top_usage(), as_json)
    rest = argv[1:]
    if not rest:
        sys.stderr.write(noun_usage(first))
        return EXIT_USAGE
    if rest[0] in _HELP_WORDS:
        sys.stdout.write(noun_usage(first))
        return EXIT_OK
    action = NOUNS[first].get(rest[0])
    if action is None:
        return _usage_failure("Unknown %s action: %s" % (first, rest[0]), noun_usage(first), as_json)
    return _run_action("%s %s" % (first, rest[0]), action, rest[1:], as_json)


def _run_action(name: str, action, argv: list, as_json: bool) -> int:
    parser = Parser(prog="ductile " + name, description=action.summary)
    action.configure(parser)
    try:
        args = parser.parse_args(argv)
    except UsageError as exc:
        return _usage_failure(exc.message, exc.usage, as_json)
    except SystemExit as exc:  # -h/--help after the action
        return int(exc.code or 0)
    try:
        return action.run(args)
    except UsageError as exc:
        return _usage_failure(exc.message, parser.format_usage(), as_json)
    except ConfigError as exc:
        code = exc.code if exc.code in (EXIT_USAGE, EXIT_CONFIG) else EXIT_CONFIG
        prefix = "" if code == EXIT_USAGE else "Load error: "
        return report_error(prefix + exc.message, code, {"config": getattr(args, "config", None)
                                                          or getattr(args, "config_dir", None)},
                            as_json, exc.hint)
    except CliError as exc:
        return report_error(exc.message, exc.code, exc.context, as_json)


def _usage_failure(message: str, usage: str, as_json: bool) -> int:
    if as_json:
        return report_error(message, EXIT_USAGE, {}, True)
    sys.stderr.write(usage.rstrip("\n") + "\n" + message + "\n")
    return EXIT_USAGE
