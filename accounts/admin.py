"""The operators' admin: tenants (with users and keys inline), tiers, users, API keys, usage.

Key hashes and passwords are never shown; keys appear by prefix only and are revoked with an
action, not edited. A tenant's webhook secret appears masked and is replaced with an action.
Usage rows are read-only.
"""

from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.template.defaultfilters import filesizeformat
from django.utils import timezone
from django.utils.html import format_html_join
from django.utils.safestring import mark_safe

from accounts.authcache import auth_epoch_bump
from accounts.models import ApiKey, DailyUsage, Tenant, Tier, User, _webhook_secret
from accounts.services import tenant_cache_figures
from embedplatform.masking import secret_mask


@admin.register(Tier)
class TierAdmin(admin.ModelAdmin):
    list_display = ("name", "daily_limit", "monthly_limit", "requests_per_minute", "max_batch_size",
                    "max_job_texts", "server_compute", "priority")
    search_fields = ("name",)


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


@admin.register(Tenant)
class TenantAdmin(admin.ModelAdmin):
    list_display = ("name", "id", "tier", "is_active", "created_at")
    list_filter = ("tier", "is_active")
    search_fields = ("name", "users__email")
    exclude = ("webhook_secret",)  # shown masked (webhook_secret_masked); changed only by the action
    readonly_fields = ("webhook_secret_masked", "cache_size")
    inlines = [UserInline, ApiKeyInline]
    actions = ["regenerate_webhook_secret"]

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


@admin.register(DailyUsage)
class DailyUsageAdmin(admin.ModelAdmin):
    list_display = ("day", "tenant", "model", "cache_hits", "cache_misses", "tokens", "compute_ms")
    list_filter = ("day", "model", "tenant")
    search_fields = ("tenant__name", "model")
    date_hierarchy = "day"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: DailyUsage | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: DailyUsage | None = None) -> bool:
        return False
