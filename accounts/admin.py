from django.contrib import admin

from accounts.models import ApiKey, Tenant, Tier, User


@admin.register(Tier)
class TierAdmin(admin.ModelAdmin):
    list_display = ("name", "daily_limit", "monthly_limit", "requests_per_minute", "max_batch_size", "server_compute", "priority")


class ApiKeyInline(admin.TabularInline):
    model = ApiKey
    fields = ("prefix", "name", "created_at", "last_used_at", "revoked_at")
    readonly_fields = fields
    extra = 0
    can_delete = False


@admin.register(Tenant)
class TenantAdmin(admin.ModelAdmin):
    list_display = ("name", "tier", "is_active", "created_at")
    list_filter = ("tier", "is_active")
    search_fields = ("name",)
    inlines = [ApiKeyInline]


@admin.register(User)
class UserAdmin(admin.ModelAdmin):
    list_display = ("email", "tenant", "is_staff", "is_active")
    search_fields = ("email",)
    exclude = ("password",)


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ("prefix", "tenant", "name", "created_at", "last_used_at", "revoked_at")
    readonly_fields = ("prefix", "key_hash", "created_at", "last_used_at")
    exclude = ("key_hash",)
