#!/usr/bin/env python3
"""Echo: an example Ductile plugin speaking protocol v2 (standard library only).

Ductile starts this file once per job, writes one JSON request on stdin and
reads one JSON response from stdout.  The request carries ``command``,
``config`` (this plugin's ``plugins.echo.config``), ``state`` (what earlier
runs stored) and, for ``handle``, the triggering ``event``.

Commands:
  poll    emit ``echo.polled`` with the configured message and a running
          count; store ``poll_count`` and ``last_poll_at`` as state
  handle  echo the event's payload back as an ``echo.handled`` event
  health  report that the plugin runs

Anything unexpected (unreadable stdin, unknown command) is answered with
``status: error`` and a message saying what was wrong, never a traceback,
so the operator sees the reason in the job's ``last_error``.
"""
import datetime
import json
import sys

VERSION = "0.1.0"
DEFAULT_MESSAGE = "hello from echo"


def now_rfc3339():
    """UTC now as RFC 3339 with a ``Z``, the format Ductile uses everywhere."""
    now = datetime.datetime.now(datetime.timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def error(message):
    """A non-retryable failure: retrying a malformed request cannot help."""
    return {"status": "error", "error": message, "retry": False,
            "logs": [{"level": "error", "message": message}]}


def configured_message(request):
    config = request.get("config")
    message = config.get("message") if isinstance(config, dict) else None
    return message if isinstance(message, str) and message else DEFAULT_MESSAGE


def previous_poll_count(request):
    """The stored count, tolerating a missing or hand-edited state."""
    state = request.get("state")
    count = state.get("poll_count") if isinstance(state, dict) else None
    return count if isinstance(count, int) and not isinstance(count, bool) else 0


def poll(request):
    polled_at = now_rfc3339()
    count = previous_poll_count(request) + 1
    message = configured_message(request)
    return {
        "status": "ok",
        "result": "echo poll at %s" % polled_at,
        "events": [{"type": "echo.polled", "payload": {"message": message, "count": count}}],
        "state_updates": {"poll_count": count, "last_poll_at": polled_at},
        "logs": [{"level": "info", "message": "poll #%d: %s" % (count, message)}],
    }


def incoming_event(request):
    """The event to echo: the ``event`` envelope, else the raw job payload."""
    event = request.get("event")
    if isinstance(event, dict):
        payload = event.get("payload")
        return event.get("type") or "", payload if isinstance(payload, dict) else {}
    payload = request.get("payload")
    return "", payload if isinstance(payload, dict) else {}


def handle(request):
    event_type, payload = incoming_event(request)
    summary = json.dumps(payload, sort_keys=True, ensure_ascii=False)
    if len(summary) > 200:
        summary = summary[:197] + "..."
    return {
        "status": "ok",
        "result": "echo handled %s: %s" % (event_type or "event", summary),
        "events": [{"type": "echo.handled", "payload": payload}],
        "logs": [{"level": "info", "message": "echoed %d payload field(s)" % len(payload)}],
    }


def health(request):
    return {"status": "ok", "result": "echo %s healthy" % VERSION,
            "logs": [{"level": "info", "message": "healthy"}]}


COMMANDS = {"poll": poll, "handle": handle, "health": health}


def read_request(text):
    """The request object, or an error response explaining why it is unusable."""
    if not text.strip():
        return None, error("empty request: expected one JSON object on stdin")
    try:
        request = json.loads(text)
    except ValueError as exc:
        return None, error("invalid request: stdin is not valid JSON (%s)" % exc)
    if not isinstance(request, dict):
        return None, error("invalid request: expected a JSON object on stdin")
    return request, None


def respond(request):
    command = request.get("command")
    run = COMMANDS.get(command) if isinstance(command, str) else None
    if run is None:
        return error("unknown command %s (supported: %s)" % (
            json.dumps(command), ", ".join(sorted(COMMANDS))))
    return run(request)


def main():
    try:
        text = sys.stdin.buffer.read().decode("utf-8")
    except UnicodeDecodeError:
        text, response = "", error("invalid request: stdin is not valid UTF-8")
    else:
        request, response = read_request(text)
        if response is None:
            response = respond(request)
    sys.stdout.write(json.dumps(response) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
