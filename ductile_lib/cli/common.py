"""What every command shares: the parser, config flags, output and errors.

Commands raise :class:`CliError` (or ``ConfigError``) instead of printing
and exiting themselves, so ``--json`` error envelopes and exit codes
(decision K1) are produced in exactly one place.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from typing import Callable

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_CONFIG = 78


class UsageError(Exception):
    """Bad command-line words: exit 2 with the usage of the command."""

    def __init__(self, message: str, usage: str = ""):
        super().__init__(message)
        self.message = message
        self.usage = usage


class CliError(Exception):
    """A failure to report: ``message``, exit ``code``, JSON ``context``."""

    def __init__(self, message: str, code: int = EXIT_FAILURE, context: dict = None):
        super().__init__(message)
        self.message = message
        self.code = code
        self.context = context or {}


class Parser(argparse.ArgumentParser):
    """argparse that raises UsageError instead of printing and exiting."""

    def error(self, message):  # noqa: D102 - argparse hook
        raise UsageError(message, self.format_usage())


@dataclass(frozen=True)
class Action:
    """One ``<noun> <action>``: a summary, its flags and the code that runs it."""

    summary: str
    configure: Callable  # (parser) -> None
    run: Callable  # (args) -> int
    reads_config: bool = True


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """``--config``/``--config-dir`` (decision C1) and ``-v/--verbose``."""
    parser.add_argument("--config", metavar="PATH", help="config file, or a directory holding config.yaml")
    parser.add_argument("--config-dir", metavar="DIR", help="directory holding config.yaml")
    parser.add_argument("-v", "--verbose", action="store_true", help="more output")


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON")


def print_json(value, stream=None) -> None:
    """2-space JSON, keys in the given order, UTF-8 unescaped, final newline."""
    stream = stream or sys.stdout
    stream.write(json.dumps(value, indent=2, ensure_ascii=False) + "\n")
    stream.flush()


def report_error(message: str, code: int, context: dict, as_json: bool, hint: str = "") -> int:
    """Print an error the way the command was asked to talk; return ``code``."""
    if as_json:
        print_json({"error": message, "code": code, "context": context or {}})
    else:
        sys.stderr.write(message + "\n")
        if hint:
            sys.stderr.write("Hint: %s\n" % hint)
    return code


def load_config_from_args(args):
    """The config named by the flags (or discovered), with fatal errors raised."""
    from ductile_lib.config import load_config

    return load_config(getattr(args, "config", None), getattr(args, "config_dir", None))


def json_or_text(text):
    """A stored result as JSON when it is JSON (plugin replies are), else the text."""
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text
