"""OpenAI's Batch API on top of jobs: uploaded files and the batches that run them.

A file's bytes live in Postgres (BatchFilePart rows of up to BATCH_FILE_PART_BYTES each), so every
web process on every machine serves the same file and nothing depends on a local disk. A batch
is planned once, when it is created (batches/lines.py): its valid lines become one job per
(model, options) group (embeddings.jobs.job_create); the plan says which texts of which job
answer each line. Its status follows its jobs and is brought up to date on read
(batches/services.batch_sync), which also writes the output and error files once every job ended.
"""

from __future__ import annotations

import secrets
from typing import Any

import orjson
from django.db import models
from django.utils import timezone


def file_id_new() -> str:
    return f"file-{secrets.token_hex(12)}"


def batch_id_new() -> str:
    return f"batch_{secrets.token_hex(12)}"


class BatchFile(models.Model):
    """An uploaded input file (purpose `batch`) or a batch's output or error file (`batch_output`)."""

    class Purpose(models.TextChoices):
        BATCH = "batch"
        BATCH_OUTPUT = "batch_output"

    id = models.CharField(primary_key=True, max_length=40, default=file_id_new, editable=False)
    tenant = models.ForeignKey("accounts.Tenant", on_delete=models.CASCADE, related_name="batch_files")
    purpose = models.CharField(max_length=16, choices=Purpose.choices)
    filename = models.CharField(max_length=255)
    bytes = models.BigIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["tenant", "-created_at"])]

    def __str__(self) -> str:
        return f"{self.id} ({self.purpose}, {self.bytes} bytes)"


class BatchFilePart(models.Model):
    """A slice of a file's bytes, in order of `seq`."""

    file = models.ForeignKey(BatchFile, on_delete=models.CASCADE, related_name="parts")
    seq = models.PositiveIntegerField()
    data = models.BinaryField()
    file_id: str  # the `file` column (declared for the type checker)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["file", "seq"], name="batch_file_part_seq")]

    def __str__(self) -> str:
        return f"{self.file_id}#{self.seq}"


class PlanField(models.BinaryField):
    """The batch's plan (batches/lines.Plan as a dict) as orjson bytes in a bytea column: custom
    ids may hold any character, NUL included, which jsonb refuses."""

    def from_db_value(self, value: Any, expression: Any, connection: Any) -> dict | None:
        return None if value is None else orjson.loads(value)

    def to_python(self, value: Any) -> Any:
        if isinstance(value, (bytes, bytearray, memoryview)):
            return orjson.loads(value)
        return value

    def get_db_prep_value(self, value: Any, connection: Any, prepared: bool = False) -> Any:
        if isinstance(value, dict):
            value = orjson.dumps(value)
        return super().get_db_prep_value(value, connection, prepared)


class Batch(models.Model):
    """A batch of /v1/embeddings requests, run as jobs.

    States (OpenAI's): in_progress -> finalizing -> completed; in_progress -> cancelling ->
    (finalizing ->) cancelled (POST .../cancel); in_progress -> expired (its completion window
    ran out first); failed when no line of the file is a valid request. `ends_as` is the state
    finalization ends in (completed, cancelled or expired). Lines refused at creation are in
    the error file, with the lines whose job failed or was cancelled.
    """

    class Status(models.TextChoices):
        VALIDATING = "validating"
        FAILED = "failed"
        IN_PROGRESS = "in_progress"
        FINALIZING = "finalizing"
        COMPLETED = "completed"
        EXPIRED = "expired"
        CANCELLING = "cancelling"
        CANCELLED = "cancelled"

    FINAL = (Status.FAILED, Status.COMPLETED, Status.EXPIRED, Status.CANCELLED)

    id = models.CharField(primary_key=True, max_length=40, default=batch_id_new, editable=False)
    tenant = models.ForeignKey("accounts.Tenant", on_delete=models.CASCADE, related_name="batches")
    endpoint = models.CharField(max_length=64)
    completion_window = models.CharField(max_length=16)
    input_file_id = models.CharField(max_length=40, help_text="Kept when the file is deleted, as OpenAI does.")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.IN_PROGRESS)
    ends_as = models.CharField(max_length=16, choices=Status.choices, default=Status.COMPLETED)
    model = models.CharField(max_length=200, blank=True, default="", help_text="The lines' model, where they name one.")
    metadata = models.JSONField(null=True, blank=True)
    plan = PlanField(null=True, help_text="Each line's custom id and where its answer is (batches/lines.py).")
    errors = models.JSONField(null=True, blank=True, help_text="Why the batch failed: [{code, line, message, param}].")
    jobs = models.ManyToManyField("embeddings.Job", blank=True, related_name="batches")
    groups = models.JSONField(default=list, blank=True, help_text="Its jobs in plan order: [{job, lines}].")
    total = models.PositiveIntegerField(default=0)
    completed = models.PositiveIntegerField(default=0, help_text="Final count of lines answered (once finalized).")
    failed = models.PositiveIntegerField(default=0, help_text="Lines refused at creation; all failed lines once final.")
    usage = models.JSONField(null=True, blank=True)
    output_file = models.ForeignKey(BatchFile, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    error_file = models.ForeignKey(BatchFile, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    finalizer = models.CharField(max_length=32, blank=True, default="", help_text="Token of the read finalizing it.")
    finalize_until = models.DateTimeField(null=True, blank=True, help_text="When another read may take over.")
    created_at = models.DateTimeField(default=timezone.now)
    in_progress_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    finalizing_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    failed_at = models.DateTimeField(null=True, blank=True)
    expired_at = models.DateTimeField(null=True, blank=True)
    cancelling_at = models.DateTimeField(null=True, blank=True)
    cancelled_at = models.DateTimeField(null=True, blank=True)
    output_file_id: str | None  # the FK columns (declared for the type checker)
    error_file_id: str | None

    class Meta:
        verbose_name_plural = "batches"
        indexes = [models.Index(fields=["tenant", "-created_at"])]

    def __str__(self) -> str:
        return f"{self.id} ({self.status})"

    @property
    def is_final(self) -> bool:
        return self.status in self.FINAL
