from __future__ import annotations

import uuid
from typing import Any

import orjson
from django.db import models
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models.functions import Coalesce
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
    # Hit stats, written in batches by the usage flush (embeddings/retention.py), never on the hit
    # path; precise to USAGE_FLUSH_SECONDS. An entry never hit was last used when it was created.
    # db_default: cache_upsert's raw INSERT names no stats columns.
    last_hit_at = models.DateTimeField(null=True, blank=True)
    hit_count = models.BigIntegerField(default=0, db_default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["text_sha256", "model", "model_version", "scope"], name="cache_key"),
        ]
        indexes = [
            models.Index(fields=["scope", "model"]),
            # cache_prune walks entries by last use, oldest first (embeddings/retention.py).
            models.Index(Coalesce("last_hit_at", "created_at"), name="cache_last_used"),
        ]

    def __str__(self) -> str:
        return f"{self.model}@{self.model_version} scope={self.scope} {bytes(self.text_sha256).hex()[:12]}"


class Job(models.Model):
    """An asynchronous embedding job. Postgres is its source of truth; the broker only signals.

    States: queued -> running -> succeeded | failed; queued/running -> cancelled (POST .../cancel).
    `done` counts texts whose vectors are stored (progress); `cached` those that were already in
    the cache. Texts live in JobChunk rows; vectors live in the cache table under `scope`.
    """

    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        CANCELLED = "cancelled"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey("accounts.Tenant", on_delete=models.CASCADE, related_name="jobs")
    model = models.CharField(max_length=200)
    model_version = models.CharField(max_length=64)
    scope = models.BigIntegerField(help_text="Cache scope the vectors are written to (tenant id or 0).")
    options = models.JSONField(default=dict, blank=True, help_text="normalize, dimensions, input_type, public.")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    total = models.PositiveIntegerField()
    done = models.PositiveIntegerField(default=0)
    cached = models.PositiveIntegerField(default=0)
    priority = models.SmallIntegerField(default=0, help_text="The tier's priority when the job was made.")
    served_at = models.DateTimeField(null=True, blank=True, help_text="Last time a chunk was claimed (fair turns).")
    error = models.TextField(blank=True, default="")
    webhook_url = models.URLField(max_length=2000, blank=True, default="")
    webhook_status = models.CharField(max_length=16, blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["tenant", "-created_at"]), models.Index(fields=["status"])]

    def __str__(self) -> str:
        return f"job {self.id} ({self.status} {self.done}/{self.total})"

    @property
    def is_final(self) -> bool:
        return self.status in (self.Status.SUCCEEDED, self.Status.FAILED, self.Status.CANCELLED)


def texts_dumps(texts: list[str]) -> bytes:
    """A list of texts as UTF-8 JSON (NUL as \\u0000). Raises orjson.JSONEncodeError for a lone
    surrogate, which the API refuses before (embeddings/serializers.py)."""
    return orjson.dumps(texts)


def texts_loads(raw: bytes | bytearray | memoryview) -> list[str]:
    """texts_dumps' inverse; takes bytes or a memoryview, as a bytea column reads."""
    return orjson.loads(raw)


class TextListField(models.BinaryField):
    """A list of texts, stored as texts_dumps' UTF-8 JSON in a bytea column; list[str] in Python.

    Not jsonb, text or text[]: PostgreSQL refuses NUL (U+0000) in every text type (jsonb even
    as the escape \\u0000), while the sync path embeds such texts. JSON escapes it and bytea
    keeps any byte. Raw SQL reads the column as bytes: decode with texts_loads.
    """

    def from_db_value(self, value: bytes | memoryview | None, expression: Any,
                      connection: BaseDatabaseWrapper) -> list[str] | None:
        return None if value is None else texts_loads(value)

    def to_python(self, value: Any) -> Any:
        if isinstance(value, (bytes, bytearray, memoryview)):
            return texts_loads(value)
        return value

    def get_db_prep_value(self, value: Any, connection: BaseDatabaseWrapper, prepared: bool = False) -> Any:
        if isinstance(value, list):
            value = texts_dumps(value)
        return super().get_db_prep_value(value, connection, prepared)


class JobChunk(models.Model):
    """A slice of a job's texts (model inputs, prompt included), claimed by one worker at a time.

    queued -> running (claimed with a lease token and deadline) -> done; a lease that runs out
    is put back to queued by the sweeper, and a late finisher with an old token changes nothing.
    """

    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        DONE = "done"
        CANCELLED = "cancelled"

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="chunks")
    seq = models.PositiveIntegerField()
    start = models.PositiveIntegerField(help_text="Index of the chunk's first text in the job.")
    texts = TextListField(help_text="The chunk's model inputs: a JSON array of strings, as UTF-8 bytes.")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    attempts = models.PositiveSmallIntegerField(default=0)
    lease = models.CharField(max_length=32, blank=True, default="")
    lease_until = models.DateTimeField(null=True, blank=True)
    cached_flags = models.TextField(blank=True, default="", help_text="'1' per text that was a cache hit, else '0'.")
    job_id: uuid.UUID  # the `job` column (declared for the type checker)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["job", "seq"], name="job_chunk_seq")]
        indexes = [
            models.Index(fields=["status"], name="chunk_queued", condition=models.Q(status="queued")),
            models.Index(fields=["status", "lease_until"], name="chunk_running", condition=models.Q(status="running")),
        ]

    def __str__(self) -> str:
        return f"{self.job_id}#{self.seq} {self.status}"
