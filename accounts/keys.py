"""API key material: make, hash, verify. No database access here.

A key looks like `ep_<prefix>_<secret>`: the 12-char prefix is public (it is the key's id
in URLs and the admin) and finds the row; the row stores HMAC-SHA256(SECRET_KEY, key),
compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from django.conf import settings

KEY_PREFIX = "ep"
PREFIX_LENGTH = 12


@dataclass(frozen=True)
class NewKey:
    prefix: str
    key: str
    key_hash: str


def _alphabet_token(n: int) -> str:
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    return "".join(secrets.choice(alphabet) for _ in range(n))


def key_hash(key: str) -> str:
    return hmac.new(settings.SECRET_KEY.encode(), key.encode(), hashlib.sha256).hexdigest()


def key_make() -> NewKey:
    prefix = _alphabet_token(PREFIX_LENGTH)
    key = f"{KEY_PREFIX}_{prefix}_{secrets.token_urlsafe(32)}"
    return NewKey(prefix=prefix, key=key, key_hash=key_hash(key))


def key_parse_prefix(key: str) -> str | None:
    """The prefix of a well-formed key, or None (then it is not one of ours)."""
    parts = key.split("_", 2)
    if len(parts) != 3 or parts[0] != KEY_PREFIX or len(parts[1]) != PREFIX_LENGTH:
        return None
    return parts[1]


def key_verify(key: str, stored_hash: str) -> bool:
    return hmac.compare_digest(key_hash(key), stored_hash)
