"""Per-tier limits: requests per minute, sync requests in flight, and daily / monthly text
quotas, all per tenant.

Requests per minute are a fixed one-minute window per tenant (every key and user session of
the tenant counts in it: minting keys buys no requests); text quotas are two Redis counters
per tenant (UTC day, UTC month); sync requests in flight (those that wait for a worker or a
provider) are a sorted set per tenant of request ids scored by their deadline (see InFlight).
One Lua script (`admit`) checks and counts them all, with the auth epoch
(accounts/authcache.py) and the usage of a request's cache hits, in one round trip:
concurrent requests cannot overshoot, and a request that would cross a quota is refused
whole. Every text counts, cache hit or miss; a request that fails is refunded. Login
throttling: accounts/throttles.py. A tenant's share of the provider worker's threads
(provider_slot_acquire) and its provider tests (provider_test_check) are bounded here too.
"""

from __future__ import annotations

import calendar
import contextlib
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, tzinfo
from functools import lru_cache
from typing import TYPE_CHECKING

from django.conf import settings
from django_ratelimit.core import get_usage
from redis.exceptions import RedisError

from accounts.authcache import EPOCH_KEY, epoch_new
from accounts.models import Tenant, Tier
from dispatch.base import WorkPush
from dispatch.local import WORK_REFUSAL_LUA
from embedplatform.errors import (
    BATCH_TOO_LARGE,
    QUOTA_EXCEEDED,
    RATE_LIMITED,
    TOO_MANY_IN_FLIGHT,
    PayloadTooLarge,
    QuotaExceeded,
    RateLimited,
    Throttled,
)
from embedplatform.redisconn import redis_client, script

if TYPE_CHECKING:
    from rest_framework.request import Request


def time_now() -> datetime:
    """The clock quotas reset by (tests move it)."""
    return datetime.now(UTC)


@dataclass(frozen=True)
class QuotaState:
    daily_limit: int
    used_today: int
    monthly_limit: int
    used_month: int
    day_reset: datetime
    month_reset: datetime

    @property
    def remaining_today(self) -> int:
        return max(0, min(self.daily_limit - self.used_today, self.monthly_limit - self.used_month))

    @property
    def day_percent(self) -> float:
        """Today's texts as a percentage of the daily limit (100 with a limit of 0)."""
        return 100.0 * self.used_today / self.daily_limit if self.daily_limit else 100.0

    @property
    def month_percent(self) -> float:
        return 100.0 * self.used_month / self.monthly_limit if self.monthly_limit else 100.0

    def headers(self) -> dict[str, str]:
        """X-RateLimit-*: the daily text quota (remaining also respects the monthly one)."""
        return {
            "X-RateLimit-Limit": str(self.daily_limit),
            "X-RateLimit-Remaining": str(self.remaining_today),
            "X-RateLimit-Reset": str(int(self.day_reset.timestamp())),
        }


@dataclass(frozen=True)
class RateState:
    limit: int
    remaining: int
    reset_in: int

    def headers(self) -> dict[str, str]:
        """X-RateLimit-*-Requests: the tenant's requests-per-minute window (as OpenAI names them)."""
        return {
            "X-RateLimit-Limit-Requests": str(self.limit),
            "X-RateLimit-Remaining-Requests": str(self.remaining),
            "X-RateLimit-Reset-Requests": f"{self.reset_in}s",
        }


def _periods(now: datetime) -> tuple[str, str, datetime, datetime]:
    return _day_periods(now.date(), now.tzinfo)


@lru_cache(maxsize=8)  # the same for every request of a day: worked out once a day, not per request
def _day_periods(day: date, tz: tzinfo | None) -> tuple[str, str, datetime, datetime]:
    day_start = datetime(day.year, day.month, day.day, tzinfo=tz)
    day_reset = day_start + timedelta(days=1)
    days_in_month = calendar.monthrange(day.year, day.month)[1]
    month_reset = day_start.replace(day=1) + timedelta(days=days_in_month)
    return day.strftime("%Y%m%d"), day.strftime("%Y%m"), day_reset, month_reset


def _keys(tenant_id: int, now: datetime) -> tuple[str, str, datetime, datetime]:
    day, month, day_reset, month_reset = _periods(now)
    return f"quota:d:{tenant_id}:{day}", f"quota:m:{tenant_id}:{month}", day_reset, month_reset


class AuthEpochMoved(Exception):
    """The auth epoch moved since the caller's key was read (accounts/authcache.py): nothing was
    counted; re-read the key (api_key_recheck) and ask again."""

    def __init__(self, epoch: str):
        super().__init__(epoch)
        self.epoch = epoch


@dataclass
class Caller:
    """Who sends a data-plane request: its credential (for logs; the rate window is the tenant's),
    and the auth epoch its cached key was read at ("" for a JWT user, whose row is read on every
    request).
    admit() sets `admitted` once it has counted the request, admitted or refused."""

    principal_id: str
    epoch: str = ""
    admitted: bool = False


@dataclass(frozen=True)
class UsageHits:
    """The cache hits of a request, recorded in the tenant's usage by the admission script itself."""

    key: str  # accounts.services.usage_hits() builds it
    dirty: str
    member: str
    hits: int
    tokens: int


class CacheEpochMoved(Exception):
    """The epoch of the tenant's cache scope moved (DELETE /v1/cache) since the caller's process
    read its in-memory copies (embeddings/hotcache.py): nothing was counted; record the epoch
    (which drops those copies), plan the request again and ask again."""

    def __init__(self, scope: int, epoch: str):
        super().__init__(epoch)
        self.scope = scope
        self.epoch = epoch


@dataclass
class CacheUse:
    """What the admission script does for the cache (embeddings/retention.py builds it): checks
    the epoch of the tenant's scope (`epoch` None: this process knows none yet, no check) and,
    once admitted, counts a hit for each entry in `fields` (the per-entry hit stats, flushed to
    Postgres in batches). admit() sets `seen` to the epoch it read."""

    scope: int
    epoch_key: str
    epoch: str | None
    hits_key: str = ""
    hits_dirty: str = ""
    hits_member: str = ""
    fields: list[bytes] = field(default_factory=list)
    seen: str = ""


@dataclass
class InFlight:
    """A sync request that will wait (for the platform's workers or the tenant's provider): the
    admission script admits it only while the tenant has fewer than its tier's
    max_sync_in_flight such requests, and records it as `member` in the tenant's sorted set
    `key`, scored by `deadline` (unix seconds: the end of its wait plus a grace). The request
    removes itself when its wait ends (inflight_release, in a finally); entries whose deadline
    passed (a web process killed mid-wait) are trimmed by the next admission, so a leak lasts
    one wait at most. admit() sets `held` once the request is recorded."""

    key: str
    member: str
    deadline: float
    held: bool = False


# Seconds an in-flight entry outlives its request's wait (the reply's last BLPOP slice, the job
# fallback's insert); the sorted set's TTL is SYNC_WAIT_MAX plus this.
INFLIGHT_GRACE_SECONDS = 10


def inflight_key(tenant_id: int) -> str:
    return f"inflight:{tenant_id}"


def inflight_for(*, tenant: Tenant, wait: float, member: str) -> InFlight:
    """The in-flight entry of a sync request of `tenant` that waits up to `wait` seconds."""
    return InFlight(key=inflight_key(tenant.pk), member=member,
                    deadline=time.time() + wait + INFLIGHT_GRACE_SECONDS)


def inflight_release(inflight: InFlight | None) -> None:
    """Ends a held in-flight entry (its wait is over: vectors, timeout or error). Best effort: if
    Redis fails here the entry still ends at its deadline."""
    if inflight is None or not inflight.held:
        return
    inflight.held = False
    with contextlib.suppress(RedisError):  # the deadline bounds the leak; the request's answer stands
        redis_client().zrem(inflight.key, inflight.member)


def inflight_count(tenant_id: int) -> int:
    """The tenant's sync requests in flight now (entries whose deadline has not passed)."""
    client = redis_client()
    return int(client.zcount(inflight_key(tenant_id), f"({time.time()}", "+inf"))


# The tenant semaphores (sync requests in flight, provider-worker slots): a sorted set of members
# scored by their deadline, so that a holder that died (a killed web process or worker) stops
# counting at its deadline. The one definition: the admission script and _SLOT open with it.
SLOTS_LUA = """
local function slots_held(key, now)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  return redis.call('ZCARD', key)
end
local function slot_hold(key, member, deadline, ttl)
  redis.call('ZADD', key, deadline, member)
  redis.call('EXPIRE', key, ttl)
end
"""


# Every limit of the data plane in one round trip (DECISIONS #14, #19): the auth epoch, the
# tenant's minute window, its sync requests in flight, the text quotas, the usage of the
# request's cache hits and the work item of its misses.
# KEYS: epoch, rate counter, day counter, month counter, usage hash, usage dirty set, work list,
#       the work list's "a worker is alive" key, cache hit-stats hash, its dirty set, the cache
#       scope's epoch ('' = none), the tenant's in-flight sorted set ('' = the request waits for
#       nothing: not counted).
# ARGV: 1 expected epoch ('' = no check), 2 fresh epoch (for a missing one), 3 count the window
#       (1/0), 4 window ttl, 5 requests per minute, 6 texts to count (0: read the quotas only),
#       7 daily limit, 8 monthly limit, 9 day ttl, 10 month ttl, 11 hits, 12 hit tokens,
#       13 usage member, 14 work item ('' = none), 15 the work list's max depth, 16 expected cache
#       scope epoch ('?' = no check), 17 in-flight member, 18 its deadline, 19 now (unix seconds),
#       20 max in flight, 21 the in-flight set's TTL, 22 hit-stats member, 23... hit-stats fields
#       (one per entry).
# Returns {verdict, used today, used this month, requests in the window, epoch, queue depth,
# cache scope epoch}: verdict 1 admitted (and the work queued, the hits counted, the request
# recorded in flight); 0 / -1 refused by the daily / monthly quota (no text counted); -3 over the
# rate; -5 over the tenant's sync requests in flight (the sixth field: how many; no text counted);
# -4 the work refused (no text counted; the sixth field is work_refusal's answer); -9 epoch moved,
# -8 cache scope epoch moved (nothing counted).
_ADMIT = WORK_REFUSAL_LUA + SLOTS_LUA + """
local ce = ''
local e = redis.call('GET', KEYS[1])
if not e then e = ARGV[2]; redis.call('SET', KEYS[1], e) end
if ARGV[1] ~= '' and e ~= ARGV[1] then return {-9, 0, 0, 0, e, 0, ce} end
if KEYS[11] ~= '' then
  ce = redis.call('GET', KEYS[11])
  if not ce then ce = ARGV[2]; redis.call('SET', KEYS[11], ce) end
  if ARGV[16] ~= '?' and ce ~= ARGV[16] then return {-8, 0, 0, 0, e, 0, ce} end
end
local n = 0
if ARGV[3] == '1' then
  n = redis.call('INCR', KEYS[2])
  if n == 1 then redis.call('EXPIRE', KEYS[2], ARGV[4]) end
end
local d = tonumber(redis.call('GET', KEYS[3]) or '0')
local m = tonumber(redis.call('GET', KEYS[4]) or '0')
if ARGV[3] == '1' and n > tonumber(ARGV[5]) then return {-3, d, m, n, e, 0, ce} end
if KEYS[12] ~= '' then
  local held = slots_held(KEYS[12], ARGV[19])
  if held >= tonumber(ARGV[20]) then return {-5, d, m, n, e, held, ce} end
end
if ARGV[14] ~= '' then
  local refused = work_refusal(KEYS[7], KEYS[8], ARGV[15])
  if refused then return {-4, d, m, n, e, refused, ce} end
end
local t = tonumber(ARGV[6])
if t > 0 then
  if d + t > tonumber(ARGV[7]) then return {0, d, m, n, e, 0, ce} end
  if m + t > tonumber(ARGV[8]) then return {-1, d, m, n, e, 0, ce} end
  d = redis.call('INCRBY', KEYS[3], t)
  redis.call('EXPIRE', KEYS[3], ARGV[9])
  m = redis.call('INCRBY', KEYS[4], t)
  redis.call('EXPIRE', KEYS[4], ARGV[10])
end
if tonumber(ARGV[11]) > 0 then
  redis.call('HINCRBY', KEYS[5], 'cache_hits', ARGV[11])
  if tonumber(ARGV[12]) > 0 then redis.call('HINCRBY', KEYS[5], 'tokens', ARGV[12]) end
  redis.call('SADD', KEYS[6], ARGV[13])
end
if KEYS[9] ~= '' and #ARGV > 22 then
  for i = 23, #ARGV do redis.call('HINCRBY', KEYS[9], ARGV[i], 1) end
  redis.call('SADD', KEYS[10], ARGV[22])
end
if KEYS[12] ~= '' then slot_hold(KEYS[12], ARGV[17], ARGV[18], ARGV[21]) end
if ARGV[14] ~= '' then redis.call('RPUSH', KEYS[7], ARGV[14]) end
return {1, d, m, n, e, 0, ce}
"""


def admit(*, tenant: Tenant, texts: int = 0, caller: Caller | None = None,
          usage: UsageHits | None = None, work: WorkPush | None = None,
          cache: CacheUse | None = None, inflight: InFlight | None = None) -> tuple[QuotaState, RateState | None]:
    """Counts a request against the tenant's limits in one Redis round trip, all or nothing.

    With `caller`: checks its auth epoch and counts the request in its tenant's minute window.
    With `inflight`: admits it only under the tier's max_sync_in_flight and records it (the
    caller releases it with inflight_release when its wait ends).
    `texts` are counted against the daily and monthly quotas; `usage` records the request's
    cache hits; `work` is queued for the workers once all of that passed; `cache` checks the epoch
    of the tenant's cache scope and counts the hit stats of the entries served. Returns the quota
    state and the window's state (None without a caller).

    Raises AuthEpochMoved or CacheEpochMoved (nothing counted), RateLimited (the window is spent,
    or code too_many_in_flight: the tenant's sync requests in flight are at the bound; .rate, .quota),
    work.refused(...) (no worker alive or its queue full; counted in the window only) or
    QuotaExceeded (a quota would be crossed; .quota, .rate; no text counted).
    """
    tier = tenant.tier
    now = time_now()
    day_key, month_key, day_reset, month_reset = _keys(tenant.pk, now)
    stamp = int(now.timestamp())
    reset_in = 60 - stamp % 60
    counting = caller is not None and getattr(settings, "RATELIMIT_ENABLE", True)
    verdict, used_d, used_m, count, epoch, depth, cache_epoch = script(_ADMIT)(
        keys=[EPOCH_KEY, f"rate:t{tenant.pk}:{stamp // 60}", day_key, month_key,
              usage.key if usage else "", usage.dirty if usage else "", work.list_key if work else "",
              work.alive_key if work else "", cache.hits_key if cache and cache.fields else "",
              cache.hits_dirty if cache else "", cache.epoch_key if cache else "",
              inflight.key if inflight else ""],
        args=[caller.epoch if caller else "", epoch_new(), 1 if counting else 0, reset_in + 1,
              tier.requests_per_minute, texts, tier.daily_limit, tier.monthly_limit,
              # Keys outlive their period by a day so a late refund never re-creates a fresh counter.
              int((day_reset - now).total_seconds()) + 86400, int((month_reset - now).total_seconds()) + 86400,
              usage.hits if usage else 0, usage.tokens if usage else 0, usage.member if usage else "",
              work.payload if work else "", work.max_depth if work else 0,
              "?" if cache is None or cache.epoch is None else cache.epoch,
              inflight.member if inflight else "", inflight.deadline if inflight else 0,
              time.time() if inflight else 0, tier.max_sync_in_flight,
              int(settings.SYNC_WAIT_MAX) + INFLIGHT_GRACE_SECONDS * 2,
              cache.hits_member if cache else "", *(cache.fields if cache else ())],
        client=redis_client(),
    )
    if verdict == -9:
        raise AuthEpochMoved(epoch.decode() if isinstance(epoch, bytes) else str(epoch))
    if cache is not None:
        cache.seen = cache_epoch.decode() if isinstance(cache_epoch, bytes) else str(cache_epoch)
        if verdict == -8:
            raise CacheEpochMoved(cache.scope, cache.seen)
    if caller is not None:
        caller.admitted = True
    if verdict == -4:
        assert work is not None  # the script refuses work only where it was given some
        raise work.refused(int(depth))
    limit = tier.requests_per_minute
    rate = None
    if caller is not None:
        rate = RateState(limit, max(0, limit - int(count)), reset_in) if counting else RateState(limit, limit, 60)
    state = QuotaState(tier.daily_limit, int(used_d), tier.monthly_limit, int(used_m), day_reset, month_reset)
    if verdict == 1:
        if inflight is not None:
            inflight.held = True
        return state, rate
    if verdict == -5:
        error = RateLimited(TOO_MANY_IN_FLIGHT.format(limit=tier.max_sync_in_flight, tier=tier.name),
                            retry_after=1, code="too_many_in_flight")
        error.quota = state
    elif verdict == -3:
        error = RateLimited(RATE_LIMITED.format(limit=limit, retry_after=max(1, reset_in)), retry_after=reset_in)
        error.quota = state
    else:
        error = _quota_error(tier, state, texts, now, daily=verdict == 0)
    error.rate = rate
    raise error


def quota_consume(*, tenant: Tenant, texts: int) -> QuotaState:
    """Counts `texts` against the tenant's daily and monthly quotas, all or nothing (no rate
    window: for work whose request was counted already). Raises QuotaExceeded."""
    return admit(tenant=tenant, texts=texts)[0]


def _quota_error(tier: Tier, state: QuotaState, texts: int, now: datetime, *, daily: bool) -> QuotaExceeded:
    reset = state.day_reset if daily else state.month_reset
    error = QuotaExceeded(
        QUOTA_EXCEEDED.format(
            period="daily" if daily else "monthly", limit=tier.daily_limit if daily else tier.monthly_limit,
            used=state.used_today if daily else state.used_month, texts=texts, reset=reset.strftime("%Y-%m-%d %H:%M"),
        ),
        retry_after=int((reset - now).total_seconds()) + 1,
    )
    error.quota = state
    return error


def quota_refund(*, tenant: Tenant, texts: int, state: QuotaState, usage: UsageHits | None = None,
                 quota: bool = True) -> None:
    """Undoes an admission whose request then failed (same periods as `state`): the texts'
    quota unless `quota` is False (the request became a job, which keeps its texts counted),
    and the hits' usage."""
    now = state.day_reset - timedelta(seconds=1)
    day_key, month_key, _, _ = _keys(tenant.pk, now)
    with redis_client().pipeline(transaction=False) as pipe:
        if quota:
            pipe.decrby(day_key, texts)
            pipe.decrby(month_key, texts)
        if usage is not None and usage.hits:
            pipe.hincrby(usage.key, "cache_hits", -usage.hits)
            if usage.tokens:
                pipe.hincrby(usage.key, "tokens", -usage.tokens)
        pipe.execute()


def quota_state(*, tenant: Tenant) -> QuotaState:
    """The tenant's current usage against its quotas (read only)."""
    tier = tenant.tier
    now = time_now()
    day_key, month_key, day_reset, month_reset = _keys(tenant.pk, now)
    used_d, used_m = redis_client().mget([day_key, month_key])
    return QuotaState(tier.daily_limit, int(used_d or 0), tier.monthly_limit, int(used_m or 0), day_reset, month_reset)


def quota_states(*, tenants: Iterable[Tenant]) -> dict[int, QuotaState]:
    """quota_state of many tenants (their tiers loaded) in one Redis round trip, by tenant id:
    the admin's tenant list."""
    tenants = list(tenants)
    if not tenants:
        return {}
    now = time_now()
    keys = [_keys(t.pk, now) for t in tenants]
    values = redis_client().mget([k for day_key, month_key, _, _ in keys for k in (day_key, month_key)])
    return {
        t.pk: QuotaState(t.tier.daily_limit, int(values[2 * i] or 0), t.tier.monthly_limit, int(values[2 * i + 1] or 0),
                         day_reset, month_reset)
        for i, (t, (_, _, day_reset, month_reset)) in enumerate(zip(tenants, keys, strict=True))
    }


def batch_size_check(*, tier: Tier, texts: int) -> None:
    """Raises PayloadTooLarge (413) when a request carries more texts than the tier allows."""
    if texts > tier.max_batch_size:
        raise PayloadTooLarge(
            BATCH_TOO_LARGE.format(texts=texts, tier=tier.name, limit=tier.max_batch_size),
            param="input", code="batch_too_large",
        )


# --- a tenant's share of the provider worker's threads ---------------------------------------

# KEYS: the tenant's provider-slot sorted set. ARGV: member, its deadline, now, the bound, TTL.
# Trims the entries whose deadline passed (a worker killed mid-call), then takes a slot if one
# is free. Returns 1 (taken) or 0 (the tenant's calls in progress are at the bound).
_SLOT = SLOTS_LUA + """
local held = slots_held(KEYS[1], ARGV[3])
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 1 end
if held >= tonumber(ARGV[4]) then return 0 end
slot_hold(KEYS[1], ARGV[1], ARGV[2], ARGV[5])
return 1
"""


def provider_slot_key(tenant_id: int) -> str:
    return f"pslots:{tenant_id}"


def provider_slot_acquire(*, tenant: Tenant, member: str, until: float) -> bool:
    """Takes one of the tenant's provider-worker slots (tier.max_sync_in_flight of them) for the
    call `member` until `until` (unix seconds: past it a slot whose worker died is free again).
    False when all are taken: the caller tries again shortly (the provider task re-queues)."""
    now = time.time()
    return bool(script(_SLOT)(keys=[provider_slot_key(tenant.pk)],
                              args=[member, until, now, tenant.tier.max_sync_in_flight, int(until - now) + 60],
                              client=redis_client()))


def provider_slot_release(*, tenant_id: int, member: str) -> None:
    """Frees the slot of the call `member` (in a finally; the deadline bounds a lost release)."""
    with contextlib.suppress(RedisError):  # the deadline bounds the leak
        redis_client().zrem(provider_slot_key(tenant_id), member)


# --- POST /v1/providers/{id}/test --------------------------------------------------------------

PROVIDER_TEST_THROTTLED = ("Too many provider tests: your tenant may test providers {rate} "
                           "(PROVIDER_TEST_RATE); retry in {retry_after} s.")


def provider_test_check(request: Request, *, tenant: Tenant) -> None:
    """Counts a provider test against the tenant's PROVIDER_TEST_RATE (django-ratelimit, every
    user of the tenant together); raises Throttled (429, Retry-After, X-RateLimit-*) when spent.
    Each test calls an upstream from the web for up to PROVIDER_TEST_TIMEOUT_SECONDS."""
    usage = get_usage(request, group="provider-test", key=lambda _g, _r: f"t{tenant.pk}",
                      rate=settings.PROVIDER_TEST_RATE, increment=True)
    if usage is not None and usage["should_limit"]:
        retry = max(1, int(usage["time_left"]))
        raise Throttled(PROVIDER_TEST_THROTTLED.format(rate=settings.PROVIDER_TEST_RATE.replace("/m", " times a minute"),
                                                       retry_after=retry),
                        retry_after=retry, limit=usage["limit"], reset_at=int(time.time()) + retry,
                        code="provider_test_throttled")
