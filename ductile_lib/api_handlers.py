"""Handlers of the API routes (spec 40 §4): plain functions of a request.

Each takes an :class:`ApiRequest` and returns ``(status, json_value)`` or
raises :class:`HttpError`.  The server module owns sockets, routing,
authentication and encoding; nothing here touches HTTP plumbing, so each
handler reads like the spec paragraph it implements.
"""
from __future__ import annotations

import json
import os
import sys
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Dict, Optional

from ductile_lib import __version__, auth, openapi, schedule
from ductile_lib.plugins import expand_schema
from ductile_lib.durations import to_timedelta as _delta
from ductile_lib.redact import redact_tree
from ductile_lib.timefmt import format_ts, parse_ts, utc_now, wire_ts as wire_time

MAX_RESULT_BYTES = 1024 * 1024
STATUSES = ("queued", "running", "succeeded", "skipped", "failed", "timed_out", "dead")
STATUS_ALIASES = {"pending": "queued", "ok": "succeeded", "error": "failed"}


class HttpError(Exception):
    """An error reply: ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class ApiRequest:
    """What a handler may look at."""

    ctx: Any  # api.ApiContext
    method: str
    path: str
    params: Dict[str, str]
    query: Dict[str, str]
    headers: Any
    body: Optional[bytes]
    credential: Optional[auth.Credential] = None
    extra: dict = field(default_factory=dict)


# --- discovery (§4.1–§4.3) ------------------------------------------------------------

def root(req: ApiRequest):
    return 200, {"name": "Ductile Gateway",
                 "description": "Lightweight, open-source integration engine for the agentic era.",
                 "uptime_seconds": req.ctx.uptime_seconds(),
                 "discovery": {"ai_plugin": "/.well-known/ai-plugin.json", "health": "/healthz",
                               "openapi": "/openapi.json", "plugins": "/plugins", "skills": "/skills"}}


def healthz(req: ApiRequest):
    runtime = req.ctx.runtime()
    try:
        with req.ctx.db.read() as conn:
            depth = conn.execute("SELECT COUNT(*) FROM job_queue WHERE status IN ('queued','running')").fetchone()[0]
            open_count = conn.execute("SELECT COUNT(DISTINCT plugin) FROM circuit_breakers WHERE state = 'open'"
                                      ).fetchone()[0]
    except Exception:
        raise HttpError(500, "failed to compute queue depth") from None
    body = {"status": "ok", "uptime_seconds": req.ctx.uptime_seconds(), "queue_depth": depth,
            "plugins_loaded": len(runtime.discovery.plugins), "plugins_circuit_open": open_count}
    if req.ctx.config_label:
        body["config_path"] = req.ctx.config_label
    body["binary_path"] = os.path.abspath(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    body["version"] = __version__
    return 200, {k: v for k, v in body.items() if v != ""}


def list_plugins(req: ApiRequest):
    plugins = _plugins_by_name(req)
    items = []
    for plugin in plugins:
        item = {"name": plugin.name, "version": plugin.version or ""}
        if plugin.description:
            item["description"] = plugin.description
        item["commands"] = [c.name for c in plugin.commands]
        items.append(item)
    return 200, {"plugins": items}


def get_plugin(req: ApiRequest):
    plugin = _plugin_or_404(req, req.params["plugin"])
    body = {"name": plugin.name, "version": plugin.version or ""}
    if plugin.description:
        body["description"] = plugin.description
    body["protocol"] = plugin.protocol
    body["commands"] = [_command_json(c) for c in plugin.commands]
    return 200, body


def _command_json(command) -> dict:
    item = {"name": command.name, "type": command.type}
    if command.description:
        item["description"] = command.description
    if command.input_schema is not None:
        item["input_schema"] = expand_schema(command.input_schema)
    if command.output_schema is not None:
        item["output_schema"] = expand_schema(command.output_schema)
    return item


def skills(req: ApiRequest):
    items = []
    for plugin in _plugins_by_name(req):
        for command in sorted(plugin.commands, key=lambda c: c.name):
            item = {"name": "plugin.%s.%s" % (plugin.name, command.name), "kind": "plugin"}
            if command.description:
                item["description"] = command.description
            item.update({"endpoint": "/plugin/%s/%s" % (plugin.name, command.name),
                         "tier": "READ" if command.type == "read" else "WRITE",
                         "plugin": plugin.name, "command": command.name})
            items.append(item)
    routing = req.ctx.runtime().routing
    for name in sorted(routing.pipelines) if routing is not None else ():
        items.append(_pipeline_skill(routing.pipelines[name]))
    return 200, {"skills": items}


def _pipeline_skill(pipeline) -> dict:
    item = {"name": "pipeline.%s" % pipeline.name, "kind": "pipeline", "endpoint": "/pipeline/%s" % pipeline.name,
            "pipeline": pipeline.name}
    if pipeline.on:
        item["trigger"] = pipeline.on
    item["execution_mode"] = "synchronous" if pipeline.execution_mode == "synchronous" else "asynchronous"
    item["timeout_secs"] = int(pipeline.timeout_s)
    return item


def openapi_document(req: ApiRequest):
    return 200, openapi.document(_plugins_by_name(req))


def plugin_openapi(req: ApiRequest):
    return 200, openapi.plugin_document(_plugin_or_404(req, req.params["plugin"]))


def ai_plugin(req: ApiRequest):
    return 200, {
        "schema_version": "v1", "name_for_human": "Ductile Gateway", "name_for_model": "ductile",
        "description_for_human": "Integration gateway for triggering plugins and pipelines.",
        "description_for_model": "Discover and invoke plugins. Fetch /openapi.json for the full spec, or "
                                 "/plugin/{name}/openapi.json for a single plugin. Invoke commands via "
                                 "POST /plugin/{name}/{command}.",
        "auth": {"type": "bearer"}, "api": {"type": "openapi", "url": "/openapi.json"},
    }


def _plugins_by_name(req: ApiRequest) -> list:
    plugins = req.ctx.runtime().discovery.plugins
    return [plugins[name] for name in sorted(plugins)]


def _plugin_or_404(req: ApiRequest, name: str):
    plugin = req.ctx.runtime().plugin(name)
    if plugin is None:
        raise HttpError(404, "plugin not found")
    return plugin


# --- triggering (§4.4, §4.5) ----------------------------------------------------------

def run_plugin_command(req: ApiRequest):
    """``POST /plugin/{p}/{c}``: checks in the order of §4.4, then enqueue."""
    runtime = req.ctx.runtime()
    name, command_name = req.params["plugin"], req.params["command"]
    plugin = runtime.plugin(name)
    if plugin is None:
        raise HttpError(404, "plugin not found")
    if not runtime.is_enabled(name):
        raise HttpError(409, "plugin disabled")
    command = plugin.command(command_name)
    if command is None:
        raise HttpError(404, "command not supported by plugin")
    if not auth.can_run_command(req.credential.scopes, name, command.type):
        raise HttpError(403, "insufficient scope")
    has_payload, payload = _payload_from_body(req.body)
    stored = _stored_payload(command_name, has_payload, payload)
    entry = runtime.plugin_config(name)
    try:
        result = req.ctx.queue.enqueue(name, command_name, stored, "api", max_attempts=entry.max_attempts,
                                       config_snapshot_id=runtime.snapshot_id)
    except Exception:
        raise HttpError(500, "failed to enqueue job") from None
    req.ctx.wake()
    req.ctx.hub.publish("job.enqueued", {"at": wire_time(), "command": command_name, "direct": True,
                                         "job_id": result.job_id, "plugin": name, "submitted_by": "api"})
    return 202, {"job_id": result.job_id, "status": "queued", "plugin": name, "command": command_name}


def _payload_from_body(body: Optional[bytes]):
    """``(present, value)`` of the body's ``payload`` key (§4.4 step 6)."""
    if not body:
        return False, None
    try:
        decoded, _ = json.JSONDecoder().raw_decode(body.decode("utf-8").lstrip())
    except (ValueError, UnicodeDecodeError):
        raise HttpError(400, "invalid JSON body") from None
    if decoded is None:
        return False, None
    if not isinstance(decoded, dict):
        raise HttpError(400, "invalid JSON body")
    found, value = False, None
    for key, item in decoded.items():
        if key.lower() == "payload":
            found, value = True, item
    return found, value


def _stored_payload(command: str, has_payload: bool, payload):
    if command != "handle":
        return payload if has_payload and payload is not None else {}
    if payload is None:
        payload = {}
    if not isinstance(payload, dict):
        raise HttpError(400, "payload must be a JSON object")
    return {"type": "api.trigger", "payload": payload, "source": "api", "timestamp": wire_time(),
            "event_id": str(uuid.uuid4())}


def run_pipeline(req: ApiRequest):
    """``POST /pipeline/{name}``: checks in the order of §4.5, one enqueue transaction, optional wait."""
    from ductile_lib import pipeline_api  # the pipeline trigger lives beside the router

    return pipeline_api.trigger(req)


# --- jobs (§4.6) ---------------------------------------------------------------------------

def get_job(req: ApiRequest):
    try:
        job = req.ctx.queue.get(req.params["jobID"])
        log = req.ctx.queue.job_log_for(job.id) if job is not None else None
    except Exception:
        raise HttpError(500, "failed to retrieve job") from None
    if job is None:
        raise HttpError(404, "job not found")
    body = {"job_id": job.id, "status": job.status, "plugin": job.plugin, "command": job.command}
    if log is not None and log.get("result") is not None:
        body.update(result_fields(log["result"]))
    _put(body, started_at=job.started_at, completed_at=job.completed_at)
    body.update({"submitted_by": job.submitted_by, "created_at": job.created_at, "attempt": job.attempt,
                 "max_attempts": job.max_attempts})
    _put(body, last_error=job.last_error, parent_job_id=job.parent_job_id)
    return 200, body


def job_tree(req: ApiRequest):
    root_id = req.params["jobID"]
    try:
        items = tree_items(req.ctx, root_id)
    except HttpError:
        raise
    except Exception:
        raise HttpError(500, "failed to retrieve job tree") from None
    if not items:
        raise HttpError(404, "job not found")
    return 200, items


def tree_items(ctx, root_id: str, with_parent: bool = True) -> list:
    """Root first, then descendants breadth-first, insertion order within a level."""
    with ctx.db.read() as conn:
        root = conn.execute("SELECT * FROM job_queue WHERE id = ?", (root_id,)).fetchone()
        if root is None:
            return []
        level, rows = [root], [root]
        while level:
            ids = [r["id"] for r in level]
            level = conn.execute("SELECT * FROM job_queue WHERE parent_job_id IN (%s) ORDER BY rowid"
                                 % ",".join("?" * len(ids)), ids).fetchall()
            rows.extend(level)
        results = {r["job_id"]: r["result"] for r in conn.execute(
            "SELECT job_id, result FROM job_log WHERE job_id IN (%s)" % ",".join("?" * len(rows)),
            [r["id"] for r in rows])}
    return [_tree_item(row, results.get(row["id"]), with_parent) for row in rows]


def _tree_item(row, result, with_parent: bool) -> dict:
    item = {"job_id": row["id"]}
    if with_parent and row["parent_job_id"]:
        item["parent_job_id"] = row["parent_job_id"]
    item.update({"plugin": row["plugin"], "command": row["command"], "status": row["status"]})
    if result is not None:
        item.update(result_fields(result))
    _put(item, last_error=row["last_error"], started_at=row["started_at"], completed_at=row["completed_at"])
    return item


def list_jobs(req: ApiRequest):
    limit = _positive_limit(req.query.get("limit"))
    status = _status_filter(req.query.get("status"))
    try:
        jobs, total = req.ctx.queue.list_jobs(plugin=_trimmed(req.query.get("plugin")),
                                              command=_trimmed(req.query.get("command")), status=status, limit=limit)
    except Exception:
        raise HttpError(500, "failed to list jobs") from None
    items = []
    for job in jobs:
        item = {"job_id": job.id, "plugin": job.plugin, "command": job.command, "status": job.status,
                "created_at": job.created_at}
        _put(item, started_at=job.started_at, completed_at=job.completed_at)
        item["attempt"] = job.attempt
        items.append(item)
    return 200, {"jobs": items, "total": total}


def job_logs(req: ApiRequest):
    q = req.query
    limit = _positive_limit(q.get("limit"))
    if limit > 200:
        raise HttpError(400, "limit must be <= 200")
    include = str(q.get("include_result", "")).lower() == "true"
    try:
        page = req.ctx.queue.job_log_rows(
            job_id=_trimmed(q.get("job_id")), plugin=_trimmed(q.get("plugin")), command=_trimmed(q.get("command")),
            status=_status_filter(q.get("status")), submitted_by=_trimmed(q.get("submitted_by")),
            from_=_instant(q.get("from"), "from"), to=_instant(q.get("to"), "to"), query=q.get("query"),
            limit=limit, include_result=include)
    except HttpError:
        raise
    except Exception:
        raise HttpError(500, "failed to list job logs") from None
    return 200, {"logs": [_log_item(row, include) for row in page.rows], "total": page.total}


def _log_item(row: dict, include: bool) -> dict:
    item = {"job_id": row["job_id"], "log_id": row["log_id"], "plugin": row["plugin"], "command": row["command"],
            "status": row["status"], "attempt": row["attempt"], "submitted_by": row["submitted_by"],
            "created_at": row["created_at"], "completed_at": row["completed_at"]}
    _put(item, last_error=row.get("last_error"), stderr=row.get("stderr"))
    if include and row.get("result") is not None:
        item.update(result_fields(row["result"]))
    return item


def _positive_limit(text: Optional[str], default: int = 50) -> int:
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise HttpError(400, "limit must be a positive integer") from None
    if value <= 0:
        raise HttpError(400, "limit must be a positive integer")
    return value


def _status_filter(text: Optional[str]) -> Optional[str]:
    if text is None:
        return None
    status = text.strip().lower()
    status = STATUS_ALIASES.get(status, status)
    if status not in STATUSES:
        raise HttpError(400, "invalid status filter")
    return status


def _instant(text: Optional[str], name: str):
    if text is None:
        return None
    try:
        if not (text.endswith(("Z", "z")) or (len(text) > 6 and text[-6] in "+-" and text[-3] == ":")):
            raise ValueError(text)
        return parse_ts(text)
    except ValueError:
        raise HttpError(400, "invalid %s timestamp" % name) from None


def _trimmed(text: Optional[str]) -> Optional[str]:
    return text.strip() if text is not None and text.strip() else None


# --- scheduler and analytics (§4.7, §4.8) --------------------------------------------------

def scheduler_jobs(req: ApiRequest):
    runtime, now = req.ctx.runtime(), utc_now()
    items = []
    for name in runtime.enabled_plugins():
        for sched in runtime.plugin_config(name).schedules:
            items.append(_schedule_item(name, sched, now, req.ctx.started_at_utc))
    return 200, {"jobs": items}


def _schedule_item(plugin: str, sched, now, process_start) -> dict:
    mode = next((m for m in ("every", "cron", "at", "after") if getattr(sched, m) is not None), "unknown")
    item = {"plugin": plugin, "schedule_id": sched.id, "command": sched.command, "mode": mode,
            "status": "scheduled"}
    if sched.timezone:
        item["timezone"] = sched.timezone
    projected = _projection(mode, sched, now, process_start)
    if projected is not None:
        item["next_run_at"] = wire_time(projected)
    return item


def _projection(mode: str, sched, now, process_start):
    if mode == "every":
        return now + _delta(sched.every)
    if mode == "cron":
        return schedule.cron_next(sched.cron, now, sched.timezone or None)
    if mode == "at":
        return max(parse_ts(sched.at), now)
    if mode == "after":
        return max(process_start + _delta(sched.after), now)
    return None


def analytics_queue(req: ApiRequest):
    now = format_ts(utc_now())
    try:
        with req.ctx.db.read() as conn:
            counts = dict(conn.execute("SELECT status, COUNT(*) FROM job_queue WHERE status IN "
                                       "('queued','running','dead') GROUP BY status").fetchall())
            delayed = conn.execute("SELECT COUNT(*) FROM job_queue WHERE status = 'queued' AND next_retry_at > ?",
                                   (now,)).fetchone()[0]
            active = conn.execute("SELECT id, plugin, command, started_at FROM job_queue WHERE status = 'running' "
                                  "ORDER BY started_at, rowid").fetchall()
    except Exception:
        raise HttpError(500, "failed to retrieve queue metrics") from None
    body = {"queue_depth": counts.get("queued", 0), "running_count": counts.get("running", 0),
            "delayed_count": delayed, "dead_count": counts.get("dead", 0)}
    if active:
        body["active_jobs"] = [{"job_id": r["id"], "plugin": r["plugin"], "command": r["command"],
                                "started_at": r["started_at"]} for r in active]
        lanes: Dict[str, int] = {}
        for row in active:
            lanes[row["plugin"]] = lanes.get(row["plugin"], 0) + 1
        body["plugin_lanes"] = [{"plugin": p, "active_count": n} for p, n in sorted(lanes.items())]
    return 200, body


def analytics_summary(req: ApiRequest):
    since = format_ts(utc_now() - timedelta(hours=24))
    try:
        with req.ctx.db.read() as conn:
            rows = conn.execute("SELECT status, COUNT(*) FROM job_log WHERE completed_at >= ? GROUP BY status",
                                (since,)).fetchall()
    except Exception:
        raise HttpError(500, "failed to query analytics summary") from None
    return 200, {"stats": {status: count for status, count in sorted(rows)}, "window": "24h"}


# --- system (§4.9, §4.10) ----------------------------------------------------------------------

def system_reload(req: ApiRequest):
    if req.ctx.reload is None:
        raise HttpError(501, "reload not supported")
    error = req.ctx.reload()
    if error:
        raise HttpError(409, error)
    return 200, {"status": "ok", "reloaded_at": wire_time(utc_now().replace(microsecond=0)),
                 "message": "configuration reloaded"}


def config_view(req: ApiRequest):
    runtime = req.ctx.runtime()
    if runtime is None:
        raise HttpError(503, "config not available")
    cfg = runtime.config
    s = cfg.service
    body = {
        "service": {"Name": s.name, "TickInterval": int(s.tick_interval), "LogLevel": s.log_level,
                    "LogFormat": s.log_format, "DedupeTTL": int(s.dedupe_ttl),
                    "JobLogRetention": int(s.job_log_retention), "JobQueueRetention": int(s.job_queue_retention),
                    "JobTransitionsRetention": int(s.job_transitions_retention),
                    "JobAttemptsRetention": int(s.job_attempts_retention),
                    "BreakerTransitionsRetention": int(s.breaker_transitions_retention),
                    "MaxWorkers": s.max_workers, "StrictMode": s.strict_mode, "AllowSymlinks": s.allow_symlinks},
        "api": _api_view(cfg),
        "state": {"Path": cfg.state_path},
        "plugins": {name: _plugin_view(entry) for name, entry in cfg.plugins.items()},
        "pipelines": None,
    }
    if cfg.webhooks:
        body["webhooks"] = [_webhook_view(h) for h in cfg.webhooks]
    if cfg.tokens:
        body["tokens"] = [_token_view(t) for t in cfg.tokens]
    if cfg.routes:
        body["routes"] = [{"From": r.from_plugin, "EventType": r.event_type, "To": r.to} for r in cfg.routes]
    compiled = runtime.routing.view() if runtime.routing is not None else {}
    if compiled:
        body["compiled_routes"] = compiled
    return 200, body


def _api_view(cfg) -> dict:
    view = {"enabled": cfg.api.enabled, "listen": cfg.api.listen}
    inline = [t for t in cfg.api.tokens if t.source.startswith("api.")]
    if inline:
        view["tokens"] = [{"scopes": list(t.scopes) or None} for t in inline]
    return view


def _plugin_view(entry) -> dict:
    view = {"enabled": entry.enabled}
    if entry.uses:
        view["uses"] = entry.uses
    if entry.schedules:
        view["schedules"] = [_schedule_view(s) for s in entry.schedules]
    if entry.config:
        view["config"] = redact_tree(dict(entry.config))
    view["retry"] = {"MaxAttempts": entry.max_attempts, "BackoffBase": int(entry.backoff_base)}
    view["timeouts"] = {name.capitalize(): int(entry.timeout_for(name)) for name in ("poll", "handle", "health",
                                                                                    "init")}
    view["circuit_breaker"] = {"Threshold": entry.breaker_threshold, "ResetAfter": int(entry.breaker_reset_after)}
    if entry.parallelism:
        view["parallelism"] = entry.parallelism
    return view


def _schedule_view(s) -> dict:
    return {"ID": s.id, "Every": int(s.every or 0), "Cron": s.cron or "", "At": s.at or "",
            "After": int(s.after or 0), "Jitter": int(s.jitter), "CatchUp": s.catch_up, "IfRunning": s.if_running,
            "OnlyBetween": s.only_between or "", "Timezone": s.timezone or "", "NotOn": list(s.not_on),
            "Command": s.command, "Payload": redact_tree(dict(s.payload)) if s.payload else None,
            "PreferredWindow": ""}


def _webhook_view(hook) -> dict:
    view = {}
    if hook.name:
        view["name"] = hook.name
    view.update({"path": hook.path, "plugin": hook.plugin, "secret_ref": hook.secret_ref,
                 "signature_header": hook.signature_header, "max_body_size": hook.max_body_size})
    return view


def _token_view(entry) -> dict:
    view = {"name": entry.name}
    _put(view, description=entry.description, created_at=entry.created_at)
    return view


# --- shared helpers ------------------------------------------------------------------------

def result_fields(text) -> dict:
    """``result`` per §1.3: parsed JSON, else the text; over 1 MiB → a truncated string."""
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode("utf-8", "replace")
    raw = text.encode("utf-8")
    if len(raw) > MAX_RESULT_BYTES:
        return {"result": raw[:MAX_RESULT_BYTES].decode("utf-8", "ignore"), "result_truncated": True}
    try:
        return {"result": json.loads(text)}
    except ValueError:
        return {"result": text}


def _put(target: dict, **values) -> None:
    """Set keys whose value is present (the ``"x"?`` rule of §1.3)."""
    for key, value in values.items():
        if value not in (None, "", 0, False, [], {}):
            target[key] = value

