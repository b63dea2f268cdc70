"""The route table and the OpenAPI documents (API spec §3, §4.3).

The documents are checked with openapi-spec-validator (3.1) over real
plugins discovered from the example and engine-test plugin roots.
"""
from __future__ import annotations

import pytest
from openapi_spec_validator import OpenAPIV31SpecValidator, validate

from ductile_lib import jsonwire, openapi, plugins
from ductile_lib.openapi import API_ROUTES, RouteDoc, match_route
from ductile_lib.plugins import Command, Plugin

from conftest import ECHO_PLUGIN_ROOT, PROJECT

pytestmark = pytest.mark.timeout(15)

ENGINE_PLUGIN_ROOT = PROJECT / "tests" / "engine_plugins"
BEARER = [{"BearerAuth": []}]

# API spec §3 rows 1-20: (name, method, path, gate, OK codes, handler error codes).
SPEC_TABLE = [
    ("root", "GET", "/", "open", ["200"], []),
    ("healthz", "GET", "/healthz", "open", ["200"], ["500"]),
    ("plugins", "GET", "/plugins", "any", ["200"], []),
    ("skills", "GET", "/skills", "any", ["200"], []),
    ("openapi", "GET", "/openapi.json", "any", ["200"], []),
    ("ai_plugin", "GET", "/.well-known/ai-plugin.json", "any", ["200"], []),
    ("plugin_openapi", "GET", "/plugin/{plugin}/openapi.json", "any", ["200"], ["404"]),
    ("plugin_run", "POST", "/plugin/{plugin}/{command}", "plugin", ["202"], ["400", "403", "404", "409", "500"]),
    ("plugin_get", "GET", "/plugin/{plugin}", "plugin", ["200"], ["404"]),
    ("pipeline_run", "POST", "/pipeline/{pipeline}", "pipeline", ["202", "200"], ["400", "404", "409", "500", "503"]),
    ("job_get", "GET", "/job/{jobID}", "jobs", ["200"], ["404", "500"]),
    ("job_tree", "GET", "/job/{jobID}/tree", "jobs", ["200"], ["404", "500"]),
    ("jobs", "GET", "/jobs", "jobs", ["200"], ["400", "500"]),
    ("job_logs", "GET", "/job-logs", "jobs", ["200"], ["400", "500"]),
    ("scheduler_jobs", "GET", "/scheduler/jobs", "jobs", ["200"], []),
    ("analytics_summary", "GET", "/analytics/summary", "jobs", ["200"], ["500"]),
    ("analytics_queue", "GET", "/analytics/queue", "jobs", ["200"], ["500"]),
    ("system_reload", "POST", "/system/reload", "system_rw", ["200"], ["409", "501"]),
    ("config_view", "GET", "/config/view", "system_ro", ["200"], ["503"]),
    ("events", "GET", "/events", "events", ["200"], []),
]

ENVELOPE = {
    "components": {"securitySchemes": {"BearerAuth": {"scheme": "bearer", "type": "http"}}},
    "info": {"title": "Ductile Gateway", "version": "1.0"},
    "openapi": "3.1.0",
}

COMMAND_RESPONSES = {
    "202": {"description": "Job queued"},
    "400": {"description": "Bad request"},
    "403": {"description": "Insufficient scope"},
}


@pytest.fixture(scope="module")
def discovered():
    found = plugins.discover([str(ECHO_PLUGIN_ROOT), str(ENGINE_PLUGIN_ROOT)])
    assert {"echo", "behave", "fast"} <= set(found.plugins)
    return found.plugins


@pytest.fixture(scope="module")
def full_doc(discovered):
    return openapi.document(discovered.values())


def make_plugin(name, *commands):
    return Plugin(name=name, version="1.0.0", description="", protocol=2, directory="/x/" + name,
                  entrypoint="/x/%s/run.sh" % name, manifest_path="/x/%s/manifest.yaml" % name,
                  commands=tuple(commands))


def spec_route(row):
    return next(route for route in API_ROUTES if route.name == row[0])


# ---------------------------------------------------------------------------
# The table


def test_table_is_exactly_the_spec_rows_in_order():
    assert [(r.name, r.method, r.path, r.gate) for r in API_ROUTES] == [row[:4] for row in SPEC_TABLE]


@pytest.mark.parametrize("row", SPEC_TABLE, ids=[row[0] for row in SPEC_TABLE])
def test_table_status_codes_match_the_spec(row):
    route = spec_route(row)
    assert sorted(route.responses) == sorted(row[4] + row[5])
    assert all(description for description in route.responses.values())


def test_table_rows_are_well_formed():
    names = [route.name for route in API_ROUTES]
    assert len(names) == len(set(names))
    assert len({(r.method, r.path) for r in API_ROUTES}) == len(API_ROUTES)
    for route in API_ROUTES:
        assert route.gate in openapi.GATES
        assert route.method in ("GET", "POST")
        assert route.path.startswith("/") and route.summary
    assert [r.name for r in API_ROUTES if r.request_body] == ["plugin_run", "pipeline_run"]
    hash(API_ROUTES[0])  # frozen rows stay hashable despite the responses mapping


def test_route_responses_add_the_gate_codes():
    by_name = {route.name: route for route in API_ROUTES}
    assert sorted(openapi.route_responses(by_name["root"])) == ["200"]
    assert sorted(openapi.route_responses(by_name["plugins"])) == ["200", "401"]
    assert sorted(openapi.route_responses(by_name["jobs"])) == ["200", "400", "401", "403", "500"]
    assert sorted(openapi.route_responses(by_name["plugin_run"])) == [
        "202", "400", "401", "403", "404", "409", "413", "500"]


# ---------------------------------------------------------------------------
# Routing on the table


@pytest.mark.parametrize("method, path, name, params", [
    ("GET", "/", "root", {}),
    ("GET", "/healthz", "healthz", {}),
    ("GET", "/.well-known/ai-plugin.json", "ai_plugin", {}),
    ("GET", "/plugin/echo/openapi.json", "plugin_openapi", {"plugin": "echo"}),
    ("POST", "/plugin/echo/openapi.json", "plugin_run", {"plugin": "echo", "command": "openapi.json"}),
    ("POST", "/plugin/echo/poll", "plugin_run", {"plugin": "echo", "command": "poll"}),
    ("GET", "/plugin/echo", "plugin_get", {"plugin": "echo"}),
    ("POST", "/pipeline/nightly", "pipeline_run", {"pipeline": "nightly"}),
    ("GET", "/job/abc", "job_get", {"jobID": "abc"}),
    ("GET", "/job/abc/tree", "job_tree", {"jobID": "abc"}),
    ("GET", "/job/a%2Fb/tree", "job_tree", {"jobID": "a/b"}),
    ("GET", "/job-logs", "job_logs", {}),
    ("POST", "/system/reload", "system_reload", {}),
    ("GET", "/events", "events", {}),
])
def test_match_route_finds_the_row(method, path, name, params):
    route, found_params, allowed = match_route(method, path)
    assert route is not None and route.name == name
    assert found_params == params
    assert method in allowed


@pytest.mark.parametrize("method, path, allowed", [
    ("POST", "/jobs", ("GET",)),
    ("HEAD", "/healthz", ("GET",)),
    ("GET", "/plugin/echo/poll", ("POST",)),
    ("PUT", "/plugin/echo/openapi.json", ("GET", "POST")),
    ("GET", "/system/reload", ("POST",)),
])
def test_match_route_wrong_method_reports_the_allowed_ones(method, path, allowed):
    assert match_route(method, path) == (None, {}, allowed)


@pytest.mark.parametrize("path", ["/jobs/", "/nope", "", "/job//tree", "/plugin//poll", "/plugin/a/b/c",
                                  "/events/x", "//"])
def test_match_route_unknown_paths(path):
    assert match_route("GET", path) == (None, {}, ())
    assert match_route("POST", path) == (None, {}, ())


def test_match_route_prefers_literal_segments_when_one_method_fits_two_templates():
    routes = (RouteDoc("any", "GET", "/x/{name}", "any", "s", {"200": "ok"}),
              RouteDoc("literal", "GET", "/x/special", "any", "s", {"200": "ok"}))
    assert match_route("GET", "/x/special", routes)[0].name == "literal"
    assert match_route("GET", "/x/other", routes)[0].name == "any"


# ---------------------------------------------------------------------------
# /openapi.json


def test_full_document_is_valid_openapi_3_1(full_doc):
    validate(full_doc, cls=OpenAPIV31SpecValidator)


def test_full_document_envelope(full_doc):
    assert list(full_doc) == ["components", "info", "openapi", "paths"]
    assert {key: full_doc[key] for key in ENVELOPE} == ENVELOPE
    assert list(full_doc["paths"]) == sorted(full_doc["paths"])


@pytest.mark.parametrize("row", SPEC_TABLE, ids=[row[0] for row in SPEC_TABLE])
def test_every_spec_row_is_described(full_doc, row):
    name, method, path, gate, ok, errors = row
    operation = full_doc["paths"][path][method.lower()]
    assert operation["operationId"] == name
    assert operation["summary"]
    codes = set(operation["responses"])
    assert set(ok + errors) <= codes
    assert ("401" in codes) == (gate != "open")
    assert all(response["description"] for response in operation["responses"].values())
    assert list(operation["responses"]) == sorted(operation["responses"])
    if gate == "open":
        assert "security" not in operation
    else:
        assert operation["security"] == BEARER


@pytest.mark.parametrize("row", SPEC_TABLE, ids=[row[0] for row in SPEC_TABLE])
def test_path_templates_have_required_path_parameters(full_doc, row):
    method, path = row[1:3]
    operation = full_doc["paths"][path][method.lower()]
    path_params = [p for p in operation.get("parameters", []) if p["in"] == "path"]
    expected = [segment[1:-1] for segment in path.split("/") if segment.startswith("{")]
    assert [p["name"] for p in path_params] == expected
    assert all(p["required"] is True and p["schema"] == {"type": "string"} for p in path_params)


def test_only_api_routes_have_no_hidden_extras(full_doc):
    api_paths = {row[2] for row in SPEC_TABLE}
    extra = [path for path in full_doc["paths"] if path not in api_paths]
    assert all(path.startswith("/plugin/") and "{" not in path for path in extra)


def test_events_documents_the_query_token_and_resume_point(full_doc):
    params = full_doc["paths"]["/events"]["get"]["parameters"]
    assert {(p["name"], p["in"]) for p in params} == {
        ("token", "query"), ("last_event_id", "query"), ("Last-Event-ID", "header")}
    assert all(p["required"] is False for p in params)


def test_post_routes_describe_the_payload_body(full_doc):
    for path in ("/plugin/{plugin}/{command}", "/pipeline/{pipeline}"):
        body = full_doc["paths"][path]["post"]["requestBody"]
        assert body["required"] is False
        schema = body["content"]["application/json"]["schema"]
        assert schema["type"] == "object" and "payload" in schema["properties"]
    assert "requestBody" not in full_doc["paths"]["/system/reload"]["post"]


def test_concrete_plugin_paths_coexist_with_the_templates(full_doc, discovered):
    paths = full_doc["paths"]
    assert paths["/plugin/{plugin}/{command}"]["post"]["operationId"] == "plugin_run"
    for plugin in discovered.values():
        for command in plugin.commands:
            operation = paths["/plugin/%s/%s" % (plugin.name, command.name)]["post"]
            assert operation["operationId"] == "%s__%s" % (plugin.name, command.name)


def test_operation_ids_are_unique(full_doc):
    ids = [op["operationId"] for item in full_doc["paths"].values() for op in item.values()]
    assert len(ids) == len(set(ids))


def test_document_without_plugins_is_valid_and_only_the_api():
    doc = openapi.document([])
    validate(doc, cls=OpenAPIV31SpecValidator)
    assert set(doc["paths"]) == {row[2] for row in SPEC_TABLE}


def test_document_is_fresh_each_time(discovered):
    first = openapi.document(discovered.values())
    first["paths"]["/plugin/echo/handle"]["post"]["requestBody"]["content"].clear()
    first["components"]["securitySchemes"].clear()
    assert openapi.document(discovered.values())["paths"]["/plugin/echo/handle"]["post"]["requestBody"]["content"]
    assert openapi.document([])["components"] == ENVELOPE["components"]


# ---------------------------------------------------------------------------
# Per-command paths and /plugin/{p}/openapi.json


def test_echo_command_paths_are_exactly_the_spec_shape(discovered):
    echo = discovered["echo"]
    handle = echo.command("handle")
    assert openapi.plugin_paths(echo) == {
        "/plugin/echo/poll": {"post": {
            "operationId": "echo__poll",
            "summary": echo.command("poll").description,
            "tags": ["echo"],
            "responses": COMMAND_RESPONSES,
            "security": BEARER,
        }},
        "/plugin/echo/handle": {"post": {
            "operationId": "echo__handle",
            "summary": handle.description,
            "tags": ["echo"],
            "requestBody": {"required": False, "content": {"application/json": {"schema": {
                "type": "object",
                "properties": {"payload": {"type": "object", "properties": {"message": {"type": "string"}}}},
            }}}},
            "responses": COMMAND_RESPONSES,
            "security": BEARER,
        }},
        "/plugin/echo/health": {"post": {
            "operationId": "echo__health",
            "summary": echo.command("health").description,
            "tags": ["echo"],
            "responses": COMMAND_RESPONSES,
            "security": BEARER,
        }},
    }
    operation = openapi.plugin_paths(echo)["/plugin/echo/handle"]["post"]
    assert list(operation) == ["operationId", "summary", "tags", "requestBody", "responses", "security"]


def test_summary_falls_back_to_plugin_and_command(discovered):
    operation = openapi.plugin_paths(discovered["fast"])["/plugin/fast/poll"]["post"]
    assert operation["summary"] == "fast: poll"
    assert "requestBody" not in operation


@pytest.mark.parametrize("name", ["echo", "behave", "fast"])
def test_plugin_document_is_valid_and_holds_only_that_plugin(discovered, name):
    doc = openapi.plugin_document(discovered[name])
    validate(doc, cls=OpenAPIV31SpecValidator)
    assert {key: doc[key] for key in ENVELOPE} == ENVELOPE
    assert set(doc["paths"]) == {"/plugin/%s/%s" % (name, c) for c in discovered[name].command_names()}


def test_plugin_document_without_commands_has_empty_paths():
    doc = openapi.plugin_document(make_plugin("bare"))
    assert doc == dict(ENVELOPE, paths={})
    validate(doc, cls=OpenAPIV31SpecValidator)


def test_plugin_document_wire_form(discovered):
    text = jsonwire.dumps(openapi.plugin_document(discovered["fast"]))
    assert text == (
        '{"components":{"securitySchemes":{"BearerAuth":{"scheme":"bearer","type":"http"}}},'
        '"info":{"title":"Ductile Gateway","version":"1.0"},"openapi":"3.1.0",'
        '"paths":{"/plugin/fast/poll":{"post":{"operationId":"fast__poll","summary":"fast: poll",'
        '"tags":["fast"],"responses":{"202":{"description":"Job queued"},"400":{"description":"Bad request"},'
        '"403":{"description":"Insufficient scope"}},"security":[{"BearerAuth":[]}]}}}}'
    )


# ---------------------------------------------------------------------------
# Compact schema expansion


def payload_schema(plugin, command):
    operation = openapi.plugin_paths(plugin)["/plugin/%s/%s" % (plugin.name, command)]["post"]
    return operation["requestBody"]["content"]["application/json"]["schema"]["properties"]["payload"]


def test_compact_schema_is_expanded_and_full_schemas_kept():
    compact = {"url": "string", "retries": "integer", "headers": {"type": "object"}}
    full = {"type": "object", "properties": {"url": {"type": "string"}}, "required": ["url"]}
    plugin = make_plugin(
        "web",
        Command(name="fetch", type="read", description="Fetch a URL", input_schema=compact),
        Command(name="post", input_schema=full),
        Command(name="any", input_schema={}),
    )
    assert payload_schema(plugin, "fetch") == {"type": "object", "properties": {
        "url": {"type": "string"}, "retries": {"type": "integer"}, "headers": {"type": "object"}}}
    assert payload_schema(plugin, "post") == full
    assert payload_schema(plugin, "any") == {"type": "object", "properties": {}}
    doc = openapi.document([plugin])
    validate(doc, cls=OpenAPIV31SpecValidator)
    validate(openapi.plugin_document(plugin), cls=OpenAPIV31SpecValidator)


def test_documents_never_share_the_plugins_schemas():
    full = {"type": "object", "properties": {"url": {"type": "string"}}}
    plugin = make_plugin("web", Command(name="post", input_schema=full))
    payload_schema(plugin, "post")["properties"].clear()
    assert full == {"type": "object", "properties": {"url": {"type": "string"}}}


def test_output_schema_does_not_add_a_request_body():
    plugin = make_plugin("web", Command(name="poll", output_schema={"result": "string"}))
    assert "requestBody" not in openapi.plugin_paths(plugin)["/plugin/web/poll"]["post"]
