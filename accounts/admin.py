"""The operators' admin: tenants (with users and keys inline), tiers, users, API keys, usage.

Key hashes and passwords are never shown; keys appear by prefix only and are revoked with an
action, not edited. A tenant's webhook secret appears masked and is replaced with an action.
Tenants show their texts today and this month against their tier's limits (the quota counters,
live) and their active keys; bulk actions suspend, reactivate and move them to another tier.
Usage rows are read-only; the usage page (DailyUsageAdmin.report_view) charts them per day,
tenant and model and exports them as CSV. The figures come from accounts.selectors.
"""

from __future__ import annotations

import csv
from datetime import date, timedelta
from typing import Any, cast

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.views.main import ChangeList
from django.contrib.admin.widgets import AdminBigIntegerFieldWidget
from django.core.exceptions import PermissionDenied
from django.db import models
from django.db.models import Count, Q, QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.defaultfilters import filesizeformat
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe
from redis.exceptions import RedisError

from accounts.admin_selectors import USAGE_METRICS, UsageDaily, usage_daily, usage_models
from accounts.authcache import auth_epoch_bump
from accounts.models import ApiKey, DailyUsage, Tenant, Tier, User, _webhook_secret
from accounts.quotas import QuotaState, quota_state, quota_states, time_now
from accounts.services import (
    tenant_cache_figures,
    tenants_reactivate,
    tenants_suspend,
    tenants_tier_change,
    usage_flush,
)
from embedplatform.charts import ChartSeries, number_text, series_colors, stacked_bars_svg
from embedplatform.masking import secret_mask

USAGE_DEFAULT_DAYS = 30
CSV_COLUMNS = ("day", "tenant_id", "tenant", "model", "cache_hits", "cache_misses", "texts", "tokens", "compute_ms")


def csv_text(value: str) -> str:
    """A text cell a spreadsheet will not run as a formula: tenant names are chosen at sign-up."""
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


def quota_html(used: int, limit: int, percent: float) -> SafeString:
    """`used / limit (p%)` on one line, the percentage bold from 90%."""
    figure = f"{percent:.1f}%"
    return format_html('<span style="white-space: nowrap">{} / {} ({})</span>', f"{used:,}", f"{limit:,}",
                       format_html("<strong>{}</strong>", figure) if percent >= 90 else figure)


@admin.register(Tier)
class TierAdmin(admin.ModelAdmin):
    list_display = ("name", "daily_limit", "monthly_limit", "requests_per_minute", "max_batch_size",
                    "max_job_texts", "server_compute", "priority")
    search_fields = ("name",)
    # The admin's integer box (5em) cuts 1500000 to 150000: limits get the width of its big-integer box.
    formfield_overrides = {
        models.PositiveIntegerField: {"widget": AdminBigIntegerFieldWidget},
        models.PositiveBigIntegerField: {"widget": AdminBigIntegerFieldWidget},
    }


class UserInline(admin.TabularInline):
    model = User
    fields = ("email", "is_active", "is_staff", "date_joined", "last_login")
    readonly_fields = ("date_joined", "last_login")
    extra = 0
    show_change_link = True


class ApiKeyInline(admin.TabularInline):
    model = ApiKey
    fields = ("prefix", "name", "created_at", "last_used_at", "revoked_at")
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Tenant | None = None) -> bool:
        return False  # a key is made through the API or `create_tenant`, which show it once


class TierChoiceForm(forms.Form):
    """The tier picked on the bulk "change tier" page."""

    tier = forms.ModelChoiceField(queryset=Tier.objects.order_by("name"), empty_label=None)


@admin.register(Tenant)
class TenantAdmin(admin.ModelAdmin):
    list_display: tuple[str, ...] = ("name", "tier", "is_active", "texts_today", "texts_month", "keys", "created_at")
    list_filter = ("tier", "is_active")
    search_fields = ("name", "users__email")
    exclude = ("webhook_secret",)  # shown masked (webhook_secret_masked); changed only by the action
    readonly_fields = ("usage_now", "webhook_secret_masked", "cache_size")
    inlines = [UserInline, ApiKeyInline]
    actions = ["suspend", "reactivate", "change_tier", "regenerate_webhook_secret"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Tenant]:
        return super().get_queryset(request).select_related("tier").annotate(
            active_keys=Count("api_keys", filter=Q(api_keys__revoked_at__isnull=True), distinct=True))

    def get_changelist_instance(self, request: HttpRequest) -> ChangeList:
        """The page's tenants get their quota counters in one Redis round trip (none while Redis is away)."""
        cl = super().get_changelist_instance(request)
        tenants = list(cl.result_list)
        try:
            states = quota_states(tenants=tenants)
        except RedisError:
            states = {}
        for tenant in tenants:
            tenant._quota_now = states.get(tenant.pk)  # read by texts_today / texts_month
        return cl

    @staticmethod
    def _quota(obj: Tenant) -> QuotaState | None:
        return getattr(obj, "_quota_now", None)

    @admin.display(description="Texts today")
    def texts_today(self, obj: Tenant) -> str:
        q = self._quota(obj)
        return quota_html(q.used_today, q.daily_limit, q.day_percent) if q is not None else "-"

    @admin.display(description="Texts this month")
    def texts_month(self, obj: Tenant) -> str:
        q = self._quota(obj)
        return quota_html(q.used_month, q.monthly_limit, q.month_percent) if q is not None else "-"

    @admin.display(description="Keys", ordering="active_keys")
    def keys(self, obj: Tenant) -> SafeString:
        """Active keys / the tier's max_keys."""
        return format_html('<span style="white-space: nowrap">{} / {}</span>', getattr(obj, "active_keys", 0),
                           obj.tier.max_keys)

    @admin.display(description="Usage")
    def usage_now(self, obj: Tenant | None) -> str:
        """Today and this month against the tier's limits (the live quota counters), and a link to its chart."""
        if obj is None or obj.pk is None:
            return "-"
        try:
            q = quota_state(tenant=obj)
        except RedisError:
            return "unknown: Redis is unreachable"
        chart = reverse("admin:accounts_dailyusage_report") + f"?tenant={obj.pk}"
        return format_html(
            "Today: {} texts, resets {} UTC<br>This month: {} texts, resets {} UTC<br>"
            "Requests per minute: up to {}; texts per request: up to {}<br><a href=\"{}\">Daily usage chart</a>",
            quota_html(q.used_today, q.daily_limit, q.day_percent), q.day_reset.strftime("%Y-%m-%d %H:%M"),
            quota_html(q.used_month, q.monthly_limit, q.month_percent), q.month_reset.strftime("%Y-%m-%d %H:%M"),
            f"{obj.tier.requests_per_minute:,}", f"{obj.tier.max_batch_size:,}", chart)

    @admin.action(description="Suspend the selected tenants (their keys and logins fail at once)")
    def suspend(self, request: HttpRequest, queryset: QuerySet[Tenant]) -> None:
        count = tenants_suspend(tenants=queryset)
        self.message_user(request, f"Suspended {count} tenant(s). Their accepted jobs go on; cancel them on the "
                                   "jobs page if they should stop.", messages.SUCCESS)

    @admin.action(description="Reactivate the selected tenants")
    def reactivate(self, request: HttpRequest, queryset: QuerySet[Tenant]) -> None:
        count = tenants_reactivate(tenants=queryset)
        self.message_user(request, f"Reactivated {count} tenant(s).", messages.SUCCESS)

    @admin.action(description="Change the tier of the selected tenants…")
    def change_tier(self, request: HttpRequest, queryset: QuerySet[Tenant]) -> TemplateResponse | None:
        """An intermediate page picks the tier; its form posts back here with `apply`."""
        form = TierChoiceForm(request.POST if "apply" in request.POST else None)
        if form.is_valid():
            tier = form.cleaned_data["tier"]
            count = tenants_tier_change(tenants=queryset, tier=tier)
            self.message_user(request, f"Moved {count} tenant(s) to the {tier.name} tier.", messages.SUCCESS)
            return None  # back to the list
        context = {
            **self.admin_site.each_context(request),
            "title": "Change the tier of tenants",
            "opts": self.opts,
            "tenants": queryset.select_related("tier").order_by("name"),
            "form": form,
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        }
        return TemplateResponse(request, "admin/accounts/tenant/change_tier.html", context)

    @admin.display(description="Webhook secret")
    def webhook_secret_masked(self, obj: Tenant | None) -> str:
        """Never the secret itself: the tenant reads it with GET /v1/webhook-secret."""
        return secret_mask(obj.webhook_secret) if obj is not None and obj.pk is not None else "-"

    @admin.action(description="Regenerate webhook secret (receivers must switch to the new one)")
    def regenerate_webhook_secret(self, request: HttpRequest, queryset: QuerySet[Tenant]) -> None:
        count = 0
        for tenant in queryset:
            tenant.webhook_secret = _webhook_secret()
            tenant.save(update_fields=["webhook_secret"])
            count += 1
        self.message_user(request, f"Regenerated the webhook secret of {count} tenant(s); each reads the new one "
                                   "with GET /v1/webhook-secret.", messages.SUCCESS)

    @admin.display(description="Cache size")
    def cache_size(self, obj: Tenant | None) -> str:
        """Entries and vector bytes per model in the tenant's cache scope (the tenant page only)."""
        if obj is None or obj.pk is None:
            return "-"
        figures = tenant_cache_figures(obj)
        rows = figures.models if figures is not None else []
        if not rows:
            return "empty"
        return format_html_join(mark_safe("<br>"), "{}: {} entries, {}", (
            (r["model"], r["entries"], filesizeformat(r["bytes"])) for r in rows
        ))


@admin.register(User)
class UserAdmin(admin.ModelAdmin):
    list_display = ("email", "tenant", "is_staff", "is_active", "date_joined")
    list_filter = ("is_staff", "is_active")
    search_fields = ("email", "tenant__name")
    exclude = ("password", "user_permissions", "groups")
    readonly_fields = ("last_login", "date_joined")
    autocomplete_fields = ("tenant",)


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ("prefix", "tenant", "name", "created_at", "last_used_at", "revoked_at")
    list_filter = ("revoked_at",)
    search_fields = ("prefix", "name", "tenant__name")
    fields = ("prefix", "tenant", "name", "created_by", "created_at", "last_used_at", "revoked_at")
    readonly_fields = ("prefix", "tenant", "created_by", "created_at", "last_used_at", "revoked_at")
    actions = ["revoke"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    @admin.action(description="Revoke the selected keys (they fail at once)")
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        count = queryset.filter(revoked_at__isnull=True).update(revoked_at=timezone.now())
        auth_epoch_bump()
        self.message_user(request, f"Revoked {count} key(s).", messages.SUCCESS)


class UsageFilterForm(forms.Form):
    """The usage page's filters (GET): a range of UTC days, optionally one tenant and one model, a metric."""

    date_from = forms.DateField(label="From", widget=forms.DateInput(attrs={"type": "date"}))
    date_to = forms.DateField(label="To", widget=forms.DateInput(attrs={"type": "date"}))
    tenant = forms.ModelChoiceField(queryset=Tenant.objects.order_by("name"), required=False, empty_label="all tenants")
    model = forms.ChoiceField(required=False)
    metric = forms.ChoiceField(choices=list(USAGE_METRICS.items()), initial="texts", required=False)

    def __init__(self, data: Any, **kwargs: Any) -> None:
        today = time_now().date()
        defaults = {"date_from": (today - timedelta(days=USAGE_DEFAULT_DAYS - 1)).isoformat(),
                    "date_to": today.isoformat(), "metric": "texts"}
        super().__init__({**defaults, **{k: v for k, v in data.items() if v}}, **kwargs)
        cast(forms.ChoiceField, self.fields["model"]).choices = [("", "all models"), *((m, m) for m in usage_models())]

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        start, end = data.get("date_from"), data.get("date_to")
        if isinstance(start, date) and isinstance(end, date):
            if end < start:
                raise forms.ValidationError("The range ends before it starts.")
            if (end - start).days >= 366:
                raise forms.ValidationError("At most 366 days at once.")
        return data

    def usage(self) -> UsageDaily:
        """The filtered usage; call after is_valid()."""
        d = self.cleaned_data
        tenant = d.get("tenant")
        return usage_daily(date_from=d["date_from"], date_to=d["date_to"], tenant_id=tenant.pk if tenant else None,
                           model=d.get("model") or None, metric=d.get("metric") or "texts")


@admin.register(DailyUsage)
class DailyUsageAdmin(admin.ModelAdmin):
    list_display = ("day", "tenant", "model", "cache_hits", "cache_misses", "tokens", "compute_ms")
    list_filter = ("day", "model", "tenant")
    search_fields = ("tenant__name", "model")
    date_hierarchy = "day"

    def get_urls(self) -> list[URLPattern]:
        view = self.admin_site.admin_view
        return [
            path("report/", view(self.report_view), name="accounts_dailyusage_report"),
            path("report.csv", view(self.csv_view), name="accounts_dailyusage_csv"),
            *super().get_urls(),
        ]

    def _filtered(self, request: HttpRequest) -> UsageFilterForm:
        if not self.has_view_permission(request):
            raise PermissionDenied
        usage_flush()  # the counters still in Redis first, so the figures run up to now
        return UsageFilterForm(request.GET)

    def report_view(self, request: HttpRequest) -> TemplateResponse:
        """The usage page: a stacked bar per day (a segment per tenant and model), totals, a CSV link."""
        form = self._filtered(request)
        context: dict[str, Any] = {**self.admin_site.each_context(request), "opts": self.opts, "form": form,
                                   "title": "Usage per day, tenant and model"}
        if form.is_valid():
            usage = form.usage()
            colors = series_colors(len(usage.series))
            unit = USAGE_METRICS[usage.metric]
            context.update(
                usage=usage,
                unit=unit,
                chart=stacked_bars_svg(
                    labels=[d.isoformat() for d in usage.days],
                    series=[ChartSeries(s.label, s.values, c) for s, c in zip(usage.series, colors, strict=True)],
                    title=f"{unit} per day, {usage.date_from} to {usage.date_to}", unit=unit),
                legend=[(s, c, number_text(s.total)) for s, c in zip(usage.series, colors, strict=True)],
                totals=[(USAGE_METRICS[m], number_text(v)) for m, v in usage.totals.items()],
                csv_url=reverse("admin:accounts_dailyusage_csv") + "?" + request.GET.urlencode(),
            )
        return TemplateResponse(request, "admin/accounts/dailyusage/report.html", context)

    def csv_view(self, request: HttpRequest) -> HttpResponse:
        """The usage page's rows as CSV (a row per day, tenant and model; CSV_COLUMNS), same filters."""
        form = self._filtered(request)
        if not form.is_valid():
            return HttpResponse(form.errors.as_text(), status=400, content_type="text/plain; charset=utf-8")
        usage = form.usage()
        response = HttpResponse(content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="usage-{usage.date_from}-{usage.date_to}.csv"'
        writer = csv.writer(response)
        writer.writerow(CSV_COLUMNS)
        for r in usage.rows:
            writer.writerow([r.day.isoformat(), r.tenant.pk, csv_text(r.tenant.name), csv_text(r.model), r.cache_hits,
                             r.cache_misses,
                             r.cache_hits + r.cache_misses, r.tokens, round(r.compute_ms, 3)])
        return response

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: DailyUsage | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: DailyUsage | None = None) -> bool:
        return False
