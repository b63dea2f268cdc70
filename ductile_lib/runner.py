"""Run one plugin command: protocol v2 over a child process (engine spec §2).

A plugin is any executable.  Ductile starts it with no arguments in a new
process group, writes one JSON request (plus ``\\n``) to its stdin, reads one
JSON response from its stdout, and keeps its stderr for the job log.  This
module owns everything between "here is a request" and "here is a classified
result":

* :func:`build_request` and :func:`build_handle_event` shape what the plugin
  reads (§2.3, §2.4);
* :func:`run_plugin` runs the process under a deadline with bounded output
  capture (§2.1, §2.2);
* :func:`decode_response` validates what it wrote (§2.5);
* :class:`RunResult` says how it ended and whether a retry may help (§3.5).

Two rules shape the process handling:

* **No polling.**  One ``selectors`` loop in the calling thread waits on the
  stdin pipe (write side), stdout, stderr, a pidfd that becomes readable when
  the process exits, and an optional :class:`Cancellation`.  The select
  timeout is the time left before the deadline, so an idle worker sleeps in
  the kernel.  ``subprocess.run(timeout=...)`` and ``Popen.wait(timeout=...)``
  wake up on a timer to check, which costs throughput on a busy gateway.
* **Bounded memory.**  Output beyond the caps is read and dropped, so a
  plugin that prints gigabytes costs at most the caps.
"""
from __future__ import annotations

import json
import os
import re
import selectors
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Callable, Optional, Tuple

from ductile_lib.durations import SECOND, format_duration
from ductile_lib.timefmt import format_ts, parse_ts

PROTOCOL_VERSION = 2
MAX_STDOUT_BYTES = 10 * 1024 * 1024
MAX_STDERR_BYTES = 64 * 1024
KILL_GRACE_S = 5.0
NON_RETRYABLE_EXIT_CODE = 78
ZERO_TIMESTAMP = "0001-01-01T00:00:00Z"

READ_CHUNK_BYTES = 64 * 1024
LOGGED_STDOUT_CHARS = 1024
LOGGED_STDERR_CHARS = 1024

# RunResult.outcome values.
OUTCOME_OK = "ok"
OUTCOME_ERROR = "error"
OUTCOME_PROTOCOL_ERROR = "protocol_error"
OUTCOME_SPAWN_ERROR = "spawn_error"
OUTCOME_TIMEOUT = "timeout"
OUTCOME_INTERRUPTED = "interrupted"

# RunResult.reason values (spec 20 §3.5).
REASON_PLUGIN_ERROR = "plugin_error"
REASON_SPAWN_ERROR = "spawn_error"
REASON_TIMEOUT = "timeout"
REASON_EXIT_CODE_78 = "exit_code_78"
REASON_PLUGIN_RETRY_FALSE = "plugin_retry_false"
REASON_INTERRUPTED = "interrupted"

INTERRUPTED_ERROR = "plugin execution interrupted"

_RESPONSE_FIELDS = ("status", "result", "error", "retry", "events", "state_updates", "logs")
_EVENT_FIELDS = ("type", "payload", "dedupe_key", "source", "timestamp", "event_id")
_EVENT_STRING_FIELDS = ("dedupe_key", "source", "timestamp", "event_id")
_LOG_FIELDS = ("level", "message")

# Use a pidfd to learn about process exit when the platform has one; tests
# switch it off to exercise the fallback.
USE_PIDFD = hasattr(os, "pidfd_open")


# --------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class RunResult:
    """How one plugin run ended.

    ``error`` is the job's ``last_error`` text; ``retryable`` and ``reason``
    are the §3.5 classification, so the dispatcher only decides between
    retry, ``failed`` and ``dead``.  ``stdout`` is the plugin's answer
    verbatim (decoded as UTF-8 with replacement, at most 10 MiB) for
    replies and protocol errors, and ``""`` when there is no answer
    (timeout, interruption, start failure): it is ``job_log.result``.
    ``exit_code`` is None when no process ran, -1 when a signal killed it.
    """

    outcome: str
    response: Optional[dict]
    stdout: str
    stderr: str
    exit_code: Optional[int]
    error: Optional[str]
    retryable: bool
    reason: Optional[str]
    duration_s: float
    pid: Optional[int]

    @property
    def ok(self) -> bool:
        return self.outcome == OUTCOME_OK

    @property
    def job_log_result(self) -> Optional[str]:
        """Raw stdout for replies and protocol errors; None when the run
        produced no answer (timeout, start failure, interruption), §3.3."""
        if self.outcome in (OUTCOME_OK, OUTCOME_ERROR, OUTCOME_PROTOCOL_ERROR):
            return self.stdout
        return None


class ProtocolError(ValueError):
    """The plugin's stdout is not a valid protocol v2 response (§2.5)."""


class _ShapeError(ValueError):
    """A JSON value has the wrong shape; callers add their own prefix."""


# --------------------------------------------------------------------------
# Cancellation


class Cancellation:
    """A one-shot stop signal that a selector can wait on.

    ``threading.Event`` cannot wake a ``select`` call, and checking it on a
    timer would be polling.  So :meth:`cancel` also writes a byte to a pipe
    whose read end :meth:`fileno` hands to the run loop.  The pipe is made
    only when someone asks for it, so an unused Cancellation costs no file
    descriptors.  Safe to call from any thread, any number of times.
    """

    def __init__(self):
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._read_fd: Optional[int] = None
        self._write_fd: Optional[int] = None

    def cancel(self) -> None:
        """Ask the run to stop; it terminates the plugin as on timeout."""
        with self._lock:
            if self._event.is_set():
                return
            self._event.set()
            self._wake_locked()

    def is_cancelled(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Block until cancelled (or ``timeout``); True if cancelled."""
        return self._event.wait(timeout)

    def fileno(self) -> int:
        """A descriptor that becomes readable once :meth:`cancel` is called."""
        with self._lock:
            if self._read_fd is None:
                self._read_fd, self._write_fd = os.pipe()
                os.set_blocking(self._write_fd, False)
                if self._event.is_set():
                    self._wake_locked()
            return self._read_fd

    def close(self) -> None:
        """Release the pipe (if one was made); the flag keeps its value."""
        with self._lock:
            for fd in (self._read_fd, self._write_fd):
                if fd is not None:
                    os.close(fd)
            self._read_fd = self._write_fd = None

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown: nothing useful to do
            pass

    def _wake_locked(self) -> None:
        if self._write_fd is not None:
            try:
                os.write(self._write_fd, b"x")
            except (BlockingIOError, BrokenPipeError):
                pass  # already readable, or nobody listening


# --------------------------------------------------------------------------
# Requests


def build_request(job_id: str, command: str, config: Optional[dict], state: Optional[dict], payload,
                  context: Optional[dict], event: Optional[dict] = None, deadline_at=None) -> dict:
    """The protocol v2 request envelope (§2.3), keys in the reference's order.

    ``payload`` is included only when it is a JSON object: plugins written
    for the reference expect ``payload`` to be an object or absent.
    ``context`` is always an object so plugins can index it without checks.
    ``deadline_at`` may be an aware datetime or an RFC 3339 string.
    """
    request = {
        "protocol": PROTOCOL_VERSION,
        "job_id": job_id,
        "command": command,
        "config": config if config is not None else {},
        "state": state if state is not None else {},
    }
    if isinstance(payload, dict):
        request["payload"] = payload
    request["context"] = dict(context or {})
    if event is not None:
        request["event"] = event
    if deadline_at:
        request["deadline_at"] = format_ts(deadline_at) if isinstance(deadline_at, datetime) else deadline_at
    return request


def encode_request(request: dict) -> bytes:
    """The request as one compact JSON line in UTF-8.

    Values JSON cannot express become strings rather than crashing the
    worker; a lone surrogate becomes ``?`` since UTF-8 cannot carry it.
    """
    text = json.dumps(request, ensure_ascii=False, separators=(",", ":"), default=str)
    return (text + "\n").encode("utf-8", "replace")


def build_handle_event(payload, context: Optional[dict],
                       lenient: bool = False) -> Tuple[Optional[dict], Optional[str]]:
    """The ``event`` of a ``handle`` request from the job payload (§2.4 steps 1-3, 5).

    Returns ``(event, None)`` or ``(None, error)``; an error means the job
    fails without retry.  ``lenient`` is for webhook jobs, whose body is
    whatever a third party sent: it never fails (see :func:`_lenient_envelope`).
    Step 4 (a step's ``with:`` remap) belongs to the pipeline code.
    """
    context = context or {}
    if lenient:
        fields, job_payload = _lenient_envelope(payload)
        return _assemble_event(fields, job_payload, context), None
    try:
        fields = _decode_envelope(payload)
    except _ShapeError as error:
        return None, "failed to unmarshal event payload: %s" % error
    return _assemble_event(fields, payload, context), None


def _decode_envelope(payload) -> dict:
    """The envelope's fields that are present, type-checked.

    JSON ``null`` decodes to an empty envelope, as Go's decoder does.
    """
    if payload is None:
        return {}
    return _decode_event_fields(payload, "event envelope")


def _lenient_envelope(payload) -> Tuple[dict, object]:
    """Envelope fields and the "whole job payload" for a webhook body.

    An object with a ``type`` or ``payload`` key is read as an envelope if
    it decodes; otherwise the whole object is the event's payload and no
    other envelope field is taken from it.
    """
    if not isinstance(payload, dict):
        return {}, {}
    if "type" in payload or "payload" in payload:
        try:
            return _decode_envelope(payload), payload
        except _ShapeError:
            pass
    return {}, payload


def _assemble_event(fields: dict, job_payload, context: dict) -> dict:
    """Steps 2, 3 and 5: fill the payload, merge the context, serialize.

    The event payload is a copy so the caller's job payload is never changed.
    """
    body = fields.get("payload")
    if body is None:
        body = job_payload if not fields.get("type") and isinstance(job_payload, dict) else {}
    body = dict(body)
    for key, value in context.items():
        body.setdefault(key, value)
    event = {"type": fields.get("type", ""), "payload": body}
    for name in ("dedupe_key", "source"):
        if fields.get(name):
            event[name] = fields[name]
    event["timestamp"] = fields.get("timestamp") or ZERO_TIMESTAMP
    if fields.get("event_id"):
        event["event_id"] = fields["event_id"]
    return event


# --------------------------------------------------------------------------
# Responses


def decode_response(text: str) -> dict:
    """Validate a plugin's stdout and return the normalized response.

    The result always has every field: ``status``, ``result`` and ``error``
    (strings, ``""`` when absent), ``retry`` (bool or None), ``events`` (list
    of ``{type, payload, dedupe_key?, source?, timestamp?, event_id?}``),
    ``state_updates`` (dict, or None when absent) and ``logs`` (list of
    ``{level, message}``).  JSON ``null`` counts as absent, field names match
    case-insensitively and unknown fields are ignored, as with Go's decoder.
    Raises :class:`ProtocolError` with the §2.5 message.
    """
    if text == "":
        raise ProtocolError("plugin produced no output on stdout")
    try:
        document = _parse_single_json(text)
        response = _response_fields(document)
    except _ShapeError as error:
        raise ProtocolError("plugin output is not valid JSON: %s" % error) from None
    _check_response_rules(response)
    return response


def _parse_single_json(text: str):
    """Exactly one JSON value, nothing but whitespace around it.

    ``NaN``/``Infinity`` are refused (they are not JSON), as is nesting deep
    enough to exhaust the recursion limit.  Lone UTF-16 surrogates, which
    Python keeps but UTF-8 cannot store, become U+FFFD as in Go.
    """
    try:
        document = json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise _ShapeError("exceeded max nesting depth") from None
    except ValueError as error:
        raise _ShapeError(str(error)) from None
    if _ESCAPED_SURROGATE.search(text):
        document = _replace_surrogates(document)
    return document


def _refuse_constant(name: str):
    raise ValueError("invalid literal %s" % name)


_ESCAPED_SURROGATE = re.compile(r"\\u[dD][89abcdefABCDEF]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _replace_surrogates(value):
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, list):
        return [_replace_surrogates(item) for item in value]
    if isinstance(value, dict):
        return {_replace_surrogates(k): _replace_surrogates(v) for k, v in value.items()}
    return value


def _response_fields(document) -> dict:
    """Type-check the known fields and fill defaults."""
    fields = _pick_fields(document, _RESPONSE_FIELDS, "response object")
    where = "response"
    events = _typed(fields, "events", list, where) or []
    logs = _typed(fields, "logs", list, where) or []
    return {
        "status": _typed(fields, "status", str, where) or "",
        "result": _typed(fields, "result", str, where) or "",
        "error": _typed(fields, "error", str, where) or "",
        "retry": _typed(fields, "retry", bool, where),
        "events": [_response_event(raw, index) for index, raw in enumerate(events)],
        "state_updates": _typed(fields, "state_updates", dict, where),
        "logs": [entry for entry in (_log_entry(raw, index) for index, raw in enumerate(logs)) if entry],
    }


def _response_event(raw, index: int) -> dict:
    """One emitted event: a non-empty ``type``, an object ``payload``."""
    where = "events[%d]" % index
    fields = _decode_event_fields(raw, where)
    if not fields.get("type"):
        raise _ShapeError('%s field "type" must be a non-empty string' % where)
    event = {"type": fields["type"], "payload": fields.get("payload") or {}}
    for name in _EVENT_STRING_FIELDS:
        if fields.get(name):
            event[name] = fields[name]
    return event


def _log_entry(raw, index: int) -> Optional[dict]:
    """One ``logs[]`` entry; a JSON null entry is skipped."""
    if raw is None:
        return None
    where = "logs[%d]" % index
    fields = _pick_fields(raw, _LOG_FIELDS, where)
    return {"level": _typed(fields, "level", str, where) or "",
            "message": _typed(fields, "message", str, where) or ""}


def _decode_event_fields(raw, where: str) -> dict:
    """Present fields of an event object, type-checked; ``timestamp`` must be RFC 3339."""
    fields = _pick_fields(raw, _EVENT_FIELDS, where)
    decoded = {}
    for name in _EVENT_FIELDS:
        value = _typed(fields, name, dict if name == "payload" else str, where)
        if value is not None:
            decoded[name] = value
    if "timestamp" in decoded:
        try:
            parse_ts(decoded["timestamp"])
        except ValueError:
            raise _ShapeError('%s field "timestamp" is not an RFC 3339 time: %s'
                              % (where, json.dumps(decoded["timestamp"], ensure_ascii=False))) from None
    return decoded


def _check_response_rules(response: dict) -> None:
    """The §2.5 rules beyond types, with the reference's messages."""
    status = response["status"]
    if status == "":
        raise ProtocolError("response missing required field: status")
    if status not in ("ok", "error"):
        raise ProtocolError("invalid status value: %s (must be 'ok' or 'error')" % _go_quote(status))
    if status == "error" and response["error"] == "":
        raise ProtocolError("response has status=error but no error message")
    if status == "ok" and not response["result"].strip():
        raise ProtocolError("response has status=ok but no result message")


def _pick_fields(value, names, where: str) -> dict:
    """The known fields of a JSON object, keys matched case-insensitively.

    Later keys win, null means absent (both as Go's decoder does).
    """
    if not isinstance(value, dict):
        raise _ShapeError("cannot unmarshal %s into %s" % (_json_kind(value), where))
    wanted = {name.casefold(): name for name in names}
    fields = {}
    for key, item in value.items():
        name = wanted.get(key.casefold())
        if name is not None:
            fields[name] = item
    return {name: item for name, item in fields.items() if item is not None}


_KIND_NAMES = {str: "a string", bool: "a boolean", dict: "an object", list: "an array"}


def _typed(fields: dict, name: str, kind: type, where: str):
    """``fields[name]`` if it is of ``kind``, None if absent; else a shape error."""
    value = fields.get(name)
    if value is None:
        return None
    if not isinstance(value, kind):
        raise _ShapeError('%s field "%s" must be %s, got %s' % (where, name, _KIND_NAMES[kind], _json_kind(value)))
    return value


def _json_kind(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _go_quote(text: str) -> str:
    """A double-quoted string, close to Go's ``%q``."""
    return json.dumps(text, ensure_ascii=False)


# --------------------------------------------------------------------------
# The process


class _SilentLog:
    """Stands in when the caller passes no logger."""

    def debug(self, msg, **fields):
        pass

    info = warn = error = debug


class _BoundedCapture:
    """Bytes from one pipe, kept up to ``limit``; the rest is read and dropped."""

    def __init__(self, limit: int):
        self.limit = limit
        self.data = bytearray()
        self.overflowed = False

    def add(self, chunk: bytes) -> None:
        room = self.limit - len(self.data)
        if len(chunk) > room:
            self.overflowed = True
            chunk = chunk[:room]
        if chunk:
            self.data += chunk

    def text(self) -> str:
        return self.data.decode("utf-8", "replace")


class _PidfdExitWatch:
    """Readable when the process exits (Linux pidfd).

    The process is not reaped here: until :meth:`_PluginProcess.reap` the
    zombie keeps its pid, so signalling its process group can never hit a
    recycled id.
    """

    def __init__(self, proc: subprocess.Popen):
        self._fd = os.pidfd_open(proc.pid)

    def fileno(self) -> int:
        return self._fd

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class _ThreadExitWatch:
    """Fallback without pidfd: a thread blocks in ``waitpid`` and then writes
    to a pipe.  A blocked thread uses no CPU, unlike a polling wait."""

    def __init__(self, proc: subprocess.Popen):
        self._read_fd, write_fd = os.pipe()
        threading.Thread(target=self._wait, args=(proc, write_fd), daemon=True,
                         name="plugin-exit-%d" % proc.pid).start()

    @staticmethod
    def _wait(proc: subprocess.Popen, write_fd: int) -> None:
        try:
            proc.wait()
            os.write(write_fd, b"x")
        except OSError:
            pass  # reader gone: the run was abandoned
        finally:
            os.close(write_fd)

    def fileno(self) -> int:
        return self._read_fd

    def close(self) -> None:
        if self._read_fd is not None:
            os.close(self._read_fd)
            self._read_fd = None


def _open_exit_watch(proc: subprocess.Popen):
    if USE_PIDFD:
        try:
            return _PidfdExitWatch(proc)
        except OSError:
            pass  # kernel < 5.3 or a sandbox that forbids pidfd_open
    return _ThreadExitWatch(proc)


class _PluginProcess:
    """One running plugin and the selector loop that serves it.

    Every wait goes through :meth:`_pump`, which sleeps in ``select`` until
    a pipe has data, stdin can take more, the process exits, the run is
    cancelled or the given timeout passes.
    """

    def __init__(self, proc: subprocess.Popen, request_bytes: bytes, cancel: Optional[Cancellation]):
        self.proc = proc
        self.stdout = _BoundedCapture(MAX_STDOUT_BYTES)
        self.stderr = _BoundedCapture(MAX_STDERR_BYTES)
        self.write_error: Optional[OSError] = None
        self.exited = False
        self.cancelled = False
        self.capturing = True
        self._pending_input = memoryview(request_bytes)
        self._open_pipes = 2
        self._selector = selectors.DefaultSelector()
        self._exit_watch = _open_exit_watch(proc)
        self._cancel = cancel
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            os.set_blocking(pipe.fileno(), False)
        self._selector.register(proc.stdin, selectors.EVENT_WRITE, self._write_stdin)
        self._selector.register(proc.stdout, selectors.EVENT_READ, lambda: self._read(proc.stdout, self.stdout))
        self._selector.register(proc.stderr, selectors.EVENT_READ, lambda: self._read(proc.stderr, self.stderr))
        self._selector.register(self._exit_watch, selectors.EVENT_READ, self._on_exit)
        if cancel is not None:
            self._selector.register(cancel.fileno(), selectors.EVENT_READ, self._on_cancel)

    @property
    def finished(self) -> bool:
        """The process exited and both output pipes reached EOF (§2.1)."""
        return self.exited and self._open_pipes == 0

    def run_until(self, deadline: float) -> str:
        """Serve the process until it finishes, the deadline passes or the
        run is cancelled; returns ``finished``, ``deadline`` or ``cancelled``."""
        while not self.finished:
            if self.cancelled:
                return "cancelled"
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._pump(0)  # one last look: a result ready at the deadline counts
                return "finished" if self.finished else "deadline"
            self._pump(remaining)
        return "finished"

    def terminate(self, grace_s: float, log, announcement: str) -> None:
        """SIGTERM the group, give it ``grace_s`` to finish, then SIGKILL it.

        Output after this point is drained but not kept (§2.2).  The final
        SIGKILL also goes out when the leader did exit in time, so nothing
        of the group outlives a timed-out or cancelled job.
        """
        log.warn(announcement)
        self.capturing = False
        self._unwatch_cancel()
        self._signal_group(signal.SIGTERM)
        grace_deadline = time.monotonic() + grace_s
        while not self.finished:
            remaining = grace_deadline - time.monotonic()
            if remaining <= 0:
                log.warn("plugin did not exit after SIGTERM, sending SIGKILL")
                break
            self._pump(remaining)
        self._signal_group(signal.SIGKILL)

    def reap(self) -> int:
        """Collect the exit status.  Called once the process has exited (or
        was sent SIGKILL), so the blocking wait returns promptly."""
        return self.proc.wait()

    def close(self) -> None:
        """Release every descriptor; if the run was abandoned by an
        exception, kill the group first so no process is left behind."""
        if self.proc.returncode is None:
            self._signal_group(signal.SIGKILL)
            self.proc.wait()
        self._selector.close()
        self._exit_watch.close()
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            pipe.close()

    def _pump(self, timeout: float) -> None:
        for key, _ in self._selector.select(timeout):
            key.data()

    def _write_stdin(self) -> None:
        """Feed the request; a plugin that stops reading (EPIPE) is not an
        error by itself, only if it then fails to answer (§2.1)."""
        try:
            written = os.write(self.proc.stdin.fileno(), self._pending_input)
        except BlockingIOError:
            return
        except OSError as error:
            self.write_error = error
            self._close_stdin()
            return
        self._pending_input = self._pending_input[written:]
        if not self._pending_input:
            self._close_stdin()

    def _close_stdin(self) -> None:
        self._selector.unregister(self.proc.stdin)
        self.proc.stdin.close()

    def _read(self, pipe, capture: _BoundedCapture) -> None:
        try:
            chunk = os.read(pipe.fileno(), READ_CHUNK_BYTES)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            self._selector.unregister(pipe)
            pipe.close()
            self._open_pipes -= 1
        elif self.capturing:
            capture.add(chunk)

    def _on_exit(self) -> None:
        self.exited = True
        self._selector.unregister(self._exit_watch)

    def _on_cancel(self) -> None:
        self.cancelled = True
        self._unwatch_cancel()

    def _unwatch_cancel(self) -> None:
        """Stop watching the cancel pipe: once set it stays readable."""
        if self._cancel is not None and self._cancel.fileno() in self._selector.get_map():
            self._selector.unregister(self._cancel.fileno())

    def _signal_group(self, signum: int) -> None:
        """Signal the plugin's process group; a gone group is fine, any
        other failure falls back to the process itself (§2.2)."""
        try:
            os.killpg(self.proc.pid, signum)
        except ProcessLookupError:
            pass
        except OSError:
            try:
                self.proc.send_signal(signum)
            except OSError:
                pass


def run_plugin(entrypoint: str, request: dict, timeout_s: float, *, log=None,
               on_spawn: Optional[Callable[[int], None]] = None,
               cancel: Optional[Cancellation] = None,
               kill_grace_s: float = KILL_GRACE_S) -> RunResult:
    """Run one plugin command and classify the outcome.

    The deadline clock starts just before the spawn.  ``on_spawn(pid)`` is
    called once the process exists (to publish ``plugin.spawned``).
    ``cancel`` stops the run from another thread (shutdown, ``if_running:
    cancel``): the plugin is terminated as on timeout and the outcome is
    ``interrupted``.  ``log`` is a :class:`ductile_lib.logs.Logger`, usually
    bound to the job; the §9 plugin lines go there.
    """
    log = log or _SilentLog()
    started = time.monotonic()
    if cancel is not None and cancel.is_cancelled():
        return _interrupted_result(None, "", None, 0.0)
    request_bytes = encode_request(request)
    deadline = started + timeout_s
    try:
        proc = subprocess.Popen([entrypoint], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True)
    except OSError as error:
        return _start_failure_result(entrypoint, error, time.monotonic() - started)
    process = None
    try:
        process = _PluginProcess(proc, request_bytes, cancel)
        _notify_spawned(on_spawn, proc.pid, log)
        ending = process.run_until(deadline)
        if ending == "deadline":
            process.terminate(kill_grace_s, log, "plugin execution timed out, sending SIGTERM")
        elif ending == "cancelled":
            process.terminate(kill_grace_s, log, "plugin execution interrupted, sending SIGTERM")
        returncode = process.reap()
    finally:
        if process is not None:
            process.close()
        else:
            _kill_unmanaged(proc)
    duration = time.monotonic() - started
    _log_stderr(process.stderr, log)
    exit_code = _exit_code(returncode)
    if ending == "deadline":
        return _timeout_result(proc.pid, process.stderr.text(), exit_code, timeout_s, duration)
    if ending == "cancelled":
        return _interrupted_result(proc.pid, process.stderr.text(), exit_code, duration)
    return _completed_result(process, exit_code, duration, log)


def _notify_spawned(on_spawn, pid: int, log) -> None:
    """Tell the caller the pid; its failure must not strand the process."""
    if on_spawn is None:
        return
    try:
        on_spawn(pid)
    except Exception as error:  # a broken observer must not kill the job
        log.error("plugin spawn callback failed", error=str(error))


def _kill_unmanaged(proc: subprocess.Popen) -> None:
    """Setting up the run loop failed: do not leave the process running."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        pass
    proc.wait()
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        pipe.close()


def _exit_code(returncode: Optional[int]) -> Optional[int]:
    """Exit status as the reference reports it: killed by a signal is -1."""
    if returncode is None:
        return None
    return -1 if returncode < 0 else returncode


def _log_stderr(stderr: _BoundedCapture, log) -> None:
    if stderr.overflowed:
        log.warn("plugin stderr truncated", limit_bytes=MAX_STDERR_BYTES)
    first_line = _first_line(stderr.text())
    if first_line:
        log.warn("plugin stderr", stderr=first_line[:LOGGED_STDERR_CHARS])


def _first_line(text: str) -> str:
    for line in text.splitlines():
        if line.strip():
            return line
    return ""


def _completed_result(process: _PluginProcess, exit_code: int, duration: float, log) -> RunResult:
    """Decode and classify the answer of a process that finished in time."""
    if exit_code != 0:
        log.warn("plugin exited with non-zero status", exit_code=exit_code)
    pid, stdout_text, stderr_text = process.proc.pid, process.stdout.text(), process.stderr.text()
    if process.stdout.overflowed:
        log.error("plugin stdout exceeded capture limit", limit_bytes=MAX_STDOUT_BYTES)
        detail = "plugin stdout exceeded max size %d bytes" % MAX_STDOUT_BYTES
        return _protocol_error_result(pid, stdout_text, stderr_text, exit_code, detail, duration)
    try:
        response = decode_response(stdout_text)
    except ProtocolError as error:
        if process.write_error is not None:
            log.warn("stdin write failed (process may not read stdin)", error=str(process.write_error))
        log.error("failed to decode plugin response", error=str(error), stdout=stdout_text[:LOGGED_STDOUT_CHARS])
        return _protocol_error_result(pid, stdout_text, stderr_text, exit_code, "decode response: %s" % error,
                                      duration)
    for entry in response["logs"]:
        # ``level`` would clash with the line's own level: Logger.log takes
        # it as a parameter, and a JSON object cannot hold the key twice.
        log.info("plugin log", plugin_level=entry["level"], message=entry["message"])
    if response["status"] == "error":
        log.warn("plugin returned error", error=response["error"])
        retryable, reason = _classify_failure(exit_code, response, REASON_PLUGIN_ERROR)
        return RunResult(OUTCOME_ERROR, response, stdout_text, stderr_text, exit_code, response["error"],
                         retryable, reason, duration, pid)
    return RunResult(OUTCOME_OK, response, stdout_text, stderr_text, exit_code, None, False, None, duration, pid)


def _classify_failure(exit_code: Optional[int], response: Optional[dict], default_reason: str) -> Tuple[bool, str]:
    """§3.5: exit code 78, then ``retry: false``, make a failure final."""
    if exit_code == NON_RETRYABLE_EXIT_CODE:
        return False, REASON_EXIT_CODE_78
    if response is not None and response.get("retry") is False:
        return False, REASON_PLUGIN_RETRY_FALSE
    return True, default_reason


def _protocol_error_result(pid, stdout_text, stderr_text, exit_code, detail, duration) -> RunResult:
    retryable, reason = _classify_failure(exit_code, None, REASON_SPAWN_ERROR)
    return RunResult(OUTCOME_PROTOCOL_ERROR, None, stdout_text, stderr_text, exit_code,
                     "plugin spawn failed: %s" % detail, retryable, reason, duration, pid)


def _start_failure_result(entrypoint: str, error: OSError, duration: float) -> RunResult:
    detail = "start process: %s: %s" % (entrypoint, error.strerror or error)
    return RunResult(OUTCOME_SPAWN_ERROR, None, "", "", None, "plugin spawn failed: %s" % detail,
                     True, REASON_SPAWN_ERROR, duration, None)


def _timeout_result(pid, stderr_text, exit_code, timeout_s, duration) -> RunResult:
    """A run cut off at its deadline; partial stdout is no answer, so none is kept."""
    error = "plugin execution timed out after %s" % format_duration(round(timeout_s * SECOND))
    retryable, reason = _classify_failure(exit_code, None, REASON_TIMEOUT)
    return RunResult(OUTCOME_TIMEOUT, None, "", stderr_text, exit_code, error, retryable, reason, duration, pid)


def _interrupted_result(pid, stderr_text, exit_code, duration) -> RunResult:
    return RunResult(OUTCOME_INTERRUPTED, None, "", stderr_text, exit_code, INTERRUPTED_ERROR,
                     False, REASON_INTERRUPTED, duration, pid)


__all__ = [
    "Cancellation", "ProtocolError", "RunResult", "build_handle_event", "build_request", "decode_response",
    "encode_request", "run_plugin", "KILL_GRACE_S", "MAX_STDERR_BYTES", "MAX_STDOUT_BYTES",
]
