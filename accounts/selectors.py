from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from functools import cache
from typing import Any

from django.db import connection
from django.db.models import Model, QuerySet

from accounts.models import ApiKey, DailyUsage, Tenant, Tier
from accounts.quotas import QuotaState, quota_state, time_now


@cache
def _auth_sql() -> tuple[str, list[tuple[type[Model], list[str], list]]]:
    """SELECT of a key with its tenant and tier, built once from the models' fields.

    The ORM takes longer to compile this query than Postgres takes to run it, and it runs
    on every request, so it is compiled here once.
    """
    parts: list[str] = []
    layout: list[tuple[type[Model], list[str], list]] = []
    for model, alias in ((ApiKey, "k"), (Tenant, "t"), (Tier, "r")):
        fields = model._meta.concrete_fields
        parts += [f'{alias}."{f.column}"' for f in fields]
        layout.append((model, [f.attname for f in fields], [getattr(f, "from_db_value", None) for f in fields]))
    sql = (
        f"SELECT {', '.join(parts)} FROM {ApiKey._meta.db_table} k "
        f"JOIN {Tenant._meta.db_table} t ON t.id = k.tenant_id "
        f"JOIN {Tier._meta.db_table} r ON r.id = t.tier_id "
        "WHERE k.prefix = %s AND k.revoked_at IS NULL AND t.is_active"
    )
    return sql, layout


def api_key_for_auth(*, prefix: str) -> ApiKey | None:
    """The live key with this prefix, its tenant and tier loaded; None if revoked, unknown or the tenant is inactive."""
    sql, layout = _auth_sql()
    with connection.cursor() as cur:
        cur.execute(sql, [prefix])
        row = cur.fetchone()
    if row is None:
        return None
    objs: list[Any] = []  # the key, its tenant, the tenant's tier
    i = 0
    for model, names, converters in layout:
        values = [
            conv(v, None, connection) if conv is not None else v
            for conv, v in zip(converters, row[i : i + len(names)], strict=True)
        ]
        objs.append(model.from_db(connection.alias, names, values))
        i += len(names)
    key, tenant, tier = objs
    tenant.tier = tier
    key.tenant = tenant
    return key


def api_key_list(*, tenant: Tenant) -> QuerySet[ApiKey]:
    """The tenant's keys, newest first, revoked ones included (with revoked_at)."""
    return ApiKey.objects.filter(tenant=tenant).order_by("-created_at", "-id")


@dataclass(frozen=True)
class CacheFigures:
    """A tenant's cache scope: per model {model, entries, bytes}, and its tier's byte limit (0: none)."""

    models: list[dict]
    limit: int

    @property
    def bytes(self) -> int:
        return sum(c["bytes"] for c in self.models)

    @property
    def full(self) -> bool:
        return self.limit > 0 and self.bytes >= self.limit


@dataclass(frozen=True)
class UsageSummary:
    date_from: date
    date_to: date
    rows: list[DailyUsage]
    today: dict
    month: dict
    total_cached: int
    cache: list[dict]  # per model: {model, entries, bytes} (embeddings.cachecap.cache_size)
    quota: QuotaState
    cache_bytes: int = 0
    cache_limit_bytes: int = 0  # the tier's max_cache_bytes; 0: no limit
    cache_full: bool = False  # new vectors are served but not stored; jobs are refused (embeddings/cachecap.py)


def _totals(rows: Iterable[DailyUsage]) -> dict:
    out = {"texts": 0, "cache_hits": 0, "cache_misses": 0, "tokens": 0, "compute_ms": 0.0}
    for r in rows:
        out["cache_hits"] += r.cache_hits
        out["cache_misses"] += r.cache_misses
        out["tokens"] += r.tokens
        out["compute_ms"] += r.compute_ms
    out["texts"] = out["cache_hits"] + out["cache_misses"]
    out["compute_ms"] = round(out["compute_ms"], 3)
    return out


def usage_summary(*, tenant: Tenant, date_from: date | None = None, date_to: date | None = None,
                  cache: CacheFigures | None = None) -> UsageSummary:
    """Usage per day and model in [date_from, date_to] (default: this UTC month) as stored in
    Postgres, with today's and this month's totals, the quota counters and `cache` (the tenant's
    cache figures, which the embeddings app counts: accounts.services.usage_report passes them).
    Read only: usage_report flushes the counters first, so the figures include requests up to now."""
    cache = cache or CacheFigures(models=[], limit=int(tenant.tier.max_cache_bytes or 0))
    today = time_now().date()
    month_start = today.replace(day=1)
    date_from = date_from or month_start
    date_to = date_to or today
    rows = list(
        DailyUsage.objects.filter(tenant=tenant, day__gte=min(date_from, month_start), day__lte=max(date_to, today))
        .order_by("day", "model")
    )
    return UsageSummary(
        date_from=date_from,
        date_to=date_to,
        rows=[r for r in rows if date_from <= r.day <= date_to],
        today=_totals(r for r in rows if r.day == today),
        month=_totals(r for r in rows if month_start <= r.day <= today),
        total_cached=sum(c["entries"] for c in cache.models),
        cache=cache.models,
        quota=quota_state(tenant=tenant),
        cache_bytes=cache.bytes,
        cache_limit_bytes=cache.limit,
        cache_full=cache.full,
    )
