"""JSON-lines logging: shape, levels and redaction (spec 20 §9, decision K4)."""
import io
import json
import re
import threading

from ductile_lib.logs import Logger, LogSink
from ductile_lib.redact import redact_tree, scrub_text


def lines(stream):
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_line_shape_and_field_order():
    out = io.StringIO()
    Logger("dispatch", LogSink(out)).bind(job_id="j1").info("job started", plugin="echo", attempt=2)
    (record,) = lines(out)
    assert list(record)[:4] == ["time", "level", "msg", "component"]
    assert record == {**record, "level": "INFO", "msg": "job started", "component": "dispatch", "job_id": "j1",
                      "plugin": "echo", "attempt": 2}
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}(Z|[+-]\d\d:\d\d)$", record["time"])


def test_threshold_follows_config_names():
    out = io.StringIO()
    sink = LogSink(out)
    log = Logger("main", sink)
    log.debug("hidden")
    sink.set_level("warn")
    log.info("hidden too")
    log.warn("shown")
    sink.set_level("debug")
    log.debug("shown too")
    assert [r["msg"] for r in lines(out)] == ["shown", "shown too"]
    assert [r["level"] for r in lines(out)] == ["WARN", "DEBUG"]


def test_secrets_never_reach_the_stream():
    out = io.StringIO()
    sink = LogSink(out)
    sink.set_secrets(["tok-0123456789"])
    Logger("api", sink).error("bad auth with tok-0123456789", api_key="k", dedupe_key="keep-me",
                              detail={"nested": "tok-0123456789"})
    text = out.getvalue()
    assert "tok-0123456789" not in text
    (record,) = lines(out)
    assert record["api_key"] == "[REDACTED]" and record["dedupe_key"] == "keep-me"


def test_lines_do_not_interleave_across_threads():
    out = io.StringIO()
    log = Logger("main", LogSink(out))
    threads = [threading.Thread(target=lambda n=n: [log.info("m", n=n, i=i) for i in range(200)]) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(lines(out)) == 800


def test_redact_tree_walks_maps_and_lists():
    value = {"url": "u", "Client_Secret": {"a": 1}, "items": [{"passwd": 1, "ok": [{"AUTH": None}]}], "n": 2}
    assert redact_tree(value) == {"url": "u", "Client_Secret": "[REDACTED]",
                                  "items": [{"passwd": "[REDACTED]", "ok": [{"AUTH": "[REDACTED]"}]}], "n": 2}


def test_scrub_text_hides_longest_first():
    assert scrub_text("a abcdef abcdefgh", ["abcdef", "abcdefgh", "a"]) == "a [REDACTED] [REDACTED]"
