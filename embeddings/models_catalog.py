"""Reads: the models a tenant can name (GET /v1/models) and what serves one of them now
(GET /v1/models/{id}).

The local models are the registry's; the tenant's BYOK models are `<provider name>/<model>` for
each provider's default upstream model (compute "byok": their dims and length limit are the
upstream's, unknown here). What serves a local model is what its drain loops publish in each
heartbeat (workers/drain.py, dispatch.keys.model_workers_key): read in one round trip with the
depth of the model's work lists.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

import orjson

from accounts.models import Tenant
from dispatch.keys import model_workers_key, work_list
from embeddings.registry import ModelSpec, model_aliases, model_get, model_specs
from embedplatform.errors import MODEL_UNKNOWN, NotFound
from embedplatform.redisconn import redis_client
from providers.dispatch import ProviderModel, provider_cache_version, provider_model_resolve
from providers.models import ProviderConfig
from providers.selectors import provider_list


@dataclass(frozen=True)
class WorkerServing:
    """One drain loop serving a model, as it said in its last heartbeat."""

    id: str
    backend: str | None
    precision: str | None
    device: str | None


@dataclass(frozen=True)
class CatalogModel:
    """A model as /v1/models shows it. `workers` and `queue_depth` are filled for the detail only."""

    name: str
    compute: str  # local | byok
    owned_by: str
    version: str
    dims: int | None = None
    max_tokens: int | None = None
    matryoshka_dims: list[int] | None = None  # a local model's (maybe none); None: a byok model's, unknown here
    kind: str = "embed"
    alias_of: str | None = None  # an alias (EMBED_MODEL_ALIASES): the served model it stands for
    workers: list[WorkerServing] = field(default_factory=list)
    queue_depth: int | None = None

    @property
    def backend(self) -> str | None:
        return _most_common(w.backend for w in self.workers)

    @property
    def precision(self) -> str | None:
        return _most_common(w.precision for w in self.workers)


def _most_common(values: Iterable[str | None]) -> str | None:
    """What most live loops report (ties: the first in name order); None with no loop."""
    counts = Counter(v for v in values if v)
    return counts.most_common(1)[0][0] if counts else None


def _local(spec: ModelSpec) -> CatalogModel:
    return CatalogModel(name=spec.name, compute="local", owned_by=spec.owned_by, version=spec.version,
                        dims=spec.dims if spec.kind == "embed" else None,  # a reranker gives scores, not vectors
                        max_tokens=spec.max_tokens, matryoshka_dims=list(spec.matryoshka_dims), kind=spec.kind)


def _byok(model: ProviderModel) -> CatalogModel:
    return CatalogModel(name=model.name, compute="byok", owned_by=model.owned_by, version=model.version,
                        kind=model.kind)


def _provider_default(provider: ProviderConfig) -> CatalogModel | None:
    if not provider.model:
        return None  # a custom provider with no default model: the tenant names the upstream model
    return CatalogModel(name=f"{provider.name}/{provider.model}", compute="byok", owned_by=provider.preset,
                        version=provider_cache_version(provider), kind=provider.kind)


def model_catalog(*, tenant: Tenant) -> list[CatalogModel]:
    """The served models, the aliases (each as the model it stands for, naming it in alias_of), then
    the tenant's providers' default models (by provider name)."""
    byok = [m for m in map(_provider_default, provider_list(tenant=tenant)) if m is not None]
    specs = model_specs()
    aliases = [replace(_local(specs[model]), name=alias, alias_of=model)
               for alias, model in model_aliases().items() if model in specs]  # a pending model's: not yet
    return [_local(spec) for spec in specs.values()] + aliases + byok


def model_detail(*, tenant: Tenant, model: str) -> CatalogModel:
    """One model the tenant can name, with the drain loops serving it now and the work waiting for
    it; NotFound (as the embedding endpoints answer) for any other, another tenant's provider's too."""
    if "/" in model:
        return _byok(provider_model_resolve(tenant=tenant, model=model))
    spec = model_get(model)
    if spec is None:
        raise NotFound(MODEL_UNKNOWN.format(model=model), param="model", code="model_not_found")
    workers, depth = model_serving(spec.name)
    found = replace(_local(spec), workers=workers, queue_depth=depth)
    return found if model == spec.name else replace(found, name=model, alias_of=spec.name)  # an alias


def model_serving(model: str) -> tuple[list[WorkerServing], int]:
    """(the live drain loops serving `model`, in name order; the work items waiting in its lists):
    one round trip."""
    pipe = redis_client().pipeline(transaction=False)
    pipe.hgetall(model_workers_key(model))
    pipe.llen(work_list(model, "hi"))
    pipe.llen(work_list(model, "lo"))
    entries, hi, lo = pipe.execute()
    now = time.time()
    workers = []
    for name, raw in sorted(entries.items()):
        info = orjson.loads(raw)
        if info.get("until", 0) < now:
            continue  # a loop that died without clearing its entry
        workers.append(WorkerServing(id=name.decode(), backend=info.get("backend"), precision=info.get("precision"),
                                     device=info.get("device")))
    return workers, int(hi) + int(lo)
