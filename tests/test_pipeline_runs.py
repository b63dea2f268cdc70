"""Spec 30 §11 scenarios against a real gateway with real plugin subprocesses."""
import http.client
import json
import time
from pathlib import Path

import yaml

from ductile_lib.gateway import Gateway

STEP_ROOT = Path(__file__).resolve().parent / "pipeline_plugins"
TOKEN = "pipeline-test-token"


def post(port: int, path: str, body=None):
    """POST JSON with the test token; ``(status, decoded body)``."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("POST", path, body=json.dumps(body).encode() if body is not None else None,
                 headers={"Authorization": "Bearer " + TOKEN})
    resp = conn.getresponse()
    data = json.loads(resp.read() or b"null")
    conn.close()
    return resp.status, data


class Harness:
    """A gateway on an ephemeral port whose plugins are aliases of the `step` test plugin."""

    def __init__(self, root: Path, plugins: dict, pipelines: list, routes=(), service=None, api=None):
        self.root = root
        self.record = root / "record.jsonl"
        entries = {}
        for name, spec in plugins.items():
            spec = dict(spec or {})
            entry = {"uses": "step", "enabled": spec.pop("enabled", True)}
            if spec.pop("notify_on_complete", False):
                entry["notify_on_complete"] = True
            entry["config"] = {"record": str(self.record), **spec}
            entries[name] = entry
        config = {
            "plugin_roots": [str(STEP_ROOT)], "state": {"path": "./data/state.db"},
            "service": {"max_workers": 2, "tick_interval": "1h", **(service or {})},
            "api": {"enabled": True, "listen": "127.0.0.1:0",
                    "auth": {"tokens": [{"token": TOKEN, "scopes": ["*"]}]}, **(api or {})},
            "plugins": entries, "pipelines": pipelines, "routes": list(routes),
        }
        root.mkdir(parents=True, exist_ok=True)
        (root / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        self.gateway = Gateway(config_dir=str(root))
        self.gateway.start()
        self.port = self.gateway.api_server.port

    def post(self, path: str, body=None):
        return post(self.port, path, body)

    def root_job(self, plugin: str, payload=None) -> str:
        status, body = self.post("/plugin/%s/poll" % plugin, {"payload": payload or {}})
        assert status == 202, body
        return body["job_id"]

    def wait_idle(self, timeout=30.0):
        deadline = time.monotonic() + timeout
        quiet = 0
        while time.monotonic() < deadline:
            busy = self.rows("SELECT COUNT(*) AS n FROM job_queue WHERE status IN ('queued','running')")[0]["n"]
            quiet = quiet + 1 if busy == 0 else 0
            if quiet >= 3:
                return
            time.sleep(0.05)
        raise AssertionError("queue not idle")

    def rows(self, sql, args=()):
        with self.gateway.db.read() as conn:
            return [dict(r) for r in conn.execute(sql, args)]

    def jobs(self, plugin=None):
        sql = "SELECT id, plugin, command, status, submitted_by, parent_job_id, source_event_id, " \
              "event_context_id, last_error, attempt FROM job_queue"
        return self.rows(sql + (" WHERE plugin = ?" if plugin else "") + " ORDER BY rowid",
                         (plugin,) if plugin else ())

    def context(self, context_id):
        row = self.rows("SELECT * FROM event_context WHERE id = ?", (context_id,))[0]
        row["accumulated"] = json.loads(row["accumulated_json"])
        return row

    def seen(self, plugin):
        if not self.record.exists():
            return []
        lines = [json.loads(line) for line in self.record.read_text().splitlines()]
        return [line for line in lines if line["plugin"] == plugin]

    def close(self):
        self.gateway.shutdown()


def test_s1_chain_and_baggage(harness):
    h = harness({"trigger": {"emit": [{"type": "chain.start", "payload": {"origin_user": "matt"},
                                       "event_id": "stable-id"}]},
                 "p1": {"emit": [{"type": "test.processed"}]}, "p2": {}},
                [{"name": "chain", "on": "chain.start",
                  "steps": [{"id": "s1", "uses": "p1", "baggage": {"origin_user": "payload.origin_user"}},
                            {"id": "s2", "uses": "p2"}]}])
    root = h.root_job("trigger")
    h.wait_idle()
    (p1,) = h.jobs("p1")
    assert (p1["parent_job_id"], p1["source_event_id"], p1["submitted_by"]) == (root, "stable-id", "route")
    ctx = h.context(p1["event_context_id"])["accumulated"]
    assert ctx["origin_user"] == "matt"
    assert (ctx["ductile"]["route_depth"], ctx["ductile"]["route_max_depth"], ctx["ductile"]["chain_depth"]) == (1, 2, 1)
    (p2,) = h.jobs("p2")
    assert p2["status"] == "succeeded"
    (seen,) = h.seen("p2")
    assert seen["event"]["payload"]["origin_user"] == "matt"
    assert seen["event"]["payload"]["ductile_upstream_step_id"] == "s1"
    s2 = h.context(p2["event_context_id"])
    s1 = h.context(s2["parent_id"])
    assert (s1["step_id"], s2["step_id"]) == ("s1", "s2") and h.context(s1["parent_id"])["step_id"] == ""


def test_s2_conditional_with_and_config(harness):
    h = harness({"content_processor": {"channel": "#ops"}, "event_echo": {}},
                [{"name": "cond", "on": "cond.start", "steps": [
                    {"id": "maybe_process", "uses": "content_processor",
                     "if": {"path": "payload.run_processor", "op": "eq", "value": True},
                     "with": {"content": "branch true for {payload.subject}", "status": "{payload.status}",
                              "channel": "{config.channel}"}},
                    {"id": "finished", "uses": "event_echo"}]}])
    assert h.post("/pipeline/cond", {"payload": {"run_processor": False}})[0] == 202
    h.wait_idle()
    assert [j["plugin"] for j in h.jobs()] == ["core.switch", "event_echo"]
    assert h.post("/pipeline/cond", {"payload": {"run_processor": True, "subject": "t", "status": "approved"}})[0] == 202
    h.wait_idle()
    (seen,) = h.seen("content_processor")
    payload = seen["event"]["payload"]
    assert (payload["content"], payload["status"], payload["channel"], payload["subject"]) == (
        "branch true for t", "approved", "#ops", "t")
    depths = {h.context(j["event_context_id"])["step_id"]: h.context(j["event_context_id"])["accumulated"]["ductile"]
              ["route_depth"] for j in h.jobs()[2:]}
    assert depths == {"maybe_process__switch": 1, "maybe_process": 2, "finished": 3}


def test_s3_sync_result(harness):
    h = harness({"step-a": {"result": "A"}, "step-b": {"result": "B"}},
                [{"name": "if-sync", "on": "sync.go", "execution_mode": "synchronous", "timeout": "5s", "steps": [
                    {"id": "first", "uses": "step-a", "if": {"path": "payload.run_first", "op": "eq", "value": True}},
                    {"id": "second", "uses": "step-b"}]}])
    status, body = h.post("/pipeline/if-sync", {"payload": {"run_first": False}})
    assert status == 200, body
    assert body["tree"][0]["plugin"] == "core.switch"
    assert body["tree"][0]["result"]["event"] == "ductile.switch.false"
    assert body["result"]["result"] == "B" and body["status"] == "succeeded"
    assert not h.jobs("step-a")
    status, body = h.post("/pipeline/if-sync", {"payload": {"run_first": True}})
    assert status == 200 and [i["plugin"] for i in body["tree"]] == ["core.switch", "step-a", "step-b"]
    assert body["result"]["result"] == "B"


def test_s4_hooks_are_full_runs(harness):
    h = harness({"flaky": {"fail": True, "notify_on_complete": True}, "notifier": {"notify_on_complete": True},
                 "logger": {}, "counter": {}},
                [{"name": "alert", "on-hook": "job.completed", "steps": [
                    {"id": "gate", "uses": "notifier", "if": {"path": "payload.status", "op": "neq", "value": "succeeded"},
                     "with": {"text": "{payload.message}"}},
                    {"id": "log", "uses": "logger"}]},
                 {"name": "count-fail", "on-hook": "job.failed", "steps": [{"uses": "counter"}]}])
    root = h.root_job("flaky")
    h.wait_idle()
    switch = [j for j in h.jobs("core.switch")][0]
    assert (switch["submitted_by"], switch["parent_job_id"]) == ("hook", root)
    (notifier,) = h.jobs("notifier")
    assert notifier["submitted_by"] == "route"
    (seen,) = h.seen("notifier")
    assert seen["event"]["payload"]["text"] == "Job failed [flaky]: flaky failed"
    assert len(h.jobs("logger")) == 1 and len(h.jobs("counter")) == 1
    hook_payload = seen["event"]["payload"]
    assert (hook_payload["plugin"], hook_payload["status"], hook_payload["reason"]) == ("flaky", "failed",
                                                                                      "plugin_retry_false")


def test_s9_fan_out_and_route(harness):
    h = harness({"emitter": {"emit": [{"type": "work.ready"}]}, "worker": {}, "auditor": {}, "starter": {
        "emit": [{"type": "fan.go"}]}},
                [{"name": "start-fanout", "on": "fan.go", "steps": [{"id": "emit", "uses": "emitter"}]},
                 {"name": "consume-a", "on": "work.ready", "steps": [{"uses": "worker"}]},
                 {"name": "consume-b", "on": "work.ready", "steps": [{"uses": "worker"}]}],
                routes=[{"from": "emitter", "event_type": "work.ready", "to": "auditor"}])
    h.root_job("starter")
    h.wait_idle()
    workers, (auditor,), (emitter,) = h.jobs("worker"), h.jobs("auditor"), h.jobs("emitter")
    assert len(workers) == 2 and auditor["submitted_by"] == "route"
    assert {w["parent_job_id"] for w in workers} | {auditor["parent_job_id"]} == {emitter["id"]}
    assert len({w["source_event_id"] for w in workers} | {auditor["source_event_id"]}) == 1
    (seen,) = h.seen("auditor")
    assert "ductile_pipeline" not in seen["context"]


def test_s11_split_and_join(harness):
    h = harness({"pa": {}, "worker": {}, "pc2": {}, "pd": {}, "go": {"emit": [{"type": "split.go"}]}},
                [{"name": "sj", "on": "split.go", "steps": [
                    {"id": "a", "uses": "pa"},
                    {"split": [{"id": "b", "uses": "worker"},
                               {"steps": [{"id": "c1", "uses": "worker"},
                                          {"id": "c2", "uses": "pc2", "baggage": {"c.first": "payload.result"}}]}]},
                    {"id": "d", "uses": "pd"}]}])
    h.root_job("go")
    h.wait_idle()
    assert len(h.jobs("worker")) == 2 and len(h.jobs("pc2")) == 1
    (pd,) = h.jobs("pd")
    (seen,) = h.seen("pd")
    assert seen["event"]["payload"]["result"] == "pa-done"
    assert seen["context"]["c"]["first"] == "worker-done"
    frames = h.rows("SELECT status FROM split_frames")
    assert frames == [{"status": "joined"}] and len(h.rows("SELECT * FROM split_arrivals")) == 2
    assert h.context(pd["event_context_id"])["accumulated"]["ductile"]["route_depth"] == 4


def test_s13_call_returns(harness):
    h = harness({"px": {}, "pq1": {}, "pq2": {}, "py": {}, "go": {"emit": [{"type": "p.start",
                                                                              "payload": {"user": "u"}}]}},
                [{"name": "Q", "on": "q.start", "steps": [
                    {"id": "q1", "uses": "pq1", "baggage": {"q.prev": "payload.result"}}, {"id": "q2", "uses": "pq2"}]},
                 {"name": "P", "on": "p.start", "steps": [
                    {"id": "x", "uses": "px", "baggage": {"p.user": "payload.user"}}, {"id": "c", "call": "Q"},
                    {"id": "y", "uses": "py"}]}])
    h.root_job("go")
    h.wait_idle()
    steps = [h.context(j["event_context_id"])["step_id"] for j in h.jobs() if j["event_context_id"]]
    assert steps == ["x", "c/q1", "c/q2", "y"]
    (q1,) = h.seen("pq1")
    assert q1["context"]["p"]["user"] == "u"
    (y,) = h.seen("py")
    assert y["context"]["p"]["user"] == "u" and y["context"]["q"]["prev"] == "px-done"


def test_s14_sync_guards(harness):
    h = harness({"a": {}, "b": {}, "c": {}, "slow": {"sleep": 3}},
                [{"name": "fan", "on": "fan.start", "execution_mode": "synchronous",
                  "steps": [{"split": [{"uses": "a"}, {"uses": "b"}]}, {"uses": "c"}]},
                 {"name": "slow", "on": "slow.start", "execution_mode": "synchronous", "timeout": "1s",
                  "steps": [{"uses": "slow"}]}],
                api={"max_concurrent_sync": 1})
    status, body = h.post("/pipeline/fan")
    assert status == 400 and "requires exactly one entry dispatch" in body["error"] and not h.jobs()
    status, body = h.post("/pipeline/fan?async=true")
    assert status == 202
    h.wait_idle()
    assert body["job_id"] == h.jobs("a")[0]["id"] and len(h.jobs("c")) == 1
    status, body = h.post("/pipeline/slow")
    assert status == 202 and body["timeout_exceeded"] is True


def test_s15_root_baggage_failure_enqueues_nothing(harness):
    h = harness({"web": {}}, [{"name": "bag", "on": "bag.start",
                               "steps": [{"uses": "web", "baggage": {"web.url": "payload.url"}}]}])
    status, body = h.post("/pipeline/bag", {"payload": {}})
    assert status == 400 and "root baggage claims failed" in body["error"] and "path not found" in body["error"]
    assert not h.jobs() and not h.rows("SELECT id FROM event_context")
    assert h.post("/pipeline/bag", {"payload": {"url": "http://x"}})[0] == 202


def test_s16_with_values_and_errors(harness):
    h = harness({"w": {}, "m": {}}, [
        {"name": "vals", "on": "vals.start", "steps": [{"id": "S", "uses": "w", "with": {
            "n": "{payload.count}", "s": "n={payload.count}", "k": "const", "b": "v={payload.big}",
            "r": "{payload.ratio}x"}}]},
        {"name": "P", "on": "missing.start", "steps": [{"id": "S", "uses": "m", "with": {"m": "{payload.missing}"}}]}])
    h.post("/pipeline/vals", {"payload": {"count": 3, "big": 1000000, "ratio": 2.5}})
    h.post("/pipeline/P", {"payload": {}})
    h.wait_idle()
    (seen,) = h.seen("w")
    p = seen["event"]["payload"]
    assert (p["n"], p["s"], p["k"], p["b"], p["r"]) == (3, "n=3", "const", "v=1000000", "2.5x")
    (job,) = h.jobs("m")
    assert job["status"] == "failed"
    assert job["last_error"] == 'apply with remap for P/S: m: resolve "payload.missing": path not found'


def test_s18_budget_per_run(harness):
    h = harness({"c1": {}, "c2": {}, "go": {"emit": [{"type": "c.go"}]}},
                [{"name": "C", "on": "c.go", "max_depth": 1, "steps": [{"uses": "c1"}, {"uses": "c2"}]}])
    h.root_job("go")
    h.wait_idle()
    assert len(h.jobs("c1")) == 1 and h.jobs("c1")[0]["status"] == "succeeded" and not h.jobs("c2")


def test_s19_event_loop_stops_at_chain_depth(harness):
    h = harness({"pinger": {"emit": [{"type": "ping"}]}},
                [{"name": "loop", "on": "ping", "steps": [{"uses": "pinger"}]}], service={"max_chain_depth": 3})
    h.root_job("pinger")
    h.wait_idle()
    jobs = h.jobs("pinger")
    assert len(jobs) == 4 and all(j["status"] == "succeeded" for j in jobs)


def test_s20_routes_and_plugin_command(harness):
    h = harness({"fetcher": {"emit": [{"type": "page.ready"}]}, "indexer": {}, "off": {"enabled": False},
                 "fabric": {}, "go": {"emit": [{"type": "fab.go"}]}},
                [{"name": "fab", "on": "fab.go", "steps": [{"uses": "fabric.summarize"}]}],
                routes=[{"from": "fetcher", "event_type": "page.ready", "to": "indexer"},
                        {"from": "fetcher", "event_type": "page.ready", "to": "off"}])
    root = h.root_job("fetcher")
    h.root_job("go")
    h.wait_idle()
    (indexer,) = h.jobs("indexer")
    assert (indexer["submitted_by"], indexer["parent_job_id"], indexer["command"]) == ("route", root, "handle")
    assert not h.jobs("off") and h.jobs("fetcher")[0]["status"] == "succeeded"
    (fabric,) = h.jobs("fabric")
    assert fabric["command"] == "summarize"
    (seen,) = h.seen("fabric")
    assert seen["event"] is not None and seen["payload"] == seen["event"]["payload"]


def test_broken_pipeline_refuses_start(tmp_path):
    from conftest import run_ductile

    root = tmp_path / "broken"
    root.mkdir()
    (root / "config.yaml").write_text(yaml.safe_dump({
        "plugin_roots": [str(STEP_ROOT)], "plugins": {"p": {"uses": "step", "enabled": True}},
        "pipelines": [{"name": "bad", "on": "x.y", "steps": [{"id": "s", "uses": "ghost"}]},
                      {"name": "a", "on": "a.b", "steps": [{"call": "b"}]},
                      {"name": "b", "on": "b.c", "steps": [{"call": "a"}]}]}))
    result = run_ductile("system", "start", "--config-dir", str(root), timeout=30)
    assert result.code == 78
    assert 'pipeline "bad" step "s" references unknown plugin "ghost"' in result.err
    assert "pipeline call cycle detected" in result.err


def test_config_check_reports_pipeline_errors(tmp_path, cli):
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({
        "plugin_roots": [str(STEP_ROOT)], "plugins": {"p": {"uses": "step", "enabled": True}},
        "pipelines": [{"name": "bad", "on": "x.y", "steps": [
            {"id": "s", "uses": "p", "if": {"path": "payload.n", "op": "gt", "value": "5"}}]}]}))
    result = cli("config", "check", "--config-dir", tmp_path, "--json")
    assert result.code == 78
    errors = result.json()["errors"]
    assert any(e["category"] == "pipelines" and 'pipeline "bad"' in e["message"] for e in errors), errors


def test_config_view_lists_compiled_routes(harness):
    h = harness({"p1": {}, "p2": {}}, [{"name": "chain", "on": "chain.start", "steps": [{"uses": "p1"},
                                                                                        {"uses": "p2"}]}])
    conn = http.client.HTTPConnection("127.0.0.1", h.port, timeout=10)
    conn.request("GET", "/config/view", headers={"Authorization": "Bearer " + TOKEN})
    view = json.loads(conn.getresponse().read())
    conn.close()
    routes = view["compiled_routes"]["chain"]
    ids = [r["id"] for r in routes]
    assert "entry:step_1" in ids and "edge:step_1->step_2" in ids and any(i.startswith("terminal:step_2") for i in ids)
    assert list(view)[-1] == "compiled_routes" and view["pipelines"] is None


def test_s11_failed_branch_stops_the_frame(harness):
    h = harness({"pa": {}, "b": {"fail": True}, "worker": {}, "pc2": {}, "pd": {}},
                [{"name": "sjf", "on": "split.go", "execution_mode": "synchronous", "timeout": "20s", "steps": [
                    {"id": "a", "uses": "pa"},
                    {"split": [{"id": "b", "uses": "b"},
                               {"steps": [{"id": "c1", "uses": "worker"}, {"id": "c2", "uses": "pc2"}]}]},
                    {"id": "d", "uses": "pd"}]}])
    status, body = h.post("/pipeline/sjf")
    assert status == 200 and body["status"] == "failed"
    h.wait_idle()
    assert h.rows("SELECT status FROM split_frames") == [{"status": "stopped"}]
    assert len(h.jobs("worker")) == 1 and len(h.jobs("pc2")) == 1 and not h.jobs("pd")


def test_s15_routing_error_rolls_back_every_child(harness):
    h = harness({"two": {"emit": [{"type": "first.ok", "payload": {"url": "u"}}, {"type": "second.bad"}]},
                 "t1": {}, "t2": {}},
                [{"name": "one", "on": "first.ok", "steps": [{"uses": "t1"}]},
                 {"name": "bad", "on": "second.bad", "steps": [{"uses": "t2", "baggage": {"web.url": "payload.url"}}]}])
    root = h.root_job("two")
    h.wait_idle()
    (job,) = h.jobs("two")
    assert job["id"] == root and job["status"] == "failed" and job["attempt"] == 1
    assert job["last_error"].startswith("failed to route events: ") and "path not found" in job["last_error"]
    assert not h.jobs("t1") and not h.jobs("t2") and not h.rows("SELECT id FROM event_context")


def test_s18_budget_is_per_run(harness):
    h = harness({"a1": {"emit": [{"type": "b.go"}]}, "b1": {}, "b2": {}, "go": {"emit": [{"type": "a.go"}]}},
                [{"name": "A", "on": "a.go", "steps": [{"uses": "a1"}]},
                 {"name": "B", "on": "b.go", "steps": [{"uses": "b1"}, {"uses": "b2"}]}])
    h.root_job("go")
    h.wait_idle()
    control = {j["plugin"]: h.context(j["event_context_id"])["accumulated"]["ductile"] for j in h.jobs()
               if j["event_context_id"]}
    assert (control["a1"]["route_depth"], control["a1"]["route_max_depth"], control["a1"]["chain_depth"]) == (1, 1, 1)
    assert (control["b1"]["route_depth"], control["b1"]["route_max_depth"], control["b1"]["chain_depth"]) == (1, 2, 2)
    assert len(h.jobs("b2")) == 1


def test_s19_route_cycle_stops_at_chain_depth(harness):
    h = harness({"ping": {"emit": [{"type": "tick"}]}, "pong": {"emit": [{"type": "tock"}]}}, [],
                routes=[{"from": "ping", "event_type": "tick", "to": "pong"},
                        {"from": "pong", "event_type": "tock", "to": "ping"}], service={"max_chain_depth": 3})
    h.root_job("ping")
    h.wait_idle()
    jobs = h.jobs()
    assert len(jobs) == 4 and all(j["status"] == "succeeded" for j in jobs)
