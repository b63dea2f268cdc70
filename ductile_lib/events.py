"""The in-process event hub (spec 20 §10, decision H4).

Every part of the gateway publishes what happens here; SSE clients and the
watch screen subscribe.  Three promises hold:

* ids count from 1 and only go up for the life of the process (a reload
  keeps the hub), so ``Last-Event-ID`` is meaningful across reloads;
* publishers never block: each subscriber has a bounded queue, and one that
  falls behind is *disconnected* (it reconnects and replays) rather than
  silently missing events;
* subscribing then replaying leaves no gap: a subscriber registers under the
  hub's lock, takes the ring's events after its resume point, and from then
  on receives every new event.
"""
from __future__ import annotations

import collections
import threading
from dataclasses import dataclass, field
from typing import Optional

from ductile_lib.timefmt import utc_now

DEFAULT_RING_SIZE = 1024
DEFAULT_QUEUE_SIZE = 128


@dataclass(frozen=True)
class Event:
    """One published event; ``at`` is UTC RFC 3339 with nanoseconds."""

    id: int
    type: str
    at: str
    data: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"id": self.id, "type": self.type, "at": self.at, "data": self.data}


class Subscription:
    """A subscriber's bounded queue; ``get`` blocks until an event arrives."""

    def __init__(self, hub: "EventHub", capacity: int):
        self._hub = hub
        self._capacity = capacity
        self._events: collections.deque = collections.deque()
        self._cond = threading.Condition()
        self.disconnected = False  # fell behind: the client must reconnect
        self.closed = False

    def _offer(self, event: Event) -> bool:
        """Called under the hub's lock; False when the queue is full."""
        with self._cond:
            if self.closed:
                return True
            if len(self._events) >= self._capacity:
                self.disconnected = True
                self._cond.notify_all()
                return False
            self._events.append(event)
            self._cond.notify()
            return True

    def get(self, timeout: Optional[float] = None) -> Optional[Event]:
        """The next event, or None on timeout, disconnect or close."""
        with self._cond:
            if not self._events and not (self.disconnected or self.closed):
                self._cond.wait(timeout)
            if self._events and not self.disconnected:
                return self._events.popleft()
            return None

    def close(self) -> None:
        """Stop receiving; safe to call twice."""
        self._hub._unsubscribe(self)
        with self._cond:
            self.closed = True
            self._events.clear()
            self._cond.notify_all()


class EventHub:
    """Publish/subscribe with a replay ring and monotonic ids."""

    def __init__(self, ring_size: int = DEFAULT_RING_SIZE, clock=utc_now):
        self._ring: collections.deque = collections.deque(maxlen=max(1, ring_size))
        self._subscribers: list = []
        self._lock = threading.Lock()
        self._next_id = 1
        self._clock = clock

    def publish(self, event_type: str, data: Optional[dict] = None) -> Event:
        """Record and fan out one event; never blocks on a slow subscriber."""
        with self._lock:
            event = Event(self._next_id, event_type, _timestamp_ns(self._clock()), dict(data or {}))
            self._next_id += 1
            self._ring.append(event)
            laggards = [s for s in self._subscribers if not s._offer(event)]
            for subscription in laggards:
                self._subscribers.remove(subscription)
        return event

    def subscribe(self, last_event_id: Optional[int] = None,
                  queue_size: int = DEFAULT_QUEUE_SIZE) -> Subscription:
        """Register, then queue the ring's events after ``last_event_id``.

        With no resume point only live events arrive.  A resume point older
        than the ring replays what the ring still holds; callers can compare
        ``oldest_id()`` to tell the client about the gap.
        """
        subscription = Subscription(self, queue_size)
        with self._lock:
            if last_event_id is not None:
                backlog = [e for e in self._ring if e.id > last_event_id]
                subscription._capacity = max(queue_size, len(backlog) + queue_size)
                for event in backlog:
                    subscription._offer(event)
            self._subscribers.append(subscription)
        return subscription

    def _unsubscribe(self, subscription: Subscription) -> None:
        with self._lock:
            if subscription in self._subscribers:
                self._subscribers.remove(subscription)

    def oldest_id(self) -> Optional[int]:
        with self._lock:
            return self._ring[0].id if self._ring else None

    def last_id(self) -> int:
        with self._lock:
            return self._next_id - 1

    def recent(self, limit: int = 100) -> list:
        """The newest ``limit`` events in the ring, oldest first."""
        with self._lock:
            return list(self._ring)[-limit:]

    def subscriber_count(self) -> int:
        with self._lock:
            return len(self._subscribers)


def _timestamp_ns(moment) -> str:
    """UTC RFC 3339 with a 9-digit fraction (microseconds padded)."""
    return "%04d-%02d-%02dT%02d:%02d:%02d.%06d000Z" % (moment.year, moment.month, moment.day, moment.hour,
                                                      moment.minute, moment.second, moment.microsecond)


def terminal_failure_event(job, status: str, error: str, duration_ms: int = 0, timed_out: bool = False):
    """``(type, data)`` of the hub's ``job.failed`` / ``job.timed_out`` event (spec 20 §10)."""
    if timed_out:
        kind, text = "job.timed_out", "Job timed out [%s]" % job.plugin
    else:
        kind = "job.failed"
        text = "Job failed [%s]: %s" % (job.plugin, error) if error else "Job failed [%s]" % job.plugin
    return kind, {"job_id": job.id, "plugin": job.plugin, "status": status, "duration_ms": duration_ms,
                  "error": error or "", "message": text, "text": text}
