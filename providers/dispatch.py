"""A tenant's BYOK provider as a served model: `<provider name>/<upstream model>`.

`provider_model_resolve` gives the ProviderModel of such a name (of the provider's kind: a rerank
provider's model takes the pair texts of POST /v1/rerank, embeddings/rerank.py); its dispatcher
(ProviderDispatch) sends a request's cache misses to the provider worker as a Celery task on
the provider queue, by name (dispatch.keys.PROVIDER_EMBED_TASK; the task runs
workers/provider_calls.py, which calls the upstream, stores the vectors in the tenant's cache
scope and answers the waiting request with a dispatch.frames reply).
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass

import numpy as np
import orjson
from celery import current_app
from kombu.exceptions import OperationalError

from accounts.models import Tenant
from dispatch.base import INPUT_TYPES, Dispatcher, Handle, ServedModel
from dispatch.frames import WorkItem, reply_wait
from dispatch.keys import PROVIDER_EMBED_TASK, PROVIDER_QUEUE, provider_alive_key
from embedplatform.errors import MODEL_UNKNOWN, InvalidInput, NotFound, Overloaded
from embedplatform.redisconn import redis_client
from providers.clients import MAX_DIMS
from providers.models import ProviderConfig
from providers.selectors import provider_for_model

logger = logging.getLogger(__name__)

PUBLIC_REFUSED = "public=true is not available for provider models: their vectors stay in your own cache scope."
NO_PROVIDER_WORKER = "No provider worker is running (make provider-worker); retry shortly."
MODEL_NAME_MAX = 200  # `<provider>/<model>` is the cache's model column (varchar 200)
# Bump when the way a provider's vectors are keyed changes (2: input_type in the text key).
BYOK_KEYING = 2


def byok_key_prefix(input_type: str | None) -> str:
    """A provider model's cache key is sha256(this + text): vectors asked for with another
    input_type (or none) are never mixed up, whatever the upstream does with it. Never sent
    upstream; the text follows the second NUL and an input_type holds none, so no two
    (input_type, text) pairs share a key."""
    return f"\x00byok:{input_type or ''}\x00"


def byok_key_prefixes(input_type: str | None = None) -> set[str]:
    """The prefixes a provider model's keys may carry: of `input_type` only, or of every one."""
    if input_type is not None:
        return {byok_key_prefix(input_type)}
    return {byok_key_prefix(None)} | {byok_key_prefix(t) for t in INPUT_TYPES}


class ProviderDispatch(Dispatcher):
    """A tenant's provider, through the provider worker. The web counts the misses' usage."""

    kind = "byok"
    counts_usage = False
    runs_jobs = False

    def submit(self, *, model: ServedModel, texts: list[str], keys: list[bytes], scope: int, wait: float,
               tenant: int, counts: list[int] | None = None) -> Handle:
        """Raises InvalidInput for public=true: provider vectors stay in the tenant's scope."""
        assert isinstance(model, ProviderModel)
        if scope != model.tenant_id:
            raise InvalidInput(PUBLIC_REFUSED, param="public")
        return Handle(model=model, item=WorkItem.new(model=model.name, texts=texts, keys=keys, scope=scope, wait=wait))

    def send(self, handle: Handle) -> None:
        """Sends the provider task. Raises Overloaded when no provider worker beats or the broker
        cannot take the message."""
        if handle.queued:
            return
        item = handle.item
        model = handle.model
        assert isinstance(model, ProviderModel)
        if not redis_client().exists(provider_alive_key()):
            raise Overloaded(NO_PROVIDER_WORKER, retry_after=5, code="no_worker")
        try:
            current_app.send_task(
                PROVIDER_EMBED_TASK,
                args=[model.provider_id, model.upstream_model, item.texts, [k.hex() for k in item.keys], item.id,
                      item.deadline],
                queue=PROVIDER_QUEUE, expires=max(1.0, item.deadline - time.time()),
            )
        except OperationalError:
            logger.exception("could not queue a provider call")
            raise Overloaded("The provider queue is unavailable right now; retry shortly.", retry_after=5) from None
        handle.queued = True

    def wait(self, handle: Handle, *, wait: float) -> tuple[np.ndarray, np.ndarray]:
        # The provider worker's liveness is checked before the task is sent (send); a call ends
        # within its deadline, answered or with an error frame.
        return reply_wait(handle.item, wait=wait, dims=None)


PROVIDERS = ProviderDispatch()


@dataclass(frozen=True)
class ProviderModel:
    """`<provider>/<model>` as serving code sees it (dispatch.base.ServedModel). Its dims are
    known only from the vectors; the upstream enforces its own length limit."""

    name: str
    version: str
    provider_id: int
    tenant_id: int
    upstream_model: str
    owned_by: str
    normalize: bool = False
    dims: int | None = None
    max_tokens: int | None = None
    max_dimensions: int = MAX_DIMS
    matryoshka_dims: tuple[int, ...] = ()  # none declared: any 1..max_dimensions, as the upstream decides
    metrics_label: str = "byok"  # a provider model's name is the tenant's choice: one label keeps the series bounded
    kind: str = "embed"

    @property
    def dispatcher(self) -> Dispatcher:
        return PROVIDERS

    def prompt(self, input_type: str | None) -> str:
        return ""

    def key_prefix(self, input_type: str | None) -> str:
        return byok_key_prefix(input_type)

    def token_counts(self, texts: list[str]) -> list[int] | None:
        return None


def provider_cache_version(provider: ProviderConfig) -> str:
    """The cache's model_version for a provider: `byok-<id>-<digest of everything that shapes its
    vectors>`. The id: a deleted and re-created provider of the same name (maybe another upstream)
    does not inherit the old one's vectors. The digest: endpoint, preset, request template,
    response path, the headers (templates as written, secret values by their keyed digest) and
    the keying scheme, so any change means fresh vectors (the old rows just stop matching). The
    upstream model is the cache's model column (`<provider>/<model>`); input_type is in the text
    key (ProviderModel.key_prefix). The secrets themselves (the api_key) are not: a new key
    for the same upstream gives the same vectors. A rerank provider's kind and index path are in
    the shape too (only theirs, so that no embedding provider's version moved when they came)."""
    shape = {
        "keying": BYOK_KEYING,
        "endpoint": provider.effective_endpoint,
        "preset": provider.preset,
        "request_template": provider.effective_template,
        "response_path": provider.effective_response_path,
        "headers": provider.effective_headers,
        "headers_digest": provider.headers_digest,
    }
    if provider.kind != "embed":
        shape |= {"kind": provider.kind, "index_path": provider.effective_index_path}
    digest = hashlib.sha256(orjson.dumps(shape, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]
    return f"byok-{provider.pk}-{digest}"


def provider_model_resolve(*, tenant: Tenant, model: str) -> ProviderModel:
    """The model `<provider name>/<upstream model>` of this tenant; NotFound otherwise
    (another tenant's provider is as unknown as a missing one)."""
    if len(model) > MODEL_NAME_MAX:
        raise InvalidInput(f"model: at most {MODEL_NAME_MAX} characters.", param="model")
    found = provider_for_model(tenant=tenant, model=model)
    if found is None:
        raise NotFound(MODEL_UNKNOWN.format(model=model), param="model", code="model_not_found")
    provider, upstream = found
    return ProviderModel(name=f"{provider.name}/{upstream}", version=provider_cache_version(provider),
                         provider_id=provider.pk, tenant_id=provider.tenant_id, upstream_model=upstream,
                         owned_by=provider.preset, kind=provider.kind)
