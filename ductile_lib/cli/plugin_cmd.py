"""``ductile plugin list|run`` (spec 50 §11).

``list`` is the local discovery view.  ``run`` triggers one command the
way that suits the situation: through the running gateway's API when it
has one, straight into the database otherwise (the gateway picks the job
up at its next housekeeping tick or start), or — with ``--local`` — in
this process, without queue or gateway, for a plugin author's quick test.
"""
from __future__ import annotations

import json
import os
import sys
import time
import uuid
from datetime import timedelta
from typing import Any, Callable, Dict, Optional

from ductile_lib import plugins, runner
from ductile_lib.cli import http_client
from ductile_lib.cli.common import (EXIT_CONFIG, EXIT_FAILURE, Action, CliError, UsageError, add_config_flags,
                                    add_json_flag, print_json)
from ductile_lib.cli.common import json_or_text, load_config_from_args
from ductile_lib.config_load import ConfigError
from ductile_lib.durations import DurationError, format_duration, parse_duration
from ductile_lib.pidlock import running_pid
from ductile_lib.timefmt import now_ts, utc_now


LIST_TIMEOUT_S = 10.0


def _configure_list(parser) -> None:
    add_config_flags(parser)
    add_json_flag(parser)
    parser.add_argument("--api-url", help="ask a running gateway's API instead of discovering locally")
    parser.add_argument("--api-key", help="bearer token for --api-url (else $DUCTILE_API_KEY)")


def run_list(args) -> int:
    """Every discovered plugin and every rejected directory with its reason."""
    if args.api_url:
        return _list_via_api(args)
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


def _list_via_api(args) -> int:
    """What the gateway has loaded (``GET /plugins``): the truth when it runs another config."""
    key = http_client.require_key(args.api_key)
    url = http_client.normalize_base(args.api_url) + "/plugins"
    response = http_client.call("GET", url, key, timeout=LIST_TIMEOUT_S)
    body = http_client.decode_body(response.body)
    if args.json:
        print_json(body)
        return 0
    if not isinstance(body, dict) or not isinstance(body.get("plugins"), list):
        raise CliError("API error (%d): unexpected reply: %s" % (
            response.status, response.body.decode("utf-8", "replace").strip()), EXIT_FAILURE,
            {"http_status": response.status, "response": body})
    _print_api_table(body["plugins"])
    return 0


def _print_api_table(plugins_list: list) -> None:
    rows = [("NAME", "VERSION", "COMMANDS")]
    for plugin in plugins_list:
        commands = ",".join(str(c) for c in plugin.get("commands") or [])
        rows.append((str(plugin.get("name", "")), str(plugin.get("version") or "-"), commands))
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    for row in rows:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:2])) + "  " + row[2])


# --- plugin run ------------------------------------------------------------------

SUBMITTED_BY = "cli"
WAIT_INTERVAL_S = 0.2
HTTP_TIMEOUT_S = 30.0
TERMINAL = ("succeeded", "failed", "dead", "timed_out", "skipped")
GONE = "unknown"  # the row vanished while we waited (retention pruned it)
API_KEY_MISSING = http_client.API_KEY_MISSING


def _configure_run(parser) -> None:
    add_config_flags(parser)
    add_json_flag(parser)
    parser.add_argument("name", nargs="?", default="", help="the plugin (or alias) to run")
    parser.add_argument("command", nargs="?", default="poll", help="the command (default poll)")
    parser.add_argument("--payload", help="a JSON object for the job")
    parser.add_argument("--payload-file", metavar="FILE", help="a file holding the JSON object")
    parser.add_argument("--wait", action="store_true", help="wait for the job to finish and print its outcome")
    parser.add_argument("--timeout", default="5m", help="how long --wait waits (default 5m)")
    parser.add_argument("--local", action="store_true", help="run once in this process (no queue, no gateway)")
    parser.add_argument("--api-url", help="the gateway's API (default: api.listen of the config)")
    parser.add_argument("--api-key", help="bearer token (else $DUCTILE_API_KEY, else the config's first token)")


def run_run(args) -> int:
    """Trigger one plugin command: in process, via the API, or straight into the queue."""
    name = (args.name or "").strip()
    if not name:
        raise UsageError("plugin name is required")
    command = (args.command or "").strip() or "poll"
    payload = _read_payload(args.payload, args.payload_file)
    wait_s = _wait_timeout(args.timeout)
    cfg = _config_for_run(args)
    if args.local:
        return _run_local(cfg, name, command, payload, args.json)
    url = _api_url_for_run(args, cfg)
    if url:
        submitted = _submit_via_api(args, cfg, url, name, command, payload)
        if submitted is not None:
            return _report_job(args, submitted, wait_s)
    return _report_job(args, _enqueue_local(cfg, name, command, payload), wait_s)


# -- inputs --

def _read_payload(text: Optional[str], path: Optional[str]) -> dict:
    """The job payload: a JSON object from --payload or --payload-file, else ``{}``."""
    if text is not None and path is not None:
        raise UsageError("Error: use only one of --payload or --payload-file")
    if path is not None:
        try:
            with open(path, "r", encoding="utf-8") as handle:
                text = handle.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise CliError("Error: cannot read payload file %s: %s" % (path, exc), EXIT_FAILURE,
                           {"path": path}) from None
    if text is None:
        return {}
    try:
        payload = json.loads(text)
    except ValueError as exc:
        raise UsageError("Error: payload must be valid JSON: %s" % exc) from None
    if not isinstance(payload, dict):
        raise UsageError("Error: payload must be a JSON object")
    return payload


def _wait_timeout(text: str) -> float:
    try:
        seconds = parse_duration(text, "--timeout").seconds
    except DurationError as exc:
        raise UsageError("invalid --timeout: %s" % exc) from None
    if seconds <= 0:
        raise UsageError("invalid --timeout: must be greater than zero")
    return seconds


def _config_for_run(args):
    """The config; with an explicit --api-url the gateway has its own, so ours may be absent."""
    try:
        return load_config_from_args(args)
    except ConfigError as exc:
        if args.api_url and not args.local and exc.code == EXIT_CONFIG:
            return None
        raise


def _runnable_plugin(cfg, name: str, command: str) -> plugins.Plugin:
    """The plugin that would run, checked in the API's order: exists, enabled, declares the command."""
    try:
        discovery = plugins.discover(list(cfg.plugin_roots), cfg.service.allow_symlinks)
        aliases = {n: p.uses for n, p in cfg.plugins.items() if p.uses}
        discovery = plugins.register_aliases(discovery, aliases)
    except (plugins.DiscoveryError, plugins.AliasError) as exc:
        raise CliError("Plugin discovery error: %s" % exc, EXIT_CONFIG, {"config": cfg.root_file}) from None
    context = {"plugin": name, "command": command}
    plugin = discovery.plugins.get(name)
    if plugin is None:
        reason = ('plugin "%s" is configured but not discoverable' % name if name in cfg.plugins
                  else "Unknown plugin: %s" % name)
        raise CliError(reason, EXIT_FAILURE, context)
    entry = cfg.plugins.get(name)
    if entry is None or not entry.enabled:
        raise CliError("plugin disabled", EXIT_FAILURE, context)
    if not plugin.has_command(command):
        raise CliError('plugin "%s" does not support command "%s" (declared: %s)' % (
            name, command, ", ".join(plugin.command_names())), EXIT_FAILURE, context)
    return plugin


def _job_payload(command: str, payload: dict):
    """What the queue row stores: the payload, or for ``handle`` the event envelope around it."""
    if command != "handle":
        return payload
    return {"type": "cli.trigger", "payload": payload, "source": SUBMITTED_BY, "event_id": str(uuid.uuid4()),
            "timestamp": now_ts()}


# -- --local --

def _run_local(cfg, name: str, command: str, payload: dict, as_json: bool) -> int:
    """Run the command once here, exactly as a worker would build the request; write nothing."""
    plugin = _runnable_plugin(cfg, name, command)
    entry = cfg.plugins[name]
    request = _local_request(cfg, name, command, _job_payload(command, payload), entry)
    timeout = entry.timeout_for(command)
    result = runner.run_plugin(plugin.entrypoint, request, timeout.seconds)
    if as_json:
        print_json(_local_report(name, command, request["job_id"], result))
    else:
        _print_local(result)
    return 0 if result.ok else EXIT_FAILURE


def _local_request(cfg, name: str, command: str, job_payload, entry) -> dict:
    context = {"ductile_plugin": name}
    event = None
    if command == "handle" and job_payload:
        event, error = runner.build_handle_event(job_payload, context)
        if error:
            raise CliError(error, EXIT_FAILURE, {"plugin": name, "command": command})
    deadline = utc_now() + timedelta(seconds=entry.timeout_for(command).seconds)
    return runner.build_request(str(uuid.uuid4()), command, dict(entry.config), _stored_state(cfg, name),
                                job_payload, context, event, deadline)


def _stored_state(cfg, name: str) -> dict:
    """The plugin's state from the gateway's database, read-only; ``{}`` without one."""
    if not os.path.isfile(cfg.state_path):
        return {}
    import sqlite3

    from ductile_lib.cli.job_cmd import database_error, open_existing_database
    from ductile_lib.state import StateError, StateStore

    with open_existing_database(cfg.state_path) as db:
        try:
            return StateStore(db).get_state(name)
        except StateError as exc:
            raise CliError(str(exc), EXIT_FAILURE, {"plugin": name}) from None
        except sqlite3.Error as exc:
            raise database_error(exc, cfg.state_path) from None


def _local_report(name: str, command: str, job_id: str, result) -> dict:
    report: Dict[str, Any] = {"plugin": name, "command": command, "job_id": job_id, "outcome": result.outcome}
    output = _plugin_output(result)
    if output is not None:
        report["response"] = output
    elif result.stdout:
        report["stdout"] = result.stdout
    if result.error:
        report["error"] = result.error
    report.update(stderr=result.stderr, exit_code=result.exit_code, duration_ms=int(result.duration_s * 1000))
    return report


def _plugin_output(result):
    """The JSON object the plugin wrote, as it wrote it (the decoded response has every field filled in)."""
    if not result.stdout.strip():
        return None
    try:
        value = json.loads(result.stdout)
    except ValueError:
        return result.response
    return value if isinstance(value, dict) else result.response


def _print_local(result) -> None:
    output = _plugin_output(result)
    if output is not None:
        print(json.dumps(output, indent=2, ensure_ascii=False))
    elif result.stdout:
        sys.stdout.write(result.stdout if result.stdout.endswith("\n") else result.stdout + "\n")
    if result.stderr:
        sys.stderr.write(result.stderr if result.stderr.endswith("\n") else result.stderr + "\n")
    if not result.ok and result.error:
        sys.stderr.write("Error: %s\n" % result.error)


# -- through the API --

def _api_url_for_run(args, cfg) -> Optional[str]:
    """--api-url, else the config's API when a gateway holds the lock and serves one; else None."""
    if args.api_url:
        return http_client.normalize_base(args.api_url)
    if cfg is None or not cfg.api.enabled or running_pid(cfg.pid_path) is None:
        return None
    return api_base_url(cfg.api.listen)


def api_base_url(listen: str) -> str:
    """An ``api.listen`` value as a client URL (spec 50 §1.6); kept here for callers of old."""
    return http_client.base_url_from_listen(listen)


def api_key(args, cfg) -> str:
    """--api-key, $DUCTILE_API_KEY, else the config's first ``api.auth.tokens`` entry."""
    return http_client.require_key(args.api_key, cfg)


def _submit_via_api(args, cfg, url: str, name: str, command: str, payload: dict) -> Optional[dict]:
    """POST the trigger; None when a gateway found through the config has no API listening yet.

    Then the job goes into the database instead, which the gateway reads at
    its next housekeeping tick.  An --api-url the operator typed is never
    second-guessed: if it does not answer, that is the error.
    """
    key = api_key(args, cfg)
    target = "%s/plugin/%s/%s" % (url, name, command)
    context = {"plugin": name, "command": command}
    try:
        response = http_client.request_json("POST", target, key, {"payload": payload}, HTTP_TIMEOUT_S)
    except http_client.RequestFailed as exc:
        if not args.api_url and exc.refused:
            sys.stderr.write("API not reachable at %s; enqueueing into the database\n" % url)
            return None
        raise http_client.request_failed(exc, dict(context, url=target)) from None
    if response.status >= 400:
        raise http_client.api_error(response, context)
    reply = http_client.decode_body(response.body)
    job_id = reply.get("job_id") if isinstance(reply, dict) else None
    if not job_id:
        raise CliError("API error (%d): unexpected reply: %s" % (
            response.status, response.body.decode("utf-8", "replace")))
    return {"job_id": job_id, "plugin": name, "command": command,
            "fetch": lambda: _fetch_api_job(url, key, job_id)}


def _fetch_api_job(url: str, key: str, job_id: str) -> dict:
    response = http_client.call("GET", "%s/job/%s" % (url, job_id), key, timeout=HTTP_TIMEOUT_S,
                                context={"job_id": job_id})
    reply = http_client.decode_body(response.body)
    reply = reply if isinstance(reply, dict) else {}
    return {"status": reply.get("status"), "result": reply.get("result"), "last_error": reply.get("last_error")}


# -- straight into the database --

def _enqueue_local(cfg, name: str, command: str, payload: dict) -> dict:
    """A root job submitted by ``cli``, with the plugin's own retry budget (decision C8)."""
    from ductile_lib.db import Database, DatabaseError
    from ductile_lib.queue import JobQueue

    _runnable_plugin(cfg, name, command)
    try:
        db = Database(cfg.state_path)
    except DatabaseError as exc:
        raise CliError("Failed to open database: %s" % exc, EXIT_FAILURE, {"path": cfg.state_path}) from None
    queue = JobQueue(db)
    result = queue.enqueue(name, command, _job_payload(command, payload), SUBMITTED_BY,
                           max_attempts=cfg.plugins[name].max_attempts)
    hint = "" if running_pid(cfg.pid_path) is not None else "no gateway is running; it runs the job at its next start"
    return {"job_id": result.job_id, "plugin": name, "command": command,
            "fetch": lambda: _fetch_db_job(queue, result.job_id), "close": db.close, "hint": hint}


def _fetch_db_job(queue, job_id: str) -> dict:
    job = queue.get(job_id)
    if job is None:  # pruned meanwhile: nothing more to learn
        return {"status": GONE, "result": None, "last_error": "job no longer in the queue (pruned)"}
    log = queue.job_log_for(job_id) if job.status in TERMINAL else None
    return {"status": job.status, "result": json_or_text(log.get("result") if log else None),
            "last_error": job.last_error}


# -- reporting --

def _report_job(args, job: dict, wait_s: float) -> int:
    """`Queued job …`, and with --wait the outcome; exit 0 unless waiting saw a failure."""
    try:
        if not args.wait:
            if args.json:
                print_json({"job_id": job["job_id"], "status": "queued", "plugin": job["plugin"],
                            "command": job["command"]})
            else:
                print("Queued job %s (%s %s)" % (job["job_id"], job["plugin"], job["command"]))
            return 0
        if not args.json:
            print("Queued job %s (%s %s)" % (job["job_id"], job["plugin"], job["command"]))
            sys.stdout.flush()
        outcome = wait_for_job(job["fetch"], job["job_id"], wait_s, hint=job.get("hint", ""))
    finally:
        if job.get("close"):
            job["close"]()
    _print_outcome(args.json, job, outcome)
    return 0 if outcome["status"] == "succeeded" else EXIT_FAILURE


def wait_for_job(fetch: Callable[[], dict], job_id: str, timeout_s: float, hint: str = "",
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> dict:
    """Poll ``fetch()`` every 0.2 s until the job is terminal or ``timeout_s`` has passed."""
    deadline = clock() + timeout_s
    while True:
        state = fetch()
        if state["status"] in TERMINAL or state["status"] == GONE:
            return state
        left = deadline - clock()
        if left <= 0:
            message = "timed out after %s waiting for job %s (status %s)" % (
                format_duration(int(timeout_s * 1e9)), job_id, state["status"])
            raise CliError(message + ("; " + hint if hint else ""), EXIT_FAILURE,
                           {"job_id": job_id, "status": state["status"]})
        sleep(min(WAIT_INTERVAL_S, left))


def _print_outcome(as_json: bool, job: dict, outcome: dict) -> None:
    if as_json:
        body = {"job_id": job["job_id"], "plugin": job["plugin"], "command": job["command"],
                "status": outcome["status"]}
        for key in ("result", "last_error"):
            if outcome.get(key) is not None:
                body[key] = outcome[key]
        print_json(body)
        return
    result = outcome.get("result")
    if result is not None and not isinstance(result, str):
        result = json.dumps(result, ensure_ascii=False)
    print("Status: %s" % outcome["status"])
    print("Result: %s" % (result.rstrip("\n") if result else "-"))
    print("Last error: %s" % (outcome.get("last_error") or "-"))


ACTIONS = {
    "list": Action("list discovered plugins and rejected directories", _configure_list, run_list),
    "run": Action("run a plugin command (via the API, the queue, or --local in process)",
                  _configure_run, run_run),
}
