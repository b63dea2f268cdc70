"""``system start``: wire the engine together and run until a signal (spec 20 §8).

The start order, the PID lock, crash recovery, SIGHUP reload in place (E5)
and the graceful drain on SIGINT/SIGTERM (E6) live here; every other
module only knows its own concern.
"""
from __future__ import annotations

import json
import os
from dataclasses import replace
import signal
import threading
import uuid
from typing import Optional

from ductile_lib import __version__
from ductile_lib.config import Config, load_config
from ductile_lib.config_load import ConfigError
from ductile_lib.config_view import display_tree
from ductile_lib.db import Database, DatabaseError
from ductile_lib.dispatcher import Dispatcher
from ductile_lib.events import EventHub, terminal_failure_event
from ductile_lib.hashing import blake3_hex
from ductile_lib.logs import default_sink, get_logger
from ductile_lib.pidlock import LockHeld, PidLock
from ductile_lib.queue import JobQueue
from ductile_lib.router import Outcome, Router, terminal_hooks
from ductile_lib.runtime import Runtime, build_runtime
from ductile_lib.scheduler import Scheduler
from ductile_lib.state import StateStore
from ductile_lib.timefmt import now_ts

RESTART_ONLY = (("state.path", lambda c: c.state_path), ("api.listen", lambda c: c.api.listen),
                ("api.enabled", lambda c: c.api.enabled), ("webhooks.listen", lambda c: c.webhooks_listen))


class StartError(Exception):
    """Start refused; ``code`` is the exit status (78 config, 1 runtime)."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


class Gateway:
    """One running gateway process."""

    def __init__(self, config_path: Optional[str] = None, config_dir: Optional[str] = None):
        self.config_path = config_path
        self.config_dir = config_dir
        self.log = get_logger("main")
        self.hub = EventHub()
        self.runtime: Optional[Runtime] = None
        self.db: Optional[Database] = None
        self.lock: Optional[PidLock] = None
        self.queue = self.state = self.scheduler = self.dispatcher = None
        self.api_server = self.webhook_server = None
        self.router: Optional[Router] = None
        self._signal = threading.Event()
        self._stop_requested = False
        self._reload_requested = False
        self._reload_lock = threading.Lock()

    # --- start ----------------------------------------------------------------

    def start(self) -> None:
        """Everything up to and including the running scheduler and workers."""
        cfg = self._load()
        self._apply_logging(cfg)
        self.log.info("starting ductile", version=__version__, config=cfg.root_file, source=cfg.source_label)
        self.lock = PidLock(cfg.pid_path)
        try:
            self.lock.acquire()
        except LockHeld as exc:
            raise StartError(str(exc), 1) from None
        try:
            runtime = build_runtime(cfg, log=self.log)
        except ConfigError as exc:
            raise StartError(exc.message, 78) from None
        try:
            self.db = Database(cfg.state_path, on_info=lambda note: self.log.info(note))
        except DatabaseError as exc:
            raise StartError("database error: %s" % exc, 1) from None
        self.runtime = replace(runtime, snapshot_id=self._record_snapshot(cfg, "startup"))
        self.queue = JobQueue(self.db)
        self.state = StateStore(self.db)
        self.router = Router(self.queue)
        self._recover_orphans()
        self.dispatcher = Dispatcher(lambda: self.runtime, self.queue, self.state, self.hub,
                                     on_terminal=self._on_terminal, router=self.router)
        self.scheduler = Scheduler(lambda: self.runtime, self.queue, self.hub, self.dispatcher, router=self.router)
        self.scheduler.start()
        self.dispatcher.start()
        self._start_listeners(cfg)
        self.log.info("ductile running (press Ctrl+C to stop)", pid=os.getpid(),
                      max_workers=cfg.service.max_workers, plugins=self.runtime.enabled_plugins())

    def _start_listeners(self, cfg: Config) -> None:
        """API and webhook listeners (spec 40 §1.1); a bind failure is fatal (exit 1)."""
        from ductile_lib.api import ApiContext, ApiServer  # the HTTP layer loads only when it listens
        from ductile_lib.webhooks import WebhookServer

        try:
            if cfg.api.enabled:
                if not self.runtime.config.api.tokens:
                    self.log.warn("no API tokens configured")
                ctx = ApiContext(lambda: self.runtime, self.queue, self.db, self.hub, wake=self.dispatcher.wake,
                                 reload=self.reload, config_label=self.config_path or self.config_dir or
                                 cfg.config_dir, router=self.router)
                self.api_server = ApiServer(cfg.api.listen, ctx)
                self.api_server.start()
                self.log.info("api listening", listen=cfg.api.listen, port=self.api_server.port)
            if cfg.webhooks_listen:
                self.webhook_server = WebhookServer(cfg.webhooks_listen, lambda: self.runtime, self.queue,
                                                    self.dispatcher.wake)
                self.webhook_server.start()
                self.log.info("webhook listener started", listen=cfg.webhooks_listen)
        except OSError as exc:
            self.log.error("component failed", error=str(exc))
            self.shutdown()
            raise StartError("component failed: %s" % exc, 1) from None

    def _load(self) -> Config:
        try:
            return load_config(self.config_path, self.config_dir)
        except ConfigError as exc:
            raise StartError(exc.message, 78 if exc.code != 2 else 2) from None

    def _apply_logging(self, cfg: Config) -> None:
        sink = default_sink()
        sink.set_level(cfg.service.log_level)
        sink.set_secrets(cfg.secret_values())

    def _recover_orphans(self) -> None:
        """Crash recovery; recovery-dead root jobs fire their hooks like any outcome (§8)."""
        children = []

        def hooks(conn, job):
            outcome = Outcome("dead", error=job.last_error or "", reason="recovery", recovery=True)
            children.extend(self.router.on_terminal(conn, self.runtime, job, outcome))

        report = self.queue.recover_orphans(extra_writes=hooks)
        for child in children:
            self.hub.publish("router.enqueued", child.event())
        for job in report.dead:
            self.hub.publish("job.failed", {"job_id": job.id, "plugin": job.plugin, "command": job.command,
                                            "status": "dead", "error": job.last_error, "recovery": True})

    def _on_terminal(self, job, status: str) -> None:
        if self.scheduler is not None:
            self.scheduler.job_finished(job, status)

    def _record_snapshot(self, cfg: Config, reason: str) -> Optional[str]:
        """A ``config_snapshots`` row (sanitized config, stable hash); jobs are stamped with its id."""
        sanitized = json.dumps(display_tree(cfg), sort_keys=True, separators=(",", ":"), default=str)
        digest = blake3_hex(("format:1\n" + sanitized).encode("utf-8"))
        snapshot_id = "cfg_" + uuid.uuid4().hex
        try:
            with self.db.write() as conn:
                conn.execute(
                    "INSERT INTO config_snapshots (id, config_hash, source_hash, source_path, source, reason, "
                    "loaded_at, ductile_version, binary_path, snapshot_format, sanitized_config) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?)",
                    (snapshot_id, digest, _file_hash(cfg.root_file), cfg.root_file, cfg.source_label, reason,
                     now_ts(), __version__, os.path.abspath(__file__), sanitized))
        except Exception as exc:  # optional table content: never fatal
            self.log.warn("could not record config snapshot", error=str(exc))
            return None
        return snapshot_id

    # --- run -----------------------------------------------------------------

    def run_forever(self) -> int:
        """Serve until SIGINT/SIGTERM; SIGHUP reloads.  Returns the exit code."""
        self._install_signals()
        while True:
            self._signal.wait()
            self._signal.clear()
            if self._stop_requested:
                break
            if self._reload_requested:
                self._reload_requested = False
                self.reload()
        return self.shutdown()

    def _install_signals(self) -> None:
        def stop(signum, frame):
            self._stop_requested = True
            self._signal.set()

        def hup(signum, frame):
            self._reload_requested = True
            self._signal.set()

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGHUP, hup)

    def request_stop(self) -> None:
        self._stop_requested = True
        self._signal.set()

    # --- reload (E5) ------------------------------------------------------------

    def reload(self) -> Optional[str]:
        """Swap in a new config in place; return an error text, or None on success."""
        with self._reload_lock:
            try:
                new = self._prepare_reload()
            except ConfigError as exc:
                self.log.error("config reload failed", error="config reload rejected: %s" % exc.message)
                return "config reload rejected: %s" % exc.message
            old = self.runtime
            self.runtime = new
            self._apply_logging(new.config)
            self._retire_jobs(old, new)
            self._init_newly_enabled(old, new)
            self.scheduler.reload()
            self.dispatcher.wake()
            self.log.info("config reloaded successfully")
            return None

    def _prepare_reload(self) -> Runtime:
        cfg = load_config(self.config_path, self.config_dir)
        runtime = build_runtime(cfg, log=self.log)
        for key, read in RESTART_ONLY:
            if read(cfg) != read(self.runtime.config):
                raise ConfigError("changes to %s require a full restart" % key)
        return replace(runtime, snapshot_id=self._record_snapshot(cfg, "reload"))

    def _retire_jobs(self, old: Runtime, new: Runtime) -> None:
        """Queued jobs of removed or newly disabled plugins end ``dead`` (§8.4 step 4)."""
        reasons = {}
        for name in set(old.config.plugins) | set(old.discovery.plugins):
            if new.plugin(name) is None or new.plugin_config(name) is None:
                reasons[name] = "plugin removed"
            elif not new.is_enabled(name):
                reasons[name] = 'plugin "%s" disabled by config reload' % name
        if not reasons:
            return
        writes, children = terminal_hooks(self.router, new, "reload")
        for job in self.queue.kill_queued(reasons, extra_writes=writes):
            self.hub.publish(*terminal_failure_event(job, "dead", job.last_error))
        for child in children:
            self.hub.publish("router.enqueued", child.event())

    def _init_newly_enabled(self, old: Runtime, new: Runtime) -> None:
        for name in new.enabled_plugins():
            plugin = new.plugin(name)
            if not old.is_enabled(name) and plugin.has_command("init"):
                self.queue.enqueue(name, "init", {}, "reload", max_attempts=new.plugin_config(name).max_attempts,
                                   config_snapshot_id=new.snapshot_id)

    # --- shutdown (E6) ------------------------------------------------------------

    def shutdown(self) -> int:
        """Stop intake, drain within shutdown_timeout, re-queue leftovers, exit 0."""
        self.log.info("received shutdown signal")
        if self.api_server is not None:
            self.api_server.stop(10.0)
        if self.webhook_server is not None:
            self.webhook_server.stop(5.0)
        if self.scheduler is not None:
            self.scheduler.stop()
        if self.dispatcher is not None:
            self.dispatcher.stop_intake()
            timeout = self.runtime.config.service.shutdown_timeout.seconds
            if not self.dispatcher.drain(timeout):
                leftovers = self.dispatcher.interrupt_all()
                self.log.warn("shutdown timeout reached; terminating running jobs", count=len(leftovers))
                self.dispatcher.drain(15.0)
        if self.db is not None:
            try:
                with self.db.write() as conn:
                    conn.execute("PRAGMA optimize")
            except Exception:
                pass
            self.db.close()
        if self.lock is not None:
            self.lock.release()
        self.log.info("ductile stopped")
        return 0


def _file_hash(path: str) -> Optional[str]:
    try:
        with open(path, "rb") as handle:
            return blake3_hex(handle.read())
    except OSError:
        return None


def run_gateway(config_path: Optional[str] = None, config_dir: Optional[str] = None) -> int:
    """Entry point for ``system start``."""
    gateway = Gateway(config_path, config_dir)
    try:
        gateway.start()
    except StartError as exc:
        gateway.log.error("start refused", error=str(exc))
        if gateway.lock is not None:
            gateway.lock.release()
        raise
    return gateway.run_forever()
