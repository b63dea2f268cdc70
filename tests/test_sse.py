"""SSE body (API spec §5) and the wire JSON encoder (§1.3), against a real EventHub.

Streams run in a thread writing into an in-memory sink; tests wait on the
sink's condition (never on sleeps) and end streams with the stop event.
"""
from __future__ import annotations

import json
import math
import threading

import pytest

from ductile_lib import jsonwire, sse
from ductile_lib.events import EventHub

pytestmark = pytest.mark.timeout(10)

WAIT_S = 5.0


# ---------------------------------------------------------------------------
# Harness


class Sink:
    """An in-memory client: records every chunk and wakes waiters."""

    def __init__(self):
        self.chunks = []
        self._cond = threading.Condition()

    def write(self, chunk: bytes) -> None:
        assert isinstance(chunk, bytes)
        with self._cond:
            self.chunks.append(chunk)
            self._cond.notify_all()

    def raw(self) -> bytes:
        with self._cond:
            return b"".join(self.chunks)

    def wait_for(self, predicate) -> None:
        """Block until ``predicate(frames)`` holds (fails the test after WAIT_S)."""
        with self._cond:
            ok = self._cond.wait_for(lambda: predicate(parse_frames(b"".join(self.chunks))), WAIT_S)
        assert ok, "timed out; stream ends with: %r" % self.raw()[-500:]


class Stream:
    """``stream_events`` running in a thread, with its result once it ends."""

    def __init__(self, hub, resume, write=None, **kwargs):
        self.sink = Sink()
        self.stop = threading.Event()
        self.subscribed = threading.Event()
        self.subscription = None
        self.result = None
        self._thread = threading.Thread(
            target=self._run, args=(write or self.sink.write, hub, resume, kwargs), daemon=True)
        self._thread.start()
        assert self.subscribed.wait(WAIT_S)

    def _run(self, write, hub, resume, kwargs):
        kwargs.setdefault("stop", self.stop)
        self.result = sse.stream_events(write, hub, resume, on_subscribe=self._on_subscribe, **kwargs)

    def _on_subscribe(self, subscription):
        self.subscription = subscription
        self.subscribed.set()

    def join(self) -> str:
        self._thread.join(WAIT_S)
        assert not self._thread.is_alive(), "stream did not end"
        return self.result

    def finish(self) -> str:
        """End the stream as the server does at shutdown: set stop, close the subscription.

        Closing wakes the stream at once; ``stop`` alone is noticed within
        ``STOP_POLL_S`` (tested on its own below).
        """
        self.stop.set()
        self.subscription.close()
        return self.join()


def parse_frames(raw: bytes) -> list:
    """Complete frames as dicts of field → value; comments under ``":"``."""
    frames = []
    for block in raw.decode("utf-8").split("\n\n")[:-1]:
        frame = {}
        for line in block.split("\n"):
            if line.startswith(":"):
                frame[":"] = line[1:].strip()
                continue
            name, _, value = line.partition(": ")
            frame[name] = value
        frames.append(frame)
    return frames


def event_ids(frames) -> list:
    return [int(f["id"]) for f in frames if "id" in f]


def gaps(frames) -> list:
    return [json.loads(f["data"]) for f in frames if f.get("event") == "stream.gap"]


def hub_with(count: int, ring_size: int = 1024) -> EventHub:
    hub = EventHub(ring_size=ring_size)
    for n in range(count):
        hub.publish("test.event", {"n": n + 1})
    return hub


def stream_until(hub, resume, last_id, **kwargs):
    """Run a stream until it has sent ``last_id``; return its frames."""
    stream = Stream(hub, resume, **kwargs)
    stream.sink.wait_for(lambda frames: last_id in event_ids(frames))
    assert stream.finish() == sse.STOPPED
    assert hub.subscriber_count() == 0
    return parse_frames(stream.sink.raw())


# ---------------------------------------------------------------------------
# Resume point


@pytest.mark.parametrize("header, query, expected", [
    (None, None, 0),
    ("5", None, 5),
    (None, "7", 7),
    ("", "7", 7),           # empty header counts as absent
    ("  ", "7", 7),
    ("5", "7", 5),          # the header wins
    ("abc", "7", 0),        # a garbage header is still the header: whole ring
    (None, "abc", 0),
    ("0", None, 0),
    ("-3", None, 0),
    (" 12 ", None, 12),
    ("+4", None, 4),
    ("1_000", None, 0),
    ("1.5", None, 0),
    ("\u0663", None, 0),    # an Arabic-Indic digit is not an integer here
    (str(2 ** 63 - 1), None, 2 ** 63 - 1),
    (str(2 ** 63), None, 0),
])
def test_parse_resume_point(header, query, expected):
    assert sse.parse_resume_point(header, query) == expected


# ---------------------------------------------------------------------------
# Replay and gaps


def test_replays_after_the_resume_point_then_stops():
    hub = hub_with(5)
    frames = stream_until(hub, 3, 5)
    assert event_ids(frames) == [4, 5]
    assert gaps(frames) == []


@pytest.mark.parametrize("resume", [None, 0, -5, sse.parse_resume_point("garbage", None)])
def test_absent_or_non_positive_resume_replays_the_whole_ring_without_a_gap(resume):
    hub = hub_with(5, ring_size=3)
    frames = stream_until(hub, resume, 5)
    assert event_ids(frames) == [3, 4, 5]
    assert gaps(frames) == []


def test_gap_notice_when_the_resume_point_has_left_the_ring():
    hub = hub_with(10, ring_size=3)  # ring holds 8, 9, 10
    frames = stream_until(hub, 2, 10)
    assert "id" not in frames[0]
    assert gaps(frames) == [{"after": 2, "next": 8}]
    assert event_ids(frames) == [8, 9, 10]


@pytest.mark.parametrize("resume, expected_gaps", [(6, [{"after": 6, "next": 8}]), (7, [])])
def test_gap_boundary_is_oldest_greater_than_resume_plus_one(resume, expected_gaps):
    hub = hub_with(10, ring_size=3)
    frames = stream_until(hub, resume, 10)
    assert gaps(frames) == expected_gaps
    assert event_ids(frames) == [8, 9, 10]


def test_resume_above_newest_id_announces_a_gap_and_replays_the_whole_ring():
    hub = hub_with(3)
    frames = stream_until(hub, 50, 3)
    assert gaps(frames) == [{"after": 50, "next": 1}]
    assert event_ids(frames) == [1, 2, 3]
    assert frames[0]["event"] == "stream.gap"


def test_resume_against_an_empty_hub_names_the_next_id_to_be_assigned():
    hub = EventHub()
    stream = Stream(hub, 5)
    stream.sink.wait_for(lambda frames: len(frames) == 1)
    hub.publish("test.event")
    stream.sink.wait_for(lambda frames: 1 in event_ids(frames))
    assert stream.finish() == sse.STOPPED
    frames = parse_frames(stream.sink.raw())
    assert gaps(frames) == [{"after": 5, "next": 1}]
    assert event_ids(frames) == [1]


def test_resume_at_the_newest_id_sends_no_gap_and_only_live_events():
    hub = hub_with(4)
    stream = Stream(hub, 4)
    hub.publish("test.event", {"n": 5})
    stream.sink.wait_for(lambda frames: 5 in event_ids(frames))
    assert stream.finish() == sse.STOPPED
    frames = parse_frames(stream.sink.raw())
    assert event_ids(frames) == [5]
    assert gaps(frames) == []


def test_live_events_during_replay_arrive_once_and_in_order():
    hub = hub_with(500)
    publisher = threading.Thread(target=lambda: [hub.publish("test.event") for _ in range(500)])
    stream = Stream(hub, 0, queue_size=10_000)
    publisher.start()
    publisher.join(WAIT_S)
    stream.sink.wait_for(lambda frames: 1000 in event_ids(frames))
    assert stream.finish() == sse.STOPPED
    assert event_ids(parse_frames(stream.sink.raw())) == list(range(1, 1001))


def test_live_events_published_concurrently_with_subscribing_are_not_lost():
    hub = hub_with(200, ring_size=1024)
    start = threading.Event()

    def publish():
        start.wait(WAIT_S)
        for _ in range(300):
            hub.publish("test.event")

    publisher = threading.Thread(target=publish)
    publisher.start()
    start.set()
    stream = Stream(hub, 150, queue_size=10_000)
    publisher.join(WAIT_S)
    stream.sink.wait_for(lambda frames: 500 in event_ids(frames))
    assert stream.finish() == sse.STOPPED
    frames = parse_frames(stream.sink.raw())
    assert event_ids(frames) == list(range(151, 501))
    assert gaps(frames) == []


# ---------------------------------------------------------------------------
# Keep-alive, ending


def test_keep_alive_comment_while_idle():
    hub = EventHub()
    stream = Stream(hub, None, keepalive_s=0.05)
    stream.sink.wait_for(lambda frames: sum(1 for f in frames if ":" in f) >= 2)
    assert stream.finish() == sse.STOPPED
    assert stream.sink.raw().startswith(b": keep-alive\n\n: keep-alive\n\n")


def test_keep_alive_keeps_its_cadence_on_a_busy_stream():
    hub = EventHub()
    stream = Stream(hub, None, keepalive_s=0.05, queue_size=100_000)
    done = threading.Event()

    def publish():
        while not done.is_set():
            hub.publish("test.event")
            done.wait(0.001)

    publisher = threading.Thread(target=publish)
    publisher.start()
    try:
        stream.sink.wait_for(lambda frames: any(":" in f for f in frames) and event_ids(frames))
    finally:
        done.set()
        publisher.join(WAIT_S)
    assert stream.finish() == sse.STOPPED


def test_stop_alone_ends_an_idle_stream_despite_a_long_keep_alive():
    hub = EventHub()
    stream = Stream(hub, None, keepalive_s=60.0)
    stream.stop.set()
    assert stream.join() == sse.STOPPED
    assert stream.sink.raw() == b""
    assert hub.subscriber_count() == 0


def test_closing_the_subscription_ends_the_stream_as_stopped():
    hub = EventHub()
    handed = []
    subscribed = threading.Event()

    def on_subscribe(subscription):
        handed.append(subscription)
        subscribed.set()

    result = []
    thread = threading.Thread(target=lambda: result.append(sse.stream_events(
        Sink().write, hub, None, keepalive_s=60.0, on_subscribe=on_subscribe)))
    thread.start()
    assert subscribed.wait(WAIT_S)
    handed[0].close()
    thread.join(WAIT_S)
    assert result == [sse.STOPPED]


def test_slow_consumer_is_disconnected_and_the_stream_ends():
    hub = EventHub()
    in_write, release = threading.Event(), threading.Event()

    def blocking_write(chunk):
        in_write.set()
        assert release.wait(WAIT_S)

    stream = Stream(hub, None, write=blocking_write, queue_size=2)
    hub.publish("test.event")
    assert in_write.wait(WAIT_S)  # the stream is stuck writing event 1
    for _ in range(5):
        hub.publish("test.event")
    release.set()
    assert stream.join() == sse.SLOW_CONSUMER
    assert hub.subscriber_count() == 0


@pytest.mark.parametrize("error", [BrokenPipeError, ConnectionResetError, OSError])
def test_write_error_on_an_event_ends_the_stream(error):
    hub = hub_with(3)

    def broken(chunk):
        raise error("client gone")

    stream = Stream(hub, None, write=broken)
    assert stream.join() == sse.WRITE_ERROR
    assert hub.subscriber_count() == 0


def test_write_error_on_a_keep_alive_ends_an_idle_stream():
    hub = EventHub()

    def broken(chunk):
        raise BrokenPipeError("client gone")

    stream = Stream(hub, None, write=broken, keepalive_s=0.05)
    assert stream.join() == sse.WRITE_ERROR
    assert hub.subscriber_count() == 0


def test_write_error_on_the_gap_notice_ends_the_stream():
    hub = hub_with(3)
    written = []

    def broken(chunk):
        written.append(chunk)
        raise BrokenPipeError("client gone")

    stream = Stream(hub, 50, write=broken)
    assert stream.join() == sse.WRITE_ERROR
    assert written == [b'event: stream.gap\ndata: {"after":50,"next":1}\n\n']


# ---------------------------------------------------------------------------
# Frames, byte for byte


def test_frames_are_byte_exact():
    hub = EventHub()
    hub.publish("job.completed", {"z": 1, "a": "<b>&", "\u00fc": "\u00e9", "nested": {"y": [1, None], "x": True}})
    hub.publish("scheduler.tick")
    hub.publish("job.started", {})
    stream = Stream(hub, None)
    stream.sink.wait_for(lambda frames: 3 in event_ids(frames))
    assert stream.finish() == sse.STOPPED
    assert stream.sink.raw() == (
        b'id: 1\nevent: job.completed\n'
        b'data: {"a":"\\u003cb\\u003e\\u0026","nested":{"x":true,"y":[1,null]},"z":1,"\xc3\xbc":"\xc3\xa9"}\n\n'
        b'id: 2\nevent: scheduler.tick\ndata: {}\n\n'
        b'id: 3\nevent: job.started\ndata: {}\n\n'
    )


def test_newlines_in_data_stay_on_one_line():
    hub = EventHub()
    hub.publish("job.failed", {"error": "line one\nline two\r\n"})
    stream = Stream(hub, None)
    stream.sink.wait_for(lambda frames: 1 in event_ids(frames))
    assert stream.finish() == sse.STOPPED
    assert stream.sink.raw() == b'id: 1\nevent: job.failed\ndata: {"error":"line one\\nline two\\r\\n"}\n\n'


def test_format_gap_is_byte_exact():
    assert sse.format_gap(2, 8) == b'event: stream.gap\ndata: {"after":2,"next":8}\n\n'


# ---------------------------------------------------------------------------
# jsonwire


def test_dumps_is_compact_and_keeps_insertion_order():
    assert jsonwire.dumps({"b": 1, "a": [1, 2, {"c": None}]}) == '{"b":1,"a":[1,2,{"c":null}]}'


def test_dumps_sorts_keys_on_request():
    assert jsonwire.dumps({"b": 1, "a": {"d": 1, "c": 2}}, sort_keys=True) == '{"a":{"c":2,"d":1},"b":1}'


def test_dumps_escapes_html_characters_like_go_in_keys_and_values():
    assert jsonwire.dumps({"<k>": "a&b<c>"}) == '{"\\u003ck\\u003e":"a\\u0026b\\u003cc\\u003e"}'
    assert json.loads(jsonwire.dumps({"<k>": "a&b<c>"})) == {"<k>": "a&b<c>"}


def test_dumps_writes_other_non_ascii_raw():
    assert jsonwire.dumps(["\u00e9", "\u2603", "\U0001F600"]) == '["\u00e9","\u2603","\U0001F600"]'
    assert jsonwire.dumps("tab\tquote\"back\\") == '"tab\\tquote\\"back\\\\"'


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_dumps_refuses_non_finite_floats(value):
    with pytest.raises(ValueError):
        jsonwire.dumps({"x": value})


def test_body_is_utf8_with_a_trailing_newline():
    assert jsonwire.body({"error": "not found"}) == b'{"error":"not found"}\n'
    assert jsonwire.body({"b": "\u00e9", "a": "<"}, sort_keys=True) == b'{"a":"\\u003c","b":"\xc3\xa9"}\n'
