"""The API's route table and the OpenAPI 3.1 documents built from it (API spec §3, §4.3).

``API_ROUTES`` is the one list of what the API listener serves: the server
dispatches on it (:func:`match_route`) and ``/openapi.json`` describes it, so
the description cannot drift from what is served.  Each row keeps the §3
table's method, path template, scope gate and status codes; the server maps
``name`` to its handler.

Plugin commands are described per plugin (``/plugin/<p>/<c>``), exactly in the
original's shape, beside the templated ``/plugin/{plugin}/{command}`` route;
OpenAPI matches concrete paths before templated ones, so both can stand.

Key order follows the spec's wire form (API §1.3): fixed objects in the order
shown there, free-form maps (``paths``, ``responses``) sorted; encode the
documents without ``sort_keys``.
"""
from __future__ import annotations


import copy
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Mapping, Optional, Tuple
from urllib.parse import unquote

from ductile_lib.plugins import Command, Plugin, expand_schema

OPENAPI_VERSION = "3.1.0"
INFO_TITLE = "Ductile Gateway"
INFO_VERSION = "1.0"
SECURITY_SCHEME = "BearerAuth"

GATES = ("open", "any", "plugin", "pipeline", "jobs", "events", "system_ro", "system_rw", "hmac")

# Gates that check a scope after authentication, so they can also answer 403.
_SCOPED_GATES = frozenset(("plugin", "pipeline", "jobs", "events", "system_ro", "system_rw"))


@dataclass(frozen=True)
class RouteDoc:
    """One row of the §3 route table.

    ``path`` uses ``{param}`` templates (single path segments).  ``responses``
    holds the table's own codes (success and handler errors); the codes every
    route of a gate shares (401, 403, 413) are added by :func:`route_responses`.
    ``query`` and ``headers`` name the optional request parameters worth
    documenting.
    """

    name: str
    method: str
    path: str
    gate: str
    summary: str
    responses: Mapping[str, str] = field(hash=False)
    request_body: bool = False
    query: Tuple[str, ...] = ()
    headers: Tuple[str, ...] = ()

    def segments(self) -> List[str]:
        """The path template split on ``/`` (the leading empty segment kept)."""
        return self.path.split("/")

    def path_params(self) -> List[str]:
        """Template parameter names in path order."""
        return [seg[1:-1] for seg in self.segments() if _is_param(seg)]

    def match(self, path: str) -> Optional[Dict[str, str]]:
        """The path parameters when ``path`` fits this template, else None.

        Segments are compared percent-decoded, and a parameter takes exactly
        one non-empty segment; there is no trailing-slash tolerance (§1.4).
        """
        template, actual = self.segments(), [unquote(raw) for raw in path.split("/")]
        return _fit(template, actual) if len(template) == len(actual) else None


def _is_param(segment: str) -> bool:
    return len(segment) > 2 and segment.startswith("{") and segment.endswith("}")


# ---------------------------------------------------------------------------
# The route table (API spec §3, rows 1-20; the optional relay row is not served)

_QUEUED = "Job queued"

API_ROUTES: Tuple[RouteDoc, ...] = (
    RouteDoc("root", "GET", "/", "open", "Service name, uptime and discovery links",
             {"200": "Service description"}),
    RouteDoc("healthz", "GET", "/healthz", "open", "Health and queue depth",
             {"200": "Gateway is up", "500": "Failed to compute queue depth"}),
    RouteDoc("plugins", "GET", "/plugins", "any", "List discovered plugins",
             {"200": "Plugins and their commands"}),
    RouteDoc("skills", "GET", "/skills", "any", "List plugin commands and pipelines as skills",
             {"200": "Skills"}),
    RouteDoc("openapi", "GET", "/openapi.json", "any", "OpenAPI document for the whole API",
             {"200": "OpenAPI document"}),
    RouteDoc("ai_plugin", "GET", "/.well-known/ai-plugin.json", "any", "AI plugin manifest",
             {"200": "AI plugin manifest"}),
    RouteDoc("plugin_openapi", "GET", "/plugin/{plugin}/openapi.json", "any",
             "OpenAPI document for one plugin's commands",
             {"200": "OpenAPI document", "404": "Plugin not found"}),
    RouteDoc("plugin_run", "POST", "/plugin/{plugin}/{command}", "plugin",
             "Queue one plugin command (no routing)",
             {"202": _QUEUED, "400": "Bad request", "403": "Insufficient scope",
              "404": "Plugin or command not found", "409": "Plugin disabled",
              "500": "Failed to enqueue job"},
             request_body=True),
    RouteDoc("plugin_get", "GET", "/plugin/{plugin}", "plugin", "Describe one plugin",
             {"200": "Plugin and its commands", "404": "Plugin not found"}),
    RouteDoc("pipeline_run", "POST", "/pipeline/{pipeline}", "pipeline", "Trigger a pipeline",
             {"200": "Synchronous pipeline finished", "202": "Pipeline queued or still running",
              "400": "Bad request", "404": "Pipeline not found", "409": "Plugin disabled",
              "500": "Failed to start pipeline", "503": "Too many concurrent synchronous requests"},
             request_body=True, query=("async",)),
    RouteDoc("job_get", "GET", "/job/{jobID}", "jobs", "Get one job",
             {"200": "Job", "404": "Job not found", "500": "Failed to retrieve job"}),
    RouteDoc("job_tree", "GET", "/job/{jobID}/tree", "jobs", "Get a job and its descendants",
             {"200": "Job tree, root first", "404": "Job not found",
              "500": "Failed to retrieve job tree"}),
    RouteDoc("jobs", "GET", "/jobs", "jobs", "List jobs, newest first",
             {"200": "Jobs and total", "400": "Invalid filter", "500": "Failed to list jobs"},
             query=("plugin", "command", "status", "limit")),
    RouteDoc("job_logs", "GET", "/job-logs", "jobs", "Search job attempt logs",
             {"200": "Job logs and total", "400": "Invalid filter", "500": "Failed to list job logs"},
             query=("job_id", "plugin", "command", "status", "submitted_by", "query",
                    "from", "to", "limit", "include_result")),
    RouteDoc("scheduler_jobs", "GET", "/scheduler/jobs", "jobs", "List schedules and their next runs",
             {"200": "Schedules"}),
    RouteDoc("analytics_summary", "GET", "/analytics/summary", "jobs",
             "Finished jobs per status over 24 hours",
             {"200": "Summary", "500": "Failed to query analytics summary"}),
    RouteDoc("analytics_queue", "GET", "/analytics/queue", "jobs", "Queue depth and running jobs",
             {"200": "Queue metrics", "500": "Failed to retrieve queue metrics"}),
    RouteDoc("system_reload", "POST", "/system/reload", "system_rw", "Reload the configuration in place",
             {"200": "Configuration reloaded", "409": "Reload rejected",
              "501": "Reload not supported"}),
    RouteDoc("config_view", "GET", "/config/view", "system_ro", "View the running configuration, redacted",
             {"200": "Configuration", "503": "Config not available"}),
    RouteDoc("events", "GET", "/events", "events", "Stream gateway events (Server-Sent Events)",
             {"200": "Server-sent event stream (text/event-stream)"},
             query=("token", "last_event_id"), headers=("Last-Event-ID",)),
)

# Parameter types and notes where "an optional string" is not the whole story.
_PARAM_SCHEMAS = {
    "limit": {"type": "integer", "minimum": 1},
    "last_event_id": {"type": "integer"},
    "Last-Event-ID": {"type": "integer"},
}
_PARAM_DESCRIPTIONS = {
    "async": "\"true\" queues a synchronous pipeline instead of waiting for it",
    "token": "API token, for clients that cannot send an Authorization header",
    "last_event_id": "Resume after this event id (when no Last-Event-ID header is sent)",
    "Last-Event-ID": "Resume after this event id",
    "status": "queued, running, succeeded, skipped, failed, timed_out or dead",
}


def route_responses(route: RouteDoc) -> Dict[str, str]:
    """Every status the route can answer: its own plus those of its gate and body cap."""
    responses = dict(route.responses)
    if route.gate not in ("open", "hmac"):
        responses.setdefault("401", "Missing or invalid token")
    if route.gate in _SCOPED_GATES:
        responses.setdefault("403", "Insufficient scope")
    if route.request_body:
        responses.setdefault("413", "Payload too large")
    return responses


def match_route(method: str, path: str, routes: Iterable[RouteDoc] = API_ROUTES
                ) -> Tuple[Optional[RouteDoc], Dict[str, str], Tuple[str, ...]]:
    """Route a request: ``(route, path params, methods allowed on the path)``.

    ``route`` is None when nothing fits: a 404 if no method is allowed,
    else a 405 whose ``Allow`` headers are the methods (§1.4).  When two
    templates fit one method, the one with more literal segments wins.
    Only templates with the path's segment count are tried, each split once.
    """
    actual = [unquote(raw) for raw in path.split("/")]
    allowed: List[str] = []
    best: Optional[RouteDoc] = None
    best_params: Dict[str, str] = {}
    grouped = _API_TEMPLATES if routes is API_ROUTES else _templates(tuple(routes))
    for route, template in grouped.get(len(actual), ()):
        params = _fit(template, actual)
        if params is None:
            continue
        if route.method not in allowed:
            allowed.append(route.method)
        if route.method == method and (best is None or len(params) < len(best_params)):
            best, best_params = route, params
    return best, best_params, tuple(allowed)


def _templates(routes: Tuple[RouteDoc, ...]) -> Dict[int, List[Tuple[RouteDoc, List[str]]]]:
    """Route templates grouped by segment count (the served table's is computed once, below)."""
    grouped: Dict[int, List[Tuple[RouteDoc, List[str]]]] = {}
    for route in routes:
        template = route.segments()
        grouped.setdefault(len(template), []).append((route, template))
    return grouped


def _fit(template: List[str], actual: List[str]) -> Optional[Dict[str, str]]:
    params = {}
    for expected, value in zip(template, actual):
        if _is_param(expected):
            if not value:
                return None
            params[expected[1:-1]] = value
        elif expected != value:
            return None
    return params


# ---------------------------------------------------------------------------
# Documents


def document(plugins: Iterable[Plugin], routes: Iterable[RouteDoc] = API_ROUTES) -> dict:
    """``GET /openapi.json``: every API route plus every plugin command."""
    paths: Dict[str, dict] = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.method.lower()] = _route_operation(route)
    for plugin in plugins:
        for path, item in plugin_paths(plugin).items():
            paths.setdefault(path, {}).update(item)
    return _envelope(paths)


def plugin_document(plugin: Plugin) -> dict:
    """``GET /plugin/{p}/openapi.json``: that plugin's command paths only."""
    return _envelope(plugin_paths(plugin))


def plugin_paths(plugin: Plugin) -> Dict[str, dict]:
    """``{"/plugin/<p>/<c>": {"post": operation}}`` for each command, as §4.3 shows."""
    return {"/plugin/%s/%s" % (plugin.name, command.name): {"post": _command_operation(plugin, command)}
            for command in plugin.commands}


def _envelope(paths: Dict[str, dict]) -> dict:
    """The fixed frame around ``paths`` (keys in the original's sorted order)."""
    return {
        "components": {"securitySchemes": {SECURITY_SCHEME: {"scheme": "bearer", "type": "http"}}},
        "info": {"title": INFO_TITLE, "version": INFO_VERSION},
        "openapi": OPENAPI_VERSION,
        "paths": {path: paths[path] for path in sorted(paths)},
    }


def _command_operation(plugin: Plugin, command: Command) -> dict:
    """One command's POST operation, key for key as the original writes it."""
    operation = {
        "operationId": "%s__%s" % (plugin.name, command.name),
        "summary": command.description or "%s: %s" % (plugin.name, command.name),
        "tags": [plugin.name],
    }
    if command.input_schema is not None:
        # The real body wraps the input under "payload" (§4.4 step 6).
        operation["requestBody"] = _payload_body(copy.deepcopy(expand_schema(command.input_schema)))
    operation["responses"] = {
        "202": {"description": "Job queued"},
        "400": {"description": "Bad request"},
        "403": {"description": "Insufficient scope"},
    }
    operation["security"] = _bearer()
    return operation


def _route_operation(route: RouteDoc) -> dict:
    """An API route's operation: parameters, body, responses, and security by gate."""
    operation = {"operationId": route.name, "summary": route.summary}
    parameters = _parameters(route)
    if parameters:
        operation["parameters"] = parameters
    if route.request_body:
        operation["requestBody"] = _payload_body({})
    responses = route_responses(route)
    operation["responses"] = {code: {"description": responses[code]} for code in sorted(responses)}
    if route.gate != "open":
        operation["security"] = _bearer()
    return operation


def _parameters(route: RouteDoc) -> List[dict]:
    """Path templates (required), then the documented query and header parameters."""
    params = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
              for name in route.path_params()]
    params += [_optional_param(name, "query") for name in route.query]
    params += [_optional_param(name, "header") for name in route.headers]
    return params


def _optional_param(name: str, where: str) -> dict:
    param = {"name": name, "in": where, "required": False,
             "schema": dict(_PARAM_SCHEMAS.get(name, {"type": "string"}))}
    if name in _PARAM_DESCRIPTIONS:
        param["description"] = _PARAM_DESCRIPTIONS[name]
    return param


def _payload_body(payload_schema: object) -> dict:
    return {
        "required": False,
        "content": {"application/json": {"schema": {
            "type": "object", "properties": {"payload": payload_schema}}}},
    }


def _bearer() -> List[dict]:
    return [{SECURITY_SCHEME: []}]


_API_TEMPLATES = _templates(API_ROUTES)
