"""``ductile version [--json]`` (spec 50 §14)."""
from __future__ import annotations

import json
import os

from ductile_lib import __version__
from ductile_lib.cli.common import Action, add_json_flag, print_json

_STAMP = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "build_stamp.json")


def version_info() -> dict:
    """Version, plus commit and build time from a stamp written at packaging."""
    commit, built = "unknown", "unknown"
    try:
        with open(_STAMP, encoding="utf-8") as handle:
            stamp = json.load(handle)
        commit = str(stamp.get("commit") or "unknown")[:12]
        built = str(stamp.get("build_time") or "unknown")
    except (OSError, ValueError, AttributeError):
        pass
    return {"version": __version__ or "0.0.0-dev", "commit": commit, "build_time": built}


def _configure(parser) -> None:
    add_json_flag(parser)
    parser.add_argument("-v", "--verbose", action="store_true", help="accepted for uniformity")


def run_version(args) -> int:
    info = version_info()
    if getattr(args, "json", False):
        print_json(info)
    else:
        print("ductile %s" % info["version"])
        print("commit: %s" % info["commit"])
        print("built_at: %s" % info["build_time"])
    return 0


ACTION = Action("print version information", _configure, run_version, reads_config=False)
