"""How a job webhook's body is signed with the tenant's webhook secret (Tenant.webhook_secret), as
Stripe signs its webhooks. The deliveries: embeddings/webhooks.py; the secret and this scheme are
shown to the tenant by GET /v1/webhook-secret."""

from __future__ import annotations

import hashlib
import hmac
import time

SIGNATURE_HEADER = "X-Signature"
SIGNATURE_SCHEME = "t=<unix seconds>,v1=<hex HMAC-SHA256(webhook_secret, \"<t>.<raw body>\")>"
SIGNATURE_TOLERANCE_SECONDS = 300  # what receivers are told to accept (docs); webhook_verify's default


def webhook_sign(secret: str, body: bytes, *, timestamp: int) -> str:
    """The X-Signature value of `body` sent at `timestamp` (unix seconds)."""
    mac = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def webhook_verify(secret: str, body: bytes, header: str, *, tolerance: float = SIGNATURE_TOLERANCE_SECONDS,
                   now: float | None = None) -> bool:
    """A receiver's check (the documented snippet): True if `header` signs `body` with `secret`
    and its timestamp is within `tolerance` seconds of `now`."""
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance:
        return False
    expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, parts.get("v1", ""))
