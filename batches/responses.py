"""What the Batch API answers, in OpenAI's shapes (the official SDK's `FileObject`, `Batch`,
`FileDeleted` and cursor pages parse them), each a TypedDict shape with its builder
(embedplatform/responses.py says how)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal, TypedDict

from rest_framework import serializers

from batches.models import Batch as BatchRow
from batches.models import BatchFile
from embeddings.models import Job


class FileObject(TypedDict):
    """An uploaded file (purpose batch) or a batch's output or error file (purpose batch_output)."""

    id: str
    object: Literal["file"]
    bytes: int
    created_at: Annotated[int, "Unix seconds."]
    expires_at: int | None
    filename: str
    purpose: Annotated[str, serializers.ChoiceField(choices=BatchFile.Purpose.values)]
    status: Literal["processed"]
    status_details: str | None


class FileList(TypedDict):
    object: Literal["list"]
    data: list[FileObject]
    first_id: str | None
    last_id: str | None
    has_more: Annotated[bool, "Pass the last id as ?after= for the next page."]


class FileDeleted(TypedDict):
    id: str
    object: Literal["file"]
    deleted: bool


class BatchRequestCounts(TypedDict):
    total: Annotated[int, "Lines of the input file."]
    completed: Annotated[int, "Lines answered (in the output file); while running, lines of finished jobs."]
    failed: Annotated[int, "Lines refused, or whose job failed or was cancelled (in the error file)."]


class BatchErrorItem(TypedDict):
    code: str | None
    line: Annotated[int | None, "The line of the input file (1-based)."]
    message: str
    param: str | None


class BatchErrors(TypedDict):
    """Why a batch failed: the first lines' errors (its requests all refused)."""

    object: Literal["list"]
    data: list[BatchErrorItem]


class InputTokensDetails(TypedDict):
    cached_tokens: Annotated[int, "Tokens of inputs served from the embedding cache."]


class OutputTokensDetails(TypedDict):
    reasoning_tokens: int


class BatchUsage(TypedDict):
    """The answered lines' tokens (once the batch ended)."""

    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails
    total_tokens: int


class Batch(TypedDict):
    """A batch of /v1/embeddings requests (OpenAI's Batch object); it runs as jobs."""

    id: str
    object: Literal["batch"]
    endpoint: str
    errors: BatchErrors | None
    input_file_id: str
    completion_window: str
    status: Annotated[str, serializers.ChoiceField(choices=BatchRow.Status.values)]
    output_file_id: str | None
    error_file_id: str | None
    created_at: int
    in_progress_at: int | None
    expires_at: int | None
    finalizing_at: int | None
    completed_at: int | None
    failed_at: int | None
    expired_at: int | None
    cancelling_at: int | None
    cancelled_at: int | None
    request_counts: BatchRequestCounts
    metadata: dict[str, str] | None
    model: str | None
    usage: BatchUsage | None


class BatchList(TypedDict):
    object: Literal["list"]
    data: list[Batch]
    first_id: str | None
    last_id: str | None
    has_more: Annotated[bool, "Pass the last id as ?after= for the next page."]


def _ts(at: datetime | None) -> int | None:
    return int(at.timestamp()) if at else None


def file_payload(file: BatchFile) -> FileObject:
    return {"id": file.id, "object": "file", "bytes": file.bytes, "created_at": int(file.created_at.timestamp()),
            "expires_at": _ts(file.expires_at), "filename": file.filename, "purpose": file.purpose,
            "status": "processed", "status_details": None}


def file_list_body(files: list[BatchFile], has_more: bool) -> FileList:
    return {"object": "list", "data": [file_payload(f) for f in files], "first_id": files[0].id if files else None,
            "last_id": files[-1].id if files else None, "has_more": has_more}


def file_deleted_body(file_id: str) -> FileDeleted:
    return {"id": file_id, "object": "file", "deleted": True}


def _counts(batch: BatchRow) -> BatchRequestCounts:
    """Final counts once it ended; while its jobs run, the lines of its finished jobs."""
    if batch.is_final or not batch.groups:
        return {"total": batch.total, "completed": batch.completed, "failed": batch.failed}
    status = {str(pk): s for pk, s in batch.jobs.values_list("pk", "status")}
    done = failed = 0
    for group in batch.groups:
        job_status = status.get(group["job"])
        if job_status == Job.Status.SUCCEEDED:
            done += group["lines"]
        elif job_status in (Job.Status.FAILED, Job.Status.CANCELLED):
            failed += group["lines"]
    return {"total": batch.total, "completed": done, "failed": batch.failed + failed}


def batch_payload(batch: BatchRow) -> Batch:
    errors: BatchErrors | None = {"object": "list", "data": batch.errors} if batch.errors else None
    return {
        "id": batch.id, "object": "batch", "endpoint": batch.endpoint, "errors": errors,
        "input_file_id": batch.input_file_id, "completion_window": batch.completion_window, "status": batch.status,
        "output_file_id": batch.output_file_id, "error_file_id": batch.error_file_id,
        "created_at": int(batch.created_at.timestamp()), "in_progress_at": _ts(batch.in_progress_at),
        "expires_at": _ts(batch.expires_at), "finalizing_at": _ts(batch.finalizing_at),
        "completed_at": _ts(batch.completed_at), "failed_at": _ts(batch.failed_at),
        "expired_at": _ts(batch.expired_at), "cancelling_at": _ts(batch.cancelling_at),
        "cancelled_at": _ts(batch.cancelled_at), "request_counts": _counts(batch), "metadata": batch.metadata,
        "model": batch.model or None, "usage": batch.usage,
    }


def batch_list_body(batches: list[BatchRow], has_more: bool) -> BatchList:
    return {"object": "list", "data": [batch_payload(b) for b in batches],
            "first_id": batches[0].id if batches else None, "last_id": batches[-1].id if batches else None,
            "has_more": has_more}
