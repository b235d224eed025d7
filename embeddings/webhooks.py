"""Job completion webhooks: one signed POST per finished job, SSRF-checked like providers.

The body is the job payload (JSON). `X-Embedplatform-Signature: sha256=<hex>` is
HMAC-SHA256(tenant.webhook_secret, body), so a receiver can check it came from us:
    hmac.compare_digest(sig, "sha256=" + hmac.new(secret, body, "sha256").hexdigest())
The address is resolved and checked at call time and the request goes to that checked
address (no DNS rebinding); redirects are not followed.
"""

from __future__ import annotations

import hashlib
import hmac

import httpx
import orjson
from django.conf import settings

from embeddings.models import Job
from embeddings.serializers import job_payload
from providers.ssrf import EndpointRefused, endpoint_check

SIGNATURE_HEADER = "X-Embedplatform-Signature"


class WebhookTransient(Exception):
    """The receiver may accept a retry (network error, timeout, 429 or 5xx)."""


def webhook_sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def job_webhook_deliver(*, job_id: str) -> str:
    """POSTs the finished job to its webhook_url; returns the new webhook_status.

    Raises WebhookTransient for a failure worth retrying; a refused endpoint or a 4xx is
    final ("failed"). A job without a webhook, or already delivered, is skipped.
    """
    job = Job.objects.select_related("tenant").filter(pk=job_id).first()
    if job is None or not job.webhook_url or job.webhook_status == "delivered":
        return job.webhook_status if job else "gone"
    body = orjson.dumps(job_payload(job))
    try:
        target = endpoint_check(job.webhook_url)
    except EndpointRefused:
        return _status(job, "failed")
    headers = {
        "Content-Type": "application/json",
        "Host": target.host_header,
        SIGNATURE_HEADER: webhook_sign(job.tenant.webhook_secret, body),
        "User-Agent": "embedplatform-webhook/1",
    }
    try:
        with httpx.Client(timeout=settings.WEBHOOK_TIMEOUT_SECONDS, follow_redirects=False, trust_env=False) as client:
            response = client.post(target.pinned_url(), content=body, headers=headers,
                                   extensions=target.extensions)
    except httpx.HTTPError as exc:
        raise WebhookTransient(f"{exc.__class__.__name__}: {exc}") from None
    if response.status_code == 429 or response.status_code >= 500:
        raise WebhookTransient(f"HTTP {response.status_code}")
    return _status(job, "delivered" if 200 <= response.status_code < 300 else "failed")


def job_webhook_give_up(*, job_id: str) -> None:
    Job.objects.filter(pk=job_id).exclude(webhook_status="delivered").update(webhook_status="failed")


def _status(job: Job, status: str) -> str:
    Job.objects.filter(pk=job.pk).update(webhook_status=status)
    return status
