"""What a pipeline step's job sees when it runs (spec 30 §4.7, §6, §7.4).

The dispatcher calls these with the job's loaded context row: the request
``context`` a plugin receives, the ``with`` remap applied to its event, and
the in-process ``core.switch`` evaluation.  Pure functions over the runtime's
compiled pipelines.
"""
from __future__ import annotations

from typing import Optional

from ductile_lib.baggage import request_context
from ductile_lib.templating import TemplateError
from ductile_lib.templating import apply_with as render_with

SWITCH_TRUE = "ductile.switch.true"
SWITCH_FALSE = "ductile.switch.false"


def step_info(ctx) -> Optional[dict]:
    """The pipeline-step fields of a context row, or None for non-pipeline jobs."""
    if ctx is None or not ctx.pipeline or not ctx.step_id:
        return None
    return {"pipeline": ctx.pipeline, "step_id": ctx.step_id, "instance_id": ctx.instance_id,
            "route_depth": ctx.route_depth, "route_max_depth": int(ctx.control.get("route_max_depth") or 0)}


def plugin_context(plugin: str, ctx, step: Optional[dict]) -> dict:
    """Request ``context``: ``ductile_plugin`` + baggage (+ step keys), §7.4."""
    if ctx is None:
        return {"ductile_plugin": plugin}
    return request_context(plugin, ctx.accumulated, step)


def node_of(runtime, ctx):
    """The compiled node a context row points at, if the pipeline still has it."""
    if ctx is None:
        return None
    pipeline = runtime.routing.pipelines.get(ctx.pipeline)
    return pipeline.nodes.get(ctx.step_id) if pipeline is not None else None


def apply_with(runtime, ctx, event: dict, context: dict, config: dict) -> Optional[str]:
    """Remap ``event["payload"]`` by the step's ``with``; an error text fails the job (no retry)."""
    node = node_of(runtime, ctx)
    if node is None or not node.with_:
        return None
    payload = event.get("payload") if isinstance(event.get("payload"), dict) else {}
    scope = {"payload": payload, "context": context, "config": config}
    try:
        updates = render_with(dict(node.with_), scope)
    except TemplateError as exc:
        return "apply with remap for %s/%s: %s" % (ctx.pipeline, ctx.step_id, exc)
    event["payload"] = {**payload, **updates}
    return None


def evaluate_switch(runtime, ctx, envelope) -> tuple:
    """``(matched, re-typed event)``; evaluation never fails (§4.7)."""
    envelope = dict(envelope) if isinstance(envelope, dict) else {}
    node = node_of(runtime, ctx)
    matched = False
    if node is not None and node.condition is not None:
        scope = {"payload": envelope.get("payload"), "context": plugin_context("core.switch", ctx, step_info(ctx))}
        gated = runtime.plugin_config(node.config_plugin) if node.config_plugin else None
        if gated is not None:
            scope["config"] = dict(gated.config)
        matched = bool(node.condition.evaluate(scope))
    envelope["type"] = SWITCH_TRUE if matched else SWITCH_FALSE
    return matched, envelope
