"""Read-only views of the embedding cache (vectors are never dumped) and of jobs (with a cancel action)."""

from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from embeddings.jobs import job_cancel
from embeddings.models import CachedEmbedding, Job


@admin.register(CachedEmbedding)
class CachedEmbeddingAdmin(admin.ModelAdmin):
    list_display = ("key_hex", "model", "model_version", "scope", "dims", "tokens", "created_at", "last_hit_at",
                    "hit_count")
    list_filter = ("model", "model_version")
    search_fields = ("model", "=scope")
    fields = ("key_hex", "model", "model_version", "scope", "dims", "tokens", "created_at", "last_hit_at", "hit_count")
    readonly_fields = fields
    show_full_result_count = False  # COUNT(*) over a big cache on every page would be slow

    @admin.display(description="sha256")
    def key_hex(self, obj: CachedEmbedding) -> str:
        return bytes(obj.text_sha256).hex()

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: CachedEmbedding | None = None) -> bool:
        return request.method in ("GET", "HEAD")  # view only

    def has_delete_permission(self, request: HttpRequest, obj: CachedEmbedding | None = None) -> bool:
        return False


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    """Jobs, read-only, with their progress; operators may cancel them."""

    list_display = ("id", "tenant", "model", "status", "progress", "cached", "created_at", "finished_at")
    list_filter = ("status", "model")
    search_fields = ("=id", "tenant__name")
    readonly_fields = ("id", "tenant", "model", "model_version", "scope", "options", "status", "total", "done",
                       "cached", "priority", "served_at", "error", "webhook_url", "webhook_status", "created_at",
                       "started_at", "finished_at")
    fields = readonly_fields
    list_select_related = ("tenant",)
    actions = ["cancel"]

    @admin.display(description="done")
    def progress(self, obj: Job) -> str:
        return f"{obj.done}/{obj.total}"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Job | None = None) -> bool:
        return False

    @admin.action(description="Cancel the selected jobs (queued work is dropped)")
    def cancel(self, request: HttpRequest, queryset: QuerySet[Job]) -> None:
        cancelled = 0
        for job in queryset.select_related("tenant"):
            cancelled += job_cancel(tenant=job.tenant, job_id=job.pk).status == Job.Status.CANCELLED
        self.message_user(request, f"{cancelled} job(s) cancelled.", messages.SUCCESS)
