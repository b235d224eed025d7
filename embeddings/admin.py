"""Read-only view of the embedding cache (vectors are shown by size, never dumped)."""

from django.contrib import admin

from embeddings.models import CachedEmbedding


@admin.register(CachedEmbedding)
class CachedEmbeddingAdmin(admin.ModelAdmin):
    list_display = ("key_hex", "model", "model_version", "scope", "dims", "tokens", "created_at")
    list_filter = ("model", "model_version")
    search_fields = ("model", "=scope")
    fields = ("key_hex", "model", "model_version", "scope", "dims", "tokens", "created_at")
    readonly_fields = fields
    show_full_result_count = False  # COUNT(*) over a big cache on every page would be slow

    @admin.display(description="sha256")
    def key_hex(self, obj: CachedEmbedding) -> str:
        return bytes(obj.text_sha256).hex()

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return request.method in ("GET", "HEAD")  # view only

    def has_delete_permission(self, request, obj=None) -> bool:
        return False
