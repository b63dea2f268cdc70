"""Spec 30 §11 scenarios not covered by test_pipeline_runs.py, end to end.

S5, S6, S7, S8, S10, S12, S17 (run time), the crash part of S1 (a real
gateway subprocess killed with SIGKILL), a two-pipeline event loop stopped by
``service.max_chain_depth``, the default synchronous concurrency limit, and
broken pipelines refusing ``system start``.
"""
import http.client
import json
import signal
import stat
import threading
from pathlib import Path

import pytest
import yaml

from conftest import run_ductile
from ductile_lib.logs import default_sink
from conftest import wait_for
from test_gateway import GatewayProcess, rows
from test_pipeline_runs import STEP_ROOT, TOKEN, Harness, post

IF_GO = {"path": "payload.go", "op": "eq", "value": True}


# --- helpers ------------------------------------------------------------------------------------------------


def get(h: Harness, path: str):
    conn = http.client.HTTPConnection("127.0.0.1", h.port, timeout=30)
    conn.request("GET", path, headers={"Authorization": "Bearer " + TOKEN})
    resp = conn.getresponse()
    data = json.loads(resp.read() or b"null")
    conn.close()
    return resp.status, data


def pipeline_jobs(h: Harness, pipeline=None):
    """Jobs with their context's pipeline, step and accumulated baggage, in insertion order."""
    sql = ("SELECT j.id, j.plugin, j.command, j.status, j.submitted_by, j.parent_job_id, j.source_event_id, "
           "j.attempt, c.pipeline_name, c.step_id, c.parent_id AS context_parent, c.accumulated_json "
           "FROM job_queue j JOIN event_context c ON c.id = j.event_context_id")
    found = h.rows(sql + (" WHERE c.pipeline_name = ?" if pipeline else "") + " ORDER BY j.rowid",
                   (pipeline,) if pipeline else ())
    for row in found:
        row["accumulated"] = json.loads(row.pop("accumulated_json"))
    return found


def switch_result(h: Harness, job_id: str) -> dict:
    (row,) = h.rows("SELECT result FROM job_log WHERE job_id = ?", (job_id,))
    return json.loads(row["result"])


def runs_of(h: Harness, pipeline: str) -> int:
    """Distinct pipeline instances that ran at least one job."""
    return len({j["accumulated"]["ductile"]["pipeline_instance_id"] for j in pipeline_jobs(h, pipeline)})


class LogCapture:
    """Collects the JSON lines of the process-wide log sink (the gateway's stdout log)."""

    def __init__(self):
        self.lines = []
        self._lock = threading.Lock()

    def write(self, text):
        with self._lock:
            self.lines.extend(line for line in text.splitlines() if line.startswith("{"))

    def flush(self):
        pass

    def records(self, msg, level=None):
        with self._lock:
            parsed = [json.loads(line) for line in self.lines]
        return [r for r in parsed if r["msg"] == msg and (level is None or r["level"] == level)]


@pytest.fixture
def logs(monkeypatch):
    capture = LogCapture()
    monkeypatch.setattr(default_sink(), "stream", capture)
    return capture


# --- S5 -----------------------------------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_s5_hook_calls_a_pipeline(harness):
    h = harness({"root_echo": {"notify_on_complete": True}, "hook_echo": {}, "after_echo": {}},
                [{"name": "hook-call-entry", "on-hook": "job.completed", "steps": [
                    {"id": "dispatch", "call": "hook-call-target"}, {"id": "after", "uses": "after_echo"}]},
                 {"name": "hook-call-target", "on": "internal.hook.target",
                  "steps": [{"id": "notify", "uses": "hook_echo"}]}])
    root = h.root_job("root_echo")
    h.wait_idle()
    jobs = h.jobs()
    assert [(j["plugin"], j["command"], j["status"]) for j in jobs] == [
        ("root_echo", "poll", "succeeded"), ("hook_echo", "handle", "succeeded"),
        ("after_echo", "handle", "succeeded")]
    assert jobs[0]["id"] == root and jobs[0]["parent_job_id"] is None
    hook, after = pipeline_jobs(h)
    assert hook["id"] == jobs[1]["id"] and after["id"] == jobs[2]["id"]
    assert (hook["submitted_by"], hook["parent_job_id"], hook["pipeline_name"], hook["step_id"]) == (
        "hook", root, "hook-call-entry", "dispatch/notify")
    assert (after["submitted_by"], after["parent_job_id"], after["pipeline_name"], after["step_id"]) == (
        "route", hook["id"], "hook-call-entry", "after")
    (seen,) = h.seen("hook_echo")
    event = seen["event"]
    assert event["type"] == "job.completed" and hook["source_event_id"] == event["event_id"]
    payload = event["payload"]
    assert (payload["job_id"], payload["plugin"], payload["command"], payload["status"], payload["attempt"]) == (
        root, "root_echo", "poll", "succeeded", 1)
    assert payload["result"] == "root_echo-done" and payload["message"] == "Job completed [root_echo]: root_echo-done"
    # One run: the hook run's instance root and one row per job; no run of the called pipeline.
    contexts = h.rows("SELECT id, parent_id, pipeline_name, step_id FROM event_context")
    assert len(contexts) == 3
    instance_root = [c for c in contexts if c["step_id"] == ""]
    assert len(instance_root) == 1 and instance_root[0]["parent_id"] is None
    assert hook["context_parent"] == instance_root[0]["id"]
    assert after["context_parent"] == h.rows("SELECT event_context_id FROM job_queue WHERE id = ?",
                                             (hook["id"],))[0]["event_context_id"]
    assert {c["pipeline_name"] for c in contexts} == {"hook-call-entry"}
    assert hook["accumulated"]["ductile"]["pipeline_instance_id"] == after["accumulated"]["ductile"][
        "pipeline_instance_id"]
    assert (hook["accumulated"]["ductile"]["chain_depth"], after["accumulated"]["ductile"]["chain_depth"]) == (1, 2)
    # Hook-run jobs never fire hooks (only root_echo's completion started a run).
    assert runs_of(h, "hook-call-entry") == 1


# --- S6 -----------------------------------------------------------------------------------------------------


@pytest.mark.timeout(40)
@pytest.mark.parametrize("shared", [False, True], ids=["own-step-plugins", "one-step-plugin"])
def test_s6_from_plugin_on_hook_pipelines(harness, shared):
    steps = {"scoped_to_a": "sink", "scoped_to_b": "sink", "always": "sink"} if shared else {
        "scoped_to_a": "step_a", "scoped_to_b": "step_b", "always": "step_always"}
    plugins = {"plugin_a": {"notify_on_complete": True}, "plugin_b": {"notify_on_complete": True}}
    plugins.update({name: {} for name in steps.values()})
    h = harness(plugins, [
        {"name": "scoped_to_a", "on-hook": "job.completed", "from_plugin": "plugin_a",
         "steps": [{"uses": steps["scoped_to_a"]}]},
        {"name": "scoped_to_b", "on-hook": "job.completed", "from_plugin": "plugin_b",
         "steps": [{"uses": steps["scoped_to_b"]}]},
        {"name": "always", "on-hook": "job.completed", "steps": [{"uses": steps["always"]}]}])
    names = ("scoped_to_a", "scoped_to_b", "always")

    root_a = h.root_job("plugin_a")
    h.wait_idle()
    assert [runs_of(h, n) for n in names] == [1, 0, 1]
    assert {j["parent_job_id"] for j in pipeline_jobs(h)} == {root_a}

    root_b = h.root_job("plugin_b")
    h.wait_idle()
    assert [runs_of(h, n) for n in names] == [1, 1, 2]
    assert [len(pipeline_jobs(h, n)) for n in names] == [1, 1, 2]
    assert [j["parent_job_id"] for j in pipeline_jobs(h, "scoped_to_b")] == [root_b]
    assert all(j["submitted_by"] == "hook" and j["status"] == "succeeded" for j in pipeline_jobs(h))
    if not shared:
        assert [len(h.jobs(steps[n])) for n in names] == [1, 1, 2]

    status, view = get(h, "/config/view")
    assert status == 200
    assert "compiled_routes" in view, sorted(view)
    compiled = view["compiled_routes"]
    assert compiled["scoped_to_a"][0]["source"]["source_plugin"] == "plugin_a"
    assert compiled["scoped_to_b"][0]["source"]["source_plugin"] == "plugin_b"
    assert "source_plugin" not in compiled["always"][0]["source"]
    for name in names:
        first = compiled[name][0]
        assert first["id"] == "entry:step_1"
        assert first["source"]["hook_signal"] == "job.completed"
        assert first["destination"] == {"kind": "uses", "step_id": "step_1", "plugin": steps[name],
                                        "command": "handle"}


# --- S7 -----------------------------------------------------------------------------------------------------


@pytest.mark.timeout(40)
def test_s7_pipeline_if_on_triggers_and_hooks(harness):
    # A poll request carries no event, so each starter emits a fixed payload.
    h = harness({"start_guarded_workout": {"emit": [{"type": "pipeline.if.guarded", "payload": {"kind": "workout"}}]},
                 "start_guarded_weight": {"emit": [{"type": "pipeline.if.guarded", "payload": {"kind": "weight"}}]},
                 "start_unguarded": {"emit": [{"type": "pipeline.if.unguarded", "payload": {"kind": "weight"}}]},
                 "always_step": {"notify_on_complete": True}, "guarded_step": {"notify_on_complete": True},
                 "hook_step": {}},
                [{"name": "unguarded", "on": "pipeline.if.unguarded", "steps": [{"uses": "always_step"}]},
                 {"name": "guarded", "on": "pipeline.if.guarded",
                  "if": {"path": "payload.kind", "op": "eq", "value": "workout"},
                  "steps": [{"uses": "guarded_step"}]},
                 {"name": "on_guarded_done", "on-hook": "job.completed",
                  "if": {"path": "payload.plugin", "op": "eq", "value": "guarded_step"},
                  "steps": [{"uses": "hook_step"}]}])

    h.root_job("start_unguarded")
    h.wait_idle()
    (always,) = pipeline_jobs(h, "unguarded")
    assert always["plugin"] == "always_step" and always["status"] == "succeeded"
    assert h.seen("always_step")[0]["event"]["payload"]["kind"] == "weight"

    h.root_job("start_guarded_workout")
    h.wait_idle()
    (guarded,) = pipeline_jobs(h, "guarded")
    assert guarded["plugin"] == "guarded_step" and guarded["status"] == "succeeded"
    assert h.seen("guarded_step")[0]["event"]["payload"]["kind"] == "workout"

    weight = h.root_job("start_guarded_weight")
    h.wait_idle()
    assert [(j["id"], j["status"]) for j in h.jobs("start_guarded_weight")] == [(weight, "succeeded")]
    assert len(pipeline_jobs(h, "guarded")) == 1 and len(h.jobs("guarded_step")) == 1
    # Pipeline jobs never fire hooks: nothing hooked so far.
    assert not h.jobs("hook_step")

    guarded_root = h.root_job("guarded_step")
    h.root_job("always_step")
    h.wait_idle()
    (hook,) = h.jobs("hook_step")
    assert (hook["submitted_by"], hook["parent_job_id"], hook["status"]) == ("hook", guarded_root, "succeeded")
    (seen,) = h.seen("hook_step")
    assert seen["event"]["type"] == "job.completed" and seen["event"]["payload"]["plugin"] == "guarded_step"

    # An API trigger ignores the pipeline `if` (§2.2).
    status, _ = h.post("/pipeline/guarded", {"payload": {"kind": "weight"}})
    assert status == 202
    h.wait_idle()
    assert len(pipeline_jobs(h, "guarded")) == 2


# --- S8 -----------------------------------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_s8_context_in_trigger_if(harness):
    h = harness({"emit_event_with_role": {"emit": [{"type": "test.downstream.check"}]},
                 "emit_no_context": {"emit": [{"type": "test.no_context_trigger"}]},
                 "admin_step": {}, "guest_step": {}, "nc_step": {}, "nc_plain_step": {}},
                [{"name": "role_start", "on": "role.start", "steps": [
                    {"id": "emit_admin", "uses": "emit_event_with_role", "baggage": {"role": "payload.role"}}]},
                 {"name": "admin_check", "on": "test.downstream.check",
                  "if": {"path": "context.role", "op": "eq", "value": "admin"}, "steps": [{"uses": "admin_step"}]},
                 {"name": "guest_check", "on": "test.downstream.check",
                  "if": {"path": "context.role", "op": "eq", "value": "guest"}, "steps": [{"uses": "guest_step"}]},
                 {"name": "nc_check", "on": "test.no_context_trigger",
                  "if": {"path": "context.role", "op": "exists"}, "steps": [{"uses": "nc_step"}]},
                 {"name": "nc_plain", "on": "test.no_context_trigger", "steps": [{"uses": "nc_plain_step"}]}])
    status, body = h.post("/pipeline/role_start", {"payload": {"role": "admin"}})
    assert status == 202, body
    h.wait_idle()
    (emitter,) = pipeline_jobs(h, "role_start")
    assert emitter["accumulated"]["role"] == "admin" and emitter["id"] == body["job_id"]
    (admin,) = pipeline_jobs(h, "admin_check")
    assert (admin["plugin"], admin["status"], admin["parent_job_id"]) == ("admin_step", "succeeded", emitter["id"])
    # A new run inherits nothing: the baggage was only read by the `if`.
    assert "role" not in admin["accumulated"]
    assert not h.jobs("guest_step") and not pipeline_jobs(h, "guest_check")

    root = h.root_job("emit_no_context")
    h.wait_idle()
    assert not h.jobs("nc_step") and not pipeline_jobs(h, "nc_check")
    (plain,) = h.jobs("nc_plain_step")  # the event really was emitted and triggers an unguarded pipeline
    assert plain["parent_job_id"] == root and plain["status"] == "succeeded"


# --- S10 ----------------------------------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_s10_skipped_entry(harness):
    h = harness({"trigger": {"emit": [{"type": "test.triggered", "payload": {"status": "ok"}}]},
                 "skipme": {}, "notifier": {}},
                [{"name": "skip", "on": "test.triggered", "steps": [
                    {"id": "step_skip", "uses": "skipme", "if": {"path": "payload.status", "op": "eq",
                                                                 "value": "error"}},
                    {"id": "step_notify", "uses": "notifier"}]}])
    root = h.root_job("trigger")
    h.wait_idle()
    assert not h.jobs("skipme")
    (switch,) = h.jobs("core.switch")
    assert (switch["status"], switch["parent_job_id"], switch["submitted_by"]) == ("succeeded", root, "route")
    assert switch_result(h, switch["id"]) == {"matched": False, "event": "ductile.switch.false"}
    (notifier,) = h.jobs("notifier")
    assert (notifier["status"], notifier["parent_job_id"]) == ("succeeded", switch["id"])
    assert [r["id"] for r in h.rows("SELECT id FROM job_queue WHERE parent_job_id = ?", (root,))] == [switch["id"]]
    assert [j["step_id"] for j in pipeline_jobs(h, "skip")] == ["step_skip__switch", "step_notify"]
    # The switch passes on exactly what it received.
    (seen,) = h.seen("notifier")
    assert seen["event"]["payload"]["status"] == "ok"
    assert seen["event"]["payload"]["ductile_upstream_plugin"] == "trigger"
    assert not h.rows("SELECT id FROM job_queue WHERE status = 'skipped'")


# --- S12 ----------------------------------------------------------------------------------------------------


@pytest.mark.timeout(40)
def test_s12_group_if_over_steps(harness):
    h = harness({"b": {}, "c": {}, "d": {}},
                [{"name": "grp", "on": "grp.go", "steps": [
                    {"if": IF_GO, "steps": [{"id": "b", "uses": "b"}, {"id": "c", "uses": "c"}]},
                    {"id": "d", "uses": "d"}]}])
    assert h.post("/pipeline/grp", {"payload": {"go": False}})[0] == 202
    h.wait_idle()
    run = pipeline_jobs(h, "grp")
    assert [(j["plugin"], j["step_id"], j["status"]) for j in run] == [
        ("core.switch", "group_1__switch", "succeeded"), ("d", "d", "succeeded")]
    assert [j["accumulated"]["ductile"]["route_depth"] for j in run] == [1, 2]
    assert switch_result(h, run[0]["id"])["matched"] is False
    assert h.seen("d")[0]["event"]["payload"]["go"] is False

    assert h.post("/pipeline/grp", {"payload": {"go": True}})[0] == 202
    h.wait_idle()
    run = pipeline_jobs(h, "grp")[2:]
    assert [(j["plugin"], j["step_id"]) for j in run] == [
        ("core.switch", "group_1__switch"), ("b", "b"), ("c", "c"), ("d", "d")]
    assert [j["accumulated"]["ductile"]["route_depth"] for j in run] == [1, 2, 3, 4]
    assert {j["accumulated"]["ductile"]["route_max_depth"] for j in run} == {4}
    assert switch_result(h, run[0]["id"])["matched"] is True
    assert all(j["status"] == "succeeded" for j in run)
    assert [j["parent_job_id"] for j in run[1:]] == [run[0]["id"], run[1]["id"], run[2]["id"]]


@pytest.mark.timeout(40)
def test_s12_group_if_over_split(harness):
    h = harness({"sb": {}, "sc": {}, "sd": {}},
                [{"name": "sgrp", "on": "sgrp.go", "steps": [
                    {"if": IF_GO, "split": [{"id": "b", "uses": "sb"}, {"id": "c", "uses": "sc"}]},
                    {"id": "d", "uses": "sd"}]}])
    assert h.post("/pipeline/sgrp", {"payload": {"go": False}})[0] == 202
    h.wait_idle()
    run = pipeline_jobs(h, "sgrp")
    assert [(j["plugin"], j["step_id"]) for j in run] == [("core.switch", "group_1__switch"), ("sd", "d")]
    assert switch_result(h, run[0]["id"])["matched"] is False
    assert not h.rows("SELECT id FROM split_frames")
    assert not h.rows("SELECT id FROM event_context WHERE step_id = 'group_1__join'")

    assert h.post("/pipeline/sgrp", {"payload": {"go": True}})[0] == 202
    h.wait_idle()
    run = pipeline_jobs(h, "sgrp")[2:]
    assert run[0]["plugin"] == "core.switch" and switch_result(h, run[0]["id"])["matched"] is True
    assert sorted((j["plugin"], j["step_id"]) for j in run[1:3]) == [("sb", "b"), ("sc", "c")]
    assert [(j["plugin"], j["step_id"]) for j in run[3:]] == [("sd", "d")]
    assert len(h.jobs("sd")) == 2  # once per run
    assert h.rows("SELECT status, branch_count FROM split_frames") == [{"status": "joined", "branch_count": 2}]
    assert len(h.rows("SELECT * FROM split_arrivals")) == 2
    (join,) = h.rows("SELECT id FROM event_context WHERE step_id = 'group_1__join'")
    assert run[3]["context_parent"] == join["id"]
    # The step after the split gets the payload that entered it (the switch's input).
    assert h.seen("sd")[1]["event"]["payload"]["go"] is True
    assert all(j["status"] == "succeeded" for j in run)


# --- S17 ----------------------------------------------------------------------------------------------------

S17_CASES = [
    ("eq_float", {"path": "payload.n", "op": "eq", "value": 3.0}, True),
    ("eq_string", {"path": "payload.n", "op": "eq", "value": "3"}, False),
    ("flag_eq_1", {"path": "payload.flag", "op": "eq", "value": 1}, False),
    ("in_list", {"path": "payload.n", "op": "in", "value": [1, 3]}, True),
    ("missing_gt", {"path": "payload.missing", "op": "gt", "value": 5}, False),
    ("not_missing_gt", {"not": {"path": "payload.missing", "op": "gt", "value": 5}}, True),
    ("name_contains", {"path": "payload.name", "op": "contains", "value": "ALP"}, True),
    ("n_contains", {"path": "payload.n", "op": "contains", "value": "3"}, False),
    ("config_fast", {"path": "config.mode", "op": "eq", "value": "fast"}, True),
    ("config_slow", {"path": "config.mode", "op": "eq", "value": "fast"}, False),
]


@pytest.mark.timeout(40)
def test_s17_condition_typing_at_run_time(harness):
    plugins = {"g_" + name: {} for name, _, _ in S17_CASES}
    plugins["g_config_fast"] = {"mode": "fast"}
    plugins["g_config_slow"] = {"mode": "slow"}
    h = harness(plugins, [{"name": "typing", "on": "typing.go", "steps": [{"split": [
        {"id": name, "uses": "g_" + name, "if": cond} for name, cond, _ in S17_CASES]}]}],
        service={"max_workers": 4})
    status, body = h.post("/pipeline/typing", {"payload": {"n": 3, "flag": True, "name": "Alpha"}})
    assert status == 202, body
    h.wait_idle()
    by_step = {j["step_id"]: j for j in pipeline_jobs(h, "typing")}
    matched = {}
    for name, _, _ in S17_CASES:
        switch = by_step[name + "__switch"]
        assert (switch["plugin"], switch["status"]) == ("core.switch", "succeeded"), name
        matched[name] = switch_result(h, switch["id"])
    assert {n: m["matched"] for n, m in matched.items()} == {name: want for name, _, want in S17_CASES}
    assert {n: m["event"] for n, m in matched.items()} == {
        name: "ductile.switch.%s" % ("true" if want else "false") for name, _, want in S17_CASES}
    ran = {j["plugin"] for j in h.jobs() if j["plugin"].startswith("g_")}
    assert ran == {"g_" + name for name, _, want in S17_CASES if want}
    assert all(j["status"] == "succeeded" for j in h.jobs())


@pytest.mark.timeout(30)
def test_final_split_joins_within_the_auto_budget(harness, logs):
    # S11's last case `[a, split:[b, c]]`: auto budget 2 (a + one branch step), enough for the whole run.
    h = harness({"pa": {}, "pb": {}, "pc": {}, "go": {"emit": [{"type": "tail.go"}]}},
                [{"name": "tail", "on": "tail.go", "steps": [
                    {"id": "a", "uses": "pa"}, {"split": [{"id": "b", "uses": "pb"}, {"id": "c", "uses": "pc"}]}]}])
    h.root_job("go")
    h.wait_idle()
    run = pipeline_jobs(h, "tail")
    assert sorted(j["plugin"] for j in run) == ["pa", "pb", "pc"]
    assert {j["accumulated"]["ductile"]["route_max_depth"] for j in run} == {2}
    assert all(j["status"] == "succeeded" for j in h.jobs())
    assert not logs.records("pipeline depth budget exhausted")
    assert not logs.records("split stopped; join will not fire")
    assert h.rows("SELECT status FROM split_frames") == [{"status": "joined"}]
    assert len(h.rows("SELECT * FROM split_arrivals")) == 2
    assert len(h.rows("SELECT id FROM event_context WHERE step_id = 'group_1__join'")) == 1


# --- S1 crash -----------------------------------------------------------------------------------------------


def _port(gw: GatewayProcess) -> int:
    lines = wait_for(lambda: [r for r in gw.lines() if r["msg"] == "api listening"], 10, "api listening line")
    return int(lines[-1]["port"])


@pytest.mark.timeout(60)
def test_s1_crash_while_p1_runs_reruns_p1_once_and_p2_once(tmp_path):
    root = tmp_path / "crash"
    record = root / "record.jsonl"

    def step(**config):
        return {"uses": "step", "enabled": True, "config": {"record": str(record), **config}}

    root.mkdir()
    (root / "config.yaml").write_text(yaml.safe_dump({
        "plugin_roots": [str(STEP_ROOT)], "state": {"path": "./data/state.db"},
        "service": {"max_workers": 2, "tick_interval": "1s", "shutdown_timeout": "5s"},
        "api": {"enabled": True, "listen": "127.0.0.1:0", "auth": {"tokens": [{"token": TOKEN, "scopes": ["*"]}]}},
        "plugins": {"trigger": step(emit=[{"type": "chain.start", "payload": {"origin_user": "matt"},
                                           "event_id": "stable-id"}]),
                    "p1": step(sleep=2, emit=[{"type": "test.processed"}]), "p2": step()},
        "pipelines": [{"name": "chain", "on": "chain.start", "steps": [
            {"id": "s1", "uses": "p1", "baggage": {"origin_user": "payload.origin_user"}},
            {"id": "s2", "uses": "p2"}]}]}, sort_keys=False))
    db = root / "data" / "state.db"

    def seen(plugin):
        if not record.exists():
            return []
        return [json.loads(line) for line in record.read_text().splitlines()
                if json.loads(line)["plugin"] == plugin]

    first = GatewayProcess(root, root / "first.log")
    try:
        status, body = post(_port(first), "/plugin/trigger/poll", {"payload": {}})
        assert status == 202, body
        wait_for(lambda: rows(db, "SELECT 1 FROM job_queue WHERE plugin='p1' AND status='running'") and seen("p1"),
                 20, "p1 running")
        first.proc.kill()  # SIGKILL while p1 sleeps
        first.wait(10)
    finally:
        first.kill()
    assert rows(db, "SELECT status, attempt FROM job_queue WHERE plugin='p1'") == [("running", 1)]
    assert rows(db, "SELECT count(*) FROM job_queue WHERE plugin='p2'") == [(0,)]

    second = GatewayProcess(root, root / "second.log")
    try:
        wait_for(lambda: rows(db, "SELECT status FROM job_queue WHERE plugin='p2'") == [("succeeded",)],
                 30, "p2 after restart")
        wait_for(lambda: rows(db, "SELECT count(*) FROM job_queue WHERE status IN ('queued','running')")
                 == [(0,)], 10, "idle queue")
        assert second.logged("Re-queueing orphaned job", "WARN")
        (trigger,) = rows(db, "SELECT id, status FROM job_queue WHERE plugin='trigger'")
        assert trigger[1] == "succeeded"
        (p1,) = rows(db, "SELECT id, status, attempt, parent_job_id, source_event_id FROM job_queue "
                         "WHERE plugin='p1'")
        assert p1[1:] == ("succeeded", 2, trigger[0], "stable-id")
        (p2,) = rows(db, "SELECT id, status, parent_job_id, submitted_by FROM job_queue WHERE plugin='p2'")
        assert p2[1:] == ("succeeded", p1[0], "route")
        assert len(seen("p1")) == 2 and len(seen("p2")) == 1
        payload = seen("p2")[0]["event"]["payload"]
        assert payload["origin_user"] == "matt" and payload["ductile_upstream_step_id"] == "s1"
        assert rows(db, "SELECT attempt FROM job_log WHERE job_id = ? AND status = 'succeeded'", (p1[0],)) == [(2,)]
        second.signal(signal.SIGTERM)
        assert second.wait(30) == 0
    finally:
        second.kill()


# --- two-pipeline event loop --------------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_two_pipeline_event_loop_stops_at_max_chain_depth(harness, logs):
    h = harness({"starter": {"emit": [{"type": "x"}]}, "a": {"emit": [{"type": "y"}]},
                 "b": {"emit": [{"type": "x"}]}},
                [{"name": "A", "on": "x", "steps": [{"uses": "a"}]},
                 {"name": "B", "on": "y", "steps": [{"uses": "b"}]}],
                service={"max_chain_depth": 4})
    root = h.root_job("starter")
    h.wait_idle()
    chained = pipeline_jobs(h)
    assert [(j["plugin"], j["pipeline_name"], j["accumulated"]["ductile"]["chain_depth"]) for j in chained] == [
        ("a", "A", 1), ("b", "B", 2), ("a", "A", 3), ("b", "B", 4)]
    assert [j["parent_job_id"] for j in chained] == [root] + [j["id"] for j in chained[:-1]]
    assert all(j["status"] == "succeeded" for j in h.jobs()) and len(h.jobs()) == 5
    # Every run is its own: depth 1 of a budget of 1.
    assert all(j["accumulated"]["ductile"]["route_depth"] == 1 for j in chained)
    assert len({j["accumulated"]["ductile"]["pipeline_instance_id"] for j in chained}) == 4
    warns = wait_for(lambda: logs.records("event chain depth limit reached", "WARN"), 5, "chain WARN")
    assert len(warns) == 1
    warn = warns[0]
    assert (warn["job_id"], warn["event_type"], warn["max_chain_depth"]) == (chained[-1]["id"], "x", 4)
    assert not h.rows("SELECT id FROM job_queue WHERE status IN ('queued', 'running')")


# --- synchronous concurrency --------------------------------------------------------------------------------


@pytest.mark.timeout(40)
def test_default_max_concurrent_sync_is_10(harness):
    h = harness({"slow": {"sleep": 3}},
                [{"name": "slowsync", "on": "slow.go", "execution_mode": "synchronous", "timeout": "20s",
                  "steps": [{"uses": "slow"}]}],
                service={"max_workers": 10})
    results = [None] * 10

    def call(i):
        results[i] = h.post("/pipeline/slowsync", {"payload": {"i": i}})

    threads = [threading.Thread(target=call, args=(i,), daemon=True) for i in range(10)]
    for t in threads:
        t.start()
    wait_for(lambda: len(h.rows("SELECT id FROM job_queue WHERE status IN ('queued','running')")) == 10,
             10, "10 synchronous runs in flight")
    before = h.rows("SELECT COUNT(*) AS n FROM job_queue")[0]["n"]
    assert before == 10
    contexts = h.rows("SELECT COUNT(*) AS n FROM event_context")[0]["n"]
    status, body = h.post("/pipeline/slowsync", {"payload": {"i": 10}})
    assert (status, body) == (503, {"error": "too many concurrent synchronous requests"})
    assert h.rows("SELECT COUNT(*) AS n FROM job_queue")[0]["n"] == before
    assert h.rows("SELECT COUNT(*) AS n FROM event_context")[0]["n"] == contexts
    for t in threads:
        t.join(30)
    assert all(r is not None for r in results)
    assert [r[0] for r in results] == [200] * 10, results
    assert all(r[1]["status"] == "succeeded" and r[1]["result"]["result"] == "slow-done" for r in results)
    assert sorted(j["status"] for j in h.jobs()) == ["succeeded"] * 10
    # Slots are released: a new synchronous request succeeds.
    assert h.post("/pipeline/slowsync", {"payload": {}})[0] == 200


# --- broken pipelines refuse start --------------------------------------------------------------------------


def _broken_start(root: Path, plugin_roots, plugins, pipelines):
    root.mkdir(parents=True)
    (root / "config.yaml").write_text(yaml.safe_dump({
        "plugin_roots": [str(p) for p in plugin_roots], "state": {"path": "./data/state.db"},
        "plugins": plugins, "pipelines": pipelines}, sort_keys=False))
    return run_ductile("system", "start", "--config-dir", str(root), timeout=30)


@pytest.mark.timeout(60)
def test_uses_plugin_without_handle_refuses_start(tmp_path):
    plugin_dir = tmp_path / "plugins" / "pollonly"
    plugin_dir.mkdir(parents=True)
    (plugin_dir / "manifest.yaml").write_text(
        "manifest_spec: ductile.plugin\nmanifest_version: 1\nname: pollonly\nversion: 1.0.0\nprotocol: 2\n"
        "entrypoint: run.sh\ncommands:\n  - name: poll\n    type: write\n")
    run = plugin_dir / "run.sh"
    run.write_text("#!/bin/sh\necho '{\"status\":\"ok\"}'\n")
    run.chmod(run.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    result = _broken_start(tmp_path / "cfg", [tmp_path / "plugins"],
                           {"watcher": {"uses": "pollonly", "enabled": True}},
                           [{"name": "ph", "on": "x.go", "steps": [{"id": "s", "uses": "watcher"}]}])
    assert result.code == 78, result
    assert 'pipeline "ph" step "s": plugin "watcher" has no command "handle"' in result.err, result
    assert "ductile running" not in result.out


@pytest.mark.timeout(60)
def test_bad_if_refuses_start(tmp_path):
    result = _broken_start(tmp_path / "cfg", [STEP_ROOT], {"p": {"uses": "step", "enabled": True}},
                           [{"name": "pif", "on": "x.go", "steps": [
                               {"id": "s", "uses": "p", "if": {"path": "payload.n", "op": "gt", "value": "5"}}]}])
    assert result.code == 78, result
    # Condition errors carry their location: pipeline, step position, condition path (§2.3, §5.1).
    assert 'pipeline "pif": steps[0]: if.value: ' in result.err, result
    assert "ductile running" not in result.out


# --- §4.4 upstream markers on a triggered run ---------------------------------------------------------------


@pytest.mark.timeout(30)
def test_triggered_entry_payload_names_the_emitting_step(harness):
    # §4.2/§4.4: for an event of job J (pipeline P, step S) every child payload gains, if absent,
    # ductile_upstream_plugin (J's plugin), ductile_upstream_pipeline (P), ductile_upstream_step_id (S).
    h = harness({"emitter": {"emit": [{"type": "work.ready"}]}, "worker": {}},
                [{"name": "producer", "on": "produce.go", "steps": [{"id": "emit", "uses": "emitter"}]},
                 {"name": "consumer", "on": "work.ready", "steps": [{"id": "work", "uses": "worker"}]}])
    assert h.post("/pipeline/producer", {"payload": {}})[0] == 202
    h.wait_idle()
    (worker,) = pipeline_jobs(h, "consumer")
    (emitter,) = pipeline_jobs(h, "producer")
    assert worker["parent_job_id"] == emitter["id"]
    stored = json.loads(h.rows("SELECT payload FROM job_queue WHERE id = ?", (worker["id"],))[0]["payload"])
    upstream = {k: v for k, v in stored["payload"].items() if k.startswith("ductile_upstream_")}
    assert upstream == {"ductile_upstream_plugin": "emitter", "ductile_upstream_pipeline": "producer",
                        "ductile_upstream_step_id": "emit"}
