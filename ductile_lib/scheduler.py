"""The scheduler thread: sleep until something is due, then enqueue it (spec 20 §5, §6).

Time maths lives in ``schedule.py`` and the durable per-entry memory in
``schedule_entries.py``; this module decides, per entry, whether to fire
now, why not, and when to look again.  Between those times the thread
waits on a condition (E7): no per-tick scanning when nothing is due.  The
housekeeping tick (``service.tick_interval``) runs retention, reconciles
breakers and wakes the dispatcher so jobs other processes wrote are seen.
"""
from __future__ import annotations

import random
import threading
import traceback
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Optional

from ductile_lib import breakers, schedule
from ductile_lib.durations import to_timedelta as _delta
from ductile_lib.events import terminal_failure_event
from ductile_lib.router import terminal_hooks
from ductile_lib.logs import get_logger
from ductile_lib.schedule_entries import EntryRow, load_entry, newest_terminal_job, save_entry
from ductile_lib.timefmt import format_ts, parse_ts_or_none as schedule_ts, utc_now

CANCEL_REASON = "cancelled by scheduler (if_running=cancel)"


@dataclass(frozen=True)
class EntryRef:
    """One configured schedule of one enabled plugin."""

    plugin: str
    sched: object  # config_schedules.Schedule
    entry: object  # config.PluginConfig

    @property
    def key(self) -> tuple:
        return (self.plugin, self.sched.id)

    @property
    def dedupe_key(self) -> str:
        return "%s:%s:%s" % (self.plugin, self.sched.command, self.sched.id)


class Scheduler:
    """Evaluates schedule entries when due; runs housekeeping on each tick."""

    def __init__(self, runtime, queue, hub, dispatcher, *, clock=utc_now, rng=None, log=None, router=None):
        self._runtime = runtime  # () -> Runtime
        self.queue = queue
        self.db = queue.db
        self.hub = hub
        self.dispatcher = dispatcher
        self.router = router  # fires hooks of jobs the scheduler cancels
        self.clock = clock
        self.rng = rng or random.Random()
        self.log = log or get_logger("scheduler")
        self._cond = threading.Condition()
        self._stopping = False
        self._dirty: set = set()  # entry keys to evaluate at the next wake
        self._evaluate_all = True
        self._wake_at: dict = {}  # entry key -> when to evaluate it next
        self._next_tick: Optional[datetime] = None
        self._process_start: Optional[datetime] = None
        self._thread: Optional[threading.Thread] = None

    # --- lifecycle -------------------------------------------------------------

    def start(self, background: bool = True) -> None:
        """Process-start work (after re-arm, outcomes, catch-up), then the loop.

        ``background=False`` skips the thread so a caller (a test with a fake
        clock) can drive passes itself with :meth:`run_once`.
        """
        self._process_start = self.clock()
        self._startup(self._process_start)
        self.run_once()
        if background:
            self._thread = threading.Thread(target=self._loop, name="scheduler", daemon=True)
            self._thread.start()

    def run_once(self) -> None:
        """One pass: the tick if due, then every entry that is due or flagged."""
        with self._cond:
            evaluate_all, dirty = self._evaluate_all, set(self._dirty)
            self._evaluate_all, self._dirty = False, set()
        self._wake(evaluate_all, dirty)

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def reload(self) -> None:
        """Schedule changes apply at once: evaluate every entry now (§8.4)."""
        self._warn_disabled()
        with self._cond:
            self._evaluate_all = True
            self._cond.notify_all()

    def job_finished(self, job, status: str) -> None:
        """Outcome of a terminal job: ``every`` timing, breaker, overlap release."""
        cfg = self._runtime().config
        if job.submitted_by != cfg.service.name:
            return
        ref = self._ref_for_job(job)
        try:
            self._reconcile(job.plugin, job.command)
            if ref is not None and ref.sched.every is not None:
                self._apply_outcome(ref, job.id, status, self.clock())
        except Exception as exc:
            self.log.error("could not record scheduled job outcome", job_id=job.id, error=str(exc))
        with self._cond:
            for other in self._refs():
                if (other.plugin, other.sched.command) == (job.plugin, job.command):
                    self._dirty.add(other.key)
            self._cond.notify_all()

    # --- the loop ----------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._cond:
                timeout = self._seconds_until_next_wake()
                if not self._dirty and not self._evaluate_all and (timeout is None or timeout > 0):
                    self._cond.wait(timeout)
                if self._stopping:
                    return
            try:
                self.run_once()
            except Exception as exc:
                self.log.error("scheduler pass failed", error=str(exc), traceback=traceback.format_exc())
                with self._cond:
                    self._next_tick = self.clock() + timedelta(seconds=5)

    def _seconds_until_next_wake(self) -> Optional[float]:
        times = [t for t in list(self._wake_at.values()) + [self._next_tick] if t is not None]
        if not times:
            return None
        return max(0.0, (min(times) - self.clock()).total_seconds())

    def _wake(self, evaluate_all: bool, dirty: set) -> None:
        now = self.clock()
        tick_due = self._next_tick is not None and now >= self._next_tick
        if tick_due:
            self._housekeeping(now)
        due = {key for key, at in list(self._wake_at.items()) if at is not None and at <= now}
        for ref in self._refs():
            if evaluate_all or tick_due or ref.key in dirty or ref.key in due:
                self._evaluate_safely(ref, now, report_not_due=tick_due)

    def _refs(self) -> list:
        """Entries of enabled plugins in plugin-name order, config order within."""
        runtime = self._runtime()
        refs = []
        for name in runtime.enabled_plugins():
            entry = runtime.plugin_config(name)
            refs.extend(EntryRef(name, sched, entry) for sched in entry.schedules)
        return refs

    def _ref_for_job(self, job) -> Optional[EntryRef]:
        for ref in self._refs():
            if ref.plugin == job.plugin and job.dedupe_key and (
                    job.dedupe_key == ref.dedupe_key or job.dedupe_key.startswith(ref.dedupe_key + ":catchup:")):
                return ref
        return None

    # --- process start -------------------------------------------------------------

    def _startup(self, now: datetime) -> None:
        self._warn_disabled()
        for ref in self._refs():
            try:
                self._startup_entry(ref, now)
            except Exception as exc:
                self.log.error("schedule start-up step failed", plugin=ref.plugin, schedule_id=ref.sched.id,
                               error=str(exc))
        self._housekeeping(now)

    def _startup_entry(self, ref: EntryRef, now: datetime) -> None:
        row = load_entry(self.db, ref.plugin, ref.sched.id, ref.sched.command)
        if ref.sched.after is not None:
            row = row.with_(status="active", reason=None, next_run_at=now + _delta(ref.sched.after))
            save_entry(self.db, row, now)
        if ref.sched.every is not None:
            row = self._startup_outcome(ref, row, now)
            if ref.sched.catch_up != "skip":
                self._catch_up(ref, row, now)

    def _startup_outcome(self, ref: EntryRef, row: EntryRow, now: datetime) -> EntryRow:
        """Apply the newest terminal job once if it finished after the last fire."""
        job = newest_terminal_job(self.db, ref.plugin, ref.sched.command, self._service_name(), ref.dedupe_key)
        if job is None:
            return row
        completed = schedule_ts(job["completed_at"])
        if completed is None or (row.last_fired_at is not None and completed <= row.last_fired_at):
            return row
        return self._apply_outcome(ref, job["id"], job["status"], now, completed_at=completed)

    def _catch_up(self, ref: EntryRef, row: EntryRow, now: datetime) -> None:
        base = row.last_fired_at or row.last_success_at
        if base is None:
            return
        interval = _delta(ref.sched.every)
        slots = schedule.catch_up_slots(now, base, interval, ref.sched.catch_up)
        if not slots:
            return
        for slot in slots:
            key = "%s:catchup:%s" % (ref.dedupe_key, schedule.catch_up_slot_text(slot))
            self._enqueue(ref, key, ttl_s=interval.total_seconds(), schedule_id="catch_up")
        last = schedule.catch_up_last_fired(now, base, interval, ref.sched.catch_up, len(slots))
        next_run = schedule.catch_up_next_run(last, interval, row.next_run_at)
        save_entry(self.db, row.with_(last_fired_at=last, next_run_at=next_run), now)
        self.log.info("Processed startup catch-up", plugin=ref.plugin, schedule_id=ref.sched.id, jobs=len(slots))

    def _warn_disabled(self) -> None:
        runtime = self._runtime()
        for name, entry in runtime.config.plugins.items():
            if entry.schedules and not runtime.is_enabled(name):
                self.log.warn("plugin disabled; schedules ignored", plugin=name)

    # --- housekeeping --------------------------------------------------------------

    def _housekeeping(self, now: datetime) -> None:
        cfg = self._runtime().config
        with self._cond:
            self._next_tick = now + _delta(cfg.service.tick_interval)
        self.hub.publish("scheduler.tick", {"at": format_ts(now)})
        for plugin, command in sorted({(r.plugin, r.sched.command) for r in self._refs()}):
            self._reconcile(plugin, command)
        service = cfg.service
        try:
            counts = self.queue.prune(job_log_s=service.job_log_retention.seconds,
                                      job_queue_s=service.job_queue_retention.seconds,
                                      job_transitions_s=service.job_transitions_retention.seconds,
                                      job_attempts_s=service.job_attempts_retention.seconds,
                                      breaker_transitions_s=service.breaker_transitions_retention.seconds)
            if any(counts.values()):
                self.log.info("retention pruned rows", **counts)
        except Exception as exc:
            self.log.error("retention failed", error=str(exc))
        self.dispatcher.wake()

    # --- evaluating one entry (§5.4) ----------------------------------------------------

    def _evaluate_safely(self, ref: EntryRef, now: datetime, report_not_due: bool = False) -> None:
        try:
            self._evaluate(ref, now, report_not_due)
        except Exception as exc:
            self.log.error("schedule evaluation failed; retrying at the next tick", plugin=ref.plugin,
                           schedule_id=ref.sched.id, error=str(exc))
            self._wake_at.pop(ref.key, None)

    def _evaluate(self, ref: EntryRef, now: datetime, report_not_due: bool = False) -> None:
        sched = ref.sched
        self._wake_at.pop(ref.key, None)
        row = load_entry(self.db, ref.plugin, sched.id, sched.command)
        if row.command != sched.command:
            row = row.with_(command=sched.command, last_success_job_id=None, last_success_at=None,
                            next_run_at=None, status="active" if row.status == "paused_invalid" else row.status)
            save_entry(self.db, row, now)
        if row.status in ("paused_manual", "exhausted"):
            return self._skipped(ref, "schedule_paused_manual" if row.status == "paused_manual"
                                 else "schedule_exhausted", log=False)
        invalid = self._defensive_check(ref)
        if invalid:
            save_entry(self.db, row.with_(status="paused_invalid", reason=invalid), now)
            return self._skipped(ref, invalid, log=False)
        if row.status == "paused_invalid":
            row = row.with_(status="active", reason=None)
        due, row = self._due(ref, row, now)
        if not due:
            self._wake_at[ref.key] = row.next_run_at
            if report_not_due:
                self._skipped(ref, "not_due", next_run_at=format_ts(row.next_run_at) if row.next_run_at else None,
                              log=False)
            return
        if self._blocked(ref, row, now):
            return
        self._fire(ref, row, now)

    def _defensive_check(self, ref: EntryRef) -> Optional[str]:
        plugin = self._runtime().plugin(ref.plugin)
        if ref.sched.command == "handle":
            return "scheduled_handle_disallowed"
        if plugin is None or not plugin.has_command(ref.sched.command):
            return "command_not_supported"
        if ref.sched.every is None and ref.sched.cron is None and ref.sched.at is None and ref.sched.after is None:
            return "invalid_schedule_config"
        return None

    def _due(self, ref: EntryRef, row: EntryRow, now: datetime):
        """(due, row) per §5.4 step 4; a changed ``next_run_at`` is stored."""
        sched = ref.sched
        if sched.every is not None:
            return row.next_run_at is None or now >= row.next_run_at, row
        if sched.cron is not None:
            due, next_run = schedule.cron_due(sched.cron, _zone(sched), now, row.next_run_at)
            if next_run != row.next_run_at and next_run is not None:
                row = row.with_(next_run_at=next_run)
                save_entry(self.db, row, now)
            return due, row
        if row.next_run_at is None:
            base = schedule_ts(sched.at) if sched.at else self._process_start + _delta(sched.after)
            row = row.with_(next_run_at=base)
            save_entry(self.db, row, now)
        return now >= row.next_run_at, row

    def _blocked(self, ref: EntryRef, row: EntryRow, now: datetime) -> bool:
        """Constraints, breaker and overlap (§5.4 steps 5–7); True when skipped."""
        sched = ref.sched
        block = schedule.constraint_block(now, sched.only_between, sched.not_on, _zone(sched))
        if block is not None:
            reason, retry_at = block
            self._wake_at[ref.key] = retry_at
            self._skipped(ref, reason)
            return True
        self._reconcile(ref.plugin, sched.command)
        decision = breakers.gate(self.db, ref.plugin, sched.command, ref.entry.breaker_reset_after.seconds, now)
        if decision.half_opened:
            self.hub.publish("scheduler.circuit_half_open", {"plugin": ref.plugin, "command": sched.command})
        if not decision.allowed:
            self._wake_at[ref.key] = decision.retry_at
            self._skipped(ref, "circuit_open")
            return True
        reason = self._overlap(ref)
        if reason:
            self._skipped(ref, reason)  # re-evaluated when a job of (plugin, command) ends, or at the tick
            return True
        return False

    def _overlap(self, ref: EntryRef) -> Optional[str]:
        sched = ref.sched
        submitter = self._service_name() if sched.command == "poll" else None
        outstanding = self.queue.count_outstanding(ref.plugin, sched.command, submitted_by=submitter)
        if sched.if_running == "skip" and outstanding > 0:
            return "already_running"
        if sched.if_running == "queue" and outstanding >= max(1, ref.entry.max_outstanding_polls):
            return "outstanding_limit"
        if sched.if_running == "cancel" and outstanding:
            self._cancel_outstanding(ref)
        return None

    def _cancel_outstanding(self, ref: EntryRef) -> None:
        writes, children = terminal_hooks(self.router, self._runtime(), "cancelled")
        for job in self.queue.cancel_outstanding(ref.plugin, ref.sched.command, CANCEL_REASON, extra_writes=writes):
            self.dispatcher.terminate(job.id)
            self.hub.publish(*terminal_failure_event(job, "dead", CANCEL_REASON, job.duration_ms or 0))
        for child in children:
            self.hub.publish("router.enqueued", child.event())

    def _fire(self, ref: EntryRef, row: EntryRow, now: datetime) -> None:
        sched = ref.sched
        if self._enqueue(ref, ref.dedupe_key, ttl_s=0, schedule_id=sched.id):
            self.log.info("Enqueued scheduled job", plugin=ref.plugin, command=sched.command, schedule_id=sched.id)
        if sched.every is not None:
            next_run = schedule.every_next(now, _delta(sched.every), _delta(sched.jitter), self.rng)
            row = row.with_(last_fired_at=now, next_run_at=next_run)
        elif sched.cron is not None:
            row = row.with_(last_fired_at=now, next_run_at=schedule.cron_next(sched.cron, now, _zone(sched)))
        else:
            row = row.with_(last_fired_at=now, status="exhausted", reason="one_shot_exhausted", next_run_at=None)
        save_entry(self.db, row, now)
        if row.next_run_at is not None:
            self._wake_at[ref.key] = row.next_run_at

    def _enqueue(self, ref: EntryRef, dedupe_key: str, ttl_s: float, schedule_id: str) -> bool:
        runtime = self._runtime()
        result = self.queue.enqueue(ref.plugin, ref.sched.command, dict(ref.sched.payload), self._service_name(),
                                    max_attempts=ref.entry.max_attempts, dedupe_key=dedupe_key, dedupe_ttl_s=ttl_s,
                                    config_snapshot_id=runtime.snapshot_id)
        if result.dropped:
            self.log.info("Skipped enqueue due to dedupe hit", plugin=ref.plugin, schedule_id=ref.sched.id,
                          existing_job_id=result.existing_job_id)
            return False
        self.hub.publish("scheduler.scheduled", {"job_id": result.job_id, "plugin": ref.plugin,
                                                 "command": ref.sched.command, "schedule_id": schedule_id,
                                                 "submitted_by": self._service_name()})
        self.dispatcher.wake()
        return True

    def _apply_outcome(self, ref: EntryRef, job_id: str, status: str, now: datetime,
                       completed_at: Optional[datetime] = None) -> EntryRow:
        """``every``: next run = completed_at + interval + jitter (E7); remember successes."""
        row = load_entry(self.db, ref.plugin, ref.sched.id, ref.sched.command)
        if completed_at is None:
            job = self.queue.get(job_id)
            completed_at = schedule_ts(job.completed_at) if job and job.completed_at else now
        changes = {"next_run_at": schedule.every_next(completed_at, _delta(ref.sched.every),
                                                      _delta(ref.sched.jitter), self.rng)}
        if status == "succeeded":
            changes.update(last_success_job_id=job_id, last_success_at=completed_at)
        row = row.with_(**changes)
        save_entry(self.db, row, now)
        with self._cond:
            self._wake_at[ref.key] = row.next_run_at
            self._cond.notify_all()
        return row

    def _reconcile(self, plugin: str, command: str) -> None:
        entry = self._runtime().plugin_config(plugin)
        threshold = entry.breaker_threshold if entry else 3
        change = breakers.reconcile(self.db, plugin, command, self._service_name(), threshold, self.clock())
        if change is not None:
            self.hub.publish("scheduler.circuit_state_changed", {
                "plugin": plugin, "command": command, "previous_state": change.previous_state,
                "state": change.state, "failure_count": change.failure_count})
            self.log.info("Circuit breaker state changed", plugin=plugin, command=command,
                          previous_state=change.previous_state, state=change.state,
                          failure_count=change.failure_count)

    def _skipped(self, ref: EntryRef, reason: str, next_run_at: Optional[str] = None, log: bool = True) -> None:
        data = {"plugin": ref.plugin, "schedule_id": ref.sched.id, "command": ref.sched.command, "reason": reason}
        if next_run_at:
            data["next_run_at"] = next_run_at
        self.hub.publish("scheduler.skipped", data)
        if log:
            self.log.info("Skipped scheduled job", plugin=ref.plugin, schedule_id=ref.sched.id, reason=reason)

    def _service_name(self) -> str:
        return self._runtime().config.service.name


def _zone(sched):
    return sched.timezone or None
