"""Compile ``pipelines:`` and ``routes:`` into one immutable routing table (spec 30 §1–§3, §8).

The router, the API trigger, hooks and ``config check`` all read the same
:class:`RoutingTable`, built once per config load by :func:`compile_routing`.
Compilation validates everything an operator can get wrong (names, triggers,
step kinds, plugin references, conditions, ``with`` templates, baggage
claims, call cycles) and reports *every* problem in one
:class:`PipelineError`, each naming the pipeline and step path and, where the
config loader knows it, the file and line.  After that, routing never meets
a malformed pipeline at run time.

The graph itself (nodes, edges, ids, call inlining) is built by
:mod:`ductile_lib.pipeline_graph`; this module owns pipeline-level fields,
cross-pipeline rules (unique names, calls, cycles), routes and the
``compiled_routes`` view.  Pure logic: no clock, database or threads.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Dict, List, Mapping, Optional, Tuple

from ductile_lib import conditions, durations
from ductile_lib.config import Route
from ductile_lib.config_keys import dotted
from ductile_lib.pipeline_graph import (SWITCH_FALSE, SWITCH_TRUE, Body, Edge, Host, Node, StepCompiler,
                                        call_targets, has_cycle, longest_job_path, terminal_nodes)

HOOK_SIGNALS = ("job.completed", "job.failed", "job.timed_out")
EXECUTION_MODES = ("async", "synchronous")
RESERVED_PREFIX = "ductile."
DEFAULT_TIMEOUT_S = 30.0
PIPELINE_KEYS = frozenset(("name", "on", "on-hook", "from_plugin", "if", "max_depth", "execution_mode",
                           "timeout", "steps"))


@dataclass(frozen=True)
class Problem:
    """One finding, with the config key and ``file:line`` it points at."""

    message: str
    field: str = ""
    location: str = ""

    def text(self) -> str:
        return "%s (%s)" % (self.message, self.location) if self.location else self.message


class PipelineError(Exception):
    """Every load error of the pipelines and routes, so one run names them all.

    ``errors`` are operator texts (message plus ``(file:line)`` when known);
    ``problems`` keeps message, key and location apart for ``config check``;
    ``warnings`` are the texts of the warnings found on the way.
    """

    def __init__(self, problems, warnings=()):
        self.problems = tuple(problems)
        self.errors = [p.text() for p in self.problems]
        self.warnings = list(warnings)
        super().__init__("; ".join(self.errors))


@dataclass(frozen=True)
class CompiledPipeline:
    """One pipeline as a graph the router walks (spec 30 §3).

    ``edges`` include the end edges (``target == ""``), which mark the
    terminal nodes a synchronous trigger reads its result from.
    """

    name: str
    on: str
    on_hook: str
    from_plugin: str
    condition: Optional[conditions.Condition]
    max_depth: int
    execution_mode: str
    timeout_s: float
    nodes: Mapping[str, Node]
    edges: Tuple[Edge, ...]
    entries: Tuple[str, ...]
    _outgoing: Mapping = field(init=False, repr=False, compare=False)
    _terminals: frozenset = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        outgoing: Dict[str, List[Edge]] = {}
        for edge in self.edges:
            outgoing.setdefault(edge.source, []).append(edge)
        object.__setattr__(self, "_outgoing", MappingProxyType(outgoing))
        object.__setattr__(self, "_terminals", terminal_nodes(self.nodes, self.edges))

    @property
    def is_hook(self) -> bool:
        return bool(self.on_hook)

    @property
    def synchronous(self) -> bool:
        return self.execution_mode == "synchronous"

    def node(self, node_id: str) -> Optional[Node]:
        return self.nodes.get(node_id)

    def successors(self, node_id: str, event_type: str) -> List[Edge]:
        """Edges an event of ``event_type`` takes out of ``node_id`` (§4.2 step 1); end edges excluded."""
        return [edge for edge in self._outgoing.get(node_id, ())
                if edge.target and edge.event_type in ("", event_type)]

    def is_terminal(self, node_id: str) -> bool:
        """Whether the node reaches the end directly or through joins only (§9.1 step 11)."""
        return node_id in self._terminals

    @property
    def terminal_node_ids(self) -> frozenset:
        return self._terminals

    def join_for(self, fork_id: str) -> Optional[str]:
        node = self.nodes.get(fork_id)
        return node.pair if node is not None and node.kind == "fork" else None

    def fork_of(self, join_id: str) -> Optional[str]:
        node = self.nodes.get(join_id)
        return node.pair if node is not None and node.kind == "join" else None

    def entry_dispatches(self) -> List[str]:
        """The job nodes a run starts with: entries with forks expanded, branch order.

        A pipeline that starts with a split has the fork as its entry but
        dispatches one job per branch; a synchronous trigger needs exactly
        one (§9.1 step 3).
        """
        found: List[str] = []
        for entry in self.entries:
            self._expand(entry, found)
        return found

    def _expand(self, node_id: str, found: List[str]) -> None:
        if self.nodes[node_id].kind != "fork":
            found.append(node_id)
            return
        for edge in self.successors(node_id, ""):
            self._expand(edge.target, found)

    def view(self) -> List[dict]:
        """``compiled_routes.<name>`` (API §4.10): entries, edges and terminals, sorted by id."""
        depth = {"depth_lt": self.max_depth} if self.max_depth > 0 else {}
        routes = [self._entry_view(entry, depth) for entry in self.entries]
        for edge in self.edges:
            source = {"pipeline": self.name, "step_id": edge.source}
            if edge.event_type:
                source["event_type"] = edge.event_type
            source.update(depth)
            if edge.target:
                routes.append({"id": "edge:%s->%s" % (edge.source, edge.target), "source": source,
                               "destination": _destination(self.nodes[edge.target])})
            else:
                suffix = "@" + edge.event_type if edge.event_type else ""
                routes.append({"id": "terminal:%s%s" % (edge.source, suffix), "source": source,
                               "destination": {"kind": "terminal"}})
        routes.sort(key=lambda r: (r["id"], r["source"].get("event_type", "")))
        return routes

    def _entry_view(self, entry: str, depth: dict) -> dict:
        source = {"hook_signal": self.on_hook} if self.on_hook else {"trigger": self.on}
        if self.from_plugin:
            source["source_plugin"] = self.from_plugin
        source.update(depth)
        if self.condition is not None:
            source["if"] = self.condition.to_view()
        return {"id": "entry:" + entry, "source": source, "destination": _destination(self.nodes[entry])}


def _destination(node: Node) -> dict:
    if node.kind in ("fork", "join"):
        return {"kind": node.kind, "step_id": node.id}
    return {"kind": "uses", "step_id": node.id, "plugin": node.plugin, "command": node.command}


@dataclass(frozen=True)
class RoutingTable:
    """Every compiled pipeline (config order) and live route, plus load warnings."""

    pipelines: Mapping[str, CompiledPipeline]
    routes: tuple
    warnings: Tuple[str, ...] = ()

    @classmethod
    def empty(cls) -> "RoutingTable":
        return cls(MappingProxyType({}), ())

    def pipeline(self, name: str) -> Optional[CompiledPipeline]:
        return self.pipelines.get(name)

    def triggered_by(self, event_type: str) -> List[CompiledPipeline]:
        """Pipelines whose ``on`` is ``event_type`` (§4.2 step 2); ``from_plugin``/``if`` are the caller's."""
        return [p for p in self.pipelines.values() if p.on and p.on == event_type]

    def hooked_on(self, signal: str) -> List[CompiledPipeline]:
        """Pipelines whose ``on-hook`` is ``signal``; an unknown on-hook value never fires (§2.2)."""
        if signal not in HOOK_SIGNALS:
            return []
        return [p for p in self.pipelines.values() if p.on_hook == signal]

    def routes_for(self, from_plugin: str, event_type: str) -> list:
        """Plain routes an event of ``event_type`` from ``from_plugin`` fires (§1)."""
        return [r for r in self.routes if r.from_plugin == from_plugin and r.event_type == event_type]

    def view(self) -> dict:
        """``compiled_routes``: pipeline name → routes, names sorted; empty pipelines skipped."""
        result = {}
        for name in sorted(self.pipelines):
            routes = self.pipelines[name].view()
            if routes:
                result[name] = routes
        return result


def compile_routing(cfg, registry) -> RoutingTable:
    """Compile ``cfg.pipelines`` and check ``cfg.routes`` against the discovered plugins.

    ``registry`` maps plugin (and alias) names to discovered plugins; a
    ``plugins.Discovery`` is accepted too.  Raises :class:`PipelineError`
    listing every error; warnings ride on the table (or on the error).
    """
    registry = getattr(registry, "plugins", registry)
    compiler = _Compiler(cfg, registry or {})
    pipelines = compiler.run()
    warnings = tuple(p.text() for p in compiler.warnings)
    if compiler.problems:
        raise PipelineError(compiler.sorted_problems(), warnings)
    return RoutingTable(MappingProxyType(pipelines), tuple(cfg.routes), warnings)


class _Compiler(Host):
    """One pass over a config: names, cycles, each pipeline, then routes."""

    def __init__(self, cfg, registry: Mapping):
        self.cfg = cfg
        self.registry = registry
        self.problems: List[Tuple[tuple, Problem]] = []
        self.warnings: List[Problem] = []
        self.specs: Dict[str, Tuple[int, dict]] = {}
        self.cyclic: set = set()
        self._bodies: Dict[str, Optional[Body]] = {}
        self._compiling: set = set()

    # -- driver ------------------------------------------------------------------------

    def run(self) -> Dict[str, CompiledPipeline]:
        self._collect_names()
        self._check_call_cycles()
        compiled = {}
        for name, (index, spec) in self.specs.items():
            pipeline = self._pipeline(name, index, spec)
            if pipeline is not None:
                compiled[name] = pipeline
        self._check_routes()
        return compiled

    def sorted_problems(self) -> List[Problem]:
        """Config order: each pipeline's problems together, then cycles, then routes."""
        ordered = sorted(enumerate(self.problems), key=lambda item: (item[1][0], item[0]))
        return [problem for _, (_, problem) in ordered]

    def _collect_names(self) -> None:
        for index, spec in enumerate(self.cfg.pipelines):
            key = ("pipelines", index)
            if not isinstance(spec, dict):
                self._add((0, index), "pipelines[%d] must be a mapping" % index, key)
                continue
            name = _scalar(spec.get("name"))
            if not name:
                self._add((0, index), "pipelines[%d]: name is required" % index, key + ("name",))
            elif name in self.specs:
                self._add((0, index), 'duplicate pipeline name "%s"' % name, key + ("name",))
            else:
                self.specs[name] = (index, spec)

    def _check_call_cycles(self) -> None:
        """Depth-first over call targets in name order; each cycle reported once (self-calls too)."""
        graph = {name: [t for t in call_targets(spec.get("steps")) if t in self.specs]
                 for name, (_, spec) in self.specs.items()}
        state: Dict[str, int] = {}
        reported = set()

        def walk(name: str, stack: List[str]) -> None:
            if state.get(name) == 2:
                return
            if state.get(name) == 1:
                cycle = stack[stack.index(name):]
                rotation = min(tuple(cycle[i:] + cycle[:i]) for i in range(len(cycle)))
                if rotation not in reported:
                    reported.add(rotation)
                    self.cyclic.update(cycle)
                    self._add((1, 0), "pipeline call cycle detected: %s" % " -> ".join(cycle + [name]),
                              ("pipelines", self.specs[name][0]))
                return
            state[name] = 1
            stack.append(name)
            for target in graph[name]:
                walk(target, stack)
            stack.pop()
            state[name] = 2

        for name in sorted(graph):
            walk(name, [])

    # -- one pipeline --------------------------------------------------------------------

    def _pipeline(self, name: str, index: int, spec: dict) -> Optional[CompiledPipeline]:
        key = ("pipelines", index)
        before = len(self.problems)
        self.warn_unknown(spec, PIPELINE_KEYS, key)
        on, on_hook = self._trigger(name, spec, key)
        condition = self._condition(name, spec, key)
        max_depth = self._max_depth(name, spec.get("max_depth"), key + ("max_depth",))
        mode = self._execution_mode(name, spec.get("execution_mode"), key + ("execution_mode",))
        timeout_s = self._timeout(name, spec.get("timeout"), key + ("timeout",))
        steps = spec.get("steps")
        if not isinstance(steps, list) or not steps:
            self.error(name, "steps must be non-empty", key + ("steps",))
        body = self.body(name)
        if body is None or len(self.problems) != before:
            return None
        edges = tuple(body.edges) + tuple(Edge(source, event, "") for source, event in body.exits)
        if has_cycle(body.nodes, edges):
            self.error(name, "compiled pipeline graph contains a cycle", key)
            return None
        if max_depth is None:
            max_depth = longest_job_path(body.nodes, edges, body.entries)
        return CompiledPipeline(name, on, on_hook, _scalar(spec.get("from_plugin")), condition, max_depth,
                                mode, timeout_s, MappingProxyType(dict(body.nodes)), edges, tuple(body.entries))

    def _trigger(self, name: str, spec: dict, key: tuple) -> Tuple[str, str]:
        on, on_hook = _scalar(spec.get("on")), _scalar(spec.get("on-hook"))
        if not on and not on_hook:
            self.error(name, "on or on-hook is required", key)
        elif on and on_hook:
            self.error(name, "on and on-hook are mutually exclusive", key + ("on-hook",))
        elif on.startswith(RESERVED_PREFIX):
            self.error(name, 'event type "%s" is reserved' % on, key + ("on",))
        elif on_hook and on_hook not in HOOK_SIGNALS:
            self._warn('pipeline "%s": on-hook "%s" is not a hook signal (%s); it never fires'
                       % (name, on_hook, ", ".join(HOOK_SIGNALS)), key + ("on-hook",))
        return on, on_hook

    def _condition(self, name: str, spec: dict, key: tuple):
        if spec.get("if") is None:
            return None
        self.warn_condition_keys(spec["if"], key + ("if",))
        try:
            return conditions.compile_condition(spec["if"], "if")
        except conditions.ConditionError as exc:
            self.error(name, str(exc), key + ("if",))
            return None

    def _max_depth(self, name: str, value, key: tuple) -> Optional[int]:
        """``None`` means "compute the auto budget"; an author value replaces it (§3.3)."""
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            self.error(name, "max_depth must be an integer", key)
            return None
        if value < 0:
            self.error(name, "max_depth must be >= 0 (0 means unlimited)", key)
            return None
        return value

    def _execution_mode(self, name: str, value, key: tuple) -> str:
        mode = _scalar(value)
        if not mode or mode in EXECUTION_MODES:
            return mode or "async"
        self._warn('pipeline "%s": execution_mode "%s" is not async or synchronous; using async'
                   % (name, mode), key)
        return "async"

    def _timeout(self, name: str, value, key: tuple) -> float:
        if value is None:
            return DEFAULT_TIMEOUT_S
        try:
            timeout = durations.parse_duration(value, "timeout")
        except durations.DurationError as exc:
            self.error(name, str(exc), key)
            return DEFAULT_TIMEOUT_S
        if timeout < 0:
            self.error(name, "timeout must be positive", key)
            return DEFAULT_TIMEOUT_S
        return timeout.seconds if timeout > 0 else DEFAULT_TIMEOUT_S

    # -- Host interface (called by StepCompiler) ---------------------------------------

    def body(self, name: str) -> Optional[Body]:
        """A pipeline's compiled steps, compiled once (a called pipeline is inlined many times)."""
        if name in self._bodies:
            return self._bodies[name]
        if name in self._compiling:  # a cycle, already reported
            return None
        self._compiling.add(name)
        index, spec = self.specs[name]
        steps = spec.get("steps")
        body = None
        if isinstance(steps, list) and steps:
            body = StepCompiler(self, name).compile_body(steps, ("pipelines", index))
        self._compiling.discard(name)
        self._bodies[name] = body
        return body

    def called_body(self, pipeline: str, target: str, key: tuple) -> Optional[Body]:
        if target not in self.specs:
            self._add(self._order(pipeline), 'pipeline "%s" references unknown pipeline "%s"'
                      % (pipeline, target), key)
            return None
        if target in self.cyclic:
            return None
        return self.body(target)

    def resolve_uses(self, pipeline: str, step_id: str, name: str, key: tuple):
        """``uses`` → ``(plugin, command)`` by P2: a configured plugin/alias runs ``handle``,
        else ``plugin.command`` split at the last dot.

        Commands are checked only for enabled, discovered plugins: a disabled
        plugin is not a load error (its work is skipped at run time, E4) and
        an undiscovered enabled one is already reported by ``config check``.
        """
        where = 'pipeline "%s" step "%s"' % (pipeline, step_id)
        if name in self.cfg.plugins:
            plugin, command = name, "handle"
        elif "." in name and name.rsplit(".", 1)[0] in self.cfg.plugins:
            plugin, command = name.rsplit(".", 1)
        else:
            self._add(self._order(pipeline), '%s references unknown plugin "%s"' % (where, name), key)
            return None
        if not self._declares(plugin, command):
            self._add(self._order(pipeline), '%s: plugin "%s" has no command "%s"' % (where, plugin, command), key)
            return None
        return plugin, command

    def error(self, pipeline: str, message: str, key: tuple) -> None:
        self._add(self._order(pipeline), 'pipeline "%s": %s' % (pipeline, message), key)

    def warn_unknown(self, mapping: dict, known: frozenset, key: tuple) -> None:
        for name in mapping:
            if name not in known:
                path = key + (name,)
                self.warnings.append(Problem('unknown config key "%s" at %s' % (dotted(path), self._where(path) or "?"),
                                             dotted(path)))

    def warn_condition_keys(self, node, key: tuple) -> None:
        for where in conditions.unknown_keys(node, "if"):
            path = "%s.%s" % (dotted(key[:-1]), where)
            self.warnings.append(Problem('unknown config key "%s" at %s' % (path, self._where(key) or "?"), path))

    # -- routes (§1) -------------------------------------------------------------------

    def _check_routes(self) -> None:
        """Reserved event types and ``to`` plugins without ``handle``; config checked the ends exist."""
        valid = set(self.cfg.routes)
        for index, route in self._raw_routes():
            if route not in valid:
                continue
            key = ("routes", index)
            if route.event_type.startswith(RESERVED_PREFIX):
                self._add((2, index), 'route[%d]: event type "%s" is reserved' % (index, route.event_type),
                          key + ("event_type",))
            if not self._declares(route.to, "handle"):
                self._add((2, index), 'route[%d]: plugin "%s" has no handle command' % (index, route.to),
                          key + ("to",))

    def _raw_routes(self):
        """``(index in the merged list, Route)`` so messages count as the operator does."""
        raw = getattr(getattr(self.cfg, "raw", None), "data", None) or {}
        items = raw.get("routes")
        if not isinstance(items, list):
            return list(enumerate(self.cfg.routes))
        return [(index, Route(_scalar(item.get("from")), _scalar(item.get("event_type")), _scalar(item.get("to"))))
                for index, item in enumerate(items) if isinstance(item, dict)]

    # -- helpers -------------------------------------------------------------------------

    def _declares(self, plugin: str, command: str) -> bool:
        entry = self.cfg.plugins.get(plugin)
        found = self.registry.get(plugin)
        if not command:
            return False
        if entry is None or not entry.enabled or found is None:
            return True
        return found.has_command(command)

    def _order(self, pipeline: str) -> tuple:
        return (0, self.specs[pipeline][0]) if pipeline in self.specs else (0, -1)

    def _add(self, order: tuple, message: str, key: tuple) -> None:
        self.problems.append((order, Problem(message, dotted(key), self._where(key))))

    def _warn(self, message: str, key: tuple) -> None:
        self.warnings.append(Problem(message, dotted(key), self._where(key)))

    def _where(self, key: tuple) -> str:
        """``file:line`` of the nearest key the loader recorded, relative to the config dir."""
        raw = getattr(self.cfg, "raw", None)
        origins = getattr(raw, "origins", None) or {}
        for size in range(len(key), 0, -1):
            origin = origins.get(key[:size])
            if origin:
                path, line = origin
                base = raw.config_dir
                shown = os.path.relpath(path, base) if base and path.startswith(base) else path
                return "%s:%d" % (shown, line)
        return ""


def _scalar(value) -> str:
    """A scalar as trimmed text; absent values and non-scalars read as empty."""
    return "" if value is None or isinstance(value, (dict, list)) else str(value).strip()


__all__ = ["CompiledPipeline", "Edge", "HOOK_SIGNALS", "Node", "PipelineError", "Problem", "RoutingTable",
           "SWITCH_FALSE", "SWITCH_TRUE", "compile_routing"]
