"""Jobs: create, cancel, and the workers' side (claim, complete, give back, take over, sweep).

A job's texts are cut into JobChunk rows of JOB_CHUNK_TEXTS; embedding workers claim chunks
from Postgres (SKIP LOCKED, a lease per claim) whenever no interactive request waits, so the
broker never holds bulk work and a 202-accepted job survives a broker flush or a killed
worker (job_orphans_requeue and the sweeper re-queue chunks whose worker is gone or whose
lease ran out). Reading a job and its results: embeddings/selectors.py. DECISIONS #16, #24.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from celery import current_app
from django.conf import settings
from django.db import OperationalError, connection, transaction
from django.db.models import F
from django.db.models.functions import Now
from django.utils import timezone
from psycopg import errors as psycopg_errors

from accounts.models import Tenant
from accounts.quotas import quota_consume, quota_refund
from accounts.services import usage_record
from dispatch.keys import JOB_WEBHOOK_TASK
from dispatch.local import jobs_signal, owners_alive
from embeddings import cache, cachecap
from embeddings.inputs import EmbedOptions, model_inputs, model_resolve
from embeddings.models import Job, JobChunk, texts_loads
from embeddings.selectors import job_get
from embedplatform.errors import InvalidInput, PayloadTooLarge
from providers.ssrf import EndpointRefused, endpoint_check

logger = logging.getLogger(__name__)

JOB_TEXTS_TOO_MANY = "This job has {texts} texts; your tier ({tier}) allows at most {limit} per job."
JOB_BYOK_REFUSED = "Jobs run on the platform's models; send provider models (`{model}`) to /v1/embeddings instead."
WEBHOOK_REFUSED = "webhook_url is refused: {why}."


def job_create(*, tenant: Tenant, texts: list[str], options: EmbedOptions, webhook_url: str = "",
               count_quota: bool = True) -> Job:
    """Admits a job: checks model, tier limits, dimensions and webhook, counts the texts against
    the quota (all or nothing), stores the job and its chunks, then signals the workers.

    Raises NotFound / NotAllowed (model; cache_full: the tenant's cache is at its tier's
    max_cache_bytes), PayloadTooLarge (over max_job_texts), InvalidInput (dimensions,
    webhook_url) and QuotaExceeded. `count_quota=False` is for a sync request that
    already counted its texts and falls back to a job.
    """
    spec = model_resolve(tenant=tenant, model=options.model)
    if not spec.dispatcher.runs_jobs:
        raise InvalidInput(JOB_BYOK_REFUSED.format(model=options.model), param="model")
    tier = tenant.tier
    limit = min(tier.max_job_texts, settings.JOB_MAX_TEXTS)
    if len(texts) > limit:
        raise PayloadTooLarge(JOB_TEXTS_TOO_MANY.format(texts=len(texts), tier=tier.name, limit=limit),
                              param="texts", code="job_too_large")
    inputs = model_inputs(spec, texts, options)  # dimensions, prompt, lengths: as for a sync request
    if webhook_url:
        try:
            endpoint_check(webhook_url)
        except EndpointRefused as exc:
            raise InvalidInput(WEBHOOK_REFUSED.format(why=exc), param="webhook_url") from None
    if not options.public:
        cachecap.cache_cap_check(tenant=tenant)  # its results are read back from the cache: none if it is full
    quota = quota_consume(tenant=tenant, texts=len(texts)) if count_quota else None
    try:
        size = settings.JOB_CHUNK_TEXTS
        with transaction.atomic():
            job = Job.objects.create(
                tenant=tenant, model=spec.name, model_version=spec.version, total=len(texts),
                scope=cache.PUBLIC_SCOPE if options.public else tenant.pk, priority=tier.priority,
                options={"normalize": options.normalize, "dimensions": options.dimensions,
                         "input_type": options.input_type, "public": options.public},
                webhook_url=webhook_url, webhook_status="pending" if webhook_url else "",
            )
            JobChunk.objects.bulk_create(
                (JobChunk(job=job, seq=i, start=start, texts=inputs[start:start + size])
                 for i, start in enumerate(range(0, len(inputs), size))),
                batch_size=500,
            )
            transaction.on_commit(lambda: jobs_signal([spec.name]))
    except BaseException:
        if quota is not None:
            quota_refund(tenant=tenant, texts=len(texts), state=quota)
        raise
    return job


def job_cancel(*, tenant: Tenant, job_id: str | uuid.UUID) -> Job:
    """Cancels a queued or running job: its queued chunks are dropped at once, running chunks
    finish (their vectors are cached) but the job stays cancelled. A finished job is returned as is.
    """
    job = job_get(tenant=tenant, job_id=job_id)
    with transaction.atomic():
        updated = Job.objects.filter(pk=job.pk, status__in=[Job.Status.QUEUED, Job.Status.RUNNING]).update(
            status=Job.Status.CANCELLED, finished_at=timezone.now()
        )
        if updated:
            JobChunk.objects.filter(job=job, status=JobChunk.Status.QUEUED).update(status=JobChunk.Status.CANCELLED)
    job.refresh_from_db()
    if updated:
        job_webhook_enqueue(job)
    return job


def job_webhook_enqueue(job: Job) -> None:
    """Queues the completion webhook, if the job has one, after the transaction commits."""
    if not job.webhook_url:
        return
    transaction.on_commit(lambda: current_app.send_task(JOB_WEBHOOK_TASK, args=[str(job.pk)]))


@dataclass(frozen=True)
class ClaimedChunk:
    id: int
    job_id: str
    tenant_id: int
    model: str
    version: str
    scope: int
    start: int
    texts: list[str]
    lease: str
    attempts: int


_CLAIM = """
WITH candidates AS (
  -- Fair turns: higher tier priority first, then round-robin over jobs (the n-th queued chunk
  -- of every job before the (n+1)-th of any), least recently served job first.
  SELECT c.id, j.priority,
         row_number() OVER (PARTITION BY c.job_id ORDER BY c.seq) AS turn, j.served_at, j.created_at, c.seq
  FROM embeddings_jobchunk c JOIN embeddings_job j ON j.id = c.job_id
  WHERE c.status = 'queued' AND j.status IN ('queued', 'running')
    AND (j.model, j.model_version) IN (SELECT * FROM unnest(%s::text[], %s::text[]))
  ORDER BY j.priority DESC, turn, j.served_at ASC NULLS FIRST, j.created_at, c.seq
  LIMIT %s
), next AS (
  -- Several workers may see the same candidates: each locks what the others have not.
  SELECT c.id FROM embeddings_jobchunk c JOIN candidates USING (id)
  WHERE c.status = 'queued'
  ORDER BY candidates.priority DESC, candidates.turn, candidates.served_at ASC NULLS FIRST, candidates.created_at,
           candidates.seq
  LIMIT %s FOR UPDATE OF c SKIP LOCKED
), claimed AS (
  UPDATE embeddings_jobchunk c
  SET status = 'running', attempts = c.attempts + 1, lease = %s, lease_until = now() + make_interval(secs => %s)
  FROM next WHERE c.id = next.id
  RETURNING c.id, c.job_id, c.start, c.texts, c.attempts
), touched AS (
  UPDATE embeddings_job j
  SET served_at = clock_timestamp(), status = CASE WHEN j.status = 'queued' THEN 'running' ELSE j.status END,
      started_at = COALESCE(j.started_at, now())
  WHERE j.id IN (SELECT job_id FROM claimed)
  RETURNING j.id, j.tenant_id, j.model, j.model_version, j.scope
)
SELECT claimed.id, claimed.job_id, touched.tenant_id, touched.model, touched.model_version, touched.scope,
       claimed.start, claimed.texts, claimed.attempts
FROM claimed JOIN touched ON touched.id = claimed.job_id
ORDER BY claimed.job_id, claimed.start
"""


def job_chunks_claim(*, models: list[tuple[str, str]], lease_seconds: float, limit: int = 1,
                     owner: str = "") -> list[ClaimedChunk]:
    """Claims up to `limit` queued chunks for `models` ((name, version) pairs), possibly none.

    Fair turns: higher tier priority first, then the chunks of concurrent jobs (and tenants)
    interleave instead of one job running to its end. Each claim has its own lease token,
    which names `owner` (the drain loop's liveness token, then its name for operators: see
    lease_owner and job_orphans_requeue).
    """
    lease = f"{uuid.uuid4().hex[:8]}@{owner}"[:32] if owner else uuid.uuid4().hex
    try:
        with transaction.atomic(), connection.cursor() as cur:
            cur.execute("SET LOCAL synchronous_commit TO OFF")  # a claim lost to a crash leaves the chunk queued
            # A poll never queues behind a table lock (DDL, TRUNCATE, VACUUM FULL): it gives up and
            # the next poll tries again. Waiting could also close a cycle with a statement that locks
            # the job tables in the other order (a TRUNCATE of both did: "deadlock detected").
            cur.execute("SET LOCAL lock_timeout TO '500ms'")
            cur.execute(_CLAIM, [[m for m, _ in models], [v for _, v in models], limit * 4, limit, lease, lease_seconds])
            rows = cur.fetchall()
    except OperationalError as exc:
        if isinstance(exc.__cause__, psycopg_errors.LockNotAvailable):
            return []
        raise
    return [
        ClaimedChunk(id=r[0], job_id=str(r[1]), tenant_id=r[2], model=r[3], version=r[4], scope=r[5], start=r[6],
                     texts=texts_loads(r[7]), lease=lease, attempts=r[8])
        for r in rows
    ]


_COMPLETE_JOB = """
UPDATE embeddings_job SET done = done + %s, cached = cached + %s,
  status = CASE WHEN status = 'running' AND done + %s >= total THEN 'succeeded' ELSE status END,
  finished_at = CASE WHEN status = 'running' AND done + %s >= total THEN now() ELSE finished_at END
WHERE id = %s RETURNING status, done >= total AND done - %s < total
"""


def job_chunk_complete(*, chunk: ClaimedChunk, cached: list[bool], tokens: int, compute_ms: float) -> bool:
    """Marks a claimed chunk done and moves the job's progress, once: a worker whose lease was
    taken over (it was slow or presumed dead) changes nothing and gets False.

    Call it after the chunk's vectors are stored. Records the texts in the tenant's usage.
    """
    n, hits = len(chunk.texts), sum(cached)
    with transaction.atomic():
        updated = JobChunk.objects.filter(pk=chunk.id, status=JobChunk.Status.RUNNING, lease=chunk.lease).update(
            status=JobChunk.Status.DONE, lease_until=None, cached_flags="".join("1" if c else "0" for c in cached)
        )
        if not updated:
            return False
        with connection.cursor() as cur:
            cur.execute(_COMPLETE_JOB, [n, hits, n, n, chunk.job_id, n])
            status, finished_now = cur.fetchone()
        if status == Job.Status.SUCCEEDED and finished_now:  # this chunk finished it: one webhook
            job_webhook_enqueue(Job.objects.get(pk=chunk.job_id))
    usage_record(tenant_id=chunk.tenant_id, model=chunk.model, cache_hits=hits, cache_misses=n - hits, tokens=tokens,
                 compute_ms=compute_ms)
    return True


def job_chunk_release(*, chunk: ClaimedChunk, error: str, counts: bool = True) -> None:
    """Gives a chunk back after a failure: re-queued, or (after JOB_MAX_ATTEMPTS claims) the job fails.

    `counts=False` is for a failure that was not the chunk's (the database or Redis went away
    mid-pass): the chunk is re-queued and its claim is not counted against its attempts.
    """
    with transaction.atomic():
        owned = JobChunk.objects.filter(pk=chunk.id, status=JobChunk.Status.RUNNING, lease=chunk.lease)
        if not counts:
            owned.update(status=JobChunk.Status.QUEUED, lease="", lease_until=None, attempts=F("attempts") - 1)
        elif chunk.attempts < settings.JOB_MAX_ATTEMPTS:
            owned.update(status=JobChunk.Status.QUEUED, lease="", lease_until=None)
        elif owned.update(status=JobChunk.Status.CANCELLED, lease_until=None):
            last = chunk.start + len(chunk.texts) - 1
            _job_fail(job_id=chunk.job_id, error=f"texts {chunk.start}..{last} failed {chunk.attempts} times: {error}")


def _job_fail(*, job_id: uuid.UUID | str, error: str) -> None:
    """Fails a queued or running job (inside the caller's transaction): its queued chunks are dropped
    and its webhook, if any, goes out once."""
    failed = Job.objects.filter(pk=job_id, status__in=[Job.Status.QUEUED, Job.Status.RUNNING]).update(
        status=Job.Status.FAILED, finished_at=timezone.now(), error=error[:2000]
    )
    JobChunk.objects.filter(job_id=job_id, status=JobChunk.Status.QUEUED).update(status=JobChunk.Status.CANCELLED)
    if failed:
        job_webhook_enqueue(Job.objects.get(pk=job_id))


def lease_owner(lease: str) -> str:
    """The liveness token of the drain loop that holds a lease ("<claim>@<token>:<name>"), or ""."""
    _, at, owner = lease.partition("@")
    return owner.partition(":")[0] if at else ""


def _chunks_requeue(stale: list[tuple[int, int, str, int, str]], *, why: str) -> int:
    """Re-queues running chunks (id, attempts, job_id, start, lease), each only while it still has
    that lease; a chunk that used up JOB_MAX_ATTEMPTS fails its job instead. Returns the re-queued count."""
    requeued = 0
    with transaction.atomic():
        for cid, attempts, job_id, start, lease in stale:
            held = JobChunk.objects.filter(pk=cid, status=JobChunk.Status.RUNNING, lease=lease)
            if attempts < settings.JOB_MAX_ATTEMPTS:
                requeued += held.update(status=JobChunk.Status.QUEUED, lease="", lease_until=None)
            elif held.update(status=JobChunk.Status.CANCELLED, lease_until=None):
                _job_fail(job_id=job_id, error=f"the chunk at text {start} was claimed {attempts} times and {why} "
                                               "each time")
    return requeued


def job_orphans_requeue(*, alive: Callable[[list[str]], set[str]]) -> int:
    """Re-queues running chunks whose drain loop is gone (killed, OOM, machine lost) at once,
    instead of after their lease runs out: `alive(tokens)` returns the tokens (lease_owner) of the
    loops that still beat. Run by every drain loop every few seconds and by job_sweep.
    Returns the number of chunks re-queued."""
    running = list(
        JobChunk.objects.filter(status=JobChunk.Status.RUNNING)
        .exclude(lease="")
        .values_list("id", "attempts", "job_id", "start", "lease")
    )
    tokens = {lease_owner(row[4]) for row in running} - {""}
    if not tokens:
        return 0
    live = alive(sorted(tokens))
    orphans = [row for row in running if lease_owner(row[4]) and lease_owner(row[4]) not in live]
    if not orphans:
        return 0
    requeued = _chunks_requeue(orphans, why="its worker died")
    if requeued:
        logger.warning("re-queued %d job chunks whose worker stopped beating", requeued)
        jobs_signal({m for m in Job.objects.filter(pk__in={r[2] for r in orphans}).values_list("model", flat=True)})
    return requeued


def job_sweep() -> int:
    """Re-queues chunks whose worker is gone (its heartbeat stopped: job_orphans_requeue) or whose
    lease ran out (a worker that hung), fails the jobs of chunks that used up JOB_MAX_ATTEMPTS, and
    pokes the workers of every model with unfinished jobs. Returns the number of chunks re-queued.
    Run periodically by celery beat (workers.job_sweep)."""
    requeued = job_orphans_requeue(alive=owners_alive)
    stale = list(
        JobChunk.objects.filter(status=JobChunk.Status.RUNNING, lease_until__lt=Now())
        .values_list("id", "attempts", "job_id", "start", "lease")
    )
    requeued += _chunks_requeue(stale, why="its worker stopped answering")
    models = set(Job.objects.filter(status__in=[Job.Status.QUEUED, Job.Status.RUNNING]).values_list("model", flat=True))
    if models:
        jobs_signal(models)
    return requeued
