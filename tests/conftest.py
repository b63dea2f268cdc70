"""Shared fixtures: temp config trees and a way to run the real CLI."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[1]
EXAMPLES = PROJECT / "examples"
ECHO_PLUGIN_ROOT = EXAMPLES / "plugins"


class CliResult:
    """Exit code and captured output of one CLI invocation."""

    def __init__(self, code: int, out: str, err: str):
        self.code, self.out, self.err = code, out, err

    def json(self):
        return json.loads(self.out)

    def __repr__(self):
        return "CliResult(code=%r, out=%r, err=%r)" % (self.code, self.out[:500], self.err[:500])


@pytest.fixture
def cli(monkeypatch):
    """Run ``ductile`` in-process (fast) with a clean config environment."""
    from ductile_lib.cli import main

    monkeypatch.delenv("DUCTILE_CONFIG_DIR", raising=False)

    def run(*args, env: dict = None) -> CliResult:
        for key, value in (env or {}).items():
            monkeypatch.setenv(key, value)
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            code = main([str(a) for a in args])
        return CliResult(code, out.getvalue(), err.getvalue())

    return run


def wait_for(predicate, timeout=30.0, what="condition", interval=0.05):
    """Poll ``predicate`` until it returns something truthy (returned), or fail at the deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("timed out waiting for %s" % what)


def run_ductile(*args, env: dict = None, timeout: float = 60) -> CliResult:
    """Run ``python3 ductile.py`` as a real subprocess."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("DUCTILE_")}
    full_env.update(env or {})
    proc = subprocess.run([sys.executable, str(PROJECT / "ductile.py")] + [str(a) for a in args],
                          capture_output=True, text=True, timeout=timeout, env=full_env, cwd=str(PROJECT))
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def write_tree(root: Path, files: dict) -> Path:
    """Write ``{relative path: text}`` under ``root`` (text is dedented)."""
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return root


BASE_CONFIG = """
plugin_roots:
  - {plugins}
state:
  path: ./data/state.db
service:
  max_workers: 2
plugins:
  echo:
    enabled: true
    schedules:
      - every: 5m
"""


def config_text(extra: str = "", plugins=ECHO_PLUGIN_ROOT) -> str:
    """BASE_CONFIG with the YAML ``extra`` deep-merged over it (lists replace).

    Tests write only what they change; PyYAML (a test-only dependency)
    parses the fragment so the result is one document without duplicate keys.
    """
    import yaml

    merged = yaml.safe_load(BASE_CONFIG.format(plugins=plugins))
    _deep_merge(merged, yaml.safe_load(textwrap.dedent(extra)) or {})
    return yaml.safe_dump(merged, default_flow_style=False, sort_keys=False, allow_unicode=True)


def _deep_merge(dst: dict, src: dict) -> None:
    for key, value in src.items():
        if isinstance(dst.get(key), dict) and isinstance(value, dict):
            _deep_merge(dst[key], value)
        else:
            dst[key] = value


@pytest.fixture
def db(tmp_path):
    """A fresh Ductile database file in a temp dir."""
    from ductile_lib.db import Database

    database = Database(tmp_path / "state.db")
    yield database
    database.close()


@pytest.fixture
def config_dir(tmp_path):
    """A small valid config dir using the example echo plugin."""
    root = tmp_path / "cfg"
    write_tree(root, {"config.yaml": config_text()})
    return root


@pytest.fixture
def harness(tmp_path):
    """Build in-process gateways for pipeline scenarios (see test_pipeline_runs.Harness)."""
    from test_pipeline_runs import Harness

    made = []

    def make(*args, **kwargs):
        built = Harness(tmp_path / ("g%d" % len(made)), *args, **kwargs)
        made.append(built)
        return built

    yield make
    for built in made:
        built.close()
