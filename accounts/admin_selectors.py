"""Reads for the operators' admin, across tenants (the API's selectors each take `tenant=`:
accounts/selectors.py). Never reached from the API."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

from accounts.models import DailyUsage

# --- Usage per day, tenant and model: the admin's usage page and its CSV --------------------------
USAGE_METRICS = {
    "texts": "texts (hits + misses)",
    "cache_hits": "cache hits",
    "cache_misses": "cache misses",
    "tokens": "tokens",
    "compute_ms": "compute ms",
}
USAGE_MAX_DAYS = 366
USAGE_OTHER = "other"


def usage_value(row: DailyUsage, metric: str) -> float:
    """One row's figure for `metric` (a key of USAGE_METRICS): texts are hits plus misses."""
    return float(row.cache_hits + row.cache_misses) if metric == "texts" else float(getattr(row, metric))


@dataclass(frozen=True)
class UsageSeries:
    """One tenant's use of one model, a value per day; the series past the chart's limit are
    summed into one with tenant USAGE_OTHER and tenant_id None."""

    tenant_id: int | None
    tenant: str
    model: str
    values: list[float]

    @property
    def total(self) -> float:
        return sum(self.values)

    @property
    def label(self) -> str:
        return f"{self.tenant} · {self.model}" if self.model else self.tenant


@dataclass(frozen=True)
class UsageDaily:
    """Usage in [date_from, date_to] per day, tenant and model (DailyUsage as flushed)."""

    date_from: date
    date_to: date
    metric: str
    days: list[date]  # every day of the range, days without usage included
    series: list[UsageSeries]  # largest total first
    rows: list[DailyUsage]  # by day, tenant name, model; tenant loaded
    totals: dict  # per metric of USAGE_METRICS, over the rows


def usage_daily(*, date_from: date, date_to: date, tenant_id: int | None = None, model: str | None = None,
                metric: str = "texts", max_series: int = 8) -> UsageDaily:
    """Every tenant's (or one's) usage of every model (or one) per day, for the operators' chart
    and CSV. At most `max_series` series: when there are more, the largest max_series - 1 are kept
    and the rest are summed into an USAGE_OTHER series. Raises ValueError for an unknown metric,
    a range that ends before it starts or one longer than USAGE_MAX_DAYS."""
    if metric not in USAGE_METRICS:
        raise ValueError(f"unknown metric {metric!r}; one of {', '.join(USAGE_METRICS)}")
    if date_to < date_from:
        raise ValueError("the range ends before it starts")
    n_days = (date_to - date_from).days + 1
    if n_days > USAGE_MAX_DAYS:
        raise ValueError(f"at most {USAGE_MAX_DAYS} days at once")
    days = [date_from + timedelta(days=i) for i in range(n_days)]
    rows_qs = DailyUsage.objects.filter(day__gte=date_from, day__lte=date_to).select_related("tenant")
    if tenant_id is not None:
        rows_qs = rows_qs.filter(tenant_id=tenant_id)
    if model:
        rows_qs = rows_qs.filter(model=model)
    rows = list(rows_qs.order_by("day", "tenant__name", "tenant_id", "model"))
    by_pair: dict[tuple[int, str], UsageSeries] = {}
    for row in rows:
        pair = (row.tenant.pk, row.model)
        if pair not in by_pair:
            by_pair[pair] = UsageSeries(tenant_id=row.tenant.pk, tenant=row.tenant.name, model=row.model,
                                        values=[0.0] * n_days)
        by_pair[pair].values[(row.day - date_from).days] += usage_value(row, metric)
    series = sorted(by_pair.values(), key=lambda s: (-s.total, s.tenant, s.model))
    if len(series) > max_series:
        rest = series[max_series - 1:]
        other = UsageSeries(tenant_id=None, tenant=USAGE_OTHER, model="",
                            values=[sum(s.values[i] for s in rest) for i in range(n_days)])
        series = [*series[:max_series - 1], other]
    totals = {m: sum(usage_value(r, m) for r in rows) for m in USAGE_METRICS}
    return UsageDaily(date_from=date_from, date_to=date_to, metric=metric, days=days, series=series, rows=rows,
                      totals=totals)


def usage_models() -> list[str]:
    """Every model that has usage rows, by name (the usage page's model filter)."""
    return list(DailyUsage.objects.order_by("model").values_list("model", flat=True).distinct())
