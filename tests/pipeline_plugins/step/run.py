#!/usr/bin/env python3
"""Pipeline test plugin.  Config keys:

result   result text (default "<plugin>-done")
emit     list of {type, payload?, pass?: true to start from the incoming payload}
fail     true: status error, retry false
sleep    seconds to sleep first
record   file to append one JSON line per request (command, event, payload, context)
"""
import json
import sys
import time


def main():
    request = json.loads(sys.stdin.read() or "{}")
    config = request.get("config") or {}
    plugin = (request.get("context") or {}).get("ductile_plugin", "step")
    if config.get("record"):
        with open(config["record"], "a") as handle:
            handle.write(json.dumps({"plugin": plugin, "job_id": request.get("job_id"),
                                     "command": request.get("command"), "event": request.get("event"),
                                     "payload": request.get("payload"), "context": request.get("context")}) + "\n")
    if config.get("sleep"):
        time.sleep(float(config["sleep"]))
    if config.get("fail"):
        print(json.dumps({"status": "error", "error": "%s failed" % plugin, "retry": False}))
        return
    incoming = (request.get("event") or {}).get("payload") or {}
    events = []
    for spec in config.get("emit") or []:
        payload = dict(incoming) if spec.get("pass") else {}
        payload.update(spec.get("payload") or {})
        event = {"type": spec["type"], "payload": payload}
        if spec.get("event_id"):
            event["event_id"] = spec["event_id"]
        events.append(event)
    print(json.dumps({"status": "ok", "result": config.get("result", "%s-done" % plugin), "events": events}))


if __name__ == "__main__":
    main()
