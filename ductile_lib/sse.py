"""The body of ``GET /events``: the event hub as Server-Sent Events (API spec §5).

The API server authenticates, sends the headers, and then hands the socket's
write function to :func:`stream_events`, which owns everything after that:

* **resume** — a client that reconnects with ``Last-Event-ID`` (or
  ``?last_event_id=``) gets the ring's events after that id, then live ones,
  with nothing lost or repeated in between (the hub subscribes and snapshots
  the ring under one lock);
* **gaps are announced, never silent** — when the events right after the
  resume point have left the ring, or the id is from an earlier process (above
  anything this hub has assigned), a ``stream.gap`` frame says so before the
  replay, so a client can tell "nothing happened" from "I missed something";
* **keep-alive** — a ``: keep-alive`` comment every 15 s keeps proxies from
  cutting an idle stream, and is how a dead client is noticed (the write fails);
* **backpressure** — a client that cannot keep up is disconnected by the hub;
  the stream ends and the client reconnects and replays.

The stream never ends on its own otherwise: only a write error, a slow
consumer or shutdown stop it, and the reason is returned for the request log.
"""
from __future__ import annotations

import re
import threading
import time
from typing import Callable, Optional, Tuple

from ductile_lib import jsonwire
from ductile_lib.events import DEFAULT_QUEUE_SIZE, Event, EventHub, Subscription

KEEPALIVE_S = 15.0
KEEPALIVE_FRAME = b": keep-alive\n\n"
GAP_EVENT_TYPE = "stream.gap"

# How often a stream with a ``stop`` event looks at it while idle.  Waiting on
# the subscription cannot also wait on ``stop``; half a second is well inside
# the API's 10 s shutdown grace and costs nothing measurable.
STOP_POLL_S = 0.5

# Stream end reasons (returned, and worth logging).
WRITE_ERROR = "write_error"
SLOW_CONSUMER = "slow_consumer"
STOPPED = "stopped"

# Go's strconv.ParseInt(s, 10, 64) syntax; Python's int() would also take
# "1_000" and non-ASCII digits, which a header must not.
_INTEGER = re.compile(r"[+-]?[0-9]+")
_INT64_MAX = 2 ** 63 - 1

Writer = Callable[[bytes], None]


def parse_resume_point(header_value: Optional[str], query_value: Optional[str]) -> int:
    """The client's resume point: an id > 0, or 0 for "replay the whole ring".

    The ``Last-Event-ID`` header wins when it is non-empty (even if it is
    garbage: the browser's own reconnect sends it, and falling back to a
    stale query id would replay the wrong thing); else ``?last_event_id=``.
    Anything that is not a positive 64-bit integer means the whole ring,
    which is the safe direction: a duplicate beats a silent loss.
    """
    chosen = header_value if header_value and header_value.strip() else query_value
    text = (chosen or "").strip()
    if not _INTEGER.fullmatch(text):
        return 0
    value = int(text)
    return value if 0 < value <= _INT64_MAX else 0


def format_event(event: Event) -> bytes:
    """One SSE frame: id, type, and the data as one line of JSON, keys sorted."""
    data = jsonwire.dumps(event.data or {}, sort_keys=True)
    return ("id: %d\nevent: %s\ndata: %s\n\n" % (event.id, event.type, data)).encode("utf-8", "replace")


def format_gap(after: int, next_id: int) -> bytes:
    """The ``stream.gap`` notice; it has no ``id:`` so it never moves the client's resume point."""
    data = jsonwire.dumps({"after": after, "next": next_id})
    return ("event: %s\ndata: %s\n\n" % (GAP_EVENT_TYPE, data)).encode("utf-8")


def stream_events(write: Writer, hub: EventHub, resume_point: Optional[int], *,
                  keepalive_s: float = KEEPALIVE_S,
                  stop: Optional[threading.Event] = None,
                  queue_size: int = DEFAULT_QUEUE_SIZE,
                  on_subscribe: Optional[Callable[[Subscription], None]] = None) -> str:
    """Write the SSE body until the stream ends; return why it ended.

    ``write`` must send (and flush) one chunk or raise ``OSError``.
    ``resume_point`` is :func:`parse_resume_point`'s value (``None`` or
    ``<= 0``: the whole ring).  ``stop`` ends the stream at shutdown;
    ``on_subscribe`` hands the subscription to a caller that would rather
    close it (the stream then ends at once, also as ``"stopped"``).
    Returns ``"write_error"``, ``"slow_consumer"`` or ``"stopped"``; the
    subscription is always closed on return.
    """
    resume = resume_point if resume_point is not None and resume_point > 0 else 0
    # An id above anything this hub assigned comes from an earlier process;
    # it says nothing about what the client has seen here, so replay all.
    from_earlier_process = resume > hub.last_id()
    subscription = hub.subscribe(last_event_id=0 if from_earlier_process else resume,
                                 queue_size=queue_size)
    try:
        if on_subscribe is not None:
            on_subscribe(subscription)
        return _serve(write, hub, subscription, resume, from_earlier_process, keepalive_s, stop)
    finally:
        subscription.close()


def _serve(write: Writer, hub: EventHub, subscription: Subscription, resume: int,
           from_earlier_process: bool, keepalive_s: float,
           stop: Optional[threading.Event]) -> str:
    """Send the gap notice if one is due, then the replay and live events."""
    first, next_id = _peek_first(hub, subscription)
    if first is None and subscription.disconnected:
        return SLOW_CONSUMER  # cut off before anything was sent: no gap to announce
    if resume > 0 and (from_earlier_process or next_id > resume + 1):
        if not _send(write, format_gap(resume, next_id)):
            return WRITE_ERROR
    last_sent = 0
    if first is not None:
        if not _send(write, format_event(first)):
            return WRITE_ERROR
        last_sent = first.id
    return _pump(write, subscription, last_sent, keepalive_s, stop)


def _peek_first(hub: EventHub, subscription: Subscription) -> Tuple[Optional[Event], int]:
    """The first event to send (without waiting) and its id, or ``(None, next id)``.

    The gap notice names the id the client will see next, which must be
    known before anything is written.  When nothing is queued yet, that id is
    exactly ``last_id() + 1`` provided ``last_id`` is read *before* looking at
    the queue: every event up to it was either in the ring snapshot (so
    queued, unless at or before the resume point) or published after
    subscribing (so queued).  An empty queue means the next one is new.
    """
    last_assigned = hub.last_id()
    event = subscription.get(timeout=0)
    if event is not None:
        return event, event.id
    return None, last_assigned + 1


def _pump(write: Writer, subscription: Subscription, last_sent: int, keepalive_s: float,
          stop: Optional[threading.Event]) -> str:
    """Forward events as they arrive, with a keep-alive on a fixed cadence.

    The cadence is a clock, not an idle timer (like the original's ticker):
    a busy stream still carries a keep-alive every ``keepalive_s``, so a
    client that watches for one is never left waiting.
    """
    keepalive_s = max(keepalive_s, 0.001)
    next_keepalive = time.monotonic() + keepalive_s
    while True:
        ended = _end_reason(subscription, stop)
        if ended is not None:
            return ended
        now = time.monotonic()
        if now >= next_keepalive:
            if not _send(write, KEEPALIVE_FRAME):
                return WRITE_ERROR
            next_keepalive = max(next_keepalive + keepalive_s, now)
            continue
        wait = next_keepalive - now
        if stop is not None:
            wait = min(wait, STOP_POLL_S)
        event = subscription.get(timeout=wait)
        if event is None or event.id <= last_sent:
            continue  # timeout, disconnect or close: the top of the loop decides
        if not _send(write, format_event(event)):
            return WRITE_ERROR
        last_sent = event.id


def _end_reason(subscription: Subscription, stop: Optional[threading.Event]) -> Optional[str]:
    """Why the stream must end now, or None to keep going."""
    if subscription.disconnected:
        return SLOW_CONSUMER
    if subscription.closed or (stop is not None and stop.is_set()):
        return STOPPED
    return None


def _send(write: Writer, chunk: bytes) -> bool:
    """Write one chunk; False when the client has gone.

    ``ValueError`` is what a closed file object raises on write, which is
    how a connection torn down under us looks from here.
    """
    try:
        write(chunk)
    except (OSError, ValueError):
        return False
    return True
