"""Reads: jobs and their results. Every function takes `tenant=`; another tenant's job is NotFound."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

import numpy as np
from django.db.models import Q

from accounts.models import Tenant
from embeddings import cache
from embeddings.encoding import vectors_shape
from embeddings.models import Job, JobChunk
from embeddings.quantize import SCALED, OutputDtype, output_dtype_resolve
from embeddings.registry import model_get
from embedplatform.errors import Conflict, InvalidInput, NotFound

JOB_NOT_FOUND = "No job with id {job_id}."
JOB_NOT_FINISHED = "The job is {status} ({done}/{total} texts); results are ready when its status is succeeded."
MODEL_GONE = "`{model}` is no longer served, so its {dtype} ranges are unknown; ask for float, binary or ubinary."
BAD_CURSOR = "cursor is not one this API gave out; pass the `next_cursor` of the previous page."


def job_get(*, tenant: Tenant, job_id: str | uuid.UUID) -> Job:
    """The tenant's job; NotFound for an unknown id, a malformed id or another tenant's job."""
    try:
        pk = uuid.UUID(str(job_id))
    except ValueError:
        raise NotFound(JOB_NOT_FOUND.format(job_id=job_id), param="id") from None
    job = Job.objects.filter(tenant=tenant, pk=pk).first()
    if job is None:
        raise NotFound(JOB_NOT_FOUND.format(job_id=job_id), param="id")
    return job


def _cursor_encode(job: Job) -> str:
    return base64.urlsafe_b64encode(f"{job.created_at.isoformat()}|{job.pk}".encode()).decode().rstrip("=")


def _cursor_decode(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created, _, pk = raw.partition("|")
        return datetime.fromisoformat(created), uuid.UUID(pk)
    except (ValueError, UnicodeDecodeError):
        raise InvalidInput(BAD_CURSOR, param="cursor") from None


def job_list(*, tenant: Tenant, status: str | None = None, limit: int = 20, cursor: str | None = None) -> tuple[list[Job], str | None]:
    """A page of the tenant's jobs, newest first, and the cursor of the next page (None at the end)."""
    jobs = Job.objects.filter(tenant=tenant)
    if status:
        jobs = jobs.filter(status=status)
    if cursor:
        created, pk = _cursor_decode(cursor)
        jobs = jobs.filter(Q(created_at__lt=created) | Q(created_at=created, pk__lt=pk))
    page = list(jobs.order_by("-created_at", "-pk")[: limit + 1])
    more = len(page) > limit
    page = page[:limit]
    return page, (_cursor_encode(page[-1]) if more and page else None)


@dataclass(frozen=True)
class JobResult:
    index: int
    vector: np.ndarray
    cached: bool


def _ready(job: Job) -> None:
    if job.status != Job.Status.SUCCEEDED:
        raise Conflict(JOB_NOT_FINISHED.format(status=job.status, done=job.done, total=job.total), code="job_not_ready")


def job_output_dtype(job: Job, output_dtype: str) -> OutputDtype:
    """The results' output_dtype (a query parameter of the results, like encoding_format), scaled
    for int8/uint8 by the ranges of the job's own dimensions and normalize."""
    if output_dtype not in SCALED:
        return OutputDtype(output_dtype)
    spec = model_get(job.model)
    if spec is None:
        raise InvalidInput(MODEL_GONE.format(model=job.model, dtype=output_dtype), param="output_dtype")
    opts = job.options or {}
    return output_dtype_resolve(model=spec, output_dtype=output_dtype,
                                dimensions=opts.get("dimensions"), normalize=opts.get("normalize"))


def _chunk_results(job: Job, chunk: JobChunk) -> list[JobResult]:
    keys = [cache.text_key(t) for t in chunk.texts]
    hits = cache.cache_lookup(model=job.model, version=job.model_version, keys=list(set(keys)),
                              scopes=cache.read_scopes(job.scope))
    raw = np.stack([hits[k].vector for k in keys]).astype(np.float32)
    opts = job.options or {}
    normalize = opts.get("normalize")
    if normalize is None:
        spec = model_get(job.model)
        normalize = spec.normalize if spec is not None else True
    vectors = vectors_shape(raw, dimensions=opts.get("dimensions"), normalize=normalize)
    flags = chunk.cached_flags
    return [JobResult(chunk.start + i, vectors[i], flags[i:i + 1] == "1") for i in range(len(keys))]


def job_results_page(*, tenant: Tenant, job_id: str | uuid.UUID, offset: int,
                     limit: int) -> tuple[Job, list[JobResult]]:
    """Results [offset, offset+limit) in index order. Conflict (409) until the job succeeded."""
    job = job_get(tenant=tenant, job_id=job_id)
    _ready(job)
    out: list[JobResult] = []
    end = min(offset + limit, job.total)
    chunks = JobChunk.objects.filter(job=job, start__lt=end).order_by("seq")
    first = JobChunk.objects.filter(job=job, start__lte=offset).order_by("-seq").values_list("seq", flat=True).first()
    if first is not None:
        chunks = chunks.filter(seq__gte=first)
    for chunk in chunks:
        out += [r for r in _chunk_results(job, chunk) if offset <= r.index < end]
    return job, out


def job_results_iter(*, tenant: Tenant, job_id: str | uuid.UUID) -> tuple[Job, Iterator[JobResult]]:
    """Every result in index order, one chunk in memory at a time (for streaming). Conflict until succeeded."""
    job = job_get(tenant=tenant, job_id=job_id)
    _ready(job)

    def rows() -> Iterator[JobResult]:
        ids = list(JobChunk.objects.filter(job=job).order_by("seq").values_list("id", flat=True))
        for chunk_id in ids:
            yield from _chunk_results(job, JobChunk.objects.get(pk=chunk_id))

    return job, rows()
