"""Embedding business logic: resolve the model, read the cache, send misses, assemble.

`embed_serve` (embed_plan, then the admission, then embed_finish) is the one path every sync
endpoint uses. It never writes to the database itself: hits are read in one query (or from
the process's hot tier), misses go to the workers, which write them.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from django.conf import settings
from django.db import OperationalError, connection, transaction
from django.db.models import F
from django.db.models.functions import Now
from django.utils import timezone
from psycopg import errors as psycopg_errors

from accounts.models import Tenant
from accounts.quotas import (
    Caller,
    QuotaState,
    RateState,
    admit,
    batch_size_check,
    inflight_for,
    inflight_release,
    quota_consume,
    quota_refund,
)
from accounts.services import usage_hits, usage_record
from embeddings import cache, cachecap, retention, waiting
from embeddings.encoding import vectors_shape
from embeddings.models import Job, JobChunk, texts_loads
from embeddings.registry import ModelSpec, model_get
from embeddings.selectors import job_get
from embeddings.tokencount import token_counts
from embedplatform import metrics
from embedplatform.errors import (
    DIMENSIONS_OUT_OF_RANGE,
    INPUT_TOO_LONG,
    MODEL_NOT_ALLOWED,
    MODEL_UNKNOWN,
    SERVER_COMPUTE_REFUSED,
    WAIT_TIMED_OUT,
    InvalidInput,
    NotAllowed,
    NotFound,
    PayloadTooLarge,
    WaitTimeout,
)
from providers.ssrf import EndpointRefused, endpoint_check

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbedOptions:
    model: str
    normalize: bool | None = None
    dimensions: int | None = None
    truncate: bool = True
    input_type: str | None = None
    public: bool = False


@dataclass(frozen=True)
class EmbedResult:
    model: ModelSpec
    vectors: np.ndarray  # (n, dims) float32, options applied
    cached: list[bool]
    tokens: list[int]

    @property
    def total_tokens(self) -> int:
        return int(sum(self.tokens))


def model_resolve(*, tenant: Tenant, model: str) -> ModelSpec:
    """The served model `model` if this tenant may use it: NotFound / NotAllowed otherwise.

    `<provider name>/<upstream model>` names one of the tenant's BYOK providers (providers/),
    which every tier may use: its spec has compute="byok".
    """
    if "/" in model:
        from providers.services import provider_model_resolve

        return provider_model_resolve(tenant=tenant, model=model)
    spec = model_get(model)
    if spec is None:
        raise NotFound(MODEL_UNKNOWN.format(model=model), param="model", code="model_not_found")
    tier = tenant.tier
    if not tier.server_compute:
        raise NotAllowed(SERVER_COMPUTE_REFUSED.format(tier=tier.name, model=model), param="model")
    if not tier.allows_model(model):
        raise NotAllowed(MODEL_NOT_ALLOWED.format(model=model, tier=tier.name), param="model")
    return spec


def _check_lengths(spec: ModelSpec, inputs: list[str]) -> None:
    counts = token_counts(spec, inputs)
    if counts is None:
        return
    for index, n in enumerate(counts):
        if n > spec.max_tokens:
            raise InvalidInput(
                INPUT_TOO_LONG.format(index=index, tokens=n, max=spec.max_tokens, model=spec.name),
                param="input", code="context_length_exceeded",
            )




@dataclass(frozen=True)
class EmbedPlan:
    """A request resolved and looked up: what is cached, what the workers must compute."""

    spec: ModelSpec
    options: EmbedOptions
    inputs: list[str]  # the texts as the model sees them (prompt + text)
    keys: list[bytes]  # one per input
    unique: dict[bytes, int]  # key -> first input index
    scope: int
    hits: dict[bytes, cache.Hit]
    missing: list[bytes]

    @cached_property  # read by the admission's usage and by the work item
    def hit_count(self) -> int:
        """Inputs (duplicates included) answered from the cache."""
        return sum(1 for k in self.keys if k in self.hits)

    @property
    def hit_tokens(self) -> int:
        return sum(int(self.hits[k].tokens) for k in self.keys if k in self.hits)


def _work_item(plan: EmbedPlan, *, tenant: Tenant, wait: float) -> waiting.WorkItem | None:
    """The work item for the misses of `plan` on the platform's workers (None: nothing to compute,
    or a provider model). The workers count the misses' usage, duplicates included."""
    if not plan.missing or plan.spec.compute != "local":
        return None
    counts = None
    if len(plan.missing) < len(plan.keys) - plan.hit_count:  # some missing text comes more than once
        times: dict[bytes, int] = {}
        for key in plan.keys:
            times[key] = times.get(key, 0) + 1
        counts = [times[k] for k in plan.missing]
    return waiting.work_item(model=plan.spec.name, texts=[plan.inputs[plan.unique[k]] for k in plan.missing],
                             keys=plan.missing, scope=plan.scope, wait=wait, tenant=tenant.pk, counts=counts)


def embed_plan(*, tenant: Tenant, texts: list[str], options: EmbedOptions) -> EmbedPlan:
    """Resolves the model, checks the options and looks every text up in the cache (one query at
    most). Raises NotFound (unknown model), NotAllowed (tier) and InvalidInput (bad dimensions,
    over-long text with truncate=false)."""
    spec = model_resolve(tenant=tenant, model=options.model)
    if options.dimensions is not None and not 1 <= options.dimensions <= spec.dims:
        raise InvalidInput(
            DIMENSIONS_OUT_OF_RANGE.format(max=spec.dims, model=spec.name, got=options.dimensions), param="dimensions"
        )
    prompt = spec.prompt(options.input_type)
    inputs = [prompt + t for t in texts] if prompt else texts
    if not options.truncate:
        _check_lengths(spec, inputs)

    key_prefix = spec.key_prefix(options.input_type)  # a provider's: input_type (DECISIONS #3)
    keys = [cache.text_key(key_prefix + t) for t in inputs]
    unique: dict[bytes, int] = {}
    for i, key in enumerate(keys):
        unique.setdefault(key, i)
    scope = cache.PUBLIC_SCOPE if options.public else tenant.pk
    scopes = [cache.PUBLIC_SCOPE] if options.public else [tenant.pk, cache.PUBLIC_SCOPE]
    hits = cache.cache_lookup_served(model=spec.name, version=spec.version, keys=list(unique), scopes=scopes)
    # A provider model's name is the tenant's choice: one "byok" label keeps the series bounded.
    label = spec.name if spec.compute == "local" else "byok"
    metrics.cache_observe(model=label, public=options.public, hits=len(hits), misses=len(unique) - len(hits))
    return EmbedPlan(spec=spec, options=options, inputs=inputs, keys=keys, unique=unique, scope=scope, hits=hits,
                     missing=[k for k in unique if k not in hits])


def embed_finish(plan: EmbedPlan, *, wait: float, item: waiting.WorkItem | None) -> EmbedResult:
    """Has the workers compute what the cache lacks, then assembles the vectors in input order;
    duplicates are computed once. `item`: the work item of the misses on the platform's models,
    already queued by the admission (embed_serve); a provider model's misses are sent from here.
    Raises Overloaded (no provider worker) and WaitTimeout."""
    spec, keys = plan.spec, plan.keys
    found: dict[bytes, tuple[np.ndarray, int]] = {k: (h.vector, h.tokens) for k, h in plan.hits.items()}
    if plan.missing:
        missing = plan.missing
        if spec.compute == "byok":  # the tenant's provider, through the provider queue
            from providers.services import provider_submit

            texts = [plan.inputs[plan.unique[k]] for k in missing]
            item = provider_submit(spec=spec, texts=texts, keys=missing, scope=plan.scope, wait=wait)
            tokens, vectors = waiting.work_wait(item, wait=wait, dims=None)
        else:
            tokens, vectors = waiting.work_wait(item, wait=wait, dims=spec.dims)
        cache.hot_remember(model=spec.name, version=spec.version, scope=plan.scope, keys=missing, tokens=tokens,
                           vectors=vectors)
        for j, key in enumerate(missing):
            found[key] = (vectors[j], int(tokens[j]))

    dims = len(found[keys[0]][0]) if keys else spec.dims  # a provider's dims are known from its vectors
    raw = np.empty((len(keys), dims), dtype=np.float32)
    token_list = []
    for i, key in enumerate(keys):
        vector, n = found[key]
        raw[i] = vector
        token_list.append(n)
    options = plan.options
    normalize = spec.normalize if options.normalize is None else options.normalize
    return EmbedResult(
        model=spec,
        vectors=vectors_shape(raw, dimensions=options.dimensions, normalize=normalize),
        cached=[key in plan.hits for key in keys],
        tokens=token_list,
    )


def embed_serve(*, tenant: Tenant, texts: list[str], options: EmbedOptions, wait: float, caller: Caller,
                job_fallback: bool = False) -> tuple[EmbedResult | Job, QuotaState, RateState]:
    """Embeds `texts` for `tenant` within its limits: the data plane's one entry point.

    Checks the tier's max_batch_size (PayloadTooLarge) and the request (embed_plan), then
    admits it in one Redis round trip (accounts/quotas.admit: the caller's auth epoch, its
    tenant's requests per minute, its sync requests in flight when this one has misses to wait
    for, every text against the daily and monthly quotas all-or-nothing, the hits' usage and
    per-entry hit stats). Raises AuthEpochMoved, CacheEpochMoved (plan again: the process's
    copies of the tenant's cache scope are stale), RateLimited (code too_many_in_flight past
    tier.max_sync_in_flight) or QuotaExceeded from there. A request
    that then fails is refunded; the misses' usage is recorded once computed (for the platform's
    models by the worker that computed them, in the round trip of its reply). With
    `job_fallback`, work not done within `wait` becomes a Job (returned instead of the result)
    rather than a WaitTimeout; its texts stay counted once. `wait` 0 with `job_fallback` means
    "do not wait": unless every text is a cache hit, the texts go to a Job at once, and nothing
    is queued for a sync wait.
    """
    batch_size_check(tier=tenant.tier, texts=len(texts))
    epoch = cache.scope_epoch_known(tenant.pk)  # before the lookup: what its in-memory hits were valid under
    plan = embed_plan(tenant=tenant, texts=texts, options=options)
    hits = usage_hits(tenant_id=tenant.pk, model=plan.spec.name, hits=plan.hit_count, tokens=plan.hit_tokens)
    use = retention.cache_use(scope=tenant.pk, epoch=epoch, model=plan.spec.name, version=plan.spec.version,
                              hits=[(h.scope, k) for k, h in plan.hits.items()])  # hit stats, epoch check
    at_once = job_fallback and wait <= 0 and bool(plan.missing)  # wait 0: a job at once, no sync work
    item = None if at_once else _work_item(plan, tenant=tenant, wait=wait)  # queued by the admission, if admitted
    # A request that will wait (misses, on the platform's workers or the tenant's provider) holds a
    # web thread: the admission bounds how many of the tenant's are in flight (tier.max_sync_in_flight).
    inflight = (inflight_for(tenant=tenant, wait=wait, member=item.id if item else uuid.uuid4().hex)
                if plan.missing and not at_once else None)
    quota, rate = admit(tenant=tenant, texts=len(texts), caller=caller, usage=hits,
                        work=waiting.work_push(item) if item is not None else None, cache=use, inflight=inflight)
    answered = False
    try:
        served = _serve_admitted(plan, tenant=tenant, texts=texts, options=options, wait=wait, item=item,
                                 at_once=at_once, job_fallback=job_fallback, quota=quota, rate=rate, hits=hits,
                                 use=use)
        # The drain loop that answered a work item ended its in-flight entry in the reply's round trip.
        answered = item is not None and isinstance(served[0], EmbedResult)
        return served
    finally:
        if not answered:
            inflight_release(inflight)  # the wait is over, whatever its end


def _serve_admitted(plan: EmbedPlan, *, tenant: Tenant, texts: list[str], options: EmbedOptions, wait: float,
                    item: waiting.WorkItem | None, at_once: bool, job_fallback: bool, quota: QuotaState,
                    rate: RateState, hits, use) -> tuple[EmbedResult | Job, QuotaState, RateState]:
    """embed_serve once admitted: waits for the misses, falls back to a job or refunds."""
    cache.scope_epoch_learn(tenant.pk, use.seen)
    try:
        if at_once:
            raise WaitTimeout(WAIT_TIMED_OUT.format(seconds=wait))  # the job fallback below, without waiting
        result = embed_finish(plan, wait=wait, item=item)
    except WaitTimeout:
        if job_fallback:
            try:
                job = job_create(tenant=tenant, texts=texts, options=options, count_quota=False)
            except BaseException:
                quota_refund(tenant=tenant, texts=len(texts), state=quota, usage=hits)
                raise
            quota_refund(tenant=tenant, texts=len(texts), state=quota, usage=hits, quota=False)  # the job counts them
            return job, quota, rate
        quota_refund(tenant=tenant, texts=len(texts), state=quota, usage=hits)
        raise
    except BaseException:
        quota_refund(tenant=tenant, texts=len(texts), state=quota, usage=hits)
        raise
    if plan.missing and plan.spec.compute == "byok":  # the platform's workers count their own misses
        usage_record(tenant_id=tenant.pk, model=result.model.name, cache_misses=len(texts) - hits.hits,
                     tokens=result.total_tokens - hits.tokens)
    return result, quota, rate


# --- Jobs --------------------------------------------------------------------------------
# A job's texts are cut into JobChunk rows of JOB_CHUNK_TEXTS; embedding workers claim chunks
# from Postgres (SKIP LOCKED, a lease per claim) whenever no interactive request waits, so the
# broker never holds bulk work and a 202-accepted job survives a broker flush or a killed
# worker (the sweeper re-queues chunks whose lease ran out). See docs/DECISIONS.md.

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
    if spec.compute != "local":
        raise InvalidInput(JOB_BYOK_REFUSED.format(model=options.model), param="model")
    tier = tenant.tier
    limit = min(tier.max_job_texts, settings.JOB_MAX_TEXTS)
    if len(texts) > limit:
        raise PayloadTooLarge(JOB_TEXTS_TOO_MANY.format(texts=len(texts), tier=tier.name, limit=limit),
                              param="texts", code="job_too_large")
    if options.dimensions is not None and not 1 <= options.dimensions <= spec.dims:
        raise InvalidInput(
            DIMENSIONS_OUT_OF_RANGE.format(max=spec.dims, model=spec.name, got=options.dimensions), param="dimensions"
        )
    if webhook_url:
        try:
            endpoint_check(webhook_url)
        except EndpointRefused as exc:
            raise InvalidInput(WEBHOOK_REFUSED.format(why=exc), param="webhook_url") from None
    if not options.public:
        cachecap.cache_cap_check(tenant=tenant)  # its results are read back from the cache: none if it is full
    prompt = spec.prompt(options.input_type)
    inputs = [prompt + t for t in texts] if prompt else list(texts)
    if not options.truncate:
        _check_lengths(spec, inputs)
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
            transaction.on_commit(lambda: waiting.jobs_signal([spec.name]))
    except BaseException:
        if quota is not None:
            quota_refund(tenant=tenant, texts=len(texts), state=quota)
        raise
    return job


def job_cancel(*, tenant: Tenant, job_id) -> Job:
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


def job_webhook_enqueue(job) -> None:
    """Queues the completion webhook, if the job has one, after the transaction commits."""
    if not job.webhook_url:
        return

    from workers.tasks import job_webhook as job_webhook_task

    transaction.on_commit(lambda: job_webhook_task.delay(str(job.pk)))


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


def job_chunk_claim(*, models: list[tuple[str, str]], lease_seconds: float) -> ClaimedChunk | None:
    """One chunk (see job_chunks_claim), or None."""
    chunks = job_chunks_claim(models=models, lease_seconds=lease_seconds, limit=1)
    return chunks[0] if chunks else None


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


def _job_fail(*, job_id, error: str) -> None:
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
        waiting.jobs_signal({m for m in Job.objects.filter(pk__in={r[2] for r in orphans}).values_list("model", flat=True)})
    return requeued


def job_sweep() -> int:
    """Re-queues chunks whose worker is gone (its heartbeat stopped: job_orphans_requeue) or whose
    lease ran out (a worker that hung), fails the jobs of chunks that used up JOB_MAX_ATTEMPTS, and
    pokes the workers of every model with unfinished jobs. Returns the number of chunks re-queued.
    Run periodically by celery beat (workers.job_sweep)."""
    requeued = job_orphans_requeue(alive=waiting.owners_alive)
    stale = list(
        JobChunk.objects.filter(status=JobChunk.Status.RUNNING, lease_until__lt=Now())
        .values_list("id", "attempts", "job_id", "start", "lease")
    )
    requeued += _chunks_requeue(stale, why="its worker stopped answering")
    models = set(Job.objects.filter(status__in=[Job.Status.QUEUED, Job.Status.RUNNING]).values_list("model", flat=True))
    if models:
        waiting.jobs_signal(models)
    return requeued


# --- Seeding ---------------------------------------------------------------------------------

@dataclass
class SeedProgress:
    seen: int = 0
    stored: int = 0
    cached: int = 0


def cache_seed(*, texts, spec: ModelSpec, runtime, scope: int = cache.PUBLIC_SCOPE, batch_size: int = 256,
               input_type: str | None = None, on_batch=None) -> SeedProgress:
    """Pre-computes `texts` (any iterable, read batch by batch) into the cache under `scope`
    (default: the public scope every tenant reads). Texts already cached are skipped, so a
    re-run is cheap; `on_batch(progress)` is called after every batch.
    """
    progress = SeedProgress()
    prompt = spec.prompt(input_type)
    batch: list[str] = []

    def flush() -> None:
        inputs = list(dict.fromkeys(prompt + t for t in batch))  # unique, in order
        keys = [cache.text_key(t) for t in inputs]
        scopes = [scope] if scope == cache.PUBLIC_SCOPE else [scope, cache.PUBLIC_SCOPE]
        hits = cache.cache_lookup(model=spec.name, version=spec.version, keys=keys, scopes=scopes)
        todo = [(k, t) for k, t in zip(keys, inputs, strict=True) if k not in hits]
        if todo:
            tokens, vectors = runtime.encode([t for _, t in todo], max_texts=settings.MAX_BATCH_TEXTS,
                                             max_tokens=settings.MAX_BATCH_TOKENS)
            progress.stored += cache.cache_upsert(model=spec.name, version=spec.version, scope=scope,
                                                  rows=[(k, tokens[i], vectors[i]) for i, (k, _) in enumerate(todo)])
        progress.seen += len(batch)
        progress.cached += len(inputs) - len(todo)
        batch.clear()
        if on_batch is not None:
            on_batch(progress)

    for text in texts:
        batch.append(text)
        if len(batch) >= batch_size:
            flush()
    if batch:
        flush()
    return progress
