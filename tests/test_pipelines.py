"""Pipeline and route compilation (spec 30 §1–§3, §8, §9.1, §11) against real configs.

Every test loads a real config directory with ``load_config`` and a real
registry from ``plugins.discover`` over small manifest-only plugins, so the
compiler sees exactly what the gateway would give it.
"""
from __future__ import annotations

import textwrap

import pytest

from conftest import write_tree
from ductile_lib import plugins
from ductile_lib.config import Route, load_config
from ductile_lib.pipelines import (HOOK_SIGNALS, SWITCH_FALSE, SWITCH_TRUE, CompiledPipeline, Edge,
                                   PipelineError, RoutingTable, compile_routing)

T, F = SWITCH_TRUE, SWITCH_FALSE

# name -> declared commands; every plugin below is configured and enabled unless noted.
PLUGINS = {
    name: ("poll", "handle")
    for name in (
        "p1 p2 pa pc2 pd worker content_processor event_echo step-a step-b notifier logger counter flaky "
        "hook_echo after_echo root_echo plugin_a plugin_b always_step guarded_step emit_event_with_role "
        "consumer skipme emitter auditor fetcher indexer px py pq1 pq2 a1 b1 b2 c1 c2 pinger trigger"
    ).split()
}
PLUGINS.update({"fabric": ("summarize",), "nohandle": ("poll",), "sleeper": ("poll",)})
DISABLED = {"sleeper"}


@pytest.fixture(scope="module")
def plugin_root(tmp_path_factory):
    """Manifest-only plugins (the compiler never runs them)."""
    root = tmp_path_factory.mktemp("plugins")
    for name, commands in PLUGINS.items():
        lines = ["manifest_spec: ductile.plugin", "manifest_version: 1", "name: %s" % name, "version: 1.0.0",
                 "protocol: 2", "entrypoint: run.sh", "commands:"]
        lines += ["  - name: %s\n    type: write" % command for command in commands]
        write_tree(root, {name + "/manifest.yaml": "\n".join(lines) + "\n", name + "/run.sh": "#!/bin/sh\necho '{}'\n"})
        (root / name / "run.sh").chmod(0o755)
    return root


def load(tmp_path, plugin_root, pipelines: str = "", routes: str = "", extra: str = "", files: dict = None):
    """A loaded Config and its registry (aliases registered like the runtime does)."""
    lines = ["plugin_roots:", "  - %s" % plugin_root, "state:", "  path: ./data/state.db", "plugins:"]
    for name in PLUGINS:
        lines.append("  %s:\n    enabled: %s" % (name, "false" if name in DISABLED else "true"))
    text = "\n".join(lines) + "\n" + extra  # raw: may continue the plugins map
    if pipelines:
        text += "pipelines:\n" + textwrap.indent(textwrap.dedent(pipelines).strip("\n"), "  ") + "\n"
    if routes:
        text += "routes:\n" + textwrap.indent(textwrap.dedent(routes).strip("\n"), "  ") + "\n"
    write_tree(tmp_path, dict({"config.yaml": text}, **(files or {})))
    cfg = load_config(config_dir=str(tmp_path), environ={})
    assert cfg.errors == []
    discovery = plugins.discover(list(cfg.plugin_roots))
    aliases = {name: p.uses for name, p in cfg.plugins.items() if p.uses}
    return cfg, plugins.register_aliases(discovery, aliases).plugins


@pytest.fixture
def build(tmp_path, plugin_root):
    def run(pipelines: str = "", **kwargs) -> RoutingTable:
        return compile_routing(*load(tmp_path, plugin_root, pipelines, **kwargs))
    return run


@pytest.fixture
def errors(tmp_path, plugin_root):
    """The PipelineError of a config that must not compile."""
    def run(pipelines: str = "", **kwargs) -> PipelineError:
        with pytest.raises(PipelineError) as info:
            compile_routing(*load(tmp_path, plugin_root, pipelines, **kwargs))
        return info.value
    return run


def edges(p: CompiledPipeline) -> set:
    """Edges as (source, event, target) triples; end edges have target ""."""
    return {(e.source, e.event_type, e.target) for e in p.edges}


def view_ids(table: RoutingTable, name: str) -> list:
    return [route["id"] for route in table.view()[name]]


# --------------------------------------------------------------------------------------
# §11 scenarios at the compile level
# --------------------------------------------------------------------------------------


def test_s1_chain(build):
    table = build("""
        - name: chain
          on: chain.start
          steps:
            - {id: s1, uses: p1, baggage: {origin_user: payload.origin_user}}
            - {id: s2, uses: p2}
    """)
    p = table.pipelines["chain"]
    assert (p.on, p.on_hook, p.execution_mode, p.timeout_s) == ("chain.start", "", "async", 30.0)
    assert list(p.nodes) == ["s1", "s2"]
    s1 = p.nodes["s1"]
    assert (s1.kind, s1.plugin, s1.command) == ("uses", "p1", "handle")
    assert s1.claims is not None and not s1.claims.is_empty()
    assert p.nodes["s2"].claims is None and dict(p.nodes["s2"].with_) == {}
    assert p.entries == ("s1",)
    assert edges(p) == {("s1", "", "s2"), ("s2", "", "")}
    assert p.max_depth == 2
    assert [e.target for e in p.successors("s1", "test.processed")] == ["s2"]
    assert p.successors("s2", "anything") == []
    assert p.is_terminal("s2") and not p.is_terminal("s1")
    assert table.triggered_by("chain.start") == [p]
    assert view_ids(table, "chain") == ["edge:s1->s2", "entry:s1", "terminal:s2"]


def test_s2_conditional_with_and_config(build):
    table = build("""
        - name: cond
          on: cond.go
          steps:
            - id: maybe_process
              uses: content_processor
              if: {path: payload.run_processor, op: eq, value: true}
              with:
                content: "branch true for {payload.subject}"
                status: "{payload.status}"
                channel: "{config.channel}"
            - id: finished
              uses: event_echo
    """)
    p = table.pipelines["cond"]
    switch = p.nodes["maybe_process__switch"]
    assert (switch.kind, switch.plugin, switch.command) == ("switch", "core.switch", "handle")
    assert switch.config_plugin == "content_processor"
    assert switch.condition.evaluate({"payload": {"run_processor": True}})
    assert not switch.condition.evaluate({"payload": {"run_processor": False}})
    assert sorted(p.nodes["maybe_process"].with_) == ["channel", "content", "status"]
    assert p.entries == ("maybe_process__switch",)
    assert edges(p) == {("maybe_process__switch", T, "maybe_process"), ("maybe_process", "", "finished"),
                        ("maybe_process__switch", F, "finished"), ("finished", "", "")}
    assert p.max_depth == 3
    assert [e.target for e in p.successors("maybe_process__switch", T)] == ["maybe_process"]
    assert [e.target for e in p.successors("maybe_process__switch", F)] == ["finished"]
    assert p.successors("maybe_process__switch", "other.event") == []
    assert p.terminal_node_ids == {"finished"}


def test_s3_sync_fields_and_terminal_nodes(build):
    table = build("""
        - name: if-sync
          on: sync.go
          execution_mode: synchronous
          timeout: 5s
          steps:
            - {id: first, uses: step-a, if: {path: payload.run_first, op: eq, value: true}}
            - {id: second, uses: step-b}
        - name: tail-if
          on: tail.go
          steps:
            - {id: a, uses: p1}
            - {id: b, uses: p2, if: {path: payload.go, op: exists}}
    """)
    p = table.pipelines["if-sync"]
    assert p.synchronous and p.execution_mode == "synchronous" and p.timeout_s == 5.0
    assert p.entry_dispatches() == ["first__switch"]
    assert p.terminal_node_ids == {"second"}
    tail = table.pipelines["tail-if"]
    assert tail.terminal_node_ids == {"b", "b__switch"}
    assert "terminal:b__switch@ductile.switch.false" in view_ids(table, "tail-if")


def test_s4_hook_pipelines(build):
    table = build("""
        - name: alert
          on-hook: job.completed
          steps:
            - id: gate
              uses: notifier
              if: {path: payload.status, op: neq, value: succeeded}
              with: {text: "{payload.message}"}
            - {id: log, uses: logger}
        - name: count-fail
          on-hook: job.failed
          steps:
            - uses: counter
    """)
    alert, count = table.pipelines["alert"], table.pipelines["count-fail"]
    assert alert.is_hook and alert.on == "" and alert.on_hook == "job.completed"
    assert table.hooked_on("job.completed") == [alert]
    assert table.hooked_on("job.failed") == [count]
    assert table.hooked_on("job.timed_out") == [] and table.triggered_by("job.completed") == []
    assert alert.entries == ("gate__switch",) and alert.max_depth == 3
    assert alert.nodes["gate__switch"].config_plugin == "notifier"
    assert list(count.nodes) == ["step_1"]
    entry = {r["id"]: r for r in table.view()["alert"]}["entry:gate__switch"]
    assert entry["source"] == {"hook_signal": "job.completed", "depth_lt": 3}


def test_s5_hook_calls_a_pipeline(build):
    table = build("""
        - name: hook-call-entry
          on-hook: job.completed
          steps:
            - {id: dispatch, call: hook-call-target}
            - {id: after, uses: after_echo}
        - name: hook-call-target
          on: internal.hook.target
          steps:
            - {id: notify, uses: hook_echo}
    """)
    p = table.pipelines["hook-call-entry"]
    assert list(p.nodes) == ["dispatch/notify", "after"]
    assert p.nodes["dispatch/notify"].plugin == "hook_echo"
    assert p.entries == ("dispatch/notify",)
    assert edges(p) == {("dispatch/notify", "", "after"), ("after", "", "")}
    assert p.max_depth == 2
    assert list(table.pipelines["hook-call-target"].nodes) == ["notify"]


def test_s6_from_plugin_in_view(build):
    table = build("""
        - {name: scoped_to_a, on-hook: job.completed, from_plugin: plugin_a, steps: [{uses: p1}]}
        - {name: scoped_to_b, on-hook: job.completed, from_plugin: " plugin_b ", steps: [{uses: p1}]}
        - {name: always, on-hook: job.completed, steps: [{uses: p1}]}
    """)
    assert [p.name for p in table.hooked_on("job.completed")] == ["scoped_to_a", "scoped_to_b", "always"]
    assert table.pipelines["scoped_to_b"].from_plugin == "plugin_b"
    view = table.view()
    assert view["scoped_to_a"][0]["source"]["source_plugin"] == "plugin_a"
    assert view["scoped_to_b"][0]["source"]["source_plugin"] == "plugin_b"
    assert "source_plugin" not in view["always"][0]["source"]


def test_s7_s8_pipeline_if(build):
    table = build("""
        - name: guarded
          on: pipeline.if.guarded
          if: {path: payload.kind, op: eq, value: workout}
          steps: [{uses: guarded_step}]
        - name: by-role
          on: test.downstream.check
          if: {path: context.role, op: eq, value: admin}
          steps: [{uses: consumer}]
        - name: unguarded
          on: pipeline.if.unguarded
          steps: [{uses: always_step}]
    """)
    guarded = table.pipelines["guarded"]
    assert guarded.condition.evaluate({"payload": {"kind": "workout"}})
    assert not guarded.condition.evaluate({"payload": {"kind": "weight"}})
    assert table.pipelines["by-role"].condition.evaluate({"payload": {}, "context": {"role": "admin"}})
    assert table.pipelines["unguarded"].condition is None
    entry = table.view()["guarded"][0]
    assert entry["id"] == "entry:step_1"
    assert entry["source"]["if"] == guarded.condition.to_view()
    assert list(entry["source"]) == ["trigger", "depth_lt", "if"]


def test_s9_fan_out_and_routes(build):
    table = build("""
        - {name: start-fanout, on: fan.go, steps: [{id: emit, uses: emitter}]}
        - {name: consume-a, on: work.ready, steps: [{uses: worker}]}
        - {name: consume-b, on: work.ready, steps: [{uses: worker}]}
    """, routes="- {from: emitter, event_type: work.ready, to: auditor}")
    assert [p.name for p in table.triggered_by("work.ready")] == ["consume-a", "consume-b"]
    assert table.routes == (Route("emitter", "work.ready", "auditor"),)
    assert table.routes_for("emitter", "work.ready") == [Route("emitter", "work.ready", "auditor")]
    assert table.routes_for("worker", "work.ready") == []
    assert "routes" not in table.view()


def test_s10_skipped_entry(build):
    p = build("""
        - name: skip
          on: test.triggered
          steps:
            - {id: step_skip, uses: skipme, if: {path: payload.status, op: eq, value: error}}
            - {id: step_notify, uses: notifier}
    """).pipelines["skip"]
    assert p.entries == ("step_skip__switch",)
    assert [e.target for e in p.successors("step_skip__switch", F)] == ["step_notify"]


S11 = """
    - name: fan
      on: fan.start
      steps:
        - {id: a, uses: pa}
        - split:
            - {id: b, uses: worker}
            - steps:
                - {id: c1, uses: worker}
                - {id: c2, uses: pc2, baggage: {c.first: payload.result}}
        - {id: d, uses: pd}
    - name: tail-split
      on: tail.start
      steps:
        - {id: a, uses: pa}
        - split: [{id: b, uses: worker}, {id: c, uses: worker}]
"""


def test_s11_split_and_join(build):
    table = build(S11)
    p = table.pipelines["fan"]
    assert list(p.nodes) == ["a", "group_1", "b", "c1", "c2", "group_1__join", "d"]
    fork, join = p.nodes["group_1"], p.nodes["group_1__join"]
    assert (fork.kind, fork.branch_count, join.kind, join.branch_count) == ("fork", 2, "join", 2)
    assert not fork.is_job and not join.is_job and fork.plugin == ""
    assert p.join_for("group_1") == "group_1__join" and p.fork_of("group_1__join") == "group_1"
    assert p.join_for("a") is None and p.fork_of("group_1") is None
    assert edges(p) == {("a", "", "group_1"), ("group_1", "", "b"), ("group_1", "", "c1"), ("c1", "", "c2"),
                        ("b", "", "group_1__join"), ("c2", "", "group_1__join"), ("group_1__join", "", "d"),
                        ("d", "", "")}
    assert [(e.target, e.branch) for e in p.successors("group_1", "x")] == [("b", 0), ("c1", 1)]
    assert all(e.branch is None for e in p.edges if e.source != "group_1")
    assert p.max_depth == 4
    assert p.terminal_node_ids == {"d"}
    tail = table.pipelines["tail-split"]
    assert tail.max_depth == 2
    assert tail.terminal_node_ids == {"b", "c", "group_1__join"}
    assert tail.is_terminal("b") and not tail.is_terminal("a")


def test_s11_view_ids_and_kinds(build):
    table = build(S11)
    routes = table.view()["fan"]
    assert [r["id"] for r in routes] == sorted(r["id"] for r in routes)
    by_id = {r["id"]: r for r in routes}
    assert set(by_id) == {
        "entry:a", "edge:a->group_1", "edge:group_1->b", "edge:group_1->c1", "edge:c1->c2",
        "edge:b->group_1__join", "edge:c2->group_1__join", "edge:group_1__join->d", "terminal:d"}
    assert by_id["edge:a->group_1"]["destination"] == {"kind": "fork", "step_id": "group_1"}
    assert by_id["edge:b->group_1__join"]["destination"] == {"kind": "join", "step_id": "group_1__join"}
    assert by_id["edge:group_1__join->d"] == {
        "id": "edge:group_1__join->d",
        "source": {"pipeline": "fan", "step_id": "group_1__join", "depth_lt": 4},
        "destination": {"kind": "uses", "step_id": "d", "plugin": "pd", "command": "handle"}}
    assert by_id["terminal:d"]["destination"] == {"kind": "terminal"}
    assert by_id["entry:a"]["source"] == {"trigger": "fan.start", "depth_lt": 4}


def test_s12_group_if(build):
    table = build("""
        - name: grp
          on: grp.go
          steps:
            - {steps: [{id: b, uses: p1}, {id: c, uses: p2}], if: {path: payload.go, op: eq, value: true}}
            - {id: d, uses: pd}
        - name: grp-split
          on: grp.split
          steps:
            - {split: [{id: b, uses: p1}, {id: c, uses: p2}], if: {path: payload.go, op: eq, value: true}}
            - {id: d, uses: pd}
    """)
    p = table.pipelines["grp"]
    assert p.entries == ("group_1__switch",)
    assert p.nodes["group_1__switch"].config_plugin == ""
    assert edges(p) == {("group_1__switch", T, "b"), ("b", "", "c"), ("c", "", "d"),
                        ("group_1__switch", F, "d"), ("d", "", "")}
    assert p.max_depth == 4
    s = table.pipelines["grp-split"]
    assert edges(s) == {("group_1__switch", T, "group_1"), ("group_1", "", "b"), ("group_1", "", "c"),
                        ("b", "", "group_1__join"), ("c", "", "group_1__join"), ("group_1__join", "", "d"),
                        ("group_1__switch", F, "d"), ("d", "", "")}
    assert s.max_depth == 3
    view = table.view()["grp-split"]
    assert {"id": "edge:group_1__switch->group_1",
            "source": {"pipeline": "grp-split", "step_id": "group_1__switch", "event_type": T, "depth_lt": 3},
            "destination": {"kind": "fork", "step_id": "group_1"}} in view


def test_s13_call_returns_to_caller(build):
    table = build("""
        - name: Q
          on: q.start
          steps:
            - {id: q1, uses: pq1, baggage: {q.prev: payload.result}}
            - {id: q2, uses: pq2}
        - name: P
          on: p.start
          steps:
            - {id: x, uses: px, baggage: {p.user: payload.user}}
            - {id: c, call: Q}
            - {id: y, uses: py}
    """)
    p = table.pipelines["P"]
    assert list(p.nodes) == ["x", "c/q1", "c/q2", "y"]
    assert p.nodes["c/q1"].claims is not None and p.nodes["c/q1"].plugin == "pq1"
    assert edges(p) == {("x", "", "c/q1"), ("c/q1", "", "c/q2"), ("c/q2", "", "y"), ("y", "", "")}
    assert p.max_depth == 4
    assert table.pipelines["Q"].max_depth == 2
    assert [q.name for q in table.triggered_by("q.start")] == ["Q"]


def test_s13_nested_calls_conditions_and_auto_ids(build):
    table = build("""
        - name: R
          on: r.go
          steps:
            - {id: r1, uses: p1}
        - name: Q
          on: q.go
          steps:
            - {id: q1, uses: pq1, if: {path: payload.x, op: exists}}
            - {id: d, call: R}
            - uses: pq2
            - split: [{uses: p1}, {uses: p2}]
        - name: P
          on: p.go
          steps:
            - {id: c, call: Q, if: {path: payload.go, op: eq, value: true}}
            - call: Q
            - {id: y, uses: py}
    """)
    p = table.pipelines["P"]
    inlined = ["c/q1", "c/q1__switch", "c/d/r1", "c/step_1", "c/group_1", "c/step_2", "c/step_3",
               "c/group_1__join"]
    assert list(p.nodes) == inlined + ["c__switch"] + [n.replace("c/", "step_1/", 1) for n in inlined] + ["y"]
    assert p.entries == ("c__switch",)
    assert p.nodes["c/q1__switch"].config_plugin == "pq1"
    assert p.nodes["c__switch"].config_plugin == ""
    assert p.join_for("c/group_1") == "c/group_1__join" and p.fork_of("step_1/group_1__join") == "step_1/group_1"
    e = edges(p)
    assert {("c__switch", T, "c/q1__switch"), ("c__switch", F, "step_1/q1__switch"),
            ("c/q1__switch", F, "c/d/r1"), ("c/group_1__join", "", "step_1/q1__switch"),
            ("step_1/group_1__join", "", "y"), ("y", "", "")} <= e
    # c__switch, q1__switch, q1, r1, step_1, (fork), one branch, (join) twice, then y
    assert p.max_depth == 1 + 2 * 5 + 1


def test_s14_split_entry_dispatches(build):
    table = build("""
        - name: sync-split
          on: s.go
          execution_mode: synchronous
          steps:
            - split: [{id: a, uses: p1}, {id: b, uses: p2}]
            - {id: c, uses: pd}
        - name: nested
          on: n.go
          steps:
            - split: [{split: [{id: a, uses: p1}, {id: b, uses: p2}]}, {id: c, uses: p1, if: {path: payload.x, op: exists}}]
    """)
    p = table.pipelines["sync-split"]
    assert p.entries == ("group_1",)
    assert p.entry_dispatches() == ["a", "b"]
    assert edges(p) >= {("group_1__join", "", "c"), ("c", "", "")}
    n = table.pipelines["nested"]
    assert n.entry_dispatches() == ["a", "b", "c__switch"]
    assert n.terminal_node_ids == {"a", "b", "c", "c__switch", "group_1__join", "group_2__join"}
    assert set(view_ids(table, "nested")) == {
        "entry:group_1", "edge:group_1->group_2", "edge:group_1->c__switch", "edge:group_2->a", "edge:group_2->b",
        "edge:a->group_2__join", "edge:b->group_2__join", "edge:group_2__join->group_1__join",
        "edge:c__switch->c", "edge:c->group_1__join", "edge:c__switch->group_1__join", "terminal:group_1__join"}


def test_s15_s16_claims_and_with_compile(build):
    p = build("""
        - name: web
          on: web.go
          steps:
            - {id: fetch, uses: p1, baggage: {web.url: payload.url, from: payload.meta, namespace: meta}}
            - id: shape
              uses: p2
              with: {n: "{payload.count}", s: "n={payload.count}", k: const, m: "{payload.missing}"}
    """).pipelines["web"]
    assert p.nodes["fetch"].claims.namespace == "meta"
    assert sorted(p.nodes["shape"].with_) == ["k", "m", "n", "s"]
    assert p.nodes["shape"].with_["n"].render({"payload": {"count": 3}}) == 3


def test_s17_step_condition_reads_config(build):
    p = build("""
        - name: typed
          on: typed.go
          steps:
            - {id: fast, uses: p1, if: {path: config.mode, op: eq, value: fast}}
    """).pipelines["typed"]
    switch = p.nodes["fast__switch"]
    assert switch.config_plugin == "p1"
    assert switch.condition.evaluate({"payload": {}, "config": {"mode": "fast"}})


def test_s18_budgets(build):
    table = build("""
        - {name: A, on: a.go, steps: [{uses: a1}]}
        - {name: B, on: b.go, steps: [{uses: b1}, {uses: b2}]}
        - {name: C, on: c.go, max_depth: 1, steps: [{uses: c1}, {uses: c2}]}
        - {name: U, on: u.go, max_depth: 0, steps: [{uses: c1}, {uses: c2}]}
    """)
    assert [table.pipelines[n].max_depth for n in "ABCU"] == [1, 2, 1, 0]
    assert all("depth_lt" not in r["source"] for r in table.view()["U"])
    assert table.view()["C"][0]["source"]["depth_lt"] == 1


def test_s19_event_loop_pipeline(build):
    table = build("- {name: loop, on: ping, steps: [{uses: pinger}]}")
    assert [p.name for p in table.triggered_by("ping")] == ["loop"]
    assert table.triggered_by("pong") == []


def test_s20_plugin_command_and_alias(build):
    table = build("""
        - name: p
          on: p.go
          steps:
            - {id: s, uses: fabric.summarize}
            - {id: al, uses: myalias}
            - {id: off, uses: sleeper}
            - {id: off2, uses: sleeper.whatever}
    """, extra="  myalias:\n    enabled: true\n    uses: p1\n")
    nodes = table.pipelines["p"].nodes
    assert (nodes["s"].plugin, nodes["s"].command) == ("fabric", "summarize")
    assert (nodes["al"].plugin, nodes["al"].command) == ("myalias", "handle")
    # a disabled plugin is not a load error: its jobs are skipped at run time (E4)
    assert (nodes["off"].plugin, nodes["off2"].command) == ("sleeper", "whatever")
    assert {r["id"]: r for r in table.view()["p"]}["entry:s"]["destination"] == {"kind": "uses", "step_id": "s",
                                                                               "plugin": "fabric", "command": "summarize"}
    assert {r["id"]: r for r in table.view()["p"]}["edge:s->al"]["destination"] == {"kind": "uses", "step_id": "al", "plugin": "myalias",
                                                   "command": "handle"}


def test_relay_step_compiles(build):
    p = build("""
        - name: r
          on: r.go
          steps:
            - {id: out, relay: {to: peer, event: remote.go, with: {x: payload.x}}, if: {path: payload.x, op: exists}}
            - {uses: p1}
    """).pipelines["r"]
    relay = p.nodes["out"]
    assert (relay.kind, relay.plugin, relay.command, relay.relay["to"]) == ("relay", "core.relay", "handle", "peer")
    assert p.max_depth == 3


# --------------------------------------------------------------------------------------
# Step ids
# --------------------------------------------------------------------------------------


def test_auto_ids_skip_taken_ids_and_groups_count_separately(build):
    p = build("""
        - name: ids
          on: ids.go
          steps:
            - {id: step_1, uses: p1}
            - uses: p1
            - steps: [{uses: p2}]
            - {id: group_2, split: [{uses: p1}, {uses: p2}]}
            - split: [{uses: p1}, {id: "  step_7  ", uses: p2}]
            - uses: p1
    """).pipelines["ids"]
    assert list(p.nodes) == ["step_1", "step_2", "step_3", "group_2", "step_4", "step_5", "group_2__join",
                             "group_3", "step_6", "step_7", "group_3__join", "step_8"]


def test_edge_iteration_is_stable(build):
    p = build("- {name: one, on: one.go, steps: [{uses: p1}]}").pipelines["one"]
    assert p.edges == (Edge("step_1", "", ""),) and p.nodes["step_1"].is_job


# --------------------------------------------------------------------------------------
# Load errors
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("pipelines, message", [
    ("- {on: x.go, steps: [{uses: p1}]}", "pipelines[0]: name is required"),
    ("- {name: '  ', on: x.go, steps: [{uses: p1}]}", "pipelines[0]: name is required"),
    ("- just-a-string", "pipelines[0] must be a mapping"),
    ("- {name: p, steps: [{uses: p1}]}", 'pipeline "p": on or on-hook is required'),
    ("- {name: p, on: a, on-hook: job.failed, steps: [{uses: p1}]}",
     'pipeline "p": on and on-hook are mutually exclusive'),
    ("- {name: p, on: ductile.step.succeeded, steps: [{uses: p1}]}",
     'pipeline "p": event type "ductile.step.succeeded" is reserved'),
    ("- {name: p, on: a, max_depth: -1, steps: [{uses: p1}]}",
     'pipeline "p": max_depth must be >= 0 (0 means unlimited)'),
    ("- {name: p, on: a, max_depth: two, steps: [{uses: p1}]}", 'pipeline "p": max_depth must be an integer'),
    ("- {name: p, on: a, timeout: 5, steps: [{uses: p1}]}",
     'pipeline "p": timeout: duration "5" has no unit; add one, e.g. "5s"'),
    ("- {name: p, on: a, timeout: soon, steps: [{uses: p1}]}", 'pipeline "p": timeout: invalid duration "soon"'),
    ("- {name: p, on: a, timeout: -5s, steps: [{uses: p1}]}", 'pipeline "p": timeout must be positive'),
    ("- {name: p, on: a}", 'pipeline "p": steps must be non-empty'),
    ("- {name: p, on: a, steps: []}", 'pipeline "p": steps must be non-empty'),
    ("- {name: p, on: a, steps: [{id: s}]}",
     'pipeline "p": steps[0]: step must define exactly one of uses, call, relay, steps, or split'),
    ("- {name: p, on: a, steps: [{uses: p1, call: q}]}",
     'pipeline "p": steps[0]: step must define exactly one of uses, call, relay, steps, or split'),
    ("- {name: p, on: a, steps: [{uses: p1}, {split: []}]}",
     'pipeline "p": steps[1]: step must define exactly one of uses, call, relay, steps, or split'),
    ("- {name: p, on: a, steps: [{uses: p1}, {split: [{uses: p1}, {uses: '  '}]}]}",
     'pipeline "p": steps[1]: split[1]: step must define exactly one of uses, call, relay, steps, or split'),
    ("- {name: p, on: a, steps: [{steps: [{uses: p1}, [1]]}]}", 'pipeline "p": steps[0]: steps[1]: step must be a mapping'),
    ("- {name: p, on: a, steps: [{split: [{uses: p1}], with: {a: b}}]}",
     'pipeline "p": steps[0]: with is only supported on uses steps'),
    ("- {name: p, on: a, steps: [{steps: [{uses: p1}], baggage: {k: payload.k}}]}",
     'pipeline "p": steps[0]: baggage is only supported on uses steps'),
    ("- {name: p, on: a, steps: [{id: s, uses: nosuch}]}", 'pipeline "p" step "s" references unknown plugin "nosuch"'),
    ("- {name: p, on: a, steps: [{uses: nosuch.cmd}]}",
     'pipeline "p" step "step_1" references unknown plugin "nosuch.cmd"'),
    ("- {name: p, on: a, steps: [{id: s, uses: nohandle}]}", 'pipeline "p" step "s": plugin "nohandle" has no command "handle"'),
    ("- {name: p, on: a, steps: [{id: s, uses: fabric.nope}]}", 'pipeline "p" step "s": plugin "fabric" has no command "nope"'),
    ("- {name: p, on: a, steps: [{id: s, uses: fabric.}]}", 'pipeline "p" step "s": plugin "fabric" has no command ""'),
    ("- {name: p, on: a, steps: [{call: b}]}", 'pipeline "p" references unknown pipeline "b"'),
    ("- {name: p, on: a, steps: [{id: s, uses: p1}, {id: s, uses: p2}]}", 'pipeline "p": steps[1]: duplicate step id "s"'),
    ("- {name: p, on: a, steps: [{uses: p1}, {id: step_1, uses: p2}]}",
     'pipeline "p": steps[1]: duplicate step id "step_1"'),
    ("- {name: p, on: a, steps: [{id: s__switch, uses: p1}, {id: s, uses: p2, if: {path: payload.a, op: exists}}]}",
     'pipeline "p": steps[1]: duplicate step id "s__switch"'),
    ("- {name: p, on: a, steps: [{id: g, split: [{id: g__join, uses: p1}]}]}", 'pipeline "p": steps[0]: duplicate step id "g__join"'),
    ("- {name: p, on: a, steps: [{relay: {to: peer}}]}", 'pipeline "p": steps[0]: relay.event is required'),
    ("- {name: p, on: a, steps: [{relay: [x]}]}", 'pipeline "p": steps[0]: relay must be a mapping'),
    ("- {name: p, on: a, steps: [{relay: {to: peer, event: e, with: {x: 3}}}]}",
     'pipeline "p": steps[0]: relay.with must map non-empty keys to non-empty expressions'),
    ("- {name: p, on: a, steps: [{steps: {uses: p1}}]}", 'pipeline "p": steps[0]: steps must be a list'),
    ("- {name: p, on: a, steps: [{split: {uses: p1}}]}", 'pipeline "p": steps[0]: split must be a list'),
    ("- {name: p, on: a, steps: [{id: [x], uses: p1}]}", 'pipeline "p": steps[0]: id must be a string'),
    ("- {name: p, on: a, steps: [{uses: p1, with: [x]}]}", 'pipeline "p": steps[0]: with: must be a mapping'),
])
def test_load_error_messages(errors, pipelines, message):
    error = errors(pipelines)
    assert [p.message for p in error.problems] == [message]
    assert error.errors[0].startswith(message)


def test_duplicate_names_across_files_name_the_file(errors):
    error = errors("- {name: dup, on: a, steps: [{uses: p1}]}", extra="include: [more.yaml]\n",
                   files={"more.yaml": "pipelines:\n  - {name: dup, on: b, steps: [{uses: p2}]}\n"})
    assert [p.message for p in error.problems] == ['duplicate pipeline name "dup"']
    assert error.problems[0].location.startswith("more.yaml:")
    assert error.errors == ['duplicate pipeline name "dup" (%s)' % error.problems[0].location]


@pytest.mark.parametrize("condition, detail", [
    ("{path: payload.n, op: gt, value: '5'}", "gt needs a number"),
    ("{path: payload.s, op: regex, value: '('}", "regex does not compile"),
    ("{not: {not: {not: {path: payload.a, op: exists}}}}", "nesting deeper than 3"),
    ("{all: [%s]}" % ", ".join(["{path: payload.a, op: exists}"] * 20), "more than 20 nodes"),
])
def test_s17_condition_load_errors_are_located(errors, condition, detail):
    error = errors("""
        - name: p
          on: a
          steps:
            - uses: p1
            - {id: s, uses: p2, if: %s}
    """ % condition)
    assert len(error.problems) == 1
    assert error.problems[0].message.startswith('pipeline "p": steps[1]: if')
    assert detail in error.problems[0].message
    assert error.problems[0].location.startswith("config.yaml:")


def test_pipeline_if_with_and_baggage_errors_are_wrapped(errors):
    error = errors("""
        - name: p
          on: a
          if: {path: nowhere, op: exists}
          steps:
            - {uses: p1, with: {x: "{payload.a"}}
            - {uses: p2, baggage: {ductile.x: payload.a}}
            - {uses: p2, baggage: {from: payload}}
    """)
    messages = [p.message for p in error.problems]
    assert len(messages) == 4
    assert messages[0].startswith('pipeline "p": if.path: ')
    assert messages[1].startswith('pipeline "p": steps[0]: with.x: ')
    assert messages[2].startswith('pipeline "p": steps[1]: baggage: ') and "reserved" in messages[2]
    assert messages[3] == 'pipeline "p": steps[2]: baggage: baggage from requires namespace'


def test_call_cycles(errors):
    error = errors("""
        - {name: a, on: a.go, steps: [{call: b}]}
        - {name: b, on: b.go, steps: [{steps: [{call: a}]}]}
        - {name: self, on: s.go, steps: [{uses: p1}, {split: [{call: self}, {uses: p1}]}]}
        - {name: caller, on: c.go, steps: [{call: a}]}
    """)
    assert [p.message for p in error.problems] == ["pipeline call cycle detected: a -> b -> a",
                                                   "pipeline call cycle detected: self -> self"]


def test_duplicate_after_call_inlining(errors):
    error = errors("""
        - {name: Q, on: q.go, steps: [{id: q1, uses: pq1}]}
        - {name: P, on: p.go, steps: [{id: c/q1, uses: p1}, {id: c, call: Q}]}
    """)
    assert [p.message for p in error.problems] == ['pipeline "P": steps[1]: duplicate step id "c/q1"']


def test_errors_in_a_called_pipeline_are_reported_once_under_its_name(errors):
    error = errors("""
        - {name: P, on: p.go, steps: [{call: Q}, {call: Q}]}
        - {name: Q, on: q.go, steps: [{id: s, uses: nosuch}]}
    """)
    assert [p.message for p in error.problems] == ['pipeline "Q" step "s" references unknown plugin "nosuch"']


def test_every_error_is_reported_in_config_order(errors):
    error = errors("""
        - {name: one, on: ductile.x, steps: [{uses: nosuch}, {uses: p1, call: x}]}
        - {name: two, steps: []}
    """, routes="""
        - {from: emitter, event_type: ductile.y, to: nohandle}
    """)
    assert [p.message for p in error.problems] == [
        'pipeline "one": event type "ductile.x" is reserved',
        'pipeline "one" step "step_1" references unknown plugin "nosuch"',
        'pipeline "one": steps[1]: step must define exactly one of uses, call, relay, steps, or split',
        'pipeline "two": on or on-hook is required',
        'pipeline "two": steps must be non-empty',
        'route[0]: event type "ductile.y" is reserved',
        'route[0]: plugin "nohandle" has no handle command',
    ]
    assert str(error) == "; ".join(error.errors)
    assert all(p.location.startswith("config.yaml:") for p in error.problems)


def test_route_indexes_count_routes_the_config_dropped(tmp_path, plugin_root):
    cfg, registry = load(tmp_path / "x", plugin_root, routes="""
        - {from: emitter, event_type: ok, to: auditor}
        - {from: emitter, event_type: fine, to: sleeper}
        - {from: emitter, event_type: bad, to: nohandle}
    """)
    with pytest.raises(PipelineError) as info:
        compile_routing(cfg, registry)
    assert [p.message for p in info.value.problems] == ['route[2]: plugin "nohandle" has no handle command']
    assert info.value.problems[0].field == "routes[2].to"


# --------------------------------------------------------------------------------------
# Warnings
# --------------------------------------------------------------------------------------


def test_warnings_unknown_keys_mode_and_hook_signal(build):
    table = build("""
        - name: w
          on-hook: job.exploded
          execution_mode: sync
          colour: blue
          steps:
            - {uses: p1, foreach: x, if: {path: payload.a, op: exists, vaule: 1}}
            - relay: {to: peer, event: e, extra: 1}
    """)
    p = table.pipelines["w"]
    assert p.execution_mode == "async" and not p.synchronous
    assert table.hooked_on("job.exploded") == []
    assert all(signal in HOOK_SIGNALS for signal in ("job.completed", "job.failed", "job.timed_out"))
    warnings = list(table.warnings)
    assert any(w.startswith('unknown config key "pipelines[0].colour" at config.yaml:') for w in warnings)
    assert any(w.startswith('unknown config key "pipelines[0].steps[0].foreach" at config.yaml:') for w in warnings)
    assert any(w.startswith('unknown config key "pipelines[0].steps[0].if.vaule" at config.yaml:') for w in warnings)
    assert any(w.startswith('unknown config key "pipelines[0].steps[1].relay.extra"') for w in warnings)
    assert any(w.startswith('pipeline "w": execution_mode "sync" is not async or synchronous; using async')
               for w in warnings)
    assert any(w.startswith('pipeline "w": on-hook "job.exploded" is not a hook signal') for w in warnings)
    assert len(warnings) == 6


def test_warnings_ride_on_the_error_too(errors):
    error = errors("- {name: w, on: a, colour: blue, steps: [{uses: nosuch}]}")
    assert len(error.warnings) == 1 and "colour" in error.warnings[0]


def test_empty_config_compiles_to_an_empty_table(build):
    table = build()
    assert dict(table.pipelines) == {} and table.view() == {} and table.warnings == ()
    assert RoutingTable.empty().triggered_by("x") == []
