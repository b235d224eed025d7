from __future__ import annotations

from django.db import models
from django.utils import timezone


class CachedEmbedding(models.Model):
    """One stored vector: the model's output for one text, as float32 little-endian bytes.

    Key: sha256 of the model input (prompt + text) + model + model_version + scope, where
    scope is the tenant's id or 0 for the shared public scope. The text itself is never
    stored. Rows are immutable: writers use INSERT ... ON CONFLICT DO NOTHING (cache.py).
    """

    PUBLIC_SCOPE = 0

    text_sha256 = models.BinaryField(max_length=32)
    model = models.CharField(max_length=200)
    model_version = models.CharField(max_length=64)
    scope = models.BigIntegerField(help_text="Tenant id, or 0 for the public scope.")
    dims = models.PositiveIntegerField()
    tokens = models.PositiveIntegerField()
    vector = models.BinaryField()
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["text_sha256", "model", "model_version", "scope"], name="cache_key"),
        ]
        indexes = [models.Index(fields=["scope", "model"])]

    def __str__(self) -> str:
        return f"{self.model}@{self.model_version} scope={self.scope} {bytes(self.text_sha256).hex()[:12]}"
