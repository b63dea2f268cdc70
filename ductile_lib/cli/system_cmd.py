"""``ductile system start|status|reload|reset|breaker|scheduler|plugin-facts`` (spec 50 §3–§5, §8)."""
from __future__ import annotations

import os
import signal
import sqlite3
import sys

from ductile_lib import breakers
from ductile_lib.cli.common import (EXIT_FAILURE, Action, CliError, UsageError, add_config_flags, add_json_flag,
                                    load_config_from_args, print_json)
from ductile_lib.cli.job_cmd import database_error, open_existing_database
from ductile_lib.config_load import ConfigError, locate
from ductile_lib.pidlock import read_pid, running_pid
from ductile_lib.state import StateStore
from ductile_lib.timefmt import utc_now


def _configure_start(parser) -> None:
    add_config_flags(parser)


def run_start(args) -> int:
    """Run the gateway in the foreground until SIGINT/SIGTERM."""
    from ductile_lib.gateway import StartError, run_gateway  # the engine loads only for start

    try:
        return run_gateway(args.config, args.config_dir)
    except StartError as exc:
        prefix = {78: "Failed to load config: ", 1: "Failed to start runtime: "}.get(exc.code, "")
        sys.stderr.write(prefix + str(exc) + "\n")
        return exc.code


def _configure_reload(parser) -> None:
    add_config_flags(parser)
    add_json_flag(parser)
    parser.add_argument("--api-url", help="reload through the API instead of a signal")
    parser.add_argument("--api-key", help="bearer token for --api-url (else $DUCTILE_API_KEY)")


RELOAD_TIMEOUT_S = 60.0
RELOAD_KEY_MISSING = "API key required for reload (set --api-key or DUCTILE_API_KEY)"


def run_reload(args) -> int:
    """Signal mode: SIGHUP to the pid holding the lock (the outcome is in the gateway log).

    API mode (``--api-url``) instead waits for the gateway's own verdict.
    """
    if args.api_url:
        return _reload_via_api(args)
    cfg = load_config_from_args(args)
    pid = running_pid(cfg.pid_path)
    if pid is None or pid <= 0:
        raise CliError("No running gateway (PID file %s)" % cfg.pid_path, EXIT_FAILURE, {"pid_file": cfg.pid_path})
    try:
        os.kill(pid, signal.SIGHUP)
    except OSError as exc:
        raise CliError("Failed to signal PID %d: %s" % (pid, exc.strerror or exc), EXIT_FAILURE, {"pid": pid})
    if args.json:
        print_json({"status": "ok", "message": "SIGHUP sent to %d" % pid})
    else:
        print("Reload signal sent to PID %d" % pid)
    return 0


def _reload_via_api(args) -> int:
    """``POST /system/reload``: unlike SIGHUP, the reply says whether the new config was taken."""
    from ductile_lib.cli import http_client

    key = http_client.require_key(args.api_key, message=RELOAD_KEY_MISSING)
    url = http_client.normalize_base(args.api_url) + "/system/reload"
    try:
        response = http_client.request_json("POST", url, key, timeout=RELOAD_TIMEOUT_S)
    except http_client.RequestFailed as exc:
        raise http_client.request_failed(exc, {"url": url}) from None
    if response.status != 200:
        raise http_client.api_error(response, {"url": url}, prefix="Reload failed")
    body = http_client.decode_body(response.body)
    if args.json:
        print_json(body)
    elif isinstance(body, dict) and "reloaded_at" in body:
        print("Reloaded at %s" % body["reloaded_at"])
        if body.get("message"):
            print(body["message"])
    else:
        print(response.body.decode("utf-8", "replace").rstrip("\n"))
    return 0


def _configure_status(parser) -> None:
    add_config_flags(parser)
    add_json_flag(parser)


def run_status(args) -> int:
    """Local preflight: config, database, PID lock (K2: 0 when usable)."""
    checks, pid = status_checks(args)
    healthy = all(c["ok"] for c in checks)
    if args.json:
        body = {"healthy": healthy, "running": pid is not None}
        if pid is not None:
            body["pid"] = pid
        body["checks"] = checks
        print_json(body)
    else:
        print("System Status: %s" % ("HEALTHY" if healthy else "DEGRADED"))
        print("Gateway: %s" % ("running (pid %s)" % pid if pid is not None else "not running"))
        for check in checks:
            line = "- %s: %s" % (check["name"], "OK" if check["ok"] else "FAIL")
            if check.get("path"):
                line += " (path=%s)" % check["path"]
            if check.get("detail"):
                line += " - %s" % check["detail"]
            print(line)
    return 0 if healthy else 1


def status_checks(args):
    """The ordered checks of spec 50 §5 and the running pid, if any."""
    checks = []
    try:
        root, _ = locate(args.config, args.config_dir)
        checks.append({"name": "config_discovery", "ok": True, "path": root, "detail": "config path resolved"})
    except ConfigError as exc:
        checks.append({"name": "config_discovery", "ok": False, "detail": exc.message})
        return checks + _skipped("config discovery failed"), None
    try:
        from ductile_lib.config import require_valid

        cfg = require_valid(load_config_from_args(args))
        checks.append({"name": "config_load", "ok": True, "path": root, "detail": "configuration loaded"})
    except ConfigError as exc:
        checks.append({"name": "config_load", "ok": False, "path": root, "detail": exc.message})
        return checks + _skipped("config load failed")[1:], None
    checks.append(_db_check(cfg.state_path))
    lock_check, pid = _lock_check(cfg.pid_path)
    checks.append(lock_check)
    return checks, pid


def _skipped(reason: str) -> list:
    return [{"name": name, "ok": False, "detail": "skipped: " + reason}
            for name in ("config_load", "state_db", "pid_lock")]


def _db_check(path: str) -> dict:
    check = {"name": "state_db", "path": path}
    if not os.path.exists(path):
        return {**check, "ok": True, "detail": "database file does not exist yet (will be created on start)"}
    try:
        conn = sqlite3.connect("file:%s?mode=ro" % path, uri=True, timeout=2)
    except sqlite3.Error as exc:
        return {**check, "ok": False, "detail": "open failed: %s" % exc}
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.Error as exc:
        return {**check, "ok": False, "detail": "ping failed: %s" % exc}
    finally:
        conn.close()
    return {**check, "ok": True, "detail": "database is readable"}


def _lock_check(path: str):
    check = {"name": "pid_lock", "ok": True, "path": path}
    if not os.path.exists(path):
        return {**check, "detail": "no active PID lock file"}, None
    pid = running_pid(path)
    if pid is None:
        stale = read_pid(path)
        return {**check, "detail": "stale lock file detected (pid %s not running)" % (stale or "unknown")}, None
    shown = pid if pid > 0 else "unknown"
    return {**check, "detail": "gateway running (pid %s)" % shown, "active_pid": shown}, shown


# --- breaker, scheduler, facts (spec 50 §8) ----------------------------------------
#
# All four read the gateway's database directly, beside a running gateway or
# not; only `reset` writes.  A missing database is refused rather than
# created (the original created an empty one at a mistyped path).

def _plugin_argument(parser) -> None:
    parser.add_argument("plugin", nargs="?", default="", help="a plugin configured under plugins:")


def _required_plugin(args) -> str:
    name = (args.plugin or "").strip()
    if not name:
        raise UsageError("plugin name is required")
    return name


def _required_command(args) -> str:
    command = (args.command or "").strip()
    if not command:
        raise UsageError("command is required")
    return command


def _config_with_plugin(args, plugin: str):
    """The config, which must configure ``plugin`` (a typo gets a clear error, not an empty report)."""
    cfg = load_config_from_args(args)
    if plugin not in cfg.plugins:
        raise CliError("Unknown plugin: %s" % plugin, EXIT_FAILURE, {"plugin": plugin})
    return cfg


def _on_database(path: str, work):
    """Run ``work(db)`` on the existing database, turning SQLite failures into CLI errors."""
    with open_existing_database(path) as db:
        try:
            return work(db)
        except sqlite3.Error as exc:
            raise database_error(exc, path) from None


def _configure_reset(parser) -> None:
    add_config_flags(parser)
    add_json_flag(parser)
    _plugin_argument(parser)
    parser.add_argument("--command", default="poll", help="the scheduled command (default poll)")


def run_reset(args) -> int:
    """Close a plugin command's circuit breaker by hand (spec 20 §6)."""
    plugin, command = _required_plugin(args), _required_command(args)
    cfg = _config_with_plugin(args, plugin)
    change = _on_database(cfg.state_path, lambda db: breakers.reset(db, plugin, command, cfg.service.name,
                                                                    utc_now()))
    if args.json:
        print_json({"status": "ok", "plugin": plugin, "command": command,
                    "previous_state": change.previous_state, "state": change.state})
    else:
        print("Reset circuit breaker for %s (%s)" % (plugin, command))
    return 0


def _configure_breaker(parser) -> None:
    add_config_flags(parser)
    add_json_flag(parser)
    _plugin_argument(parser)
    parser.add_argument("--command", default="poll", help="the scheduled command (default poll)")
    parser.add_argument("--limit", type=int, default=breakers.DEFAULT_VIEW_LIMIT,
                        help="transitions to show (default 20; <= 0 means 20)")


def run_breaker(args) -> int:
    """A breaker's current row and its newest transitions."""
    plugin, command = _required_plugin(args), _required_command(args)
    cfg = _config_with_plugin(args, plugin)
    report = _on_database(cfg.state_path, lambda db: breakers.view(db, plugin, command, args.limit))
    if args.json:
        print_json(report)
    else:
        _print_breaker(report)
    return 0


def _print_breaker(report: dict) -> None:
    print("Circuit breaker for %s (%s)" % (report["plugin"], report["command"]))
    if "state" not in report:
        print("State: no current row")
    else:
        print("State: %s (failure_count=%d)" % (report["state"], report["failure_count"]))
        for label, key in (("Opened at", "opened_at"), ("Last failure", "last_failure_at"),
                           ("Last job", "last_job_id")):
            if report.get(key):
                print("%s: %s" % (label, report[key]))
    print("Transitions:")
    if not report["transitions"]:
        print("- none")
    for t in report["transitions"]:
        job = " job=%s" % t["job_id"] if t.get("job_id") else ""
        print("- %s %s -> %s reason=%s failure_count=%d%s" % (
            t["created_at"], t.get("from_state", "<none>"), t["to_state"], t["reason"], t["failure_count"], job))


def _configure_scheduler(parser) -> None:
    add_config_flags(parser)
    add_json_flag(parser)


def run_scheduler(args) -> int:
    """The scheduler's poll jobs still queued or running, oldest first."""
    cfg = load_config_from_args(args)
    service = (cfg.service.name or "").strip()
    if not service:
        raise CliError("service.name is empty; cannot identify scheduler-submitted jobs")
    polls = _on_database(cfg.state_path, lambda db: _active_polls(db, service))
    if args.json:
        print_json({"service_name": service, "count": len(polls), "active_polls": polls})
    else:
        _print_scheduler(service, polls)
    return 0


def _active_polls(db, service: str) -> list:
    with db.read() as conn:
        rows = conn.execute(
            "SELECT id, plugin, dedupe_key, status, attempt, created_at, started_at FROM job_queue"
            " WHERE command = 'poll' AND submitted_by = ? AND status IN ('queued', 'running')"
            " ORDER BY created_at, rowid", (service,)).fetchall()
    polls = []
    for row in rows:
        poll = {"job_id": row["id"], "plugin": row["plugin"]}
        if row["dedupe_key"]:
            poll["dedupe_key"] = row["dedupe_key"]
        poll.update(status=row["status"], attempt=row["attempt"], created_at=row["created_at"])
        if row["started_at"]:
            poll["started_at"] = row["started_at"]
        polls.append(poll)
    return polls


def _print_scheduler(service: str, polls: list) -> None:
    print("Scheduler: %s" % service)
    print("Active polls: %d" % len(polls))
    if not polls:
        print("(none)")
        return
    print()
    for p in polls:
        print("- plugin=%s status=%s attempt=%d created=%s started=%s job=%s dedupe=%s" % (
            p["plugin"], p["status"], p["attempt"], p["created_at"], p.get("started_at", "-"), p["job_id"],
            p.get("dedupe_key", "-")))


def _configure_plugin_facts(parser) -> None:
    add_config_flags(parser)
    add_json_flag(parser)
    _plugin_argument(parser)
    parser.add_argument("--fact-type", default="", help="only facts of this type")
    parser.add_argument("--limit", type=int, default=20, help="facts to show (default 20)")


def run_plugin_facts(args) -> int:
    """A plugin's recorded facts, newest first (spec 20 §7)."""
    plugin = _required_plugin(args)
    if args.limit <= 0:
        raise UsageError("limit must be greater than zero")
    fact_type = (args.fact_type or "").strip()
    cfg = _config_with_plugin(args, plugin)
    facts = _on_database(cfg.state_path, lambda db: StateStore(db).facts(plugin, fact_type or None, args.limit))
    if args.json:
        report = {"plugin": plugin}
        if fact_type:
            report["fact_type"] = fact_type
        report["facts"] = [_fact_json(f) for f in facts]
        print_json(report)
    else:
        _print_facts(plugin, fact_type, facts)
    return 0


def _fact_json(fact) -> dict:
    return {"id": fact.id, "plugin": fact.plugin_name, "fact_type": fact.fact_type, "job_id": fact.job_id,
            "command": fact.command, "fact": fact.fact if fact.fact is not None else fact.fact_json,
            "created_at": fact.created_at}


def _print_facts(plugin: str, fact_type: str, facts: list) -> None:
    print("Plugin facts for %s" % plugin)
    if fact_type:
        print("Fact type filter: %s" % fact_type)
    if not facts:
        print("No facts found.")
    for fact in facts:
        print()
        print("%s  %s  job=%s  command=%s" % (fact.created_at, fact.fact_type, fact.job_id, fact.command))
        print(fact.fact_json)


ACTIONS = {
    "start": Action("run the gateway in the foreground", _configure_start, run_start),
    "status": Action("check config, database and whether a gateway runs", _configure_status, run_status),
    "reload": Action("ask the running gateway to reload its config (SIGHUP, or the API)", _configure_reload,
                     run_reload),
    "reset": Action("close a plugin command's circuit breaker", _configure_reset, run_reset),
    "breaker": Action("show a circuit breaker and its transitions", _configure_breaker, run_breaker),
    "scheduler": Action("list the scheduler's queued and running polls", _configure_scheduler, run_scheduler),
    "plugin-facts": Action("list a plugin's recorded facts", _configure_plugin_facts, run_plugin_facts),
}
