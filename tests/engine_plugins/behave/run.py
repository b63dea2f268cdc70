#!/usr/bin/env python3
"""Engine test plugin: the payload's ``mode`` says how to misbehave.

Modes: ok (default), error, error_no_retry, exit78, sleep (``seconds``),
garbage, empty, huge (``mb`` megabytes of stdout), state (``updates``),
touch (append the job id to ``path`` then succeed).
"""
import json
import os
import sys
import time


def reply(obj, code=0):
    sys.stdout.write(json.dumps(obj))
    sys.stdout.flush()
    sys.exit(code)


def main():
    request = json.loads(sys.stdin.read() or "{}")
    payload = request.get("payload") or {}
    if request.get("command") == "handle":
        payload = (request.get("event") or {}).get("payload") or {}
    payload = {**(request.get("config") or {}), **payload}
    mode = payload.get("mode", "ok")
    if payload.get("path"):
        with open(payload["path"], "a") as handle:
            handle.write(request["job_id"] + "\n")
    if mode == "sleep":
        time.sleep(float(payload.get("seconds", 1)))
    if mode == "error":
        reply({"status": "error", "error": "asked to fail"})
    if mode == "error_no_retry":
        reply({"status": "error", "error": "permanent failure", "retry": False})
    if mode == "exit78":
        sys.stderr.write("configuration is wrong\n")
        reply({"status": "error", "error": "bad config"}, code=78)
    if mode == "garbage":
        sys.stdout.write("this is not json")
        sys.exit(0)
    if mode == "empty":
        sys.exit(0)
    if mode == "huge":
        chunk = b"x" * (1 << 20)
        for _ in range(int(payload.get("mb", 50))):
            os.write(1, chunk)
        sys.exit(0)
    response = {"status": "ok", "result": "done %s" % request["command"],
                "events": [{"type": "behave.done", "payload": {"job": request["job_id"]}}]}
    if mode == "state":
        response["state_updates"] = payload.get("updates", {})
    reply(response)


if __name__ == "__main__":
    main()
