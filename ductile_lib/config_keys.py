"""The tree of config keys Ductile knows, and the unknown-key walk (spec 10 §3.4).

A node is a dict of child keys, ``LIST_OF`` + node for a list whose items
follow that node, ``ANY_KEYS`` + node for maps with free key names, or
``None`` for a leaf whose contents are never checked.
"""
from __future__ import annotations

LEAF = None


class _ListOf:
    def __init__(self, item):
        self.item = item


class _AnyKeys:
    def __init__(self, value):
        self.value = value


SCHEDULE = {
    "id": LEAF, "every": LEAF, "cron": LEAF, "at": LEAF, "after": LEAF, "jitter": LEAF,
    "catch_up": LEAF, "if_running": LEAF, "only_between": LEAF, "timezone": LEAF,
    "not_on": LEAF, "command": LEAF, "payload": LEAF, "preferred_window": LEAF,
}

PLUGIN = {
    "enabled": LEAF, "uses": LEAF, "schedules": _ListOf(SCHEDULE), "schedule": LEAF,
    "config": LEAF, "timeout": LEAF, "timeouts": _AnyKeys(LEAF),
    "retry": {"max_attempts": LEAF, "backoff_base": LEAF}, "max_attempts": LEAF,
    "circuit_breaker": {"threshold": LEAF, "reset_after": LEAF},
    "max_outstanding_polls": LEAF, "parallelism": LEAF, "notify_on_complete": LEAF,
}

ENDPOINT = {"name": LEAF, "path": LEAF, "plugin": LEAF, "secret_ref": LEAF,
            "signature_header": LEAF, "max_body_size": LEAF}

INSTANCE = {"name": LEAF, "enabled": LEAF, "base_url": LEAF, "ingress_path": LEAF, "secret_ref": LEAF,
            "key_id": LEAF, "timeout": LEAF, "allow": LEAF}

PEER = {"name": LEAF, "enabled": LEAF, "secret_ref": LEAF, "key_id": LEAF, "accept": LEAF,
        "baggage": {"allow": LEAF}}

TOP = {
    "include": LEAF,
    "environment_vars": {"include": LEAF},
    "state": {"path": LEAF},
    "database": {"path": LEAF},
    "plugin_roots": LEAF,
    "plugins": _AnyKeys(PLUGIN),
    "pipelines": LEAF,  # checked by the pipeline compiler
    "routes": _ListOf({"from": LEAF, "event_type": LEAF, "to": LEAF}),
    "webhooks": {"listen": LEAF, "endpoints": _ListOf(ENDPOINT)},
    "tokens": _ListOf({"name": LEAF, "key": LEAF, "scopes_file": LEAF, "scopes_hash": LEAF,
                       "created_at": LEAF, "description": LEAF}),
    "tcc_paths": LEAF,
    "log_level": LEAF,
    "service": {
        "name": LEAF, "tick_interval": LEAF, "log_level": LEAF, "log_format": LEAF, "dedupe_ttl": LEAF,
        "job_log_retention": LEAF, "job_queue_retention": LEAF, "job_transitions_retention": LEAF,
        "job_attempts_retention": LEAF, "breaker_transitions_retention": LEAF, "max_workers": LEAF,
        "shutdown_timeout": LEAF, "max_chain_depth": LEAF, "strict_mode": LEAF, "allow_symlinks": LEAF,
    },
    "api": {
        "enabled": LEAF, "listen": LEAF,
        "auth": {"tokens": _ListOf({"token": LEAF, "scopes": LEAF})},
        "max_body_size": LEAF, "sse_replay_size": LEAF, "max_concurrent_sync": LEAF,
        "max_sync_timeout": LEAF, "allowed_origins": LEAF, "max_connections": LEAF,
    },
    "instances": _ListOf(INSTANCE),
    "remote_ingress": {"listen_path": LEAF, "max_body_size": LEAF, "allowed_clock_skew": LEAF,
                       "require_key_id": LEAF, "peers": _ListOf(PEER)},
}


def unknown_keys(data: dict, schema=None, path: tuple = ()):
    """Yield the path of every map key that ``schema`` does not define.

    Top-level ``x-…`` keys are anchor holders and are skipped silently.
    """
    schema = TOP if schema is None else schema
    if isinstance(schema, _AnyKeys):
        if isinstance(data, dict):
            for key, value in data.items():
                yield from _walk(value, schema.value, path + (key,))
        return
    if not isinstance(data, dict) or not isinstance(schema, dict):
        return
    for key, value in data.items():
        if not path and isinstance(key, str) and key.startswith("x-"):
            continue
        if key not in schema:
            yield path + (key,)
            continue
        yield from _walk(value, schema[key], path + (key,))


def _walk(value, schema, path: tuple):
    if schema is LEAF:
        return
    if isinstance(schema, _ListOf):
        if isinstance(value, list):
            for index, item in enumerate(value):
                yield from _walk(item, schema.item, path + (index,))
        return
    yield from unknown_keys(value, schema, path)


def dotted(path: tuple) -> str:
    """``("plugins", "echo", "schedules", 0, "every")`` → ``plugins.echo.schedules[0].every``."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += "[%d]" % part
        else:
            text += ("." if text else "") + str(part)
    return text
