"""The Batch API's writes: files (upload, delete) and batches (create, cancel, bring up to date).

A batch runs as jobs: batch_create checks every line (batches/lines.py), counts all the valid
lines' inputs against the tenant's quota at once, and makes one job per (model, options) group
in one transaction, so a batch is accepted whole or not at all. batch_sync, called by every read
of a batch, moves it along from its jobs: expired once its completion window ran out, and
finalized (output and error files written) once every job ended, by exactly one read at a time
(a conditional UPDATE claims it, with a lease another read takes over if that one died).
DECISIONS #50.
"""

from __future__ import annotations

import logging
import secrets
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import numpy as np
import orjson
from django.conf import settings
from django.core.files.uploadedfile import UploadedFile
from django.db import transaction
from django.db.models import F, Q, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from accounts.models import Tenant
from accounts.quotas import quota_consume, quota_refund
from batches.lines import Refused, Request, lines_read, requests_grouped
from batches.models import Batch, BatchFile, BatchFilePart
from batches.selectors import batch_get, file_bytes, file_get
from embeddings import cache
from embeddings.encoding import vector_encode, vectors_shape
from embeddings.jobs import job_cancel, job_create
from embeddings.models import Job, JobChunk
from embeddings.registry import model_get
from embedplatform.errors import InvalidInput, PayloadTooLarge

logger = logging.getLogger(__name__)

ENDPOINTS = ("/v1/embeddings",)
COMPLETION_WINDOWS = {"24h": timedelta(hours=24)}
ENDPOINT_UNSUPPORTED = ("endpoint {endpoint} is not supported here: this platform's batches run {supported} "
                        "(embeddings) only.")
WINDOW_UNSUPPORTED = "completion_window must be 24h, not {window}."
PURPOSE_NOT_BATCH = "The file {file_id} has purpose {purpose}; a batch's input is a file uploaded with purpose batch."
FILE_TOO_LARGE = "The file is {size} bytes; the limit is {limit}."
FILE_EMPTY = "The file is empty: send a JSONL file, one request per line."
TOO_MANY_REQUESTS = "The file has {lines} requests; a batch takes at most {limit}."
TOO_MANY_INPUTS = ("The batch's requests hold {texts} inputs together; your tier ({tier}) allows at most {limit} "
                   "per batch (its max_job_texts).")
NO_VALID_LINE = "No line of the file is a valid request; each line's error is listed in `errors`."
ERRORS_KEPT = 1000  # refused lines listed in a failed batch's `errors` (all are counted)
BATCH_CANCELLED = "This request was not run: the batch was cancelled first."
BATCH_EXPIRED = "This request could not be executed before the completion window expired."
RESULT_GONE = ("This request's vectors are no longer in the cache (deleted or pruned before the batch was "
               "finalized); send it again.")


# --- files ----------------------------------------------------------------------------------------

def _parts_write(file: BatchFile, chunks: Iterator[bytes]) -> int:
    """Stores the bytes as the file's parts (BATCH_FILE_PART_BYTES each, the last shorter); returns their size."""
    size, seq, buffer = 0, 0, bytearray()
    limit = settings.BATCH_FILE_PART_BYTES

    def flush(data: bytes) -> None:
        nonlocal seq
        BatchFilePart.objects.create(file=file, seq=seq, data=data)
        seq += 1

    for chunk in chunks:
        size += len(chunk)
        buffer += chunk
        while len(buffer) >= limit:
            flush(bytes(buffer[:limit]))
            del buffer[:limit]
    if buffer:
        flush(bytes(buffer))
    return size


def file_create(*, tenant: Tenant, upload: UploadedFile, purpose: str) -> BatchFile:
    """Stores an uploaded file (purpose `batch`). PayloadTooLarge over BATCH_MAX_FILE_BYTES,
    InvalidInput for an empty file. Its lines are checked when a batch uses it."""
    if upload.size is not None and upload.size > settings.BATCH_MAX_FILE_BYTES:
        raise PayloadTooLarge(FILE_TOO_LARGE.format(size=upload.size, limit=settings.BATCH_MAX_FILE_BYTES),
                              param="file")
    if not upload.size:
        raise InvalidInput(FILE_EMPTY, param="file")
    with transaction.atomic():
        file = BatchFile.objects.create(tenant=tenant, purpose=purpose, filename=(upload.name or "upload.jsonl")[:255])
        file.bytes = _parts_write(file, upload.chunks(settings.BATCH_FILE_PART_BYTES))
        file.save(update_fields=["bytes"])
    return file


def file_delete(*, tenant: Tenant, file_id: str) -> BatchFile:
    """Deletes the tenant's file (NotFound otherwise). A batch keeps running without its input
    file (its requests were read at creation); a deleted output file is gone from its batch."""
    file = file_get(tenant=tenant, file_id=file_id)
    file.delete()
    file.id = file_id  # delete() clears nothing but the caller answers with the id
    return file


# --- batches --------------------------------------------------------------------------------------

def batch_create(*, tenant: Tenant, input_file_id: str, endpoint: str, completion_window: str,
                 metadata: dict[str, str] | None = None) -> Batch:
    """Checks the file's lines and runs the valid ones as jobs, all or nothing.

    A batch with no valid line is stored as failed, its lines' errors in `errors`. Raises
    InvalidInput (endpoint, completion window, a file that is not a batch input), NotFound (the
    file), PayloadTooLarge (more than BATCH_MAX_REQUESTS lines, or more inputs than the tier's
    max_job_texts) and QuotaExceeded (the inputs, counted once for the whole batch).
    """
    if endpoint not in ENDPOINTS:
        raise InvalidInput(ENDPOINT_UNSUPPORTED.format(endpoint=endpoint, supported=", ".join(ENDPOINTS)),
                           param="endpoint", code="unsupported_endpoint")
    if completion_window not in COMPLETION_WINDOWS:
        raise InvalidInput(WINDOW_UNSUPPORTED.format(window=completion_window), param="completion_window")
    file = file_get(tenant=tenant, file_id=input_file_id, param="input_file_id")
    if file.purpose != BatchFile.Purpose.BATCH:
        raise InvalidInput(PURPOSE_NOT_BATCH.format(file_id=file.id, purpose=file.purpose), param="input_file_id")
    lines = lines_read(file_bytes(file), tenant=tenant, endpoint=endpoint)
    if len(lines) > settings.BATCH_MAX_REQUESTS:
        raise PayloadTooLarge(TOO_MANY_REQUESTS.format(lines=len(lines), limit=settings.BATCH_MAX_REQUESTS),
                              param="input_file_id", code="batch_too_large")
    now = timezone.now()
    common = {"tenant": tenant, "endpoint": endpoint, "completion_window": completion_window,
              "input_file_id": file.id, "metadata": metadata, "total": len(lines), "created_at": now}
    refused = [line for line in lines if isinstance(line, Refused)]
    groups = requests_grouped(lines)
    if not groups:
        errors = [{"code": r.error["code"], "line": r.line, "message": r.error["message"], "param": r.error["param"]}
                  for r in refused[:ERRORS_KEPT]]
        if not lines:
            errors = [{"code": "empty_file", "line": None, "message": FILE_EMPTY, "param": "input_file_id"}]
        return Batch.objects.create(**common, status=Batch.Status.FAILED, ends_as=Batch.Status.FAILED,
                                    errors=errors, failed=len(lines), failed_at=now)
    texts = sum(len(r.texts) for requests in groups.values() for r in requests)
    tier = tenant.tier
    limit = min(tier.max_job_texts, settings.JOB_MAX_TEXTS)
    if texts > limit:
        raise PayloadTooLarge(TOO_MANY_INPUTS.format(texts=texts, tier=tier.name, limit=limit),
                              param="input_file_id", code="batch_too_large")
    quota = quota_consume(tenant=tenant, texts=texts)
    try:
        with transaction.atomic():
            jobs: list[Job] = []
            where: dict[int, dict[str, Any]] = {}
            for requests in groups.values():
                job = job_create(tenant=tenant, texts=[t for r in requests for t in r.texts],
                                 options=requests[0].options, count_quota=False)
                start = 0
                for r in requests:
                    where[r.line] = {"g": len(jobs), "s": start, "n": len(r.texts), "e": r.encoding_format}
                    start += len(r.texts)
                jobs.append(job)
            plan = {"lines": [{"c": line.custom_id, **where[line.line]} if isinstance(line, Request) else
                              {"c": line.custom_id, "x": line.status, "err": line.error} for line in lines]}
            models = {job.model for job in jobs}
            batch = Batch.objects.create(
                **common, status=Batch.Status.IN_PROGRESS, in_progress_at=now,
                expires_at=now + COMPLETION_WINDOWS[completion_window], failed=len(refused),
                model=models.pop() if len(models) == 1 else "", plan=plan,
                groups=[{"job": str(job.pk), "lines": sum(1 for w in where.values() if w["g"] == i)}
                        for i, job in enumerate(jobs)],
            )
            batch.jobs.set(jobs)
    except BaseException:
        quota_refund(tenant=tenant, texts=texts, state=quota)
        raise
    return batch


def batch_cancel(*, tenant: Tenant, batch_id: str) -> Batch:
    """Cancels an in-progress batch: its jobs are cancelled (queued work dropped); lines already
    answered stay in its output file, the others go to its error file. A batch that is ending
    or ended is returned as it is."""
    batch = batch_get(tenant=tenant, batch_id=batch_id)
    stopped = Batch.objects.filter(pk=batch.pk, status=Batch.Status.IN_PROGRESS).update(
        status=Batch.Status.CANCELLING, cancelling_at=timezone.now(), ends_as=Batch.Status.CANCELLED)
    if stopped:
        _jobs_stop(batch)
    batch.refresh_from_db()
    return batch_sync(batch)


def _jobs_stop(batch: Batch) -> None:
    for job_id in batch.jobs.filter(status__in=[Job.Status.QUEUED, Job.Status.RUNNING]).values_list("pk", flat=True):
        job_cancel(tenant=batch.tenant, job_id=job_id)


def batch_sync(batch: Batch) -> Batch:
    """Brings a batch up to date with its jobs; every read calls it. A batch past its completion
    window is expired (its jobs cancelled); once all its jobs ended, one caller finalizes it
    (writes the output and error files) while the others see it `finalizing`. Idempotent."""
    if batch.is_final:
        return batch
    now = timezone.now()
    past_window = batch.status == Batch.Status.IN_PROGRESS and batch.expires_at and now >= batch.expires_at
    if past_window and Batch.objects.filter(pk=batch.pk, status=Batch.Status.IN_PROGRESS).update(
            ends_as=Batch.Status.EXPIRED):
        _jobs_stop(batch)
    if batch.jobs.filter(status__in=[Job.Status.QUEUED, Job.Status.RUNNING]).exists():
        return batch
    token = secrets.token_hex(8)
    claimed = (
        Batch.objects.filter(pk=batch.pk, status__in=[Batch.Status.IN_PROGRESS, Batch.Status.CANCELLING,
                                                      Batch.Status.FINALIZING])
        .filter(Q(finalize_until__isnull=True) | Q(finalize_until__lt=now))
        .update(status=Batch.Status.FINALIZING, finalizing_at=Coalesce(F("finalizing_at"), Value(now)),
                finalizer=token, finalize_until=now + timedelta(seconds=settings.BATCH_FINALIZE_LEASE_SECONDS))
    )
    if claimed:
        try:
            _finalize(batch.pk, token)
        except _TakenOver:
            logger.warning("batch %s: finalized by another reader after this one's lease ran out", batch.pk)
    batch.refresh_from_db()
    return batch


class _TakenOver(Exception):
    """The finalizing read's lease was taken over: its writes are rolled back."""


@dataclass
class _Results:
    """A job's answers, by its text index: vectors as asked, tokens, cached flags, and which exist."""

    job: Job
    vectors: np.ndarray
    tokens: np.ndarray
    cached: np.ndarray
    present: np.ndarray


def _job_results(job: Job) -> _Results:
    """Every vector of a succeeded job, read from the cache as GET /v1/jobs/{id}/results reads them."""
    opts = job.options or {}
    normalize = opts.get("normalize")
    if normalize is None:
        spec = model_get(job.model)
        normalize = spec.normalize if spec is not None else True
    raw: np.ndarray | None = None
    tokens = np.zeros(job.total, dtype=np.int64)
    cached = np.zeros(job.total, dtype=bool)
    present = np.zeros(job.total, dtype=bool)
    for chunk in JobChunk.objects.filter(job=job).order_by("seq").iterator(chunk_size=50):
        keys = [cache.text_key(t) for t in chunk.texts]
        hits = cache.cache_lookup(model=job.model, version=job.model_version, keys=list(set(keys)),
                                  scopes=cache.read_scopes(job.scope))
        for i, key in enumerate(keys):
            hit = hits.get(key)
            if hit is None:
                continue
            if raw is None:
                raw = np.zeros((job.total, hit.vector.shape[0]), dtype=np.float32)
            at = chunk.start + i
            raw[at], tokens[at], present[at] = hit.vector, hit.tokens, True
            cached[at] = chunk.cached_flags[i:i + 1] == "1"
    if raw is None:
        raw = np.zeros((job.total, 1), dtype=np.float32)
    vectors = vectors_shape(raw, dimensions=opts.get("dimensions"), normalize=normalize)
    return _Results(job=job, vectors=vectors, tokens=tokens, cached=cached, present=present)


@dataclass
class _FileWriter:
    """An output or error file written line by line as parts, created on its first line."""

    tenant: Tenant
    filename: str
    file: BatchFile | None = None
    buffer: bytearray = field(default_factory=bytearray)
    lines: int = 0
    size: int = 0
    seq: int = 0

    def write(self, line: dict[str, Any]) -> None:
        if self.file is None:
            self.file = BatchFile.objects.create(tenant=self.tenant, purpose=BatchFile.Purpose.BATCH_OUTPUT,
                                                 filename=self.filename)
        data = orjson.dumps(line, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n"
        self.buffer += data
        self.size += len(data)
        self.lines += 1
        if len(self.buffer) >= settings.BATCH_FILE_PART_BYTES:
            self._flush()

    def _flush(self) -> None:
        if self.buffer and self.file is not None:
            BatchFilePart.objects.create(file=self.file, seq=self.seq, data=bytes(self.buffer))
            self.seq += 1
            self.buffer.clear()

    def close(self) -> BatchFile | None:
        self._flush()
        if self.file is not None:
            self.file.bytes = self.size
            self.file.save(update_fields=["bytes"])
        return self.file


def _request_ids() -> tuple[str, str]:
    return f"batch_req_{uuid.uuid4().hex}", f"req_{uuid.uuid4().hex}"


def _answer(custom_id: str, status: int, body: dict[str, Any]) -> dict[str, Any]:
    line_id, request_id = _request_ids()
    return {"id": line_id, "custom_id": custom_id,
            "response": {"status_code": status, "request_id": request_id, "body": body}, "error": None}


def _not_run(custom_id: str, code: str, message: str) -> dict[str, Any]:
    line_id, _ = _request_ids()
    return {"id": line_id, "custom_id": custom_id, "response": None, "error": {"code": code, "message": message}}


def _finalize(batch_id: str, token: str) -> None:
    """Writes the output file (one line per answered request, in input order: its /v1/embeddings
    body, float vectors as the float32 numbers they are, each at its shortest round-trip form:
    the same float32 values as /v1/embeddings', about half the text) and the error file (refused lines, and lines whose job failed or was cancelled), and
    ends the batch, in one transaction that commits only while `token` still holds the lease."""
    batch = Batch.objects.select_related("tenant").get(pk=batch_id)
    jobs = {str(j.pk): j for j in batch.jobs.all()}
    groups = [jobs[g["job"]] for g in batch.groups or []]
    results: dict[int, _Results] = {}
    now = timezone.now()
    completed = tokens_used = tokens_cached = 0
    with transaction.atomic():
        out = _FileWriter(batch.tenant, f"{batch.id}_output.jsonl")
        err = _FileWriter(batch.tenant, f"{batch.id}_error.jsonl")
        for line in (batch.plan or {}).get("lines", []):
            custom_id = line["c"]
            if "x" in line:  # refused at creation
                err.write(_answer(custom_id, line["x"], {"error": line["err"]}))
                continue
            job = groups[line["g"]]
            if job.status != Job.Status.SUCCEEDED:
                if job.status == Job.Status.FAILED:
                    err.write(_answer(custom_id, 500, {"error": {"message": job.error or "The job failed.",
                                                                 "type": "server_error", "param": None,
                                                                 "code": "job_failed"}}))
                elif batch.ends_as == Batch.Status.EXPIRED:
                    err.write(_not_run(custom_id, "batch_expired", BATCH_EXPIRED))
                else:
                    err.write(_not_run(custom_id, "batch_cancelled", BATCH_CANCELLED))
                continue
            if line["g"] not in results:
                results[line["g"]] = _job_results(job)
            found = results[line["g"]]
            span = slice(line["s"], line["s"] + line["n"])
            if not found.present[span].all():
                err.write(_answer(custom_id, 500, {"error": {"message": RESULT_GONE, "type": "server_error",
                                                             "param": None, "code": "result_missing"}}))
                continue
            n_tokens = int(found.tokens[span].sum())
            body = {
                "object": "list",
                "data": [{"object": "embedding", "index": i,
                          "embedding": vector_encode(v, line["e"]), "cached": bool(c)}
                         for i, (v, c) in enumerate(zip(found.vectors[span], found.cached[span], strict=True))],
                "model": job.model,
                "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens},
            }
            out.write(_answer(custom_id, 200, body))
            completed += 1
            tokens_used += n_tokens
            tokens_cached += int(found.tokens[span][found.cached[span]].sum())
        output_file, error_file = out.close(), err.close()
        ends = batch.ends_as
        ended = {"status": ends, "finalizer": "", "finalize_until": None, "completed": completed,
                 "failed": batch.total - completed, "output_file": output_file, "error_file": error_file,
                 "usage": {"input_tokens": tokens_used, "input_tokens_details": {"cached_tokens": tokens_cached},
                           "output_tokens": 0, "output_tokens_details": {"reasoning_tokens": 0},
                           "total_tokens": tokens_used},
                 f"{ends}_at": now}
        if not Batch.objects.filter(pk=batch.pk, finalizer=token, status=Batch.Status.FINALIZING).update(**ended):
            raise _TakenOver
