"""Thin Celery tasks: ids in, call a service. Periodic ones are scheduled in settings/celery.py.

Lower layers send these by name (dispatch.keys.PROVIDER_EMBED_TASK, JOB_WEBHOOK_TASK); they never
import this module.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from celery import Task, shared_task
from django.conf import settings

from accounts.services import usage_flush as accounts_usage_flush
from dispatch.keys import JOB_WEBHOOK_TASK, PROVIDER_EMBED_TASK, PROVIDER_QUEUE
from embeddings.jobs import job_sweep as jobs_sweep
from embeddings.retention import cache_hits_flush
from embeddings.retention import cache_prune as retention_prune
from embeddings.webhooks import WebhookTransient, job_webhook_deliver, job_webhook_give_up
from workers.provider_calls import provider_embed_run


@shared_task(name="workers.usage_flush", ignore_result=True)
def usage_flush() -> int:
    """Moves the Redis usage counters into Postgres (accounts.services.usage_flush), then the
    cache entries' hit stats (embeddings.retention.cache_hits_flush)."""
    written = accounts_usage_flush()
    cache_hits_flush()
    return written


@shared_task(name="workers.cache_prune", ignore_result=True)
def cache_prune() -> int:
    """Deletes cache entries unused for CACHE_RETENTION_DAYS (embeddings.retention.cache_prune);
    nothing when it is unset. Scheduled daily by beat (settings/celery.py)."""
    if not settings.CACHE_RETENTION_DAYS:
        return 0
    return retention_prune(unused_for=timedelta(days=settings.CACHE_RETENTION_DAYS))


@shared_task(name=PROVIDER_EMBED_TASK, ignore_result=True, acks_late=True)
def provider_embed(provider_id: int, model: str, texts: list[str], keys: list[str], reply_id: str, deadline: float) -> None:
    """One request's cache misses through the tenant's provider (routed to the provider queue).

    Texts travel in the message (they are not stored anywhere); the provider is re-fetched by id.
    When the tenant's calls in progress hold all its provider-worker slots, the task comes back
    after PROVIDER_BUSY_RETRY_SECONDS (until its request's deadline) instead of taking a thread.
    """
    if not provider_embed_run(provider_id=provider_id, model=model, texts=texts, keys=keys, reply_id=reply_id,
                              deadline=deadline):
        provider_embed.apply_async(args=(provider_id, model, texts, keys, reply_id, deadline), queue=PROVIDER_QUEUE,
                                   countdown=PROVIDER_BUSY_RETRY_SECONDS, expires=max(1.0, deadline - time.time()))


# How soon a provider call whose tenant is at its bound of calls in progress is tried again.
PROVIDER_BUSY_RETRY_SECONDS = 0.25


@shared_task(name="workers.job_sweep", ignore_result=True)
def job_sweep() -> int:
    """Re-queues job chunks whose worker died (embeddings.jobs.job_sweep)."""
    return jobs_sweep()


WEBHOOK_MAX_RETRIES = 6


def _job_webhook_failure(self: Task, exc: Exception, task_id: str, args: Sequence[Any], kwargs: dict[str, Any],
                         einfo: object) -> None:
    job_webhook_give_up(job_id=args[0] if args else kwargs["job_id"])


@shared_task(  # type: ignore[call-overload]  # on_failure: a Task attribute the stubs' options leave out
    name=JOB_WEBHOOK_TASK, ignore_result=True, autoretry_for=(WebhookTransient,), max_retries=WEBHOOK_MAX_RETRIES,
    retry_backoff=5, retry_backoff_max=600, retry_jitter=True, on_failure=_job_webhook_failure,
)
def job_webhook(job_id: str) -> str:
    """One signed POST of a finished job to its webhook_url; retried with backoff (5 s, 10 s, ... up to
    10 min, jittered) on network errors, 429 and 5xx; marked failed after the last try."""
    return job_webhook_deliver(job_id=job_id)
