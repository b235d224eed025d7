"""The operators' reads and actions on tenants and usage: usage per day, tenant and model (the
usage page and its CSV), the quota counters of many tenants at once, the bulk actions, and
last_login on API logins. The pages themselves are driven in a browser in tests/browser/."""

from __future__ import annotations

import csv
import io
from datetime import date, timedelta

import pytest
from django.test import Client
from django.urls import reverse

from accounts.admin_selectors import USAGE_OTHER, usage_daily, usage_models
from accounts.models import DailyUsage, Tenant, Tier, User
from accounts.quotas import quota_consume, quota_state, quota_states
from accounts.services import tenants_reactivate, tenants_suspend, tenants_tier_change
from embedplatform.charts import ChartSeries, nice_ceiling, stacked_bars_svg
from tests.factories import PASSWORD, TenantFactory, UserFactory

pytestmark = pytest.mark.django_db

D0 = date(2026, 3, 1)


def _usage(tenant: Tenant, day: date, model: str, hits: int = 0, misses: int = 0, **fields) -> None:
    DailyUsage.objects.create(tenant=tenant, day=day, model=model, cache_hits=hits, cache_misses=misses, **fields)


@pytest.fixture
def staff_client(tiers):
    client = Client()
    client.force_login(UserFactory(staff=True, email="ops@example.com"))
    return client


def test_usage_daily_makes_a_series_per_tenant_and_model_with_every_day(alice, bob):
    _usage(alice.tenant, D0, "m1", hits=2, misses=3, tokens=10)
    _usage(alice.tenant, D0 + timedelta(days=2), "m1", misses=4)
    _usage(alice.tenant, D0 + timedelta(days=1), "m2", hits=1)
    _usage(bob.tenant, D0 + timedelta(days=1), "m1", hits=20)
    _usage(bob.tenant, D0 + timedelta(days=9), "m1", hits=99)  # outside the range
    usage = usage_daily(date_from=D0, date_to=D0 + timedelta(days=3))
    assert usage.days == [D0 + timedelta(days=i) for i in range(4)]
    assert [(s.tenant, s.model, s.values) for s in usage.series] == [  # largest total first
        ("bob@example.com", "m1", [0, 20, 0, 0]),
        ("alice@example.com", "m1", [5, 0, 4, 0]),
        ("alice@example.com", "m2", [0, 1, 0, 0]),
    ]
    assert [(r.day, r.tenant.name, r.model) for r in usage.rows] == [
        (D0, "alice@example.com", "m1"), (D0 + timedelta(days=1), "alice@example.com", "m2"),
        (D0 + timedelta(days=1), "bob@example.com", "m1"), (D0 + timedelta(days=2), "alice@example.com", "m1")]
    assert usage.totals["texts"] == 30 and usage.totals["cache_hits"] == 23 and usage.totals["tokens"] == 10

    one = usage_daily(date_from=D0, date_to=D0 + timedelta(days=3), tenant_id=alice.tenant.pk, model="m1",
                      metric="cache_misses")
    assert [(s.label, s.values) for s in one.series] == [("alice@example.com · m1", [3, 0, 4, 0])]
    assert usage_models() == ["m1", "m2"]


def test_usage_daily_sums_the_smallest_series_into_other(tiers):
    for i in range(5):
        _usage(TenantFactory(name=f"t{i}"), D0, "m", hits=10 * (i + 1))
    usage = usage_daily(date_from=D0, date_to=D0, max_series=3)
    assert [(s.tenant, s.values) for s in usage.series] == [("t4", [50]), ("t3", [40]), (USAGE_OTHER, [60])]
    assert usage.series[-1].tenant_id is None and usage.series[-1].label == USAGE_OTHER


def test_usage_daily_refuses_bad_ranges_and_metrics(tiers):
    with pytest.raises(ValueError, match="ends before"):
        usage_daily(date_from=D0, date_to=D0 - timedelta(days=1))
    with pytest.raises(ValueError, match="366"):
        usage_daily(date_from=D0, date_to=D0 + timedelta(days=366))
    with pytest.raises(ValueError, match="metric"):
        usage_daily(date_from=D0, date_to=D0, metric="secrets")


def test_the_chart_draws_a_segment_per_nonzero_value_and_escapes_labels():
    svg = stacked_bars_svg(labels=["d1", "d2"], series=[ChartSeries("<b>a</b>", [3, 0]), ChartSeries("b", [1, 2])],
                           title="t & u")
    assert svg.count('class="bar"') == 3
    assert "<b>a</b>" not in svg and "&lt;b&gt;a&lt;/b&gt;" in svg and "t &amp; u" in svg
    assert 'data-series="b" data-label="d2" data-value="2"' in svg
    assert nice_ceiling(4) == (4.0, 1.0) and nice_ceiling(27) == (40.0, 10.0) and nice_ceiling(1_500_000)[0] == 2_000_000


def test_quota_states_read_many_tenants_as_quota_state_reads_one(alice, bob, charlie, redis_db):
    quota_consume(tenant=alice.tenant, texts=7)
    quota_consume(tenant=charlie.tenant, texts=900)
    states = quota_states(tenants=[alice.tenant, bob.tenant, charlie.tenant])
    for world in (alice, bob, charlie):
        assert states[world.tenant.pk] == quota_state(tenant=world.tenant)
    assert states[alice.tenant.pk].used_today == 7 and states[bob.tenant.pk].used_month == 0
    assert states[charlie.tenant.pk].day_percent == 90.0 and quota_states(tenants=[]) == {}


def test_bulk_suspend_reactivate_and_change_tier(alice, bob, charlie, client_for, redis_db):
    assert client_for(alice).get("/v1/usage").status_code == 200  # the key is now cached in this process
    both = Tenant.objects.filter(pk__in=[alice.tenant.pk, bob.tenant.pk])
    assert tenants_suspend(tenants=both) == 2
    assert client_for(alice).get("/v1/usage").status_code == 401  # fails at once, cache or not
    assert tenants_suspend(tenants=both) == 0
    assert tenants_reactivate(tenants=Tenant.objects.filter(pk=alice.tenant.pk)) == 1
    assert client_for(alice).get("/v1/usage").status_code == 200
    free = Tier.objects.get(name="free")
    assert tenants_tier_change(tenants=Tenant.objects.all(), tier=free) == 2  # charlie is on it already
    assert set(Tenant.objects.values_list("tier__name", flat=True)) == {"free"}


def test_the_change_tier_action_asks_for_the_tier_first(staff_client, alice, charlie):
    url = reverse("admin:accounts_tenant_changelist")
    picked = {"action": "change_tier", "_selected_action": [alice.tenant.pk, charlie.tenant.pk]}
    page = staff_client.post(url, picked)
    assert page.status_code == 200 and b"New tier" in page.content and b"charlie@example.com" in page.content
    assert Tenant.objects.get(pk=charlie.tenant.pk).tier.name == "free"  # nothing changed yet
    done = staff_client.post(url, {**picked, "apply": "1", "tier": Tier.objects.get(name="paid").pk})
    assert done.status_code == 302
    assert Tenant.objects.get(pk=charlie.tenant.pk).tier.name == "paid"


def test_the_usage_csv_has_a_row_per_day_tenant_and_model(staff_client, alice, bob, redis_db):
    evil = TenantFactory(name="=HYPERLINK(1)")
    _usage(alice.tenant, D0, "m1", hits=2, misses=3, tokens=5, compute_ms=1.25)
    _usage(evil, D0, "m1", misses=1)
    response = staff_client.get(reverse("admin:accounts_dailyusage_csv"), {"date_from": D0, "date_to": D0})
    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    assert f'filename="usage-{D0}-{D0}.csv"' in response["Content-Disposition"]
    rows = list(csv.reader(io.StringIO(response.content.decode())))
    assert rows == [
        ["day", "tenant_id", "tenant", "model", "cache_hits", "cache_misses", "texts", "tokens", "compute_ms"],
        [str(D0), str(evil.pk), "'=HYPERLINK(1)", "m1", "0", "1", "1", "0", "0.0"],  # by tenant name: "=" < "a"
        [str(D0), str(alice.tenant.pk), "alice@example.com", "m1", "2", "3", "5", "5", "1.25"],
    ]
    bad = staff_client.get(reverse("admin:accounts_dailyusage_csv"), {"date_from": D0, "date_to": D0 - timedelta(1)})
    assert bad.status_code == 400
    page = staff_client.get(reverse("admin:accounts_dailyusage_report"), {"date_from": D0, "date_to": D0})
    assert page.status_code == 200 and page.content.count(b'class="bar"') == 2


def test_operator_pages_refuse_non_staff(alice):
    client = Client()
    client.force_login(alice.tenant.users.first())
    for name in ("admin:accounts_dailyusage_report", "admin:accounts_dailyusage_csv", "admin:embeddings_job_workers"):
        response = client.get(reverse(name))
        assert response.status_code == 302 and "/admin/login/" in response["Location"], name


def test_logging_in_through_the_api_sets_last_login(alice, client_for, redis_db):
    user = User.objects.get(email="alice@example.com")
    assert user.last_login is None
    response = client_for().post("/v1/auth/login", {"email": "alice@example.com", "password": PASSWORD}, format="json")
    assert response.status_code == 200
    user.refresh_from_db()
    assert user.last_login is not None
