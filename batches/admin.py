"""Read-only views of the Batch API's files and batches (their bytes are never shown)."""

from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest

from batches.models import Batch, BatchFile


class _ReadOnly(admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(BatchFile)
class BatchFileAdmin(_ReadOnly):
    list_display = ("id", "tenant", "purpose", "filename", "bytes", "created_at")
    list_filter = ("purpose",)
    search_fields = ("id", "filename", "tenant__name")
    ordering = ("-created_at",)


@admin.register(Batch)
class BatchAdmin(_ReadOnly):
    list_display = ("id", "tenant", "status", "model", "total", "completed", "failed", "created_at")
    list_filter = ("status",)
    search_fields = ("id", "input_file_id", "tenant__name")
    ordering = ("-created_at",)
    exclude = ("plan",)
    filter_horizontal = ()
