"""The provider worker's call: one request's cache misses through the tenant's provider (texts to
embed, or, for a rerank provider, query-document pairs to score: one upstream call per query).

Run by the `workers.provider_embed` task (workers/tasks.py) on the provider queue; sent by
providers.dispatch.ProviderDispatch.
"""

from __future__ import annotations

import logging
import time

from django.conf import settings
from django.db import close_old_connections

from accounts.quotas import provider_slot_acquire, provider_slot_release
from dispatch.frames import reply_failure, reply_ok, reply_send
from embeddings.cache import cache_upsert
from embedplatform.errors import ApiError, NotFound
from providers.clients import embed_call, rerank_pairs_call, upstream_for
from providers.dispatch import provider_cache_version
from providers.errors import PROVIDER_NOT_FOUND, ProviderError
from providers.models import ProviderConfig
from providers.presets import RERANK

logger = logging.getLogger(__name__)


def provider_embed_run(*, provider_id: int, model: str, texts: list[str], keys: list[str], reply_id: str,
                       deadline: float) -> bool:
    """Worker side of providers.dispatch.ProviderDispatch: call the upstream, store, then answer the waiter.

    Always answers (vectors or an error frame) unless the waiter is already gone. Store
    first, then wake (docs/DECISIONS.md #2); the upsert is idempotent, so a redelivered
    message writes nothing twice. The call holds one of its tenant's provider-worker slots
    (tier.max_sync_in_flight, accounts.quotas.provider_slot_acquire): when they are all taken
    (its earlier calls still run, e.g. on a slow upstream) it returns False at once, without
    calling, and the task comes back shortly; True otherwise.
    """
    close_old_connections()
    try:
        if time.time() >= deadline:
            logger.info("provider call for %s dropped: its request gave up waiting", reply_id)
            return True
        try:
            provider = ProviderConfig.objects.select_related("tenant__tier").get(pk=provider_id)
            # A call may outlive its deadline by about two attempt timeouts (connect, then read):
            # past that, a slot left by a killed worker is free again.
            if not provider_slot_acquire(tenant=provider.tenant, member=reply_id,
                                         until=deadline + 2 * settings.PROVIDER_TIMEOUT_SECONDS):
                return False
            try:
                call = rerank_pairs_call if provider.kind == RERANK else embed_call  # scores float32[n, 1], or vectors
                vectors, tokens = call(upstream_for(provider), model=model, texts=texts, deadline=deadline)
            finally:
                provider_slot_release(tenant_id=provider.tenant_id, member=reply_id)
        except ProviderConfig.DoesNotExist:
            payload = reply_failure(NotFound(PROVIDER_NOT_FOUND.format(name=provider_id)))
        except ApiError as exc:
            payload = reply_failure(exc)
        except Exception:
            logger.exception("provider call %s failed unexpectedly", provider_id)
            payload = reply_failure(ProviderError("The provider call failed inside the platform; retry shortly."))
        else:
            try:
                cache_upsert(
                    model=f"{provider.name}/{model}", version=provider_cache_version(provider), scope=provider.tenant_id,
                    rows=[(bytes.fromhex(k), t, v) for k, t, v in zip(keys, tokens, vectors, strict=True)],
                    capped=True,  # a full tenant cache is served, not stored (embeddings/cachecap.py)
                )
            except Exception:
                logger.exception("cache upsert of %d provider vectors failed", len(keys))
            payload = reply_ok(tokens, vectors)
        reply_send(reply_id, payload)
        return True
    finally:
        close_old_connections()
