"""Job completion webhooks: one signed POST per finished job, SSRF-checked like providers.

The body is the job payload (JSON), signed as Stripe signs its webhooks:

    X-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(tenant.webhook_secret, "<t>.<body>")>

`t` is the time of the attempt (a retry is signed afresh), so a receiver can refuse a captured
delivery replayed later: recompute the HMAC over "<t>." + the raw body, compare it in constant
time, and refuse when |now - t| is over a tolerance (accounts.signing.webhook_verify does exactly
that, 300 s by default). The address is resolved and checked at call time and the request goes to
that checked address (no DNS rebinding); redirects are not followed.

A delivery is bounded in time and size whatever the receiver does: WEBHOOK_TIMEOUT_SECONDS is a
total deadline for connect, send, status and body (asyncio's timeout cancels whatever is in
progress; httpx's own timeouts are per operation, so a receiver trickling a byte a second would
never trip them), and at most WEBHOOK_MAX_RESPONSE_BYTES of the body are read (raw, never
decompressed): only the status matters.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import orjson
from django.conf import settings

from accounts.signing import SIGNATURE_HEADER, webhook_sign
from embeddings.models import Job
from embeddings.serializers import job_payload
from providers.ssrf import EndpointRefused, endpoint_check


class WebhookTransient(Exception):
    """The receiver may accept a retry (network error, timeout, 429 or 5xx)."""


def job_webhook_deliver(*, job_id: str) -> str:
    """POSTs the finished job to its webhook_url; returns the new webhook_status.

    Raises WebhookTransient for a failure worth retrying; a refused endpoint or a 4xx is
    final ("failed"). A job without a webhook, or already delivered, is skipped.
    """
    job = Job.objects.select_related("tenant").filter(pk=job_id).first()
    if job is None or not job.webhook_url or job.webhook_status == "delivered":
        return job.webhook_status if job else "gone"
    started = time.monotonic()
    body = orjson.dumps(job_payload(job))
    try:
        target = endpoint_check(job.webhook_url)
    except EndpointRefused:
        return _status(job, "failed")
    headers = {
        "Content-Type": "application/json",
        "Host": target.host_header,
        "Accept-Encoding": "identity",  # the body is read raw and capped: no decompression
        SIGNATURE_HEADER: webhook_sign(job.tenant.webhook_secret, body, timestamp=int(time.time())),
        "User-Agent": "embedplatform-webhook/1",
    }
    seconds = settings.WEBHOOK_TIMEOUT_SECONDS - (time.monotonic() - started)  # the DNS check counts too
    try:
        status, _ = webhook_post(target.pinned_url(), body=body, headers=headers, extensions=target.extensions,
                                 seconds=seconds, max_bytes=settings.WEBHOOK_MAX_RESPONSE_BYTES)
    except TimeoutError:
        raise WebhookTransient(f"no answer within {settings.WEBHOOK_TIMEOUT_SECONDS} s") from None
    except httpx.HTTPError as exc:
        raise WebhookTransient(f"{exc.__class__.__name__}: {exc}") from None
    if status == 429 or status >= 500:
        raise WebhookTransient(f"HTTP {status}")
    return _status(job, "delivered" if 200 <= status < 300 else "failed")


def webhook_post(url: str, *, body: bytes, headers: dict, extensions: dict, seconds: float,
                 max_bytes: int) -> tuple[int, int]:
    """One POST within `seconds` in all; returns (status, body bytes read: at most `max_bytes`
    plus one network read). Raises TimeoutError if no status came in time, httpx.HTTPError.

    A status that came in time stands even if the body is still trickling at the deadline."""
    if seconds <= 0:
        raise TimeoutError
    return asyncio.run(_post(url, body=body, headers=headers, extensions=extensions, seconds=seconds,
                             max_bytes=max_bytes))


async def _post(url: str, *, body: bytes, headers: dict, extensions: dict, seconds: float,
                max_bytes: int) -> tuple[int, int]:
    status, read = None, 0
    try:
        async with (
            asyncio.timeout(seconds),
            httpx.AsyncClient(timeout=seconds, follow_redirects=False, trust_env=False) as client,
            client.stream("POST", url, content=body, headers=headers, extensions=extensions) as response,
        ):
            status = response.status_code
            async for chunk in response.aiter_raw():
                read += len(chunk)
                if read >= max_bytes:
                    break
    except (TimeoutError, httpx.TimeoutException):
        if status is None:
            raise TimeoutError from None
    except httpx.HTTPError:
        if status is None:
            raise  # a body cut short after the status does not change the answer
    return status, read


def job_webhook_give_up(*, job_id: str) -> None:
    Job.objects.filter(pk=job_id).exclude(webhook_status="delivered").update(webhook_status="failed")


def _status(job: Job, status: str) -> str:
    Job.objects.filter(pk=job.pk).update(webhook_status=status)
    return status
