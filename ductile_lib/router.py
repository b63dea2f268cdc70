"""Turn a finished job's events into child jobs (spec 30 §4, §8).

Everything here runs inside the job's terminal transaction (the queue's
``extra_writes`` hook), so children, their context rows, split frames,
arrivals and hook jobs commit together with the job's status or not at
all.  A :class:`RoutingError` rolls them all back; the dispatcher then ends
the job ``failed``.
"""
from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import List, Optional

from ductile_lib.baggage import BaggageError, accrete, merge_branches
from ductile_lib.context_store import (ContextRow, arrival_contexts, insert_context, load_context, open_frame,
                                       record_arrival, stop_frames)
from ductile_lib.logs import get_logger
from ductile_lib.timefmt import wire_ts as _now_text

SWITCH_PLUGIN = "core.switch"
STEP_SUCCEEDED = "ductile.step.succeeded"
ZERO_TIME = "0001-01-01T00:00:00Z"


class RoutingError(Exception):
    """Routing cannot complete; every child of the job is rolled back."""


@dataclass(frozen=True)
class Outcome:
    """How a job ended, as the router and hooks need it."""

    status: str  # succeeded | failed | dead
    events: tuple = ()  # completed plugin events (dicts), or the switch's re-typed event
    result: str = ""  # the plugin's `result` string
    error: str = ""
    reason: str = ""
    timed_out: bool = False
    duration_ms: int = 0
    recovery: bool = False


@dataclass
class Child:
    """A job the router enqueued (published as ``router.enqueued`` after commit)."""

    job_id: str
    parent_job_id: str
    plugin: str
    command: str
    pipeline: str
    step_id: str
    event_context_id: str

    def event(self) -> dict:
        return {"job_id": self.job_id, "parent_job_id": self.parent_job_id, "plugin": self.plugin,
                "command": self.command, "pipeline": self.pipeline, "step_id": self.step_id,
                "event_context_id": self.event_context_id}


@dataclass
class _Run:
    """What one routing pass shares: the connection, the emitting job, what it created."""

    conn: object
    runtime: object
    job: object
    chain: int  # the emitting job's chain depth
    children: List[Child] = field(default_factory=list)
    emitter: Optional[ContextRow] = None  # the emitting job's own context (names the upstream step)


class Router:
    """Routing decisions; stateless apart from its collaborators."""

    def __init__(self, queue, log=None):
        self.queue = queue
        self.log = log or get_logger("dispatch")

    # --- entry points -------------------------------------------------------------

    def on_terminal(self, conn, runtime, job, outcome: Outcome) -> List[Child]:
        """Children and hook jobs of a job that just reached ``outcome.status``."""
        source = load_context(conn, job.event_context_id)
        run = _Run(conn, runtime, job, source.chain_depth if source else 0, emitter=source)
        if outcome.status == "succeeded":
            for event in self._events_to_route(job, source, outcome):
                self._route_event(run, source, event)
        elif source is not None:
            self._stop_frames(conn, source, "job %s" % outcome.status)
        if job.is_root:
            self._fire_hooks(run, outcome)
        return run.children

    def start_run(self, conn, runtime, pipeline, event: dict, submitted_by: str, parent=None,
                  chain: int = 0, claims_context: Optional[dict] = None) -> List[Child]:
        """A new run of ``pipeline`` at its entries (API trigger or hook)."""
        run = _Run(conn, runtime, parent, chain)
        self._new_run(run, pipeline, event, submitted_by, claims_context or {})
        return run.children

    # --- which events a finished job routes (§4.1) -------------------------------------

    def _events_to_route(self, job, source: Optional[ContextRow], outcome: Outcome) -> list:
        if job.plugin == SWITCH_PLUGIN:
            return list(outcome.events)
        events, seen = [], set()
        for raw in outcome.events:
            event = complete_event(raw, outcome.result, job.plugin)
            if event["event_id"] in seen:
                self.log.warn("duplicate event_id in plugin response dropped", event_id=event["event_id"])
                continue
            seen.add(event["event_id"])
            events.append(event)
        if not events and source is not None and source.pipeline and source.step_id:
            events.append(complete_event({"type": STEP_SUCCEEDED, "payload": {"result": outcome.result or ""}},
                                         "", job.plugin))
        return events

    def _route_event(self, run: _Run, source: Optional[ContextRow], event: dict) -> None:
        table = run.runtime.routing
        if source is not None and source.pipeline and source.step_id:
            pipeline = table.pipelines.get(source.pipeline)
            if pipeline is not None:
                for edge in pipeline.successors(source.step_id, event["type"]):
                    self._follow(run, pipeline, edge, source, event)
        if event["type"].startswith("ductile."):
            return
        for pipeline in table.triggered_by(event["type"]):
            if self._start_allowed(pipeline, run.job.plugin, event, source):
                self._new_run(run, pipeline, event, "route", source.accumulated if source else {})
        for route in table.routes:
            if route.from_plugin == run.job.plugin and route.event_type == event["type"]:
                self._route_child(run, route.to, event)

    def _start_allowed(self, pipeline, plugin: str, event: dict, source: Optional[ContextRow]) -> bool:
        if pipeline.from_plugin and pipeline.from_plugin != plugin:
            return False
        if pipeline.condition is None:
            return True
        scope = {"payload": event.get("payload")}
        if source is not None:
            scope["context"] = source.accumulated
        return pipeline.condition.evaluate(scope)

    # --- resolving nodes (§4.3) -------------------------------------------------------------

    def _follow(self, run: _Run, pipeline, edge, source: ContextRow, event: dict) -> None:
        """A transition inside a run; the budget guards jobs, never an arrival at a join (§4.6)."""
        target = pipeline.nodes.get(edge.target)
        if target is None:
            return
        if target.kind == "join":
            self._arrive(run, pipeline, target, source)
            return
        if self._over_budget(run, pipeline, source):
            return
        self._resolve(run, pipeline, target, source, event, "route", source.splits)

    def _over_budget(self, run: _Run, pipeline, source: ContextRow) -> bool:
        if pipeline.max_depth > 0 and source.route_depth >= pipeline.max_depth:
            self.log.warn("pipeline depth budget exhausted", pipeline=pipeline.name, step_id=source.step_id,
                          route_depth=source.route_depth, route_max_depth=pipeline.max_depth)
            self._stop_frames(run.conn, source, "depth budget exhausted")
            return True
        return False

    def _resolve(self, run: _Run, pipeline, node, source: ContextRow, event: dict, submitted_by: str,
                 splits: list, claims_context: Optional[dict] = None) -> None:
        if node.kind == "fork":
            self._fork(run, pipeline, node, source, event, submitted_by, splits, claims_context)
        elif node.kind == "join":
            self._arrive(run, pipeline, node, source)
        else:
            self._job_node(run, pipeline, node, source, event, submitted_by, splits, claims_context)

    def _fork(self, run, pipeline, node, source, event, submitted_by, splits, claims_context) -> None:
        frame_id = open_frame(run.conn, pipeline.name, source.instance_id, node.id, node.branch_count, event)
        for edge in pipeline.successors(node.id, event["type"]):
            branch = splits + [{"frame": frame_id, "branch": edge.branch or 0}]
            target = pipeline.nodes[edge.target]
            self._resolve(run, pipeline, target, source, event, submitted_by, branch, claims_context)

    def _job_node(self, run: _Run, pipeline, node, source: ContextRow, event: dict, submitted_by: str,
                  splits: list, claims_context: Optional[dict]) -> None:
        plugin, command = node.plugin, node.command or "handle"  # a switch node is core.switch/handle
        if not self._guards_pass(run, plugin, command, event, source, splits):
            return
        claimed = {}
        if node.claims is not None and not node.claims.is_empty():
            context = source.accumulated if claims_context is None else claims_context
            try:
                claimed = node.claims.apply(event.get("payload"), context)
            except BaggageError as exc:
                raise RoutingError("apply baggage claims for %s:%s: %s" % (pipeline.name, node.id, exc)) from None
        control = {"pipeline_instance_id": source.instance_id, "route_depth": source.route_depth + 1}
        if run.chain + 1 > 0:
            control["chain_depth"] = run.chain + 1
        if pipeline.max_depth > 0:
            control["route_max_depth"] = pipeline.max_depth
        if splits:
            control["splits"] = splits
        accumulated = self._accrete(source.accumulated, claimed, control)
        context = insert_context(run.conn, source.id, pipeline.name, node.id, accumulated)
        payload = _with_upstream(event, run.job, run.emitter)
        self._enqueue(run, plugin, command, payload, event, submitted_by, context, pipeline.name, node.id)

    def _accrete(self, parent: dict, claimed: dict, control: dict) -> dict:
        try:
            accumulated = accrete(parent, claimed)
        except BaggageError as exc:
            raise RoutingError(str(exc)) from None
        accumulated = dict(accumulated)
        accumulated["ductile"] = {**{k: v for k, v in accumulated.get("ductile", {}).items()
                                     if k not in ("splits", "route_max_depth")}, **control}
        return accumulated

    def _arrive(self, run: _Run, pipeline, join, source: ContextRow) -> None:
        """A branch exit reached the join: record it; the last arrival fires the successors once."""
        stack = source.splits
        if not stack:
            return
        innermost = stack[-1]
        frame = record_arrival(run.conn, innermost["frame"], int(innermost["branch"]), run.job.id, source.id)
        if frame is None:
            return
        merged = self._merge_arrivals(run.conn, frame["id"])
        depth = max(c.route_depth for c in merged)
        control = {**source.control, "route_depth": depth}
        control["splits"] = stack[:-1]
        if not control["splits"]:
            control.pop("splits")
        try:
            accumulated = merge_branches([c.accumulated for c in merged])
        except BaggageError as exc:
            raise RoutingError(str(exc)) from None
        accumulated = dict(accumulated)
        accumulated["ductile"] = control
        join_ctx = insert_context(run.conn, source.id, pipeline.name, join.id, accumulated)
        entry_event = json.loads(frame["entry_event_json"])
        for edge in pipeline.successors(join.id, entry_event.get("type", "")):
            target = pipeline.nodes.get(edge.target)
            if target is None:
                continue
            if target.kind == "join":
                self._arrive(run, pipeline, target, join_ctx)
            elif not self._over_budget(run, pipeline, join_ctx):
                self._resolve(run, pipeline, target, join_ctx, entry_event, "route", join_ctx.splits)

    def _merge_arrivals(self, conn, frame_id: str) -> list:
        return [load_context(conn, context_id) for context_id in arrival_contexts(conn, frame_id)]

    # --- new runs, plain routes, hooks ---------------------------------------------------

    def _new_run(self, run: _Run, pipeline, event: dict, submitted_by: str, claims_context: dict) -> None:
        control = {"pipeline_instance_id": str(uuid.uuid4()), "route_depth": 0}
        if pipeline.max_depth > 0:
            control["route_max_depth"] = pipeline.max_depth
        root = insert_context(run.conn, None, pipeline.name, "", {"ductile": control})
        for entry in pipeline.entries:
            self._resolve(run, pipeline, pipeline.nodes[entry], root, event, submitted_by, [], claims_context)

    def _route_child(self, run: _Run, target: str, event: dict) -> None:
        """A plain ``routes:`` child: no run, no baggage, only the chain depth (§1)."""
        if not self._guards_pass(run, target, "handle", event, None, []):
            return
        context = insert_context(run.conn, None, "", "", {"ductile": {"chain_depth": run.chain + 1}})
        payload = _with_upstream(event, run.job, run.emitter)
        self._enqueue(run, target, "handle", payload, event, "route", context, "", "")

    def _fire_hooks(self, run: _Run, outcome: Outcome) -> None:
        entry = run.runtime.plugin_config(run.job.plugin)
        if entry is None or not entry.notify_on_complete or run.job.submitted_by == "hook":
            return
        for signal in hook_signals(outcome):
            event = hook_event(signal, run.job, outcome)
            for pipeline in run.runtime.routing.hooked_on(signal):
                if self._start_allowed(pipeline, run.job.plugin, event, None):
                    hook_run = _Run(run.conn, run.runtime, run.job, 0, run.children)
                    self._new_run(hook_run, pipeline, event, "hook", {})

    # --- guards and enqueue (§4.4, §4.6) --------------------------------------------------

    def _guards_pass(self, run: _Run, plugin: str, command: str, event: dict, source: Optional[ContextRow],
                     splits: list) -> bool:
        max_chain = run.runtime.config.service.max_chain_depth
        if run.chain + 1 > max_chain:
            self.log.warn("event chain depth limit reached", job_id=getattr(run.job, "id", ""),
                          event_type=event.get("type"), plugin=plugin, command=command, chain_depth=run.chain + 1,
                          max_chain_depth=max_chain)
            self._stop_stack(run.conn, splits, "chain depth limit")
            return False
        if plugin != SWITCH_PLUGIN and not run.runtime.is_enabled(plugin):
            self.log.warn("plugin disabled; job not enqueued", plugin=plugin, command=command)
            self._stop_stack(run.conn, splits, "plugin disabled")
            return False
        return True

    def _enqueue(self, run: _Run, plugin: str, command: str, payload: dict, event: dict, submitted_by: str,
                 context: ContextRow, pipeline: str, step_id: str) -> None:
        entry = run.runtime.plugin_config(plugin)
        max_attempts = entry.max_attempts if entry is not None else 4
        parent = run.job.id if run.job is not None else None
        result = self.queue.enqueue(plugin, command, payload, submitted_by, max_attempts=max_attempts,
                                    dedupe_key=(event.get("dedupe_key") or "").strip() or None,
                                    parent_job_id=parent if submitted_by != "api" else None,
                                    source_event_id=event.get("event_id") if submitted_by != "api" else None,
                                    event_context_id=context.id, config_snapshot_id=run.runtime.snapshot_id,
                                    conn=run.conn)
        if result.dropped:
            return
        run.children.append(Child(result.job_id, parent or "", plugin, command, pipeline, step_id, context.id))

    def _stop_frames(self, conn, source: ContextRow, reason: str) -> None:
        self._stop_stack(conn, source.splits, reason)

    def _stop_stack(self, conn, splits: list, reason: str) -> None:
        for frame_id in stop_frames(conn, [s["frame"] for s in splits if isinstance(s, dict) and "frame" in s]):
            self.log.warn("split stopped; join will not fire", frame=frame_id, reason=reason)


def complete_event(raw: dict, result: str, plugin: str) -> dict:
    """Fill what a plugin left out (§4.1): result, event_id, timestamp, source."""
    payload = dict(raw.get("payload") or {})
    if result and "result" not in payload:
        payload["result"] = result
    event = {"type": raw["type"], "payload": payload}
    if (raw.get("dedupe_key") or "").strip():
        event["dedupe_key"] = raw["dedupe_key"].strip()
    event["source"] = raw.get("source") or plugin
    timestamp = raw.get("timestamp")
    event["timestamp"] = timestamp if timestamp and timestamp != ZERO_TIME else _now_text()
    event["event_id"] = raw.get("event_id") or str(uuid.uuid4())
    return event


def _with_upstream(event: dict, job, source: Optional[ContextRow]) -> dict:
    """The child's stored envelope; its payload gains the ``ductile_upstream_*`` keys if absent."""
    payload = dict(event.get("payload") or {})
    if job is not None:
        upstream = {"ductile_upstream_plugin": job.plugin,
                    "ductile_upstream_pipeline": source.pipeline if source else "",
                    "ductile_upstream_step_id": source.step_id if source else ""}
        for key, value in upstream.items():
            if value:  # the original leaves empty upstream keys out
                payload.setdefault(key, value)
    envelope = {"type": event["type"], "payload": payload}
    if event.get("dedupe_key"):
        envelope["dedupe_key"] = event["dedupe_key"]
    envelope.update({"source": event.get("source", ""), "timestamp": event.get("timestamp") or _now_text(),
                     "event_id": event.get("event_id") or str(uuid.uuid4())})
    return envelope


def hook_signals(outcome: Outcome) -> list:
    """§8: every terminal outcome fires job.completed; failures add job.failed / job.timed_out."""
    signals = ["job.completed"]
    if outcome.status in ("failed", "dead"):
        signals.append("job.failed")
    if outcome.timed_out or outcome.status == "timed_out":
        signals.append("job.timed_out")
    return signals


def hook_event(signal: str, job, outcome: Outcome) -> dict:
    payload = {"job_id": job.id, "plugin": job.plugin, "command": job.command, "status": outcome.status,
               "attempt": job.attempt, "duration_ms": outcome.duration_ms}
    if outcome.status == "succeeded":
        text = "Job completed [%s]" % job.plugin + (": %s" % outcome.result if outcome.result else "")
        payload["result"] = outcome.result
    else:
        if outcome.timed_out:
            text = "Job timed out [%s]" % job.plugin
        else:
            text = "Job failed [%s]" % job.plugin + (": %s" % outcome.error if outcome.error else "")
        payload["error"] = outcome.error
        payload["reason"] = outcome.reason
        if outcome.recovery:
            payload["recovery"] = True
    payload["message"] = payload["text"] = text
    return {"type": signal, "payload": payload, "source": job.plugin, "timestamp": _now_text(),
            "event_id": str(uuid.uuid4())}


def terminal_hooks(router, runtime, reason: str):
    """``(extra_writes, children)`` so jobs ended outside the dispatcher still fire hooks (§8).

    Used for scheduler cancels and reload kills: the queue calls
    ``extra_writes`` inside the transaction that ends each job.
    """
    children: list = []
    if router is None:
        return None, children

    def writes(conn, job):
        outcome = Outcome(job.status, error=job.last_error or "", reason=reason)
        children.extend(router.on_terminal(conn, runtime, job, outcome))

    return writes, children
