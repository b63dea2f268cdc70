"""The plugin runner against real processes (spec 20 §2, §3.5, §9).

Plugins are small shell or Python scripts written per test; nothing is
mocked.  Timeouts are short (0.25-1 s, 0.3 s grace) so the file stays fast.
"""
from __future__ import annotations

import io
import json
import os
import resource
import signal
import stat
import sys
import textwrap
import threading
import time
import tracemalloc
from pathlib import Path

import pytest

from ductile_lib import runner
from ductile_lib.logs import Logger, LogSink
from ductile_lib.runner import Cancellation, build_handle_event, build_request, decode_response, run_plugin

GRACE = 0.3
# Deadline for tests that need the plugin to reach a state (trap set, child
# started) first; long enough for a loaded machine.
DEADLINE = 1.0
REQUEST = build_request("job-1", "poll", {"message": "hi"}, {"count": 1}, None, {"ductile_plugin": "t"})
OK_LINE = '{"status":"ok","result":"done"}'


# --------------------------------------------------------------------------
# helpers


def make_plugin(directory: Path, body: str, name: str = "run.sh", interpreter: str = "/bin/sh") -> str:
    """Write an executable script and return its absolute path."""
    path = directory / name
    path.write_text("#!%s\n%s" % (interpreter, textwrap.dedent(body).lstrip("\n")), encoding="utf-8")
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return str(path)


def printing_plugin(directory: Path, stdout: str, exit_code: int = 0) -> str:
    """A plugin that reads its request and prints ``stdout`` verbatim."""
    (directory / "out.txt").write_text(stdout, encoding="utf-8")
    return make_plugin(directory, """
        cat >/dev/null
        cat "$(dirname "$0")/out.txt"
        exit %d
        """ % exit_code)


class CapturedLog:
    """A Logger writing to memory, with the records decoded."""

    def __init__(self):
        self.stream = io.StringIO()
        self.logger = Logger("dispatch", LogSink(self.stream, level="DEBUG"))

    def records(self) -> list:
        return [json.loads(line) for line in self.stream.getvalue().splitlines()]

    def find(self, msg: str) -> list:
        return [r for r in self.records() if r["msg"] == msg]


@pytest.fixture
def logs():
    return CapturedLog()


def alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie waiting for its reaper counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open("/proc/%d/stat" % pid) as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def read_pids(path: Path, count: int) -> list:
    pids = [int(line) for line in path.read_text().split()]
    assert len(pids) == count, pids
    return pids


def gone_soon(pid: int, within: float = 2.0) -> bool:
    """Killed processes are reaped by init a moment later; wait for that."""
    deadline = time.monotonic() + within
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@pytest.fixture
def kill_later():
    """Pids a test leaves running on purpose; killed at teardown."""
    pids = []
    yield pids
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# --------------------------------------------------------------------------
# success and plugin errors


@pytest.mark.timeout(10)
def test_ok_response_request_on_stdin_and_verbatim_stdout(tmp_path, logs):
    entrypoint = make_plugin(tmp_path, """
        import json, os, sys
        raw = sys.stdin.buffer.read()
        with open(os.path.join(os.path.dirname(__file__), "stdin.bin"), "wb") as f:
            f.write(raw)
        req = json.loads(raw)
        print(json.dumps({"status": "ok", "result": req["job_id"], "state_updates": {"n": 2},
                          "events": [{"type": "x.done", "payload": {"a": 1}, "dedupe_key": "k"}],
                          "logs": [{"level": "info", "message": "hello"}], "extra": "ignored"}))
        """, name="run.py", interpreter=sys.executable)
    spawned = []
    result = run_plugin(entrypoint, REQUEST, 5, log=logs.logger, on_spawn=spawned.append)

    assert result.outcome == "ok" and result.ok
    assert result.error is None and result.reason is None and result.retryable is False
    assert result.exit_code == 0 and result.pid == spawned[0]
    assert result.stdout.endswith("}\n") and json.loads(result.stdout)["result"] == "job-1"
    assert result.job_log_result == result.stdout
    assert result.response == {
        "status": "ok", "result": "job-1", "error": "", "retry": None, "state_updates": {"n": 2},
        "events": [{"type": "x.done", "payload": {"a": 1}, "dedupe_key": "k"}],
        "logs": [{"level": "info", "message": "hello"}],
    }
    stdin = (tmp_path / "stdin.bin").read_bytes()
    assert stdin.endswith(b"}\n") and stdin.count(b"\n") == 1
    assert json.loads(stdin) == REQUEST
    (line,) = logs.find("plugin log")
    assert line["level"] == "INFO" and line["plugin_level"] == "info" and line["message"] == "hello"
    assert 0 < result.duration_s < 5


@pytest.mark.timeout(10)
def test_plugin_runs_without_arguments_in_its_own_process_group(tmp_path):
    entrypoint = make_plugin(tmp_path, """
        import json, os, sys
        sys.stdin.read()
        result = "%d %d %d" % (len(sys.argv) - 1, os.getpgrp(), os.getpid())
        print(json.dumps({"status": "ok", "result": result}))
        """, name="run.py", interpreter=sys.executable)
    result = run_plugin(entrypoint, REQUEST, 5)
    argc, pgid, pid = result.response["result"].split()
    assert argc == "0"
    assert pgid == pid == str(result.pid) and int(pgid) != os.getpgrp()


@pytest.mark.timeout(10)
def test_status_error_is_retryable_by_default(tmp_path, logs):
    entrypoint = printing_plugin(tmp_path, '{"status":"error","error":"upstream down"}\n')
    result = run_plugin(entrypoint, REQUEST, 5, log=logs.logger)
    assert result.outcome == "error" and result.error == "upstream down"
    assert result.retryable is True and result.reason == "plugin_error"
    assert result.job_log_result == '{"status":"error","error":"upstream down"}\n'
    assert logs.find("plugin returned error")[0]["error"] == "upstream down"
    assert logs.find("plugin returned error")[0]["level"] == "WARN"


@pytest.mark.timeout(10)
def test_status_error_with_retry_false_is_final(tmp_path):
    entrypoint = printing_plugin(tmp_path, '{"status":"error","error":"bad input","retry":false}')
    result = run_plugin(entrypoint, REQUEST, 5)
    assert result.outcome == "error" and result.retryable is False and result.reason == "plugin_retry_false"


@pytest.mark.timeout(10)
def test_status_error_with_retry_true_and_other_exit_code_is_retryable(tmp_path, logs):
    entrypoint = printing_plugin(tmp_path, '{"status":"error","error":"x","retry":true}', exit_code=3)
    result = run_plugin(entrypoint, REQUEST, 5, log=logs.logger)
    assert result.exit_code == 3 and result.retryable is True and result.reason == "plugin_error"
    assert logs.find("plugin exited with non-zero status")[0]["exit_code"] == 3


@pytest.mark.timeout(10)
def test_exit_78_makes_a_failure_final(tmp_path, logs):
    entrypoint = printing_plugin(tmp_path, '{"status":"error","error":"misconfigured","retry":true}', exit_code=78)
    result = run_plugin(entrypoint, REQUEST, 5, log=logs.logger)
    assert result.outcome == "error" and result.exit_code == 78
    assert result.retryable is False and result.reason == "exit_code_78"
    assert logs.find("plugin exited with non-zero status")[0]["exit_code"] == 78


@pytest.mark.timeout(10)
def test_exit_78_makes_a_protocol_error_final(tmp_path):
    entrypoint = printing_plugin(tmp_path, "config missing\n", exit_code=78)
    result = run_plugin(entrypoint, REQUEST, 5)
    assert result.outcome == "protocol_error" and result.retryable is False and result.reason == "exit_code_78"


@pytest.mark.timeout(10)
def test_valid_ok_wins_over_exit_78(tmp_path, logs):
    entrypoint = printing_plugin(tmp_path, OK_LINE, exit_code=78)
    result = run_plugin(entrypoint, REQUEST, 5, log=logs.logger)
    assert result.outcome == "ok" and result.exit_code == 78 and result.error is None
    assert logs.find("plugin exited with non-zero status")


@pytest.mark.timeout(10)
def test_killed_by_signal_reports_exit_code_minus_one(tmp_path):
    entrypoint = make_plugin(tmp_path, "cat >/dev/null\nkill -9 $$\n")
    result = run_plugin(entrypoint, REQUEST, 5)
    assert result.exit_code == -1
    assert result.error == "plugin spawn failed: decode response: plugin produced no output on stdout"


@pytest.mark.timeout(10)
def test_stderr_is_kept_and_its_first_line_logged(tmp_path, logs):
    entrypoint = make_plugin(tmp_path, """
        cat >/dev/null
        printf '\\nfirst problem\\nsecond\\n' >&2
        echo '%s'
        """ % OK_LINE)
    result = run_plugin(entrypoint, REQUEST, 5, log=logs.logger)
    assert result.ok and result.stderr == "\nfirst problem\nsecond\n"
    (line,) = logs.find("plugin stderr")
    assert line["level"] == "WARN" and line["stderr"] == "first problem"
    assert not logs.find("plugin stderr truncated")


# --------------------------------------------------------------------------
# protocol errors


PREFIX = "plugin spawn failed: decode response: "
NOT_JSON = PREFIX + "plugin output is not valid JSON: "


@pytest.mark.timeout(10)
@pytest.mark.parametrize("stdout, expected", [
    ("", PREFIX + "plugin produced no output on stdout"),
    ("\n", NOT_JSON),
    ("not json at all\n", NOT_JSON),
    ('{"status":"ok","result":"x"} trailing\n', NOT_JSON),
    ('{"status":"ok","result":"a"}\n{"status":"ok","result":"b"}\n', NOT_JSON),
    ('[{"status":"ok","result":"x"}]', NOT_JSON + "cannot unmarshal array"),
    ('"ok"', NOT_JSON + "cannot unmarshal string"),
    ('{"status":"ok","result":NaN}', NOT_JSON),
    ('{"status":"ok","result":5}', NOT_JSON + 'response field "result" must be a string, got number'),
    ('{"status":"ok","result":"x","retry":"no"}', NOT_JSON + 'field "retry" must be a boolean'),
    ('{"status":1}', NOT_JSON + 'field "status" must be a string'),
    ('{"status":"error","error":{"m":1}}', NOT_JSON + 'field "error" must be a string'),
    ('{"status":"ok","result":"x","events":{}}', NOT_JSON + 'field "events" must be an array'),
    ('{"status":"ok","result":"x","events":[{"type":"t","payload":[1]}]}', NOT_JSON + 'events[0] field "payload"'),
    ('{"status":"ok","result":"x","events":[{"type":"t","timestamp":"yesterday"}]}',
     NOT_JSON + 'events[0] field "timestamp" is not an RFC 3339 time'),
    ('{"status":"ok","result":"x","events":[{"payload":{}}]}', NOT_JSON + 'events[0] field "type" must be a non-empty'),
    ('{"status":"ok","result":"x","events":[{"type":"t","source":3}]}', NOT_JSON + 'events[0] field "source"'),
    ('{"status":"ok","result":"x","events":["t"]}', NOT_JSON + "cannot unmarshal string into events[0]"),
    ('{"status":"ok","result":"x","state_updates":[1]}', NOT_JSON + 'field "state_updates" must be an object'),
    ('{"status":"ok","result":"x","logs":[{"level":1}]}', NOT_JSON + 'logs[0] field "level"'),
    ('{"status":"ok","result":"x","logs":"m"}', NOT_JSON + 'field "logs" must be an array'),
    ('{"result":"x"}', PREFIX + "response missing required field: status"),
    ('{"status":null,"result":"x"}', PREFIX + "response missing required field: status"),
    ('{"status":"OK","result":"x"}', PREFIX + "invalid status value: \"OK\" (must be 'ok' or 'error')"),
    ('{"status":"x"}', PREFIX + "invalid status value: \"x\" (must be 'ok' or 'error')"),
    ('{"status":"error"}', PREFIX + "response has status=error but no error message"),
    ('{"status":"error","error":""}', PREFIX + "response has status=error but no error message"),
    ('{"status":"ok"}', PREFIX + "response has status=ok but no result message"),
    ('{"status":"ok","result":"  \\n "}', PREFIX + "response has status=ok but no result message"),
])
def test_protocol_errors(tmp_path, logs, stdout, expected):
    entrypoint = printing_plugin(tmp_path, stdout)
    result = run_plugin(entrypoint, REQUEST, 5, log=logs.logger)
    assert result.outcome == "protocol_error" and result.response is None
    if expected.startswith(NOT_JSON):
        detail = expected[len(NOT_JSON):]
        assert result.error.startswith(NOT_JSON) and detail in result.error, result.error
        assert len(result.error) > len(NOT_JSON)  # the parser's detail follows
    else:
        assert result.error == expected
    assert result.retryable is True and result.reason == "spawn_error"
    assert result.stdout == stdout and result.job_log_result == stdout
    (line,) = logs.find("failed to decode plugin response")
    assert line["level"] == "ERROR" and line["error"] == result.error[len("plugin spawn failed: decode response: "):]
    assert line["stdout"] == stdout


@pytest.mark.timeout(10)
def test_decode_error_logs_at_most_a_kilobyte_of_stdout(tmp_path, logs):
    entrypoint = printing_plugin(tmp_path, "x" * 5000)
    result = run_plugin(entrypoint, REQUEST, 5, log=logs.logger)
    assert len(result.stdout) == 5000
    assert len(logs.find("failed to decode plugin response")[0]["stdout"]) == 1024


def test_field_names_match_case_insensitively_and_nulls_are_absent():
    response = decode_response('{"Status":"error","ERROR":"boom","Retry":false,"events":null,'
                               '"State_Updates":{"a":1},"Logs":[null,{"Level":"warn","Message":"m"}]}')
    assert response == {"status": "error", "result": "", "error": "boom", "retry": False, "events": [],
                        "state_updates": {"a": 1}, "logs": [{"level": "warn", "message": "m"}]}


def test_event_fields_are_normalized():
    response = decode_response(json.dumps({"status": "ok", "result": "r", "events": [
        {"Type": "a", "payload": None, "dedupe_key": "", "source": "s", "timestamp": "2024-05-01T10:00:00+02:00",
         "event_id": "e1", "other": 1}]}))
    assert response["events"] == [{"type": "a", "payload": {}, "source": "s",
                                   "timestamp": "2024-05-01T10:00:00+02:00", "event_id": "e1"}]


def test_lone_surrogates_become_replacement_characters():
    response = decode_response('{"status":"ok","result":"a\\ud800b","state_updates":{"k\\udc00":"\\ud83d\\ude00"}}')
    assert response["result"] == "a\ufffdb"
    assert response["state_updates"] == {"k\ufffd": "\U0001f600"}
    json.dumps(response, ensure_ascii=False).encode("utf-8")  # storable as UTF-8


def test_deep_nesting_is_a_protocol_error():
    with pytest.raises(runner.ProtocolError, match="not valid JSON"):
        decode_response('{"status":"ok","result":"x","state_updates":' + "[" * 200000 + "]" * 200000 + "}")


@pytest.mark.timeout(10)
def test_invalid_utf8_in_stdout_is_replaced(tmp_path):
    (tmp_path / "out.bin").write_bytes(b'{"status":"ok","result":"caf\xe9"}\n')
    entrypoint = make_plugin(tmp_path, 'cat >/dev/null\ncat "$(dirname "$0")/out.bin"\n')
    result = run_plugin(entrypoint, REQUEST, 5)
    assert result.ok and result.response["result"] == "caf\ufffd"
    assert result.stdout == '{"status":"ok","result":"caf\ufffd"}\n'


# --------------------------------------------------------------------------
# output caps and memory


@pytest.mark.timeout(30)
def test_fifty_megabytes_of_stdout_are_capped_with_bounded_memory(tmp_path, logs):
    entrypoint = make_plugin(tmp_path, """
        cat >/dev/null
        head -c 52428800 /dev/zero | tr '\\0' 'a'
        """)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        baseline, _ = tracemalloc.get_traced_memory()
        result = run_plugin(entrypoint, REQUEST, 20, log=logs.logger)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.outcome == "protocol_error"
    assert result.error == "plugin spawn failed: plugin stdout exceeded max size 10485760 bytes"
    assert result.retryable is True and result.reason == "spawn_error"
    assert len(result.stdout) == 10485760 and result.stdout == "a" * 10485760
    assert peak - baseline < 30 * 1024 * 1024, "peak grew by %d bytes" % (peak - baseline)
    (line,) = logs.find("plugin stdout exceeded capture limit")
    assert line["level"] == "ERROR"


@pytest.mark.timeout(10)
def test_large_stderr_is_truncated_but_not_a_failure(tmp_path, logs):
    entrypoint = make_plugin(tmp_path, """
        cat >/dev/null
        head -c 1048576 /dev/zero | tr '\\0' 'e' >&2
        echo '%s'
        """ % OK_LINE)
    result = run_plugin(entrypoint, REQUEST, 5, log=logs.logger)
    assert result.ok
    assert result.stderr == "e" * 65536
    (line,) = logs.find("plugin stderr truncated")
    assert line["level"] == "WARN" and line["limit_bytes"] == 65536
    assert len(logs.find("plugin stderr")[0]["stderr"]) == 1024


# --------------------------------------------------------------------------
# deadlines, process groups and pipes


@pytest.mark.timeout(10)
def test_hang_past_deadline_times_out_and_the_group_is_gone(tmp_path, logs):
    pid_file = tmp_path / "pids"
    entrypoint = make_plugin(tmp_path, """
        cat >/dev/null
        echo partial
        echo 'on stderr' >&2
        sleep 30 &
        echo $! >> "%s"
        sleep 30
        """ % pid_file)
    result = run_plugin(entrypoint, REQUEST, DEADLINE, log=logs.logger, kill_grace_s=GRACE)
    assert result.outcome == "timeout" and result.response is None
    assert result.error == "plugin execution timed out after 1s"
    assert result.retryable is True and result.reason == "timeout"
    assert result.exit_code == -1
    assert result.stdout == "" and result.job_log_result is None
    assert result.stderr == "on stderr\n"
    assert DEADLINE <= result.duration_s < DEADLINE + GRACE + 0.4  # slack for a loaded machine
    assert [r["msg"] for r in logs.records() if r["level"] == "WARN"][:1] == [
        "plugin execution timed out, sending SIGTERM"]
    assert not logs.find("plugin did not exit after SIGTERM, sending SIGKILL")
    assert not alive(result.pid)
    (child,) = read_pids(pid_file, 1)
    assert gone_soon(child)


@pytest.mark.timeout(10)
def test_group_ignoring_sigterm_is_killed_after_the_grace(tmp_path, logs):
    pid_file = tmp_path / "pids"
    entrypoint = make_plugin(tmp_path, """
        trap '' TERM
        cat >/dev/null
        sleep 30 &
        echo $! >> "%s"
        sleep 30
        """ % pid_file)
    result = run_plugin(entrypoint, REQUEST, DEADLINE, log=logs.logger, kill_grace_s=GRACE)
    assert result.outcome == "timeout" and result.exit_code == -1
    assert DEADLINE + GRACE <= result.duration_s < DEADLINE + GRACE + 0.5
    messages = [r["msg"] for r in logs.records() if r["level"] == "WARN"]
    assert messages == ["plugin execution timed out, sending SIGTERM",
                        "plugin did not exit after SIGTERM, sending SIGKILL"]
    (child,) = read_pids(pid_file, 1)
    assert gone_soon(child)


@pytest.mark.timeout(10)
def test_waiting_for_a_slow_plugin_does_not_poll(tmp_path):
    """The run loop sleeps in select until something happens: a one-second
    wait costs a handful of wake-ups, where a polling wait costs dozens."""
    entrypoint = make_plugin(tmp_path, "cat >/dev/null\nsleep 1\necho '%s'\n" % OK_LINE)
    who = getattr(resource, "RUSAGE_THREAD", resource.RUSAGE_SELF)
    before, cpu_before = resource.getrusage(who), time.process_time()
    result = run_plugin(entrypoint, REQUEST, 5)
    after, cpu_used = resource.getrusage(who), time.process_time() - cpu_before
    assert result.ok and result.duration_s >= 1
    assert after.ru_nvcsw - before.ru_nvcsw < 10
    assert cpu_used < 0.1


@pytest.mark.timeout(10)
def test_endless_output_still_meets_the_deadline(tmp_path):
    entrypoint = make_plugin(tmp_path, "exec yes\n")
    result = run_plugin(entrypoint, REQUEST, 0.5, kill_grace_s=GRACE)
    assert result.outcome == "timeout" and result.duration_s < 0.5 + GRACE + 0.4


@pytest.mark.timeout(10)
def test_timeout_message_uses_go_duration_format(tmp_path):
    entrypoint = make_plugin(tmp_path, "exec sleep 30\n")
    result = run_plugin(entrypoint, REQUEST, 0.25, kill_grace_s=GRACE)
    assert result.error == "plugin execution timed out after 250ms"


@pytest.mark.timeout(10)
def test_background_child_holding_stdout_keeps_the_job_alive_until_the_deadline(tmp_path):
    pid_file = tmp_path / "pids"
    entrypoint = make_plugin(tmp_path, """
        cat >/dev/null
        echo '%s'
        sleep 30 &
        echo $! >> "%s"
        exit 0
        """ % (OK_LINE, pid_file))
    result = run_plugin(entrypoint, REQUEST, DEADLINE, kill_grace_s=GRACE)
    assert result.outcome == "timeout"
    assert result.exit_code == 0  # the leader itself had exited
    assert result.duration_s >= DEADLINE
    (child,) = read_pids(pid_file, 1)
    assert gone_soon(child)


@pytest.mark.timeout(10)
def test_double_forked_daemon_with_stdout_elsewhere_finishes_promptly(tmp_path, kill_later):
    pid_file = tmp_path / "pids"
    entrypoint = make_plugin(tmp_path, """
        cat >/dev/null
        ( sleep 30 </dev/null >/dev/null 2>&1 & echo $! >> "%s" )
        echo '%s'
        """ % (pid_file, OK_LINE))
    result = run_plugin(entrypoint, REQUEST, 5, kill_grace_s=GRACE)
    (daemon,) = read_pids(pid_file, 1)
    kill_later.append(daemon)
    assert result.ok and result.duration_s < 1.0
    assert alive(daemon)  # a finished job leaves what it deliberately detached alone


@pytest.mark.timeout(10)
def test_plugin_that_never_reads_stdin_still_succeeds(tmp_path, logs):
    entrypoint = make_plugin(tmp_path, "echo '%s'\n" % OK_LINE)
    big = build_request("job-1", "handle", {}, {}, {"blob": "x" * 4_000_000}, {})
    result = run_plugin(entrypoint, big, 5, log=logs.logger)
    assert result.ok and result.response["result"] == "done"
    assert not logs.find("stdin write failed (process may not read stdin)")


@pytest.mark.timeout(10)
def test_unread_stdin_is_reported_when_the_answer_is_bad(tmp_path, logs):
    entrypoint = make_plugin(tmp_path, "echo nope\n")
    big = build_request("job-1", "handle", {}, {}, {"blob": "x" * 4_000_000}, {})
    result = run_plugin(entrypoint, big, 5, log=logs.logger)
    assert result.outcome == "protocol_error"
    assert logs.find("stdin write failed (process may not read stdin)")


@pytest.mark.timeout(10)
def test_large_request_and_large_response_do_not_deadlock(tmp_path):
    entrypoint = make_plugin(tmp_path, """
        import json, sys
        req = json.load(sys.stdin)
        print(json.dumps({"status": "ok", "result": "r", "state_updates": {"echo": req["payload"]["blob"]}}))
        """, name="run.py", interpreter=sys.executable)
    blob = "y" * 3_000_000
    result = run_plugin(entrypoint, build_request("j", "poll", {}, {}, {"blob": blob}, {}), 10)
    assert result.ok and result.response["state_updates"]["echo"] == blob


# --------------------------------------------------------------------------
# start failures


@pytest.mark.timeout(10)
@pytest.mark.parametrize("setup, detail", [
    ("missing", "No such file or directory"),
    ("not_executable", "Permission denied"),
    ("no_shebang", "Exec format error"),
])
def test_start_failures_are_retryable_spawn_errors(tmp_path, setup, detail):
    path = tmp_path / "run.sh"
    if setup == "not_executable":
        path.write_text("#!/bin/sh\necho hi\n")
        path.chmod(0o644)
    elif setup == "no_shebang":
        path.write_bytes(b"\x00\x01\x02binary")
        path.chmod(0o755)
    spawned = []
    result = run_plugin(str(path), REQUEST, 5, on_spawn=spawned.append)
    assert result.outcome == "spawn_error" and result.pid is None and result.exit_code is None
    assert result.error == "plugin spawn failed: start process: %s: %s" % (path, detail)
    assert result.retryable is True and result.reason == "spawn_error"
    assert result.job_log_result is None and spawned == []


# --------------------------------------------------------------------------
# cancellation


@pytest.mark.timeout(10)
def test_cancellation_mid_run_interrupts_and_removes_the_group(tmp_path, logs):
    pid_file = tmp_path / "pids"
    entrypoint = make_plugin(tmp_path, """
        cat >/dev/null
        sleep 30 &
        echo $! >> "%s"
        sleep 30
        """ % pid_file)
    cancel = Cancellation()
    cancelled_at = []

    def cancel_once_the_child_runs():
        while not pid_file.exists() or not pid_file.read_text().strip():
            time.sleep(0.01)
        cancelled_at.append(time.monotonic())
        cancel.cancel()

    canceller = threading.Thread(target=cancel_once_the_child_runs, daemon=True)
    canceller.start()
    try:
        result = run_plugin(entrypoint, REQUEST, 10, log=logs.logger, cancel=cancel, kill_grace_s=GRACE)
        finished_at = time.monotonic()
    finally:
        canceller.join(5)
        cancel.close()
    assert result.outcome == "interrupted" and result.reason == "interrupted" and result.retryable is False
    assert result.error == "plugin execution interrupted" and result.job_log_result is None
    assert finished_at - cancelled_at[0] < GRACE  # SIGTERM sufficed: no wait for the grace
    assert result.duration_s < 5
    assert logs.find("plugin execution interrupted, sending SIGTERM")
    (child,) = read_pids(pid_file, 1)
    assert gone_soon(child)


@pytest.mark.timeout(10)
def test_cancelled_before_start_never_spawns(tmp_path):
    marker = tmp_path / "ran"
    entrypoint = make_plugin(tmp_path, 'touch "%s"\necho \'%s\'\n' % (marker, OK_LINE))
    cancel = Cancellation()
    cancel.cancel()
    result = run_plugin(entrypoint, REQUEST, 5, cancel=cancel)
    assert result.outcome == "interrupted" and result.pid is None
    assert not marker.exists()


@pytest.mark.timeout(10)
def test_a_finished_run_ignores_a_later_cancel(tmp_path):
    entrypoint = printing_plugin(tmp_path, OK_LINE)
    cancel = Cancellation()
    result = run_plugin(entrypoint, REQUEST, 5, cancel=cancel)
    cancel.cancel()
    assert result.ok and cancel.is_cancelled() and cancel.wait(0)
    cancel.close()


@pytest.mark.timeout(5)
def test_cancellation_wakes_a_selector_from_another_thread():
    import selectors
    cancel = Cancellation()
    with selectors.DefaultSelector() as selector:
        selector.register(cancel.fileno(), selectors.EVENT_READ)
        assert selector.select(0) == []
        threading.Timer(0.05, cancel.cancel).start()
        assert selector.select(2)
    cancel.cancel()  # idempotent
    cancel.close()


# --------------------------------------------------------------------------
# the no-pidfd fallback


@pytest.fixture
def without_pidfd(monkeypatch):
    monkeypatch.setattr(runner, "USE_PIDFD", False)


@pytest.mark.timeout(10)
def test_fallback_exit_watch_runs_a_plugin(tmp_path, without_pidfd):
    entrypoint = printing_plugin(tmp_path, OK_LINE, exit_code=5)
    result = run_plugin(entrypoint, REQUEST, 5)
    assert result.ok and result.exit_code == 5 and result.duration_s < 1


@pytest.mark.timeout(10)
def test_fallback_exit_watch_times_out_and_kills(tmp_path, without_pidfd):
    pid_file = tmp_path / "pids"
    entrypoint = make_plugin(tmp_path, """
        trap '' TERM
        sleep 30 &
        echo $! >> "%s"
        sleep 30
        """ % pid_file)
    result = run_plugin(entrypoint, REQUEST, DEADLINE, kill_grace_s=GRACE)
    assert result.outcome == "timeout" and result.exit_code == -1
    assert result.duration_s < DEADLINE + GRACE + 0.5
    (child,) = read_pids(pid_file, 1)
    assert gone_soon(child)


# --------------------------------------------------------------------------
# request shape


def test_request_shape_with_object_payload_and_event():
    event = {"type": "t", "payload": {}, "timestamp": runner.ZERO_TIMESTAMP}
    request = build_request("j1", "handle", {"k": "v"}, {"s": 1}, {"type": "t"}, {"ductile_plugin": "p"},
                            event, "2024-01-01T00:00:00.000000Z")
    assert list(request) == ["protocol", "job_id", "command", "config", "state", "payload", "context", "event",
                             "deadline_at"]
    assert request["protocol"] == 2 and request["payload"] == {"type": "t"} and request["event"] is event


@pytest.mark.parametrize("payload", [None, [1, 2], "text", 3, True])
def test_request_omits_a_payload_that_is_not_an_object(payload):
    request = build_request("j1", "poll", None, None, payload, None)
    assert "payload" not in request and "event" not in request and "deadline_at" not in request
    assert request["context"] == {} and request["config"] == {} and request["state"] == {}


def test_request_deadline_accepts_a_datetime():
    from datetime import datetime, timezone
    moment = datetime(2024, 3, 1, 12, 0, 0, tzinfo=timezone.utc)
    assert build_request("j", "poll", {}, {}, {}, {}, None, moment)["deadline_at"] == "2024-03-01T12:00:00.000000Z"


def test_encoded_request_is_one_compact_utf8_line():
    data = runner.encode_request(build_request("j", "poll", {"name": "Zoë"}, {}, None, {}))
    assert data.endswith(b"\n") and data.count(b"\n") == 1
    assert "Zoë".encode("utf-8") in data and b": " not in data


# --------------------------------------------------------------------------
# the handle event (§2.4)


CONTEXT = {"ductile_plugin": "p", "shared": "from-context"}


def test_envelope_is_decoded_and_context_fills_missing_keys():
    payload = {"type": "a.b", "payload": {"x": 1, "shared": "mine"}, "dedupe_key": "d", "source": "api",
               "timestamp": "2024-01-02T03:04:05Z", "event_id": "e1"}
    event, error = build_handle_event(payload, CONTEXT)
    assert error is None
    assert list(event) == ["type", "payload", "dedupe_key", "source", "timestamp", "event_id"]
    assert event["payload"] == {"x": 1, "shared": "mine", "ductile_plugin": "p"}
    assert payload["payload"] == {"x": 1, "shared": "mine"}  # the job's payload is not modified


def test_empty_optional_fields_are_omitted_and_timestamp_defaults_to_zero():
    event, error = build_handle_event({"type": "t", "payload": {}, "dedupe_key": "", "source": None}, {})
    assert error is None
    assert event == {"type": "t", "payload": {}, "timestamp": "0001-01-01T00:00:00Z"}


def test_missing_payload_without_type_uses_the_whole_job_payload():
    job_payload = {"ref": "main", "commits": [1]}
    event, _ = build_handle_event(job_payload, CONTEXT)
    assert event["type"] == "" and event["payload"] == {"ref": "main", "commits": [1], **CONTEXT}
    assert job_payload == {"ref": "main", "commits": [1]}


def test_missing_payload_with_type_is_an_empty_object():
    event, _ = build_handle_event({"type": "t", "payload": None, "other": 1}, {"ductile_plugin": "p"})
    assert event["payload"] == {"ductile_plugin": "p"}


def test_null_job_payload_gives_an_empty_event():
    event, error = build_handle_event(None, {"ductile_plugin": "p"})
    assert error is None and event == {"type": "", "payload": {"ductile_plugin": "p"},
                                       "timestamp": runner.ZERO_TIMESTAMP}


def test_envelope_field_names_match_case_insensitively():
    event, _ = build_handle_event({"Type": "t", "PAYLOAD": {"a": 1}}, {})
    assert event["type"] == "t" and event["payload"] == {"a": 1}


@pytest.mark.parametrize("payload, detail", [
    ([1, 2], "cannot unmarshal array"),
    ("text", "cannot unmarshal string"),
    ({"type": "t", "payload": [1]}, 'field "payload" must be an object'),
    ({"type": 5}, 'field "type" must be a string'),
    ({"type": "t", "timestamp": "soon"}, 'field "timestamp" is not an RFC 3339 time'),
    ({"type": "t", "timestamp": ""}, 'field "timestamp" is not an RFC 3339 time'),
    ({"type": "t", "event_id": 7}, 'field "event_id" must be a string'),
])
def test_undecodable_envelope_fails(payload, detail):
    event, error = build_handle_event(payload, CONTEXT)
    assert event is None
    assert error.startswith("failed to unmarshal event payload: ") and detail in error


@pytest.mark.parametrize("body", [
    {"type": 5, "payload": "x", "n": 1},
    {"payload": [1], "n": 1},
    {"type": "t", "timestamp": "garbage", "n": 1},
])
def test_lenient_webhook_body_with_bad_envelope_becomes_the_payload(body):
    event, error = build_handle_event(body, CONTEXT, lenient=True)
    assert error is None
    assert event == {"type": "", "payload": {**body, **CONTEXT}, "timestamp": runner.ZERO_TIMESTAMP}


def test_lenient_webhook_body_without_envelope_keys_is_the_whole_payload():
    body = {"action": "opened", "source": "github", "dedupe_key": "k", "timestamp": "nope"}
    event, error = build_handle_event(body, {}, lenient=True)
    assert error is None
    assert event == {"type": "", "payload": body, "timestamp": runner.ZERO_TIMESTAMP}


def test_lenient_webhook_body_that_is_an_envelope_is_decoded():
    body = {"type": "gh.push", "payload": {"ref": "main"}, "source": "github"}
    event, error = build_handle_event(body, {"ductile_plugin": "p"}, lenient=True)
    assert error is None
    assert event == {"type": "gh.push", "payload": {"ref": "main", "ductile_plugin": "p"}, "source": "github",
                     "timestamp": runner.ZERO_TIMESTAMP}
