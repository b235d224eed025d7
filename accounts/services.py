from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import date
from typing import cast

from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.db.models import QuerySet
from django.utils import timezone
from redis.client import Pipeline

from accounts.authcache import auth_epoch_bump
from accounts.keys import key_make
from accounts.models import ApiKey, DailyUsage, Tenant, Tier, User
from accounts.quotas import UsageHits
from accounts.selectors import CacheFigures, UsageSummary, usage_summary
from embedplatform.errors import KEY_LIMIT, Conflict, InvalidInput, NotAllowed, NotFound
from embedplatform.redisconn import dirty_hashes_take, redis_client, redis_lock

logger = logging.getLogger(__name__)

SIGNUP_TIER = "free"
EMAIL_TAKEN = "An account with email {email} already exists; log in with POST /v1/auth/login."


def tenant_create(*, email: str, tier: str, password: str | None = None, tenant_name: str = "") -> tuple[Tenant, User]:
    """Creates a tenant and its first user. Raises InvalidInput for an unknown tier or a taken email."""
    try:
        tier_obj = Tier.objects.get(name=tier)
    except Tier.DoesNotExist:
        names = ", ".join(Tier.objects.order_by("name").values_list("name", flat=True))
        raise InvalidInput(f"Unknown tier `{tier}`; known tiers: {names}.", param="tier") from None
    email = email.strip().lower()
    if User.objects.filter(email=email).exists():
        raise Conflict(EMAIL_TAKEN.format(email=email), param="email", code="email_taken")
    with transaction.atomic():
        tenant = Tenant.objects.create(name=tenant_name or email, tier=tier_obj)
        user = User.objects.create_user(email=email, password=password, tenant=tenant)
    return tenant, user


def api_key_create(*, tenant: Tenant, name: str = "", created_by: User | None = None) -> tuple[ApiKey, str]:
    """Creates a key and returns (row, clear key). The clear key exists only in this return value.

    Raises NotAllowed (403 key_limit) when the tenant already has its tier's max_keys active
    (unrevoked) keys. The tenant row is locked while counting, so concurrent calls cannot overshoot.
    """
    new = key_make()
    with transaction.atomic():
        locked = Tenant.objects.select_for_update(of=("self",)).select_related("tier").get(pk=tenant.pk)
        active = ApiKey.objects.filter(tenant=locked, revoked_at__isnull=True).count()
        if active >= locked.tier.max_keys:
            raise NotAllowed(KEY_LIMIT.format(tier=locked.tier.name, limit=locked.tier.max_keys, active=active),
                             code="key_limit")
        key = ApiKey.objects.create(tenant=locked, name=name, prefix=new.prefix, key_hash=new.key_hash,
                                    created_by=created_by)
    return key, new.key


def api_key_revoke(*, tenant: Tenant, prefix: str) -> ApiKey:
    """Revokes one of the tenant's keys; another tenant's prefix is NotFound."""
    updated = ApiKey.objects.filter(tenant=tenant, prefix=prefix, revoked_at__isnull=True).update(revoked_at=timezone.now())
    if updated:
        auth_epoch_bump()  # every web process drops its cached copy: the next request fails
    key = ApiKey.objects.filter(tenant=tenant, prefix=prefix).first()
    if key is None or (not updated and key.revoked_at is None):
        raise NotFound(f"No API key with prefix {prefix}.", param="prefix")
    return key


def tenant_signup(*, email: str, password: str, tenant_name: str = "") -> tuple[Tenant, User, str]:
    """Self-service sign-up: a tenant on the free tier, its user and a first API key (clear, shown once).

    Raises InvalidInput when Django's password validators refuse the password and Conflict
    (409) when the email is taken.
    """
    email = email.strip().lower()
    try:
        validate_password(password, user=User(email=email))
    except ValidationError as exc:
        raise InvalidInput(" ".join(exc.messages), param="password", code="weak_password") from None
    with transaction.atomic():
        tenant, user = tenant_create(email=email, tier=SIGNUP_TIER, password=password, tenant_name=tenant_name)
        _key, clear = api_key_create(tenant=tenant, name="default", created_by=user)
    return tenant, user, clear


def tenants_suspend(*, tenants: QuerySet[Tenant]) -> int:
    """Suspends the tenants (the admin's bulk action): their API keys and JWTs fail on their next
    request in every web process. Returns how many were active. Accepted jobs are not cancelled."""
    count = tenants.filter(is_active=True).update(is_active=False)
    auth_epoch_bump()  # .update() sends no post_save (accounts/signals.py)
    return count


def tenants_reactivate(*, tenants: QuerySet[Tenant]) -> int:
    """Lifts a suspension; returns how many were suspended."""
    count = tenants.filter(is_active=False).update(is_active=True)
    auth_epoch_bump()
    return count


def tenants_tier_change(*, tenants: QuerySet[Tenant], tier: Tier) -> int:
    """Moves the tenants to `tier`; its limits apply from their next request. Returns how many moved."""
    count = tenants.exclude(tier=tier).update(tier=tier)
    auth_epoch_bump()  # the cached keys carry their tenant's tier
    return count


# --- Usage -------------------------------------------------------------------------------
# Counters accumulate in Redis hashes `usage:<day>|<tenant id>|<model>` (one HINCRBY per
# field per request) and reach Postgres in batches via usage_flush(): a DB write per
# request would cost more than the cache hit it counts.
_USAGE = "usage:"
_DIRTY = "usage:dirty"
_FLUSHING = "usage:flushing:"
_FLUSH_LOCK = "usage:flush-lock"
_FIELDS = ("cache_hits", "cache_misses", "tokens", "compute_ms")


def usage_hits(*, tenant_id: int, model: str, hits: int, tokens: int) -> UsageHits:
    """A request's cache hits, for the admission script to record in today's counters
    (accounts/quotas.admit): the same hash and dirty set as usage_record."""
    member = f"{timezone.now().date().isoformat()}|{tenant_id}|{model}"
    return UsageHits(key=_USAGE + member, dirty=_DIRTY, member=member, hits=hits, tokens=tokens)


def usage_record(*, tenant_id: int, model: str, cache_hits: int = 0, cache_misses: int = 0, tokens: int = 0,
                 compute_ms: float = 0.0, day: date | None = None, pipe: Pipeline | None = None) -> None:
    """Adds to today's (UTC) counters for tenant and model; one Redis round trip, no DB write.

    Pass `pipe` (a Redis pipeline) to fold it into the caller's round trip.
    """
    member = f"{(day or timezone.now().date()).isoformat()}|{tenant_id}|{model}"
    own = pipe is None
    if pipe is None:
        pipe = redis_client().pipeline(transaction=False)  # no MULTI/EXEC: usage_flush RENAMEs, so no torn reads
    key = _USAGE + member
    for field, value in (("cache_hits", cache_hits), ("cache_misses", cache_misses), ("tokens", tokens)):
        if value:
            pipe.hincrby(key, field, int(value))
    if compute_ms:
        pipe.hincrbyfloat(key, "compute_ms", float(compute_ms))
    pipe.sadd(_DIRTY, member)
    if own:
        pipe.execute()


_UPSERT = f"""
INSERT INTO {DailyUsage._meta.db_table} (tenant_id, day, model, cache_hits, cache_misses, tokens, compute_ms)
SELECT %s, %s, %s, %s, %s, %s, %s WHERE EXISTS (SELECT 1 FROM {Tenant._meta.db_table} WHERE id = %s)
ON CONFLICT (tenant_id, day, model) DO UPDATE SET
  cache_hits = {DailyUsage._meta.db_table}.cache_hits + EXCLUDED.cache_hits,
  cache_misses = {DailyUsage._meta.db_table}.cache_misses + EXCLUDED.cache_misses,
  tokens = {DailyUsage._meta.db_table}.tokens + EXCLUDED.tokens,
  compute_ms = {DailyUsage._meta.db_table}.compute_ms + EXCLUDED.compute_ms
"""


def usage_flush() -> int:
    """Moves the Redis usage counters into DailyUsage rows (adding to them); returns rows written.

    Each hash is RENAMEd away before it is read, so increments that land meanwhile start a
    fresh hash and wait for the next flush: nothing is lost or counted twice. One flusher
    runs at a time (a Redis lock); a hash left renamed by a flusher that died is picked up.
    """
    client = redis_client()
    with redis_lock(_FLUSH_LOCK, seconds=60) as held:
        if not held:
            return 0
        written = 0
        for tmp, member in dirty_hashes_take(dirty=_DIRTY, prefix=_USAGE, flushing=_FLUSHING):
            day, tenant_id, model = member.split("|", 2)
            values = {cast(bytes, k).decode(): v for k, v in client.hgetall(tmp).items()}
            row = [int(values.get(f, 0)) if f != "compute_ms" else float(values.get(f, 0)) for f in _FIELDS]
            with transaction.atomic(), connection.cursor() as cur:
                cur.execute(_UPSERT, [int(tenant_id), day, model, *row, int(tenant_id)])
                written += cur.rowcount
            client.delete(tmp)
        return written


# A tenant's cache figures are counted by the embeddings app, which sits above accounts: it
# registers its counter here when it starts (EmbeddingsConfig.ready), so accounts never imports it.
_cache_figures: Callable[[Tenant], CacheFigures] | None = None


def cache_figures_register(counter: Callable[[Tenant], CacheFigures]) -> None:
    global _cache_figures
    _cache_figures = counter


def tenant_cache_figures(tenant: Tenant) -> CacheFigures | None:
    """The tenant's cache scope counted now (per model: entries and bytes), or None when no
    counter is registered (the embeddings app is not installed)."""
    return _cache_figures(tenant) if _cache_figures is not None else None


def usage_report(*, tenant: Tenant, date_from: date | None = None, date_to: date | None = None) -> UsageSummary:
    """GET /v1/usage: moves the usage counters into Postgres (usage_flush) so that the figures
    include requests up to now, counts the tenant's cache, then reads (usage_summary)."""
    usage_flush()
    return usage_summary(tenant=tenant, date_from=date_from, date_to=date_to, cache=tenant_cache_figures(tenant))

