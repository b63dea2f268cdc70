"""``POST /pipeline/{name}``: API-triggered runs, async and synchronous (spec 30 §9, 40 §4.5).

The checks run in the documented order — unknown (404), disabled entry
(409), fan-out under sync (400), no sync slot (503, nothing enqueued),
baggage claims (400) — then one transaction enqueues the whole entry, and a
synchronous caller waits on the hub until the run's tree is idle.
"""
from __future__ import annotations

import time
import uuid

from ductile_lib.api_handlers import HttpError, _payload_from_body, tree_items
from ductile_lib.context_store import load_context
from ductile_lib.router import SWITCH_PLUGIN, RoutingError
from ductile_lib.timefmt import wire_ts

FAILED_STATUSES = ("failed", "timed_out", "dead")


def trigger(req):
    runtime = req.ctx.runtime()
    name = req.params["pipeline"]
    pipeline = runtime.routing.pipelines.get(name) if runtime.routing else None
    if pipeline is None:
        raise HttpError(404, "pipeline not found")
    event = _event(pipeline, req.body)
    entries = entry_plugins(pipeline)
    if not entries:
        raise HttpError(500, "pipeline has no entry points")
    if any(plugin != SWITCH_PLUGIN and not runtime.is_enabled(plugin) for plugin in entries):
        raise HttpError(409, "plugin disabled")
    sync = pipeline.execution_mode == "synchronous" and req.query.get("async") != "true"
    if sync and len(entries) != 1:
        raise HttpError(400, "synchronous pipeline trigger requires exactly one entry dispatch; use ?async=true "
                             "for fan-out entry pipelines")
    slots = req.ctx.sync_slots() if sync else None
    if slots is not None and not slots.acquire(blocking=False):
        raise HttpError(503, "too many concurrent synchronous requests")
    try:
        return _run(req, runtime, pipeline, event, sync)
    finally:
        if slots is not None:
            slots.release()


def _event(pipeline, body) -> dict:
    _, payload = _payload_from_body(body)
    if payload is None:
        payload = {}
    if not isinstance(payload, dict):
        raise HttpError(400, "payload must be a JSON object")
    return {"type": pipeline.on or "api.pipeline.trigger", "payload": payload, "source": "api",
            "timestamp": wire_ts(), "event_id": str(uuid.uuid4())}


def entry_plugins(pipeline) -> list:
    """Plugins of the entry dispatches (a starting split counts one per branch)."""
    return [pipeline.nodes[node_id].plugin for node_id in pipeline.entry_dispatches()]


def _run(req, runtime, pipeline, event: dict, sync: bool):
    ctx = req.ctx
    subscription = ctx.hub.subscribe(queue_size=100_000) if sync else None
    try:
        children = _enqueue(ctx, runtime, pipeline, event)
        ctx.wake()
        job_ids = [c.job_id for c in children]
        ctx.hub.publish("pipeline.enqueued", {"at": wire_ts(), "job_count": len(job_ids), "job_id": job_ids[0],
                                              "job_ids": job_ids, "pipeline": pipeline.name, "submitted_by": "api"})
        if not sync:
            return 202, {"job_id": job_ids[0], "status": "queued", "plugin": "pipeline", "command": pipeline.name}
        return _wait(ctx, runtime, pipeline, job_ids[0], subscription)
    finally:
        if subscription is not None:
            subscription.close()


def _enqueue(ctx, runtime, pipeline, event: dict) -> list:
    try:
        with ctx.db.write() as conn:
            children = ctx.router.start_run(conn, runtime, pipeline, event, "api", chain=-1)
    except RoutingError as exc:
        raise HttpError(400, "root baggage claims failed: %s" % exc) from None
    except Exception:
        raise HttpError(500, "failed to enqueue job") from None
    if not children:
        raise HttpError(500, "failed to enqueue job")
    return children


def _wait(ctx, runtime, pipeline, root_id: str, subscription):
    """Block until no tree job is queued or running (two equal reads), or the timeout."""
    subscriptions = [subscription]
    try:
        return _wait_loop(ctx, pipeline, root_id, subscriptions)
    finally:
        for each in subscriptions:
            each.close()


def _wait_loop(ctx, pipeline, root_id: str, subscriptions: list):
    limit = ctx.runtime().config.api.max_sync_timeout.seconds
    timeout = min(pipeline.timeout_s, limit) if limit > 0 else pipeline.timeout_s
    started = time.monotonic()
    deadline = started + timeout
    previous = None
    while True:
        items = tree_items(ctx, root_id, with_parent=False)
        if not any(item["status"] in ("queued", "running") for item in items):
            if previous == len(items):
                return 200, _summary(ctx, pipeline, root_id, items, started)
            previous = len(items)
            continue  # confirm with a second read: a child may have been committed meanwhile
        previous = None
        left = deadline - time.monotonic()
        if left <= 0:
            return 202, {"job_id": root_id, "status": "running", "timeout_exceeded": True,
                         "message": "Pipeline still running after timeout."}
        if subscriptions[-1].disconnected:  # fell behind a very busy hub: only the wake-ups are lost
            subscriptions.append(ctx.hub.subscribe(queue_size=100_000))
        subscriptions[-1].get(timeout=left)  # every job start and end publishes an event


def _summary(ctx, pipeline, root_id: str, items: list, started: float) -> dict:
    status = "succeeded"
    for item in items:
        if item["status"] in FAILED_STATUSES:
            status = item["status"]
    body = {"job_id": root_id, "status": status, "duration_ms": int((time.monotonic() - started) * 1000)}
    body.update(_final_result(ctx, pipeline, items))
    body["tree"] = items
    return body


def _final_result(ctx, pipeline, items: list) -> dict:
    """The last tree job of this run on a terminal node; else the entry job's (§9.1 step 11)."""
    chosen = items[0]
    with ctx.db.read() as conn:
        entry_ctx = _context_of(conn, items[0]["job_id"])
        instance = entry_ctx.instance_id if entry_ctx else ""
        for item in items:
            context = _context_of(conn, item["job_id"])
            if (context is not None and context.pipeline == pipeline.name and context.instance_id == instance
                    and pipeline.is_terminal(context.step_id)):
                chosen = item
    if "result" in chosen:
        return {"result": chosen["result"], **({"result_truncated": True} if chosen.get("result_truncated") else {})}
    return {"result": None}


def _context_of(conn, job_id: str):
    row = conn.execute("SELECT event_context_id FROM job_queue WHERE id = ?", (job_id,)).fetchone()
    try:
        return load_context(conn, row[0]) if row and row[0] else None
    except ValueError:
        return None

