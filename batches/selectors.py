"""The Batch API's reads. Every function takes `tenant=`: another tenant's file or batch is NotFound."""

from __future__ import annotations

from collections.abc import Iterator

from django.db.models import QuerySet

from accounts.models import Tenant
from batches.models import Batch, BatchFile, BatchFilePart
from embedplatform.errors import NotFound

FILE_NOT_FOUND = "No file with id {file_id}."
BATCH_NOT_FOUND = "No batch with id {batch_id}."


def file_get(*, tenant: Tenant, file_id: str, param: str = "file_id") -> BatchFile:
    file = BatchFile.objects.filter(tenant=tenant, pk=file_id).first()
    if file is None:
        raise NotFound(FILE_NOT_FOUND.format(file_id=file_id), param=param)
    return file


def file_chunks(file: BatchFile) -> Iterator[bytes]:
    """The file's bytes, one stored part at a time (for streaming)."""
    ids = list(BatchFilePart.objects.filter(file=file).order_by("seq").values_list("pk", flat=True))
    for pk in ids:
        yield bytes(BatchFilePart.objects.values_list("data", flat=True).get(pk=pk))


def file_bytes(file: BatchFile) -> bytes:
    return b"".join(file_chunks(file))


def _page(rows: QuerySet, *, after: str | None, limit: int, newest_first: bool = True) -> tuple[list, bool]:
    """A page after the object `after` (OpenAI's cursor: the last id of the previous page)."""
    order = ("-created_at", "-pk") if newest_first else ("created_at", "pk")
    if after:
        anchor = rows.filter(pk=after).values_list("created_at", flat=True).first()
        if anchor is not None:
            if newest_first:
                rows = rows.filter(created_at__lte=anchor).exclude(created_at=anchor, pk__gte=after)
            else:
                rows = rows.filter(created_at__gte=anchor).exclude(created_at=anchor, pk__lte=after)
    page = list(rows.order_by(*order)[: limit + 1])
    return page[:limit], len(page) > limit


def file_list(*, tenant: Tenant, purpose: str | None = None, after: str | None = None, limit: int = 10000,
              order: str = "desc") -> tuple[list[BatchFile], bool]:
    """A page of the tenant's files (newest first by default) and whether more follow."""
    rows = BatchFile.objects.filter(tenant=tenant)
    if purpose:
        rows = rows.filter(purpose=purpose)
    return _page(rows, after=after, limit=limit, newest_first=order == "desc")


def batch_get(*, tenant: Tenant, batch_id: str) -> Batch:
    batch = Batch.objects.filter(tenant=tenant, pk=batch_id).defer("plan").first()
    if batch is None:
        raise NotFound(BATCH_NOT_FOUND.format(batch_id=batch_id), param="batch_id")
    return batch


def batch_list(*, tenant: Tenant, after: str | None = None, limit: int = 20) -> tuple[list[Batch], bool]:
    """A page of the tenant's batches, newest first, and whether more follow."""
    return _page(Batch.objects.filter(tenant=tenant).defer("plan"), after=after, limit=limit)
