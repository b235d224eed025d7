"""Embedding business logic: resolve the model, read the cache, send misses, assemble.

`embed_texts` is the one path every sync endpoint uses. It never writes to the database
itself: hits are read in one query, misses go to the workers, which write them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from accounts.models import Tenant
from embeddings import cache, waiting
from embeddings.encoding import vectors_shape
from embeddings.registry import ModelSpec, model_get
from embeddings.tokencount import token_counts
from embedplatform.errors import (
    DIMENSIONS_OUT_OF_RANGE,
    INPUT_TOO_LONG,
    MODEL_NOT_ALLOWED,
    MODEL_UNKNOWN,
    SERVER_COMPUTE_REFUSED,
    InvalidInput,
    NotAllowed,
    NotFound,
)


@dataclass(frozen=True)
class EmbedOptions:
    model: str
    normalize: bool | None = None
    dimensions: int | None = None
    truncate: bool = True
    input_type: str | None = None
    public: bool = False


@dataclass(frozen=True)
class EmbedResult:
    model: ModelSpec
    vectors: np.ndarray  # (n, dims) float32, options applied
    cached: list[bool]
    tokens: list[int]

    @property
    def total_tokens(self) -> int:
        return int(sum(self.tokens))


def model_resolve(*, tenant: Tenant, model: str) -> ModelSpec:
    """The served model `model` if this tenant may use it: NotFound / NotAllowed otherwise."""
    spec = model_get(model)
    if spec is None:
        raise NotFound(MODEL_UNKNOWN.format(model=model), param="model", code="model_not_found")
    tier = tenant.tier
    if not tier.server_compute:
        raise NotAllowed(SERVER_COMPUTE_REFUSED.format(tier=tier.name, model=model), param="model")
    if not tier.allows_model(model):
        raise NotAllowed(MODEL_NOT_ALLOWED.format(model=model, tier=tier.name), param="model")
    return spec


def _check_lengths(spec: ModelSpec, inputs: list[str]) -> None:
    counts = token_counts(spec, inputs)
    if counts is None:
        return
    for index, n in enumerate(counts):
        if n > spec.max_tokens:
            raise InvalidInput(
                INPUT_TOO_LONG.format(index=index, tokens=n, max=spec.max_tokens, model=spec.name),
                param="input", code="context_length_exceeded",
            )


def _compute(spec: ModelSpec, texts: list[str], keys: list[bytes], scope: int, wait: float):
    """Sends texts to the model's workers and waits: (tokens, raw vectors)."""
    item = waiting.work_submit(model=spec.name, texts=texts, keys=keys, scope=scope, wait=wait)
    return waiting.work_wait(item, wait=wait, dims=spec.dims)


def embed_texts(*, tenant: Tenant, texts: list[str], options: EmbedOptions, wait: float) -> EmbedResult:
    """Embeds `texts` for `tenant`, in input order; duplicates are computed once.

    Raises NotFound (unknown model), NotAllowed (tier), InvalidInput (bad dimensions,
    over-long text with truncate=false), Overloaded (no worker / queue full) and
    WaitTimeout (workers too slow for `wait`).
    """
    spec = model_resolve(tenant=tenant, model=options.model)
    if options.dimensions is not None and not 1 <= options.dimensions <= spec.dims:
        raise InvalidInput(
            DIMENSIONS_OUT_OF_RANGE.format(max=spec.dims, model=spec.name, got=options.dimensions), param="dimensions"
        )
    prompt = spec.prompt(options.input_type)
    inputs = [prompt + t for t in texts] if prompt else texts
    if not options.truncate:
        _check_lengths(spec, inputs)

    keys = [cache.text_key(t) for t in inputs]
    unique: dict[bytes, int] = {}
    for i, key in enumerate(keys):
        unique.setdefault(key, i)
    scope = cache.PUBLIC_SCOPE if options.public else tenant.pk
    scopes = [cache.PUBLIC_SCOPE] if options.public else [tenant.pk, cache.PUBLIC_SCOPE]
    hits = cache.cache_lookup(model=spec.name, version=spec.version, keys=list(unique), scopes=scopes)

    found: dict[bytes, tuple[np.ndarray, int]] = {k: (h.vector, h.tokens) for k, h in hits.items()}
    missing = [k for k in unique if k not in hits]
    if missing:
        tokens, vectors = _compute(spec, [inputs[unique[k]] for k in missing], missing, scope, wait)
        for j, key in enumerate(missing):
            found[key] = (vectors[j], int(tokens[j]))

    raw = np.empty((len(texts), spec.dims), dtype=np.float32)
    token_list = []
    for i, key in enumerate(keys):
        vector, n = found[key]
        raw[i] = vector
        token_list.append(n)
    normalize = spec.normalize if options.normalize is None else options.normalize
    return EmbedResult(
        model=spec,
        vectors=vectors_shape(raw, dimensions=options.dimensions, normalize=normalize),
        cached=[key in hits for key in keys],
        tokens=token_list,
    )
