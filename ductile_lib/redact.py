"""The one redaction rule every surface uses (decision K4).

A map key is secret when its name contains one of a few words; its value is
hidden whatever its type.  Known secret values (API tokens, ``tokens.yaml``
keys, webhook secrets) are also scrubbed from free text such as log lines.
"""
from __future__ import annotations

import re

PLACEHOLDER = "[REDACTED]"
_SECRET_WORDS = re.compile(r"secret|password|passwd|token|key|credential|auth", re.IGNORECASE)


def is_secret_key(name) -> bool:
    """True when a map key's name marks its value as secret."""
    return isinstance(name, str) and bool(_SECRET_WORDS.search(name))


def redact_tree(value):
    """A copy of ``value`` with every secret-named key's value replaced.

    Walks maps and lists recursively, as K4 requires for plugin ``config``
    and schedule ``payload``.
    """
    if isinstance(value, dict):
        return {k: PLACEHOLDER if is_secret_key(k) else redact_tree(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_tree(item) for item in value]
    return value


def scrub_text(text: str, secrets) -> str:
    """Replace every occurrence of a known secret value inside ``text``.

    Longer secrets go first so that a secret containing another is hidden
    whole.  Very short values are skipped: hiding ``a`` everywhere would
    mangle every message and protect nothing.
    """
    for secret in sorted((s for s in secrets if s and len(s) >= 4), key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, PLACEHOLDER)
    return text
