"""The event hub: monotonic ids, replay without gaps, laggards disconnected."""
import threading

from ductile_lib.events import EventHub


def drain(sub, timeout=0.5):
    events = []
    while True:
        event = sub.get(timeout=timeout)
        if event is None:
            return events
        events.append(event)


def test_ids_are_monotonic_and_shapes_are_json():
    hub = EventHub()
    first = hub.publish("scheduler.tick", {"at": "x"})
    second = hub.publish("job.started")
    assert (first.id, second.id) == (1, 2)
    assert second.to_json()["data"] == {}
    assert first.at.endswith("Z") and len(first.at.split(".")[1]) == 10  # 9 digits + Z
    assert hub.last_id() == 2


def test_replay_after_resume_point_then_live_without_gap_or_duplicate():
    hub = EventHub(ring_size=10)
    for n in range(5):
        hub.publish("e", {"n": n})
    sub = hub.subscribe(last_event_id=3)
    hub.publish("e", {"n": 5})
    assert [e.id for e in drain(sub, 0.05)] == [4, 5, 6]


def test_ring_is_bounded():
    hub = EventHub(ring_size=3)
    for _ in range(10):
        hub.publish("e")
    assert hub.oldest_id() == 8
    assert [e.id for e in drain(hub.subscribe(last_event_id=0), 0.05)] == [8, 9, 10]


def test_slow_subscriber_is_disconnected_not_silently_skipped():
    hub = EventHub()
    slow = hub.subscribe(queue_size=4)
    fast = hub.subscribe(queue_size=100)
    for _ in range(10):
        hub.publish("e")
    assert slow.disconnected is True
    assert slow.get(timeout=0.01) is None  # nothing more once disconnected
    assert len(drain(fast, 0.05)) == 10
    assert hub.subscriber_count() == 1


def test_publisher_never_blocks_and_concurrent_ids_are_unique():
    hub = EventHub()
    sub = hub.subscribe(queue_size=10_000)
    threads = [threading.Thread(target=lambda: [hub.publish("e") for _ in range(500)]) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    ids = [e.id for e in drain(sub, 0.05)]
    assert ids == list(range(1, 2001))


def test_close_wakes_a_waiting_reader():
    hub = EventHub()
    sub = hub.subscribe()
    results = []
    reader = threading.Thread(target=lambda: results.append(sub.get(timeout=10)))
    reader.start()
    sub.close()
    reader.join(timeout=5)
    assert results == [None] and not reader.is_alive()
