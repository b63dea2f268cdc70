"""The worker pool: claim queued jobs and run them (spec 20 §4).

One dispatcher thread claims jobs while fewer than ``max_workers`` run and
hands each to a worker thread.  It sleeps on a condition until something
can change the answer — an in-process enqueue, a worker finishing, the
earliest retry time, a reload or the housekeeping tick (E10) — so an idle
gateway uses no CPU.
"""
from __future__ import annotations

import json
import sqlite3
import threading
import time
import traceback
from dataclasses import replace
from datetime import timedelta
from typing import Callable, Optional

from ductile_lib import runner, steps
from ductile_lib.context_store import load_context
from ductile_lib.events import terminal_failure_event
from ductile_lib.logs import get_logger
from ductile_lib.queue import JobNotRunning
from ductile_lib.router import SWITCH_PLUGIN, Outcome, RoutingError
from ductile_lib.state import StateError
from ductile_lib.timefmt import format_ts, utc_now


class Dispatcher:
    """Claims and runs jobs under the runtime current at claim time."""

    def __init__(self, runtime: Callable, queue, state, hub, *, on_terminal: Callable = None,
                 router=None, clock=utc_now, log=None):
        self._runtime = runtime  # () -> Runtime; read at each claim
        self.queue = queue
        self.state = state
        self.hub = hub
        self.on_terminal = on_terminal  # (job, status) -> None; the scheduler's outcome hook
        self.router = router  # router.Router: children and hook jobs inside the terminal transaction
        self.clock = clock
        self.log = log or get_logger("dispatch")
        self._cond = threading.Condition()
        self._dirty = True
        self._intake = True
        self._stopping = False
        self._active = 0
        self._running: dict = {}  # job id -> runner.Cancellation
        self._cancelled: set = set()  # job ids whose row was already ended by someone else
        self._thread: Optional[threading.Thread] = None

    # --- lifecycle ---------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="dispatcher", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Something may be claimable now (enqueue, tick, reload)."""
        with self._cond:
            self._dirty = True
            self._cond.notify_all()

    def stop_intake(self) -> None:
        """Claim nothing more; in-flight jobs carry on (shutdown step 1)."""
        with self._cond:
            self._intake = False
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def drain(self, timeout_s: float) -> bool:
        """Wait until no job runs, at most ``timeout_s``; True when drained."""
        deadline = time.monotonic() + max(0.0, timeout_s)
        with self._cond:
            while self._active:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def interrupt_all(self) -> list:
        """Terminate every running plugin; their jobs go back to ``queued``."""
        with self._cond:
            cancellations = list(self._running.items())
        for _, cancellation in cancellations:
            cancellation.cancel()
        return [job_id for job_id, _ in cancellations]

    def terminate(self, job_id: str) -> bool:
        """Stop a job whose row another component already ended (if_running=cancel)."""
        with self._cond:
            self._cancelled.add(job_id)
            cancellation = self._running.get(job_id)
        if cancellation is None:
            return False
        cancellation.cancel()
        return True

    def active_count(self) -> int:
        with self._cond:
            return self._active

    # --- the claim loop ------------------------------------------------------

    def _loop(self) -> None:
        while True:
            timeout = self._seconds_until_next_retry()
            with self._cond:
                if not self._dirty and not self._stopping:
                    self._cond.wait(timeout)
                if self._stopping:
                    return
                self._dirty = False
            try:
                self._fill_slots()
            except Exception as exc:  # a DB hiccup must not kill the pool
                self.log.error("claim failed", error=str(exc))
                self._sleep_briefly()

    def _sleep_briefly(self) -> None:
        with self._cond:
            self._cond.wait(1.0)

    def _seconds_until_next_retry(self) -> Optional[float]:
        try:
            due = self.queue.next_retry_at()
        except Exception:
            return 5.0
        if due is None:
            return None
        return max(0.0, (due - self.clock()).total_seconds()) + 0.001

    def _fill_slots(self) -> None:
        """Start a worker per claimable job while slots are free."""
        while True:
            runtime = self._runtime()
            with self._cond:
                if not self._intake or self._active >= runtime.max_workers:
                    return
                self._active += 1  # reserve the slot before claiming
            claimed = self._claim(runtime)
            if claimed is None:
                self._release_slot(changed=False)
                return
            threading.Thread(target=self._work, args=claimed, name="worker", daemon=True).start()

    def _claim(self, runtime, conn=None):
        """``(job, runtime, cancellation, state)`` for the next eligible job, or None.

        Inside an open transaction (``conn``) the job's plugin state is read
        there too, saving the worker a separate read before it spawns.
        """
        job = self.queue.claim(runtime.parallelism, runtime.snapshot_id)
        if job is None:
            return None
        state = None
        if conn is not None:
            try:
                state = self.state.read_state(conn, job.plugin)
            except StateError:
                state = None  # the normal path reports it and fails the job
        cancellation = runner.Cancellation()
        with self._cond:
            self._running[job.id] = cancellation
        return job, runtime, cancellation, state

    def _work(self, job, runtime, cancellation, state=None) -> None:
        """Run jobs in this slot until none is claimable.

        A worker claims its next job itself rather than handing back to the
        dispatcher thread: under load that saves a thread start and two
        context switches per job.
        """
        try:
            claimed = (job, runtime, cancellation, state)
            while claimed is not None:
                claimed = self._run_one(*claimed) or self._claim_next()
        finally:
            self._release_slot()

    def _claim_next(self, conn=None):
        runtime = self._runtime()
        with self._cond:
            if not self._intake or self._active > runtime.max_workers:
                return None
        try:
            return self._claim(runtime, conn)
        except Exception as exc:
            self.log.error("claim failed", error=str(exc))
            return None

    def _release_slot(self, changed: bool = True) -> None:
        """Free a slot; ``changed`` when a job ran (its end may unblock others)."""
        with self._cond:
            self._active -= 1
            self._dirty = self._dirty or changed
            self._cond.notify_all()

    def _run_one(self, job, runtime, cancellation, state=None):
        """Run one job; return the next job if it was claimed in the same transaction."""
        execution = JobExecution(self, job, runtime, cancellation, state)
        try:
            execution.run()
        except JobNotRunning:
            self.log.info("job was ended elsewhere while it ran (cancel or reload)", job_id=job.id)
        except Exception as exc:
            self.log.error("job crashed inside the gateway", job_id=job.id, error=str(exc),
                           traceback=traceback.format_exc())
            self._end_after_crash(job, exc)
        finally:
            cancellation.close()
            with self._cond:
                self._running.pop(job.id, None)
                self._cancelled.discard(job.id)
                self._cond.notify_all()
        return execution.take_prefetched()

    def _end_after_crash(self, job, exc: Exception) -> None:
        """Every accepted job reaches a terminal state, even after our own bug."""
        try:
            current = self.queue.get(job.id)
            if current is not None and current.status == "running":
                self.queue.complete(current, "failed", last_error="internal error: %s" % exc)
        except Exception as inner:
            self.log.error("could not fail crashed job", job_id=job.id, error=str(inner))

    def was_cancelled(self, job_id: str) -> bool:
        with self._cond:
            return job_id in self._cancelled


class JobExecution:
    """The per-job sequence of spec 20 §4.3 for one claimed job."""

    def __init__(self, dispatcher: Dispatcher, job, runtime, cancellation, state=None):
        self.d = dispatcher
        self.preloaded_state = state  # read in the transaction that claimed the job, if any
        self.job = job
        self.runtime = runtime
        self.cancellation = cancellation
        self.service_name = runtime.config.service.name
        self.log = dispatcher.log.bind(job_id=job.id, plugin=job.plugin, command=job.command)
        self.started = time.monotonic()
        self.poll_event = job.command == "poll" and job.submitted_by == self.service_name
        self.prefetched = None  # the worker's next job, claimed inside our terminal transaction
        self._committed = False
        self._outcome = Outcome("failed")  # what the router sees at the terminal write
        self.children: list = []

    def run(self) -> None:
        job = self.job
        self.log.info("job started", attempt=job.attempt)
        if self.poll_event:
            self._publish("poll.started", schedule_id=self._schedule_id(), submitted_by=job.submitted_by,
                          attempt=job.attempt)
        self.d.hub.publish("job.started", {"job_id": job.id, "plugin": job.plugin, "command": job.command,
                                           "attempt": job.attempt, "parent_job_id": job.parent_job_id or "",
                                           "submitted_by": job.submitted_by})
        context, problem = self._preflight()
        self._publish("job.preflight", decision="fail" if problem else "run", reason=problem or "")
        if problem:
            return self._end("failed", problem)
        if job.plugin == SWITCH_PLUGIN:
            return self._run_switch(context)
        plugin, entry = self.runtime.plugin(job.plugin), self.runtime.plugin_config(job.plugin)
        if plugin is None or entry is None:
            return self._end("dead", "plugin removed")
        if not entry.enabled:
            return self._end("dead", 'plugin "%s" is disabled' % job.plugin)
        if not plugin.has_command(job.command):
            return self._end("failed", 'plugin "%s" does not support command "%s"' % (job.plugin, job.command))
        try:
            state = self.preloaded_state if self.preloaded_state is not None else \
                self.d.state.get_state(job.plugin)
        except StateError as exc:
            return self._end("failed", str(exc))
        request = self._request(entry, state, context)
        if isinstance(request, str):
            return self._end("failed", request)
        self._execute(plugin, entry, request)

    def _preflight(self):
        """``(context row, None)`` or ``(None, reason)``: the job's event context must load (§3.6)."""
        if not self.job.event_context_id:
            return None, None
        try:
            with self.d.queue.db.read() as conn:
                return load_context(conn, self.job.event_context_id), None
        except (ValueError, sqlite3.Error) as exc:
            return None, "failed to load event context: %s" % exc

    def _request(self, entry, state: dict, ctx):
        """The protocol request (with context, event and ``with``), or an error text that fails the job."""
        job = self.job
        step = steps.step_info(ctx)
        context = steps.plugin_context(job.plugin, ctx, step)
        event, payload = None, job.payload
        if (job.command == "handle" or step is not None) and job.payload:
            event, error = runner.build_handle_event(job.payload, context,
                                                     lenient=job.submitted_by.startswith("webhook:"))
            if error:
                return error
            if step is not None:
                error = steps.apply_with(self.runtime, ctx, event, context, dict(entry.config))
                if error:
                    return error
                if job.command != "handle":
                    payload = event.get("payload")
        deadline = self.d.clock() + timedelta(seconds=entry.timeout_for(job.command).seconds)
        return runner.build_request(job.id, job.command, dict(entry.config), state, payload, context, event,
                                    format_ts(deadline))

    def _run_switch(self, ctx) -> None:
        """``core.switch``: evaluate in-process, succeed, route the event re-typed (§4.7)."""
        matched, event = steps.evaluate_switch(self.runtime, ctx, self.job.payload)
        result = json.dumps({"matched": matched, "event": event["type"]}, separators=(",", ":"))
        self._outcome = Outcome("succeeded", events=(event,))
        self._complete_succeeded(result, None)

    def _execute(self, plugin, entry, request: dict) -> None:
        job = self.job
        timeout = entry.timeout_for(job.command)
        self.log.info("plugin executing", entrypoint=plugin.entrypoint, timeout=int(timeout))
        result = runner.run_plugin(plugin.entrypoint, request, timeout.seconds, log=self.log,
                                   on_spawn=self._on_spawn, cancel=self.cancellation)
        if result.outcome == "interrupted":
            if not self.d.was_cancelled(job.id):
                self.d.queue.requeue_interrupted(job)
                self.log.warn("job interrupted by shutdown; re-queued")
            return
        if result.outcome == "ok":
            return self._succeed(plugin, result)
        self._fail(entry, result)

    def _terminal_writes(self, conn, job_after) -> None:
        """Inside the terminal transaction: routing writes, then claim the next job.

        Claiming here saves the worker one transaction per job under load;
        the claim is a savepoint, so its failure never undoes this job's end.
        """
        if self.d.router is not None:
            outcome = replace(self._outcome, status=job_after.status, duration_ms=self._duration_ms())
            self.children = self.d.router.on_terminal(conn, self.runtime, job_after, outcome)
        self.prefetched = self.d._claim_next(conn)

    def take_prefetched(self):
        """The prefetched claim if its transaction committed; else release it."""
        claimed, self.prefetched = self.prefetched, None
        if claimed is None or self._committed:
            return claimed
        job, _, cancellation, _ = claimed
        cancellation.close()
        with self.d._cond:
            self.d._running.pop(job.id, None)
        return None

    def _on_spawn(self, pid: int) -> None:
        self._publish("plugin.spawned", pid=pid)

    def _succeed(self, plugin, result) -> None:
        job = self.job
        updates = (result.response or {}).get("state_updates")
        if isinstance(updates, dict) and updates:
            try:
                self.d.state.apply_updates(job.plugin, job.command, job.id, updates,
                                           plugin.fact_rules_for(job.command))
            except StateError as exc:
                return self._end("failed", str(exc), result=result.stdout, stderr=result.stderr)
        response = result.response or {}
        self._outcome = Outcome("succeeded", events=tuple(response.get("events") or ()),
                                result=response.get("result") or "")
        self._complete_succeeded(result.stdout, result.stderr)

    def _complete_succeeded(self, stdout, stderr) -> None:
        """Commit success with its children; a routing error ends the job ``failed`` instead."""
        job = self.job
        try:
            self.d.queue.complete(job, "succeeded", result=stdout, stderr=stderr, extra_writes=self._terminal_writes)
        except RoutingError as exc:
            self.children = []
            kind = "step-succeeded event" if self._routes_step_succeeded() else "events"
            self._outcome = Outcome("failed", error="failed to route %s: %s" % (kind, exc), reason="routing_error")
            return self._end("failed", self._outcome.error, result=stdout, stderr=stderr)
        self._committed = True
        self._publish_children()
        self.d.hub.publish("job.completed", {"job_id": job.id, "plugin": job.plugin, "status": "succeeded",
                                             "duration_ms": self._duration_ms()})
        self._finished("succeeded")

    def _routes_step_succeeded(self) -> bool:
        return not self._outcome.events and bool(self.job.event_context_id)

    def _publish_children(self) -> None:
        for child in self.children:
            self.d.hub.publish("router.enqueued", child.event())
        if self.children:
            self.d.wake()

    def _fail(self, entry, result) -> None:
        job = self.job
        self._outcome = Outcome("failed", error=result.error or "", reason=result.reason or "",
                                timed_out=result.outcome == "timeout")
        outcome = self.d.queue.fail(job, result.error, retryable=result.retryable, reason=result.reason,
                                    backoff_base_s=entry.backoff_base.seconds, result=result.stdout or None,
                                    stderr=result.stderr or None, timed_out=result.outcome == "timeout",
                                    extra_writes=self._terminal_writes)
        self._committed = True
        if outcome.status == "queued":
            self.d.hub.publish("job.retry_scheduled", {
                "job_id": job.id, "attempt": job.attempt, "max_attempts": job.max_attempts,
                "retry_count": job.attempt, "max_retries": job.max_attempts, "retry_policy_owner": "core",
                "plugin_retry_field": "v2_boundary_compatibility_signal", "backoff_ms": outcome.backoff_ms,
                "backoff_schedule": [outcome.backoff_ms], "next_retry_at": outcome.next_retry_at,
                "reason": result.reason})
            self._finished("queued", error=result.error)
            return
        self.d.hub.publish("job.retry_exhausted", {
            "job_id": job.id, "attempts": job.attempt, "final_error": result.error,
            "reason": "attempts_exhausted" if result.retryable else result.reason,
            **({"retry_decision_reason": result.reason} if result.retryable else {}),
            "retry_policy_owner": "core", "plugin_retry_field": "v2_boundary_compatibility_signal"})
        self._publish_children()
        self._publish_terminal(outcome.status, result.error, timed_out=result.outcome == "timeout")
        self._finished(outcome.status, error=result.error)

    def _end(self, status: str, error: str, result=None, stderr=None) -> None:
        """A terminal outcome decided before or around the plugin run (no retry)."""
        if self._outcome.status == "succeeded" or not self._outcome.error:
            self._outcome = Outcome(status, error=error, reason="preflight")
        self.d.queue.complete(self.job, status, last_error=error, result=result, stderr=stderr,
                              extra_writes=self._terminal_writes)
        self._committed = True
        self._publish_children()
        if result is None:
            self.log.warn("job ended without running", status=status, error=error)
        self._publish_terminal(status, error)
        self._finished(status, error=error)

    def _publish_terminal(self, status: str, error: str, timed_out: bool = False) -> None:
        self.d.hub.publish(*terminal_failure_event(self.job, status, error, self._duration_ms(), timed_out))

    def _finished(self, status: str, error: str = None) -> None:
        job = self.job
        if self.poll_event:
            data = {"schedule_id": self._schedule_id(), "submitted_by": job.submitted_by, "attempt": job.attempt,
                    "status": status, "outcome": status, "duration_ms": self._duration_ms()}
            if error:
                data["error"] = error
            self._publish("poll.completed", **data)
        if status != "queued" and self.d.on_terminal is not None:
            try:
                self.d.on_terminal(job, status)
            except Exception as exc:
                self.log.error("terminal hook failed", error=str(exc))
        self.log.info("job completed", status=status, duration="%.3fs" % (time.monotonic() - self.started))

    def _publish(self, event_type: str, **data) -> None:
        job = self.job
        self.d.hub.publish(event_type, {"job_id": job.id, "plugin": job.plugin, "command": job.command, **data})

    def _schedule_id(self) -> str:
        prefix = "%s:%s:" % (self.job.plugin, self.job.command)
        key = self.job.dedupe_key or ""
        return key[len(prefix):] if key.startswith(prefix) else ""

    def _duration_ms(self) -> int:
        return int((time.monotonic() - self.started) * 1000)
