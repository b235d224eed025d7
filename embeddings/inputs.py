"""What an embedding request asks for, checked once for the sync path and jobs alike: its options,
the model it may use (model_resolve) and its texts as the model sees them (model_inputs)."""

from __future__ import annotations

from dataclasses import dataclass

from accounts.models import Tenant
from dispatch.base import ServedModel
from embeddings.registry import model_get, model_pending
from embedplatform.errors import (
    DIMENSIONS_NOT_MATRYOSHKA,
    DIMENSIONS_OUT_OF_RANGE,
    INPUT_TOO_LONG,
    MODEL_IS_RERANKER,
    MODEL_NOT_ALLOWED,
    MODEL_NOT_RERANKER,
    MODEL_UNKNOWN,
    SERVER_COMPUTE_REFUSED,
    InvalidInput,
    NotAllowed,
    NotFound,
    Overloaded,
)
from providers.dispatch import provider_model_resolve


@dataclass(frozen=True)
class EmbedOptions:
    model: str
    normalize: bool | None = None
    dimensions: int | None = None
    truncate: bool = True
    input_type: str | None = None
    public: bool = False
    kind: str = "embed"  # what the request computes: "embed" (vectors) or "rerank" (a reranker's pair scores)


def model_resolve(*, tenant: Tenant, model: str, kind: str = "embed") -> ServedModel:
    """The served model `model` if this tenant may use it: NotFound / NotAllowed otherwise, and
    InvalidInput where it is not of `kind` (a reranker asked for embeddings).

    `<provider name>/<upstream model>` names one of the tenant's BYOK providers
    (providers/dispatch.py), which every tier may use.
    """
    served = model_lookup(tenant=tenant, model=model)
    if served.kind != kind:
        message = MODEL_IS_RERANKER if served.kind == "rerank" else MODEL_NOT_RERANKER
        raise InvalidInput(message.format(model=model), param="model", code="model_kind")
    return served


def model_lookup(*, tenant: Tenant, model: str) -> ServedModel:
    """model_resolve of any kind: POST /v1/rerank takes rerankers and embedding models alike."""
    if "/" in model:
        return provider_model_resolve(tenant=tenant, model=model)
    spec = model_get(model)  # a served model by its name or an alias (EMBED_MODEL_ALIASES)
    if spec is None:
        pending = model_pending(model)
        if pending is not None:  # a hub model whose copy a worker has yet to download
            raise Overloaded(pending, retry_after=10, code="model_not_ready")
        raise NotFound(MODEL_UNKNOWN.format(model=model), param="model", code="model_not_found")
    tier = tenant.tier
    if not tier.server_compute:
        raise NotAllowed(SERVER_COMPUTE_REFUSED.format(tier=tier.name, model=model), param="model")
    if not tier.allows_model(spec.name):  # an alias is allowed where the model it stands for is
        raise NotAllowed(MODEL_NOT_ALLOWED.format(model=model, tier=tier.name), param="model")
    return spec


def _dimensions_check(spec: ServedModel, dimensions: int) -> None:
    """A model that declares Matryoshka dims was trained to serve only those widths truncated (and
    its full one): any other cut is refused, naming them. A model that declares none takes any
    1..max_dimensions, as OpenAI's `dimensions` does (DECISIONS #41)."""
    if spec.matryoshka_dims:
        allowed = sorted({*spec.matryoshka_dims, spec.max_dimensions}, reverse=True)
        if dimensions not in allowed:
            raise InvalidInput(
                DIMENSIONS_NOT_MATRYOSHKA.format(allowed=", ".join(map(str, allowed)), model=spec.name, got=dimensions),
                param="dimensions",
            )
    elif not 1 <= dimensions <= spec.max_dimensions:
        raise InvalidInput(
            DIMENSIONS_OUT_OF_RANGE.format(max=spec.max_dimensions, model=spec.name, got=dimensions),
            param="dimensions",
        )


def model_inputs(spec: ServedModel, texts: list[str], options: EmbedOptions) -> list[str]:
    """The texts as the model sees them (its prompt for options.input_type first), after the checks
    that need the model: `dimensions` within its range (one of its Matryoshka dims or its full
    width where it declares them), and (truncate=false) every input within its max_tokens where
    the web can count them. Raises InvalidInput."""
    if options.dimensions is not None:
        _dimensions_check(spec, options.dimensions)
    prompt = spec.prompt(options.input_type)
    inputs = [prompt + t for t in texts] if prompt else texts
    if not options.truncate and spec.max_tokens is not None:
        counts = spec.token_counts(inputs)
        for index, n in enumerate(counts or ()):
            if n > spec.max_tokens:
                raise InvalidInput(
                    INPUT_TOO_LONG.format(index=index, tokens=n, max=spec.max_tokens, model=spec.name),
                    param="input", code="context_length_exceeded",
                )
    return inputs
