"""Tests' shortcuts into the hand-off, built on the code the API uses (dispatch.local.LOCAL,
embeddings.jobs): queue a work item without a request, claim one job chunk."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

from dispatch.frames import WorkItem
from dispatch.local import LOCAL
from embeddings.jobs import ClaimedChunk, job_chunks_claim


def work_item(*, model: str, texts: list[str], keys: list[bytes], scope: int, wait: float, tenant: int = 0,
              counts: list[int] | None = None) -> WorkItem:
    """A work item for `model`'s workers, not queued (see work_queue)."""
    return _handle(model=model, texts=texts, keys=keys, scope=scope, wait=wait, tenant=tenant, counts=counts).item


def work_queue(item: WorkItem) -> None:
    """Queues `item` as the API does when no admission carries it (LocalDispatch.send): Overloaded
    when no worker of its model is alive or its list is full."""
    handle = _handle(model=item.model, texts=item.texts, keys=item.keys, scope=item.scope, wait=0,
                     tenant=item.tenant, counts=item.counts)
    handle.item, handle.push = item, replace(handle.push, payload=item.dumps())
    LOCAL.send(handle)


def work_submit(*, model: str, texts: list[str], keys: list[bytes], scope: int, wait: float, tenant: int = 0,
                counts: list[int] | None = None) -> WorkItem:
    """work_item + work_queue."""
    handle = _handle(model=model, texts=texts, keys=keys, scope=scope, wait=wait, tenant=tenant, counts=counts)
    LOCAL.send(handle)
    return handle.item


def _handle(**kwargs):
    model = kwargs.pop("model")
    return LOCAL.submit(model=SimpleNamespace(name=model), **kwargs)


def job_chunk_claim(*, models: list[tuple[str, str]], lease_seconds: float) -> ClaimedChunk | None:
    """One chunk (embeddings.jobs.job_chunks_claim), or None."""
    chunks = job_chunks_claim(models=models, lease_seconds=lease_seconds, limit=1)
    return chunks[0] if chunks else None
