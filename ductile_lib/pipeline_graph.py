"""Compile one pipeline's ``steps:`` into a graph of nodes and edges (spec 30 §2.3, §3).

:mod:`ductile_lib.pipelines` owns the pipeline-level fields, the routing
table and the messages' file/line locations; this module owns the shape of
the graph, because that is where the subtle rules live:

- every list compiles to ``(entries, exits)``, an exit being ``(node, event)``;
  a sequence joins every exit of one item to every entry of the next;
- an ``if`` puts a switch in front of its step or group, so ``false`` skips
  the whole thing (P5) and the skipped step's successors still run;
- a ``split`` is a fork and a join, so the step after it runs once (P4);
- a ``call`` is inlined with ``<call id>/`` prefixes so it runs in the
  caller's run, sees its baggage and returns to it (P3).

Step ids are allocated in document order from two counters (``step_N`` for
uses/call/relay, ``group_N`` for groups) that skip ids already taken, so an
operator who names a step ``step_2`` still gets predictable auto ids.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Dict, List, Mapping, Optional, Tuple

from ductile_lib import baggage, conditions, templating

SWITCH_TRUE = "ductile.switch.true"
SWITCH_FALSE = "ductile.switch.false"
SWITCH_PLUGIN = "core.switch"
RELAY_PLUGIN = "core.relay"
HANDLE = "handle"

STEP_KINDS = ("uses", "call", "relay", "steps", "split")
STEP_KEYS = frozenset(("id", "if", "with", "baggage") + STEP_KINDS)
RELAY_KEYS = frozenset(("to", "event", "dedupe_key", "with", "baggage"))
JOB_KINDS = frozenset(("uses", "relay", "switch"))

_EMPTY = MappingProxyType({})


@dataclass(frozen=True)
class Node:
    """One vertex of a compiled pipeline.

    ``plugin``/``command`` are what a job for this node runs: the resolved
    plugin for ``uses``, ``core.switch``/``core.relay`` for the in-process
    kinds, empty for fork and join (they are bookkeeping, not jobs).
    ``config_plugin`` is the gated ``uses`` step's plugin on a switch, so the
    switch's ``config.*`` paths read that plugin's config (P5).
    ``pair`` links a fork to its join and back.
    """

    id: str
    kind: str  # uses | switch | fork | join | relay
    plugin: str = ""
    command: str = ""
    condition: Optional[conditions.Condition] = None
    with_: Mapping = field(default_factory=lambda: _EMPTY)  # key -> templating.Template
    claims: Optional[baggage.Claims] = None
    config_plugin: str = ""
    branch_count: int = 0
    pair: str = ""
    relay: Optional[Mapping] = None  # the validated relay block [O]

    @property
    def is_job(self) -> bool:
        """Whether resolving this node enqueues a job (uses, relay, switch)."""
        return self.kind in JOB_KINDS


@dataclass(frozen=True)
class Edge:
    """A transition: an event of ``event_type`` ("" = any) leaving ``source`` reaches ``target``.

    ``target == ""`` is the pipeline end.  Edges from a fork to its branch
    entries carry the branch index so the router can stamp ``ductile.splits``.
    """

    source: str
    event_type: str
    target: str
    branch: Optional[int] = None


@dataclass
class Part:
    """A compiled step or list: where it starts and how it can be left."""

    entries: List[str]
    exits: List[Tuple[str, str]]


@dataclass
class Body:
    """A pipeline's compiled steps before the end edges are added.

    ``taken`` holds every id the body claimed (steps, groups, switches,
    joins) so inlining can detect duplicates after prefixing.
    """

    nodes: Dict[str, Node]
    edges: List[Edge]
    entries: List[str]
    exits: List[Tuple[str, str]]
    taken: List[str] = field(default_factory=list)


class Loc:
    """Where a step sits: the message path (``steps[1]: split[0]``) and the config key."""

    def __init__(self, labels: Tuple[str, ...], key: tuple):
        self.labels = labels
        self.key = key

    def child(self, label: str, index: int) -> "Loc":
        return Loc(self.labels + ("%s[%d]" % (label, index),), self.key + (label, index))

    def text(self) -> str:
        return ": ".join(self.labels)


class Host:
    """What a :class:`StepCompiler` needs from the whole-config compiler."""

    def error(self, pipeline: str, message: str, key: tuple) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def warn_unknown(self, mapping: dict, known: frozenset, key: tuple) -> None:  # pragma: no cover
        raise NotImplementedError

    def warn_condition_keys(self, node, key: tuple) -> None:  # pragma: no cover
        raise NotImplementedError

    def resolve_uses(self, pipeline: str, step_id: str, name: str, key: tuple):  # pragma: no cover
        """``(plugin, command)`` or ``None`` after reporting the error."""
        raise NotImplementedError

    def called_body(self, pipeline: str, target: str, key: tuple) -> Optional[Body]:  # pragma: no cover
        """The called pipeline's body, or ``None`` (already reported)."""
        raise NotImplementedError


def present(item: dict, kind: str) -> bool:
    """A step kind counts when given with content: an empty list or string is absent."""
    value = item.get(kind)
    if value is None:
        return False
    if isinstance(value, str):
        return bool(value.strip())
    if isinstance(value, (list, dict)):
        return bool(value) or kind == "relay"
    return True


def call_targets(steps) -> List[str]:
    """Every ``call:`` target in a raw step list, nested groups included (for cycle checks)."""
    found: List[str] = []
    for item in steps if isinstance(steps, list) else ():
        if not isinstance(item, dict):
            continue
        if present(item, "call") and isinstance(item["call"], (str, int, float)):
            found.append(str(item["call"]).strip())
        found.extend(call_targets(item.get("steps")))
        found.extend(call_targets(item.get("split")))
    return found


class StepCompiler:
    """Compiles the steps of one pipeline in its own id scope.

    Errors are reported to the host and compilation carries on with the next
    step, so one load names every problem; a failed step simply contributes
    no nodes.
    """

    def __init__(self, host: Host, pipeline: str):
        self.host = host
        self.pipeline = pipeline
        self.nodes: Dict[str, Node] = {}
        self.edges: List[Edge] = []
        self.taken: List[str] = []
        self._taken_set: set = set()
        self._counters = {"step": 0, "group": 0}
        self.ok = True

    # -- entry point -------------------------------------------------------------------

    def compile_body(self, steps: list, key: tuple) -> Optional[Body]:
        part = self.compile_list(steps, Loc((), key))
        if part is None or not self.ok:
            return None
        return Body(self.nodes, self.edges, part.entries, part.exits, self.taken)

    def compile_list(self, items: list, loc: Loc, label: str = "steps") -> Optional[Part]:
        """A sequence: each item's exits feed the next item's entries."""
        entries, exits = None, None
        for index, item in enumerate(items):
            part = self.compile_step(item, loc.child(label, index))
            if part is None:
                continue
            if entries is None:
                entries = part.entries
            else:
                self.connect(exits, part.entries)
            exits = part.exits
        return None if entries is None else Part(entries, exits)

    def compile_step(self, item, loc: Loc) -> Optional[Part]:
        if not isinstance(item, dict):
            return self.fail(loc, "step must be a mapping")
        self.host.warn_unknown(item, STEP_KEYS, loc.key)
        kinds = [kind for kind in STEP_KINDS if present(item, kind)]
        if len(kinds) != 1:
            return self.fail(loc, "step must define exactly one of uses, call, relay, steps, or split")
        kind = kinds[0]
        if kind != "uses" and not self._only_uses_fields(item, loc):
            return None
        condition = self.condition(item, loc)
        handler = getattr(self, "_" + kind)
        return handler(item, loc, condition)

    # -- step kinds --------------------------------------------------------------------

    def _uses(self, item: dict, loc: Loc, condition) -> Optional[Part]:
        step_id = self.step_id(item, "step", loc)
        if step_id is None:
            return None
        resolved = self.host.resolve_uses(self.pipeline, step_id, str(item["uses"]).strip(), loc.key + ("uses",))
        with_ = self._compile_with(item, loc)
        claims = self._compile_claims(item.get("baggage"), loc, "baggage")
        if resolved is None:
            self.ok = False
            return None
        plugin, command = resolved
        self.add(Node(step_id, "uses", plugin, command, with_=with_, claims=claims))
        return self.gate(step_id, Part([step_id], [(step_id, "")]), condition, loc, plugin)

    def _call(self, item: dict, loc: Loc, condition) -> Optional[Part]:
        step_id = self.step_id(item, "step", loc)
        if step_id is None:
            return None
        body = self.host.called_body(self.pipeline, str(item["call"]).strip(), loc.key + ("call",))
        if body is None:
            self.ok = False
            return None
        part = self.inline(body, step_id + "/", loc)
        return None if part is None else self.gate(step_id, part, condition, loc)

    def _relay(self, item: dict, loc: Loc, condition) -> Optional[Part]:
        spec = self._relay_spec(item.get("relay"), loc)
        step_id = self.step_id(item, "step", loc)
        if step_id is None or spec is None:
            self.ok = False
            return None
        self.add(Node(step_id, "relay", RELAY_PLUGIN, HANDLE, relay=spec))
        return self.gate(step_id, Part([step_id], [(step_id, "")]), condition, loc)

    def _steps(self, item: dict, loc: Loc, condition) -> Optional[Part]:
        group_id = self.step_id(item, "group", loc)
        items = item["steps"]
        if not isinstance(items, list):
            return self.fail(loc, "steps must be a list")
        part = self.compile_list(items, loc)
        if group_id is None or part is None:
            return None
        return self.gate(group_id, part, condition, loc)

    def _split(self, item: dict, loc: Loc, condition) -> Optional[Part]:
        fork_id = self.step_id(item, "group", loc)
        branches = item["split"]
        if not isinstance(branches, list):
            return self.fail(loc, "split must be a list")
        if fork_id is not None:
            self.add(Node(fork_id, "fork", branch_count=len(branches), pair=fork_id + "__join"))
        parts = [self.compile_step(branch, loc.child("split", index)) for index, branch in enumerate(branches)]
        join_id = self.claim(fork_id + "__join", loc) if fork_id is not None else None
        if join_id is None or any(part is None for part in parts):
            self.ok = False
            return None
        self.add(Node(join_id, "join", branch_count=len(branches), pair=fork_id))
        for index, part in enumerate(parts):
            self.edges.extend(Edge(fork_id, "", entry, branch=index) for entry in part.entries)
            self.connect(part.exits, [join_id])
        return self.gate(fork_id, Part([fork_id], [(join_id, "")]), condition, loc)

    # -- shared pieces -----------------------------------------------------------------

    def gate(self, own_id: str, part: Part, condition, loc: Loc, config_plugin: str = "") -> Optional[Part]:
        """Put a switch in front of a step or group when it has an ``if`` (§3.1)."""
        if condition is None:
            return part
        switch_id = self.claim(own_id + "__switch", loc)
        if switch_id is None:
            return None
        self.add(Node(switch_id, "switch", SWITCH_PLUGIN, HANDLE, condition=condition,
                      config_plugin=config_plugin))
        self.edges.extend(Edge(switch_id, SWITCH_TRUE, entry) for entry in part.entries)
        return Part([switch_id], part.exits + [(switch_id, SWITCH_FALSE)])

    def inline(self, body: Body, prefix: str, loc: Loc) -> Optional[Part]:
        """Copy a called pipeline's body into this scope under ``prefix`` (§3.2)."""
        for taken in body.taken:
            if self.claim(prefix + taken, loc) is None:
                return None
        for node in body.nodes.values():
            pair = prefix + node.pair if node.pair else ""
            self.nodes[prefix + node.id] = dataclasses.replace(node, id=prefix + node.id, pair=pair)
        for edge in body.edges:
            self.edges.append(dataclasses.replace(edge, source=prefix + edge.source,
                                                  target=prefix + edge.target if edge.target else ""))
        return Part([prefix + e for e in body.entries], [(prefix + n, ev) for n, ev in body.exits])

    def connect(self, exits: List[Tuple[str, str]], entries: List[str]) -> None:
        for source, event_type in exits:
            for target in entries:
                self.edges.append(Edge(source, event_type, target))

    def add(self, node: Node) -> None:
        self.nodes[node.id] = node

    def step_id(self, item: dict, counter: str, loc: Loc) -> Optional[str]:
        """The explicit (trimmed) id, else the next free ``step_N``/``group_N``."""
        raw = item.get("id")
        if isinstance(raw, (dict, list)):
            return self.fail(loc, "id must be a string", ("id",))
        wanted = "" if raw is None else str(raw).strip()
        if wanted:
            return self.claim(wanted, loc)
        while True:
            self._counters[counter] += 1
            candidate = "%s_%d" % (counter, self._counters[counter])
            if candidate not in self._taken_set:
                return self.claim(candidate, loc)

    def claim(self, wanted: str, loc: Loc) -> Optional[str]:
        if wanted in self._taken_set:
            return self.fail(loc, 'duplicate step id "%s"' % wanted)
        self._taken_set.add(wanted)
        self.taken.append(wanted)
        return wanted

    def condition(self, item: dict, loc: Loc):
        node = item.get("if")
        if node is None:
            return None
        self.host.warn_condition_keys(node, loc.key + ("if",))
        try:
            return conditions.compile_condition(node, "if")
        except conditions.ConditionError as exc:
            self.fail(loc, str(exc), ("if",))
            return None

    def fail(self, loc: Loc, message: str, subkey: tuple = ()) -> None:
        """Report ``pipeline "p": <path>: <message>``; returns None for the caller."""
        self.ok = False
        prefix = loc.text()
        self.host.error(self.pipeline, "%s: %s" % (prefix, message) if prefix else message, loc.key + subkey)
        return None

    def _only_uses_fields(self, item: dict, loc: Loc) -> bool:
        """``with`` and ``baggage`` belong to uses steps; an empty block is tolerated, as in the original."""
        ok = True
        if item.get("with"):
            self.fail(loc, "with is only supported on uses steps", ("with",))
            ok = False
        claims = item.get("baggage")
        if claims and not self._claims_empty(claims):
            self.fail(loc, "baggage is only supported on uses steps", ("baggage",))
            ok = False
        return ok

    @staticmethod
    def _claims_empty(spec) -> bool:
        try:
            return baggage.compile_claims(spec, "").is_empty()
        except baggage.BaggageError:
            return False

    def _compile_with(self, item: dict, loc: Loc) -> Mapping:
        if item.get("with") is None:
            return _EMPTY
        try:
            return MappingProxyType(templating.compile_with(item["with"], "with"))
        except templating.TemplateError as exc:
            self.fail(loc, str(exc), ("with",))
            return _EMPTY

    def _compile_claims(self, spec, loc: Loc, where: str):
        if spec is None:
            return None
        try:
            claims = baggage.compile_claims(spec, where)
        except baggage.BaggageError as exc:
            self.fail(loc, str(exc), tuple(where.split(".")))
            return None
        return None if claims.is_empty() else claims

    def _relay_spec(self, spec, loc: Loc) -> Optional[Mapping]:
        """Validate a relay block (§10, optional feature): ``to`` and ``event`` non-empty."""
        if not isinstance(spec, dict):
            return self.fail(loc, "relay must be a mapping", ("relay",))
        self.host.warn_unknown(spec, RELAY_KEYS, loc.key + ("relay",))
        clean = {name: _text(spec.get(name)) for name in ("to", "event", "dedupe_key")}
        problems = ["relay.%s is required" % name for name in ("to", "event") if not clean[name]]
        remap = spec.get("with") or {}
        if not _is_expression_map(remap):
            problems.append("relay.with must map non-empty keys to non-empty expressions")
        for message in problems:
            self.fail(loc, message, ("relay",))
        clean["with"] = MappingProxyType(dict(remap)) if isinstance(remap, dict) else _EMPTY
        clean["baggage"] = self._compile_claims(spec.get("baggage"), loc, "relay.baggage")
        return None if problems or not self.ok else MappingProxyType(clean)


def _text(value) -> str:
    """A scalar as trimmed text; absent and non-scalars read as empty."""
    return "" if value is None or isinstance(value, (dict, list)) else str(value).strip()


def _is_expression_map(value) -> bool:
    return isinstance(value, dict) and all(
        str(key).strip() and isinstance(expr, str) and expr.strip() for key, expr in value.items())


# -- graph queries (used by pipelines.CompiledPipeline) ------------------------------------


def longest_job_path(nodes: Mapping[str, Node], edges, entries) -> int:
    """Job nodes on the longest entry-to-end path (§3.3): the auto budget, at least 1."""
    successors: Dict[str, List[str]] = {}
    for edge in edges:
        if edge.target:
            successors.setdefault(edge.source, []).append(edge.target)
    memo: Dict[str, int] = {}

    def depth(node_id: str) -> int:
        if node_id not in memo:
            own = 1 if nodes[node_id].is_job else 0
            memo[node_id] = own + max((depth(n) for n in successors.get(node_id, ())), default=0)
        return memo[node_id]

    return max(1, max((depth(entry) for entry in entries), default=0))


def terminal_nodes(nodes: Mapping[str, Node], edges) -> frozenset:
    """Nodes with an edge reaching the end directly or through joins only (§9.1 step 11)."""
    ends = {edge.source for edge in edges if not edge.target}
    changed = True
    while changed:
        changed = False
        for edge in edges:
            if (edge.target in ends and nodes[edge.target].kind == "join"
                    and edge.source not in ends):
                ends.add(edge.source)
                changed = True
    return frozenset(ends)


def has_cycle(nodes: Mapping[str, Node], edges) -> bool:
    """Kahn's algorithm; construction never makes a cycle, this guards against regressions."""
    indegree = {node_id: 0 for node_id in nodes}
    successors: Dict[str, List[str]] = {}
    for edge in edges:
        if edge.target:
            indegree[edge.target] = indegree.get(edge.target, 0) + 1
            successors.setdefault(edge.source, []).append(edge.target)
    ready = [node_id for node_id, count in indegree.items() if count == 0]
    seen = 0
    while ready:
        node_id = ready.pop()
        seen += 1
        for target in successors.get(node_id, ()):
            indegree[target] -= 1
            if indegree[target] == 0:
                ready.append(target)
    return seen != len(indegree)


__all__ = ["Body", "Edge", "Host", "Loc", "Node", "Part", "StepCompiler", "SWITCH_FALSE", "SWITCH_TRUE",
           "call_targets", "has_cycle", "longest_job_path", "present", "terminal_nodes"]
