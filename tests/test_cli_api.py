"""The API clients of the CLI against a real gateway process (spec 50 §4, §11, §12).

One gateway (``system start`` in a subprocess, API on a free loopback
port, the example echo plugin) serves the whole module: starting one
costs about a second, and nothing here changes its config.
"""
from __future__ import annotations

import io
import socket
import sqlite3

import pytest

from conftest import ECHO_PLUGIN_ROOT, run_ductile, write_tree
from test_gateway import GatewayProcess

TOKEN = "cli-api-test-token"
pytestmark = pytest.mark.timeout(60)


def free_port() -> int:
    """A port nobody listens on right now (bind to 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Gateway:
    """The running gateway: its config dir, base URL and database."""

    def __init__(self, config_dir, port: int, process: GatewayProcess):
        self.config_dir = config_dir
        self.url = "http://127.0.0.1:%d" % port
        self.process = process
        self.db_path = config_dir / "data" / "state.db"

    def rows(self, sql: str, args=()) -> list:
        conn = sqlite3.connect(str(self.db_path), timeout=10)
        try:
            return conn.execute(sql, args).fetchall()
        finally:
            conn.close()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-api") / "config"
    port = free_port()
    write_tree(root, {"config.yaml": """
        plugin_roots: [%s]
        state: {path: ./data/state.db}
        service: {max_workers: 2, tick_interval: 1s, shutdown_timeout: 5s}
        api:
          enabled: true
          listen: "127.0.0.1:%d"
          auth:
            tokens:
              - token: %s
                scopes: ["*"]
        plugins:
          echo:
            enabled: true
    """ % (ECHO_PLUGIN_ROOT, port, TOKEN)})
    process = GatewayProcess(root, root / "gateway.log")
    try:
        yield Gateway(root, port, process)
    finally:
        process.kill()


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """No key or config from the developer's environment leaks in."""
    monkeypatch.delenv("DUCTILE_API_KEY", raising=False)
    monkeypatch.delenv("DUCTILE_CONFIG_DIR", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.chdir(tmp_path)


# --- ductile api ----------------------------------------------------------------

def test_api_healthz_uses_the_configs_listen_address(cli, gateway, clean_env):
    result = cli("api", "/healthz", "--config-dir", gateway.config_dir)
    assert result.code == 0, result
    assert result.out.startswith('{\n  "status": "ok",\n')  # pretty, 2 spaces, server's key order
    assert result.json()["status"] == "ok" and result.err == ""


def test_api_as_a_real_process(gateway):
    result = run_ductile("api", "/plugins", "--config-dir", gateway.config_dir, timeout=30)
    assert result.code == 0, result
    assert result.json()["plugins"][0]["name"] == "echo"


def test_api_endpoint_without_leading_slash_and_c_flag(cli, gateway, clean_env):
    result = cli("api", "healthz", "-c", gateway.config_dir / "config.yaml")
    assert result.code == 0, result
    assert result.json()["status"] == "ok"


def test_api_plugins_takes_the_key_from_the_config(cli, gateway, clean_env):
    result = cli("api", "/plugins", "--config-dir", gateway.config_dir)
    assert result.code == 0, result
    assert [p["name"] for p in result.json()["plugins"]] == ["echo"]


def test_api_without_a_key_shows_the_401(cli, gateway, clean_env):
    result = cli("api", "/plugins", "--api-url", gateway.url)
    assert result.code == 1
    assert result.err == "Response Status: 401 Unauthorized\n"
    assert "error" in result.json()


def test_api_key_from_the_environment(cli, gateway, clean_env):
    result = cli("api", "/plugins", "--api-url", gateway.url + "/", env={"DUCTILE_API_KEY": TOKEN})
    assert result.code == 0, result


def test_api_fields_post_a_json_object_and_print_the_202(cli, gateway, clean_env):
    result = cli("api", "-f", "message=hi", "-X", "POST", "/plugin/echo/poll", "--config-dir", gateway.config_dir)
    assert result.code == 0, result
    reply = result.json()
    assert reply["status"] == "queued" and reply["plugin"] == "echo" and reply["command"] == "poll"
    assert result.out.startswith("{\n  ")
    [(submitted_by,)] = gateway.rows("SELECT submitted_by FROM job_queue WHERE id = ?", (reply["job_id"],))
    assert submitted_by == "api"


def test_api_fields_alone_imply_post(cli, gateway, clean_env):
    result = cli("api", "/plugin/echo/poll", "-f", "n=1", "-f", "flag=true", "--api-url", gateway.url,
                 "--api-key", TOKEN)
    assert result.code == 0, result
    assert result.json()["status"] == "queued"


def test_api_body_from_stdin_with_a_custom_header(cli, gateway, clean_env, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO('{"payload": {"message": "from stdin"}}'))
    result = cli("api", "/plugin/echo/handle", "-b", "-", "-H", "X-Trace: abc", "--config-dir", gateway.config_dir)
    assert result.code == 0, result
    job_id = result.json()["job_id"]
    [(payload,)] = gateway.rows("SELECT payload FROM job_queue WHERE id = ?", (job_id,))
    assert "from stdin" in (payload if isinstance(payload, str) else payload.decode("utf-8"))


def test_api_unknown_path_exits_1_with_the_status_line(cli, gateway, clean_env):
    result = cli("api", "/nosuch", "--config-dir", gateway.config_dir)
    assert result.code == 1
    assert result.err == "Response Status: 404 Not Found\n"
    assert result.json() == {"error": "not found"}


def test_api_unreachable_is_request_failed(cli, clean_env):
    result = cli("api", "/healthz", "--api-url", "http://127.0.0.1:%d" % free_port())
    assert result.code == 1 and result.err.startswith("Request failed: ")


@pytest.mark.parametrize("args, message", [
    (["-f", "novalue"], 'Invalid field format "novalue", expected key=value'),
    (["-f", "=x"], 'Invalid field format "=x", expected key=value'),
    (["-H", "NoColon"], 'Invalid header format "NoColon", expected Header: value'),
])
def test_api_bad_field_or_header_is_a_usage_error(cli, clean_env, args, message):
    result = cli("api", "/healthz", *args)
    assert result.code == 2
    assert result.err.endswith(message + "\n")


@pytest.mark.parametrize("url", ["http://example.com", "http://8.8.8.8:8080", "ftp://127.0.0.1:21",
                                 "http://:8080"])
def test_api_refuses_urls_off_this_machine_or_network(cli, clean_env, url):
    result = cli("api", "/healthz", "--api-url", url)
    assert result.code == 2
    assert result.err.startswith("Invalid API URL: ")


@pytest.mark.parametrize("url", ["http://localhost:1", "http://10.1.2.3:1", "http://[::1]:1",
                                 "https://192.168.0.1:1", "http://169.254.0.1:1"])
def test_api_url_guard_accepts_local_addresses(url):
    from ductile_lib.cli.api_cmd import url_problem

    assert url_problem(url) == ""


def test_api_without_endpoint_is_a_usage_error(cli, clean_env):
    result = cli("api")
    assert result.code == 2 and "endpoint is required" in result.err


def test_field_values_keep_bool_and_integer_types():
    from ductile_lib.cli.api_cmd import parse_fields

    assert parse_fields(["a=1", "b=true", "c=false", "d=x=y", "e=-2", "f=1.5", "g="]) == {
        "a": 1, "b": True, "c": False, "d": "x=y", "e": -2, "f": "1.5", "g": ""}


# --- system reload --api-url ---------------------------------------------------------

def test_reload_through_the_api(cli, gateway, clean_env):
    result = cli("system", "reload", "--api-url", gateway.url, "--api-key", TOKEN)
    assert result.code == 0, result
    first, second = result.out.splitlines()
    assert first.startswith("Reloaded at ") and first.endswith("Z")
    assert second == "configuration reloaded"
    as_json = cli("system", "reload", "--api-url", gateway.url, "--json", env={"DUCTILE_API_KEY": TOKEN})
    assert as_json.code == 0, as_json
    body = as_json.json()
    assert body["status"] == "ok" and body["message"] == "configuration reloaded" and body["reloaded_at"]


def test_reload_through_the_api_needs_a_key(cli, gateway, clean_env):
    result = cli("system", "reload", "--api-url", gateway.url)
    assert result.code == 1
    assert result.err == "API key required for reload (set --api-key or DUCTILE_API_KEY)\n"


def test_reload_failure_reports_the_status(cli, gateway, clean_env):
    result = cli("system", "reload", "--api-url", gateway.url, "--api-key", "wrong", "--json")
    assert result.code == 1
    body = result.json()
    assert body["error"].startswith("Reload failed (401): ")
    assert body["context"]["http_status"] == 401 and "error" in body["context"]["response"]


# --- plugin list / run through the API -----------------------------------------------

def test_plugin_list_through_the_api(cli, gateway, clean_env):
    result = cli("plugin", "list", "--api-url", gateway.url, "--api-key", TOKEN)
    assert result.code == 0, result
    header, row = result.out.splitlines()
    assert header.split() == ["NAME", "VERSION", "COMMANDS"]
    assert row.split() == ["echo", "0.1.0", "poll,handle,health"]
    as_json = cli("plugin", "list", "--api-url", gateway.url, "--json", env={"DUCTILE_API_KEY": TOKEN})
    assert as_json.code == 0 and as_json.json()["plugins"][0]["name"] == "echo"


def test_plugin_list_through_the_api_needs_a_key(cli, gateway, clean_env):
    result = cli("plugin", "list", "--api-url", gateway.url)
    assert result.code == 1
    assert result.err == "Error: API key required. Use --api-key or DUCTILE_API_KEY env var.\n"


def test_plugin_run_waits_for_a_job_submitted_through_the_api(cli, gateway, clean_env):
    result = cli("plugin", "run", "echo", "poll", "--wait", "--timeout", "30s", "--json",
                 "--config-dir", gateway.config_dir)
    assert result.code == 0, result
    body = result.json()
    assert body["status"] == "succeeded" and body["plugin"] == "echo"
    [(submitted_by,)] = gateway.rows("SELECT submitted_by FROM job_queue WHERE id = ?", (body["job_id"],))
    assert submitted_by == "api"


def test_plugin_run_unknown_plugin_through_the_api(cli, gateway, clean_env):
    result = cli("plugin", "run", "nosuch", "--api-url", gateway.url, "--api-key", TOKEN)
    assert result.code == 1
    assert result.err.startswith("API error (404): ")
