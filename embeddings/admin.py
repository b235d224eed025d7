"""Read-only views of the embedding cache (vectors are never dumped) and of jobs; the workers page;
the admin index's work panel; the tenant admin with the tenant's jobs.

Jobs list newest first with their progress, rate and ETA (embeddings.admin_selectors), are found
by a prefix of their id, and are cancelled with an action or the button on their page (the API's
job_cancel). The workers page (/admin/embeddings/job/workers/) shows every live drain loop. The
tenant admin is accounts' TenantAdmin plus a running-jobs column and inline: accounts sits below
embeddings and knows no jobs, so the subclass is registered here in its place.
"""

from __future__ import annotations

import uuid
from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import Count, Q, QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString
from redis.exceptions import RedisError

from accounts.admin import TenantAdmin
from accounts.models import Tenant, User
from embeddings.admin_selectors import ACTIVE, duration_text, job_progress, worker_overview
from embeddings.jobs import job_cancel
from embeddings.models import CachedEmbedding, Job
from embedplatform.charts import number_text

# The admin index shows the work waiting per model above the apps (templatetags/operators.py).
admin.site.index_template = "admin/operators_index.html"


def progress_html(job: Job) -> SafeString:
    """A bar and `done/total (p%)`."""
    p = job_progress(job)
    return format_html('<progress value="{}" max="{}"></progress> {}/{} ({}%)', p.done, max(p.total, 1),
                       f"{p.done:,}", f"{p.total:,}", f"{p.percent:.1f}")


def rate_text(job: Job) -> str:
    rate = job_progress(job).rate
    return "-" if rate is None else f"{number_text(round(rate, 1))} texts/s"


def eta_text(job: Job) -> str:
    return duration_text(job_progress(job).eta_seconds)


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
        return False  # view only: the page shows no Save button

    def has_delete_permission(self, request: HttpRequest, obj: CachedEmbedding | None = None) -> bool:
        return False


class JobProgressColumns:
    """The progress, rate and ETA columns of a job, as the job list and a tenant's job inline show them."""

    @admin.display(description="progress")
    def progress(self, obj: Job) -> SafeString:
        return progress_html(obj)

    @admin.display(description="rate")
    def rate(self, obj: Job) -> str:
        return rate_text(obj)

    @admin.display(description="ETA")
    def eta(self, obj: Job) -> str:
        return eta_text(obj)


@admin.register(Job)
class JobAdmin(JobProgressColumns, admin.ModelAdmin):
    """Jobs, read-only (no Save button), newest first, with progress, rate and ETA; operators may
    cancel them (an action on the list, a button on the page: `cancel` permission = change_job)."""

    list_display = ("id", "tenant", "model", "status", "progress", "rate", "eta", "cached", "created_at",
                    "finished_at")
    list_filter = ("status", "model")
    # "^id": a prefix of the id as shown (with its dashes) finds the job; a tenant by name.
    search_fields = ("^id", "tenant__name")
    search_help_text = "The start of a job id (as shown, with its dashes), or a tenant's name."
    ordering = ("-created_at", "-id")
    fields = ("id", "tenant", "model", "model_version", "scope", "options", "status", "progress", "rate", "eta",
              "total", "done", "cached", "priority", "served_at", "error", "webhook_url", "webhook_status",
              "created_at", "started_at", "finished_at")
    readonly_fields = fields
    list_select_related = ("tenant",)
    actions = ["cancel"]

    def lookup_allowed(self, lookup: str, value: str, request: HttpRequest) -> bool:
        # The tenant list's "running / queued" link filters by tenant without a tenant filter in the sidebar.
        return lookup in ("tenant__id__exact", "status__in") or super().lookup_allowed(lookup, value, request)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Job | None = None) -> bool:
        return False  # view only: the page shows no Save button; cancelling needs has_cancel_permission

    def has_delete_permission(self, request: HttpRequest, obj: Job | None = None) -> bool:
        return False

    def has_cancel_permission(self, request: HttpRequest, obj: Job | None = None) -> bool:
        user = request.user
        return isinstance(user, User) and user.has_perm(f"{self.opts.app_label}.change_{self.opts.model_name}")

    def get_urls(self) -> list[URLPattern]:
        view = self.admin_site.admin_view
        return [
            path("workers/", view(self.workers_view), name="embeddings_job_workers"),
            path("<uuid:job_id>/cancel/", view(self.cancel_view), name="embeddings_job_cancel"),
            *super().get_urls(),
        ]

    def change_view(self, request: HttpRequest, object_id: str, form_url: str = "",
                    extra_context: dict[str, Any] | None = None) -> HttpResponse:
        job = self.get_object(request, object_id)
        extra = {**(extra_context or {}),
                 "can_cancel": job is not None and job.status in ACTIVE and self.has_cancel_permission(request, job)}
        return super().change_view(request, object_id, form_url, extra)

    @admin.action(description="Cancel the selected jobs (queued work is dropped)", permissions=["cancel"])
    def cancel(self, request: HttpRequest, queryset: QuerySet[Job]) -> None:
        cancelled = 0
        for job in queryset.select_related("tenant"):
            cancelled += job_cancel(tenant=job.tenant, job_id=job.pk).status == Job.Status.CANCELLED
        self.message_user(request, f"{cancelled} job(s) cancelled.", messages.SUCCESS)

    def cancel_view(self, request: HttpRequest, job_id: uuid.UUID) -> HttpResponse:
        """The job page's Cancel button (POST): job_cancel, then back to the page with a message."""
        return _cancel(self, request, job_id)

    def workers_view(self, request: HttpRequest) -> TemplateResponse:
        """Every live drain loop: models, texts/s, pass sizes, queue depth, last heartbeat; work per model."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        context: dict[str, Any] = {**self.admin_site.each_context(request), "opts": self.opts, "title": "Workers"}
        try:
            context["overview"] = worker_overview()
        except RedisError as exc:
            context["redis_error"] = f"Redis is unreachable ({exc.__class__.__name__}): no worker can be listed."
        return TemplateResponse(request, "admin/embeddings/job/workers.html", context)


def _cancel(job_admin: JobAdmin, request: HttpRequest, job_id: uuid.UUID) -> HttpResponse:
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    job = get_object_or_404(Job.objects.select_related("tenant"), pk=job_id)
    if not job_admin.has_cancel_permission(request, job):
        raise PermissionDenied
    before = job.status
    job = job_cancel(tenant=job.tenant, job_id=job.pk)
    if job.status == Job.Status.CANCELLED and before in ACTIVE:
        job_admin.message_user(request, f"Job {job.pk} cancelled; its queued work is dropped.", messages.SUCCESS)
    else:
        job_admin.message_user(request, f"Job {job.pk} was already {before}; nothing to cancel.", messages.WARNING)
    return HttpResponseRedirect(reverse("admin:embeddings_job_change", args=[job.pk]))


class TenantJobInline(JobProgressColumns, admin.TabularInline):
    """The tenant's queued and running jobs, newest first, on its page."""

    model = Job
    verbose_name = "queued or running job"
    verbose_name_plural = "queued and running jobs"
    fields = ("id", "model", "status", "progress", "rate", "eta", "created_at")
    readonly_fields = fields
    extra = 0
    max_num = 0
    can_delete = False
    show_change_link = True

    def get_queryset(self, request: HttpRequest) -> QuerySet[Job]:
        return super().get_queryset(request).filter(status__in=ACTIVE).order_by("-created_at")

    def has_add_permission(self, request: HttpRequest, obj: Tenant | None = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Tenant | None = None) -> bool:
        return False


admin.site.unregister(Tenant)


@admin.register(Tenant)
class TenantWithJobsAdmin(TenantAdmin):
    """accounts' TenantAdmin, plus the tenant's running jobs (a list column) and its queued and
    running jobs (an inline)."""

    list_display = (*TenantAdmin.list_display[:-1], "running_jobs", TenantAdmin.list_display[-1])
    inlines = [*TenantAdmin.inlines, TenantJobInline]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Tenant]:
        return super().get_queryset(request).annotate(
            jobs_running=Count("jobs", filter=Q(jobs__status=Job.Status.RUNNING), distinct=True),
            jobs_queued=Count("jobs", filter=Q(jobs__status=Job.Status.QUEUED), distinct=True))

    @admin.display(description="Jobs", ordering="jobs_running")
    def running_jobs(self, obj: Tenant) -> SafeString | str:
        """`N running, M queued`, linked to those jobs; "-" with none."""
        running, queued = getattr(obj, "jobs_running", 0), getattr(obj, "jobs_queued", 0)
        if not running and not queued:
            return "-"
        url = reverse("admin:embeddings_job_changelist") + f"?tenant__id__exact={obj.pk}&status__in=queued,running"
        return format_html('<a href="{}" style="white-space: nowrap">{} running, {} queued</a>', url, running, queued)
