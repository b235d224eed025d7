"""The sync embedding path: resolve, read the cache, hand the misses to the model's dispatcher,
assemble.

`embed_serve` (embed_plan, then the admission, then embed_finish) is the one path every sync
endpoint uses. It never writes to the database itself: hits are read in one query (or from
the process's hot tier), misses go to the model's dispatcher (dispatch/base.py), whose compute
side stores them. Where a model runs is the dispatcher's business, not this module's.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from accounts.models import Tenant
from accounts.quotas import (
    CacheUse,
    Caller,
    QuotaState,
    RateState,
    UsageHits,
    admit,
    batch_size_check,
    inflight_for,
    inflight_release,
    quota_refund,
)
from accounts.services import usage_hits, usage_record
from dispatch.base import Handle, ServedModel
from embeddings import cache, retention
from embeddings.encoding import vectors_shape
from embeddings.inputs import EmbedOptions, model_inputs, model_resolve
from embeddings.jobs import job_create
from embeddings.models import Job
from embedplatform import metrics
from embedplatform.errors import WAIT_TIMED_OUT, WaitTimeout

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbedResult:
    model: ServedModel
    vectors: np.ndarray  # (n, dims) float32, options applied
    cached: list[bool]
    tokens: list[int]

    @property
    def total_tokens(self) -> int:
        return int(sum(self.tokens))


@dataclass(frozen=True)
class EmbedPlan:
    """A request resolved and looked up: what is cached, what the compute side must embed."""

    spec: ServedModel
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


def _submit(plan: EmbedPlan, *, tenant: Tenant, wait: float) -> Handle:
    """The misses of `plan` submitted to the model's dispatcher (nothing sent yet). Where the
    compute side counts usage, `counts` says how many inputs each missing text stands for."""
    counts = None
    if len(plan.missing) < len(plan.keys) - plan.hit_count:  # some missing text comes more than once
        times: dict[bytes, int] = {}
        for key in plan.keys:
            times[key] = times.get(key, 0) + 1
        counts = [times[k] for k in plan.missing]
    return plan.spec.dispatcher.submit(
        model=plan.spec, texts=[plan.inputs[plan.unique[k]] for k in plan.missing], keys=plan.missing,
        scope=plan.scope, wait=wait, tenant=tenant.pk, counts=counts,
    )


def embed_plan(*, tenant: Tenant, texts: list[str], options: EmbedOptions) -> EmbedPlan:
    """Resolves the model, checks the options and looks every text up in the cache (one query at
    most). Raises NotFound (unknown model), NotAllowed (tier) and InvalidInput (bad dimensions,
    over-long text with truncate=false)."""
    spec = model_resolve(tenant=tenant, model=options.model, kind=options.kind)
    inputs = model_inputs(spec, texts, options)
    key_prefix = spec.key_prefix(options.input_type)  # a provider's: input_type (DECISIONS #3)
    keys = [cache.text_key(key_prefix + t) for t in inputs]
    unique: dict[bytes, int] = {}
    for i, key in enumerate(keys):
        unique.setdefault(key, i)
    scope = cache.PUBLIC_SCOPE if options.public else tenant.pk
    hits = cache.cache_lookup_served(model=spec.name, version=spec.version, keys=list(unique),
                                     scopes=cache.read_scopes(scope))
    metrics.cache_observe(model=spec.metrics_label, public=options.public, hits=len(hits),
                          misses=len(unique) - len(hits))
    return EmbedPlan(spec=spec, options=options, inputs=inputs, keys=keys, unique=unique, scope=scope, hits=hits,
                     missing=[k for k in unique if k not in hits])


def embed_finish(plan: EmbedPlan, *, wait: float, handle: Handle | None) -> EmbedResult:
    """Has the compute side embed what the cache lacks (`handle`: the plan's misses, submitted
    and admitted; sent from here unless the admission queued them), then assembles the vectors in
    input order; duplicates are computed once. Raises Overloaded and WaitTimeout."""
    spec, keys = plan.spec, plan.keys
    found: dict[bytes, tuple[np.ndarray, int]] = {k: (h.vector, h.tokens) for k, h in plan.hits.items()}
    if handle is not None:
        missing = plan.missing
        spec.dispatcher.send(handle)
        tokens, vectors = spec.dispatcher.wait(handle, wait=wait)
        cache.hot_remember(model=spec.name, version=spec.version, scope=plan.scope, keys=missing, tokens=tokens,
                           vectors=vectors)
        for j, key in enumerate(missing):
            found[key] = (vectors[j], int(tokens[j]))

    dims = len(found[keys[0]][0]) if keys else (spec.dims or 0)  # a provider's dims come with its vectors
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
                job_fallback: bool = False, batch_limit: bool = True) -> tuple[EmbedResult | Job, QuotaState, RateState]:
    """Embeds `texts` for `tenant` within its limits: the data plane's one entry point.

    Checks the tier's max_batch_size (PayloadTooLarge) and the request (embed_plan), then
    admits it in one Redis round trip (accounts/quotas.admit: the caller's auth epoch, its
    tenant's requests per minute, its sync requests in flight when this one has misses to wait
    for, every text against the daily and monthly quotas all-or-nothing, the hits' usage and
    per-entry hit stats, and the misses' work item where the dispatcher queues through the
    admission). Raises AuthEpochMoved, CacheEpochMoved (plan again: the process's copies of the
    tenant's cache scope are stale), RateLimited (code too_many_in_flight past
    tier.max_sync_in_flight) or QuotaExceeded from there. A request that then fails is refunded;
    the misses' usage is recorded once computed (by the compute side where the dispatcher says
    it counts usage, in the round trip of its reply; here otherwise). With `job_fallback`, work
    not done within `wait` becomes a Job (returned instead of the result) rather than a
    WaitTimeout; its texts stay counted once. `wait` 0 with `job_fallback` means "do not wait":
    unless every text is a cache hit, the texts go to a Job at once, and nothing is sent.
    """
    if batch_limit:  # rerank has its own bound (tier.max_rerank_documents: embeddings/rerank.py)
        batch_size_check(tier=tenant.tier, texts=len(texts))
    epoch = cache.scope_epoch_known(tenant.pk)  # before the lookup: what its in-memory hits were valid under
    plan = embed_plan(tenant=tenant, texts=texts, options=options)
    hits = usage_hits(tenant_id=tenant.pk, model=plan.spec.name, hits=plan.hit_count, tokens=plan.hit_tokens)
    use = retention.cache_use(scope=tenant.pk, epoch=epoch, model=plan.spec.name, version=plan.spec.version,
                              hits=[(h.scope, k) for k, h in plan.hits.items()])  # hit stats, epoch check
    at_once = job_fallback and wait <= 0 and bool(plan.missing)  # wait 0: a job at once, no sync work
    handle = _submit(plan, tenant=tenant, wait=wait) if plan.missing and not at_once else None
    # A request that will wait for its misses holds a web thread: the admission bounds how many
    # of the tenant's are in flight (tier.max_sync_in_flight).
    inflight = (inflight_for(tenant=tenant, wait=wait, member=handle.item.id if handle.push else uuid.uuid4().hex)
                if handle is not None else None)
    quota, rate = admit(tenant=tenant, texts=len(texts), caller=caller, usage=hits,
                        work=handle.push if handle is not None else None, cache=use, inflight=inflight)
    assert rate is not None  # admit() counts a caller's request in its minute window
    if handle is not None and handle.push is not None:
        handle.queued = True  # the admission queued it
    answered = False
    try:
        served = _serve_admitted(plan, tenant=tenant, texts=texts, options=options, wait=wait, handle=handle,
                                 at_once=at_once, job_fallback=job_fallback, quota=quota, rate=rate, hits=hits,
                                 use=use)
        # A drain loop that answered a work item it was handed by the admission ended the
        # request's in-flight entry in the reply's round trip.
        answered = handle is not None and handle.push is not None and isinstance(served[0], EmbedResult)
        return served
    finally:
        if not answered:
            inflight_release(inflight)  # the wait is over, whatever its end


def _serve_admitted(plan: EmbedPlan, *, tenant: Tenant, texts: list[str], options: EmbedOptions, wait: float,
                    handle: Handle | None, at_once: bool, job_fallback: bool, quota: QuotaState,
                    rate: RateState, hits: UsageHits, use: CacheUse) -> tuple[EmbedResult | Job, QuotaState, RateState]:
    """embed_serve once admitted: waits for the misses, falls back to a job or refunds."""
    cache.scope_epoch_learn(tenant.pk, use.seen)
    try:
        if at_once:
            raise WaitTimeout(WAIT_TIMED_OUT.format(seconds=wait))  # the job fallback below, without waiting
        result = embed_finish(plan, wait=wait, handle=handle)
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
    if handle is not None and not plan.spec.dispatcher.counts_usage:
        usage_record(tenant_id=tenant.pk, model=result.model.name, cache_misses=len(texts) - hits.hits,
                     tokens=result.total_tokens - hits.tokens)
    return result, quota, rate
