from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any, TypeVar

from django.conf import settings
from django.http import HttpResponse, StreamingHttpResponse
from redis.exceptions import RedisError
from rest_framework import serializers
from rest_framework.exceptions import AuthenticationFailed, NotAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.authentication import api_key_recheck, request_principal_id, request_tenant
from accounts.models import Tenant
from accounts.permissions import IsJwtAuthenticated
from accounts.quotas import AuthEpochMoved, CacheEpochMoved, Caller, QuotaState, RateState, admit, quota_state
from dispatch.base import INPUT_TYPES
from embeddings import schemas
from embeddings.cache import scope_epoch_learn as cache_scope_epoch_learn
from embeddings.inputs import EmbedOptions
from embeddings.jobs import job_cancel, job_create
from embeddings.models import Job
from embeddings.models_catalog import model_catalog, model_detail
from embeddings.quantize import OutputDtype, output_dtype_check, output_dtype_resolve
from embeddings.rerank import rerank_serve
from embeddings.responses import (
    CacheDeletedSerializer,
    ModelDetailSerializer,
    ModelListSerializer,
    embed_batch_body,
    embed_body,
    embeddings_body,
    job_list_body,
    job_result_lines,
    job_results_body,
    rerank_body,
)
from embeddings.retention import cache_delete
from embeddings.selectors import job_get, job_list, job_output_dtype, job_results_iter, job_results_page
from embeddings.serializers import (
    EmbedBatchRequestSerializer,
    EmbeddingsRequestSerializer,
    EmbedRequestSerializer,
    JobCreateRequestSerializer,
    RerankRequestSerializer,
    TextsField,
    job_payload,
    output_dtype_field,
)
from embeddings.serving import EmbedResult, embed_serve
from embedplatform.errors import InvalidInput, Overloaded
from embedplatform.renderers import json_answer

CACHE_INPUT_TYPE_WITHOUT_TEXTS = "input_type applies to texts: send texts with it, or neither to delete all entries."

_OPTION_FIELDS = ("model", "normalize", "dimensions", "truncate", "input_type", "public")

_Result = TypeVar("_Result")


class DataPlaneApi(APIView):
    """Base of the endpoints that spend a tenant's limits.

    Counts the request against its tenant's requests per minute (429 when spent) and puts
    X-RateLimit-* (daily text quota) and X-RateLimit-*-Requests (the tenant's minute window) on
    every response, errors included, once the caller is known: one round trip
    (accounts/quotas.admit), which also checks the auth epoch, so a key served from the
    process's key cache is read again if it changed (accounts/authcache.py).

    The embedding endpoints (`admits_in_view`) count in embed_serve's one admission round trip
    instead, together with the text quota and the usage (accounts/quotas.admit); a request that
    fails before its admission (bad input, unknown model) is counted by handle_exception, so
    every request counts once and a revoked key still gets 401, never a 400.
    """

    checks_auth_epoch = True
    admits_in_view = False

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)
        if not self.admits_in_view:
            self._count(request)

    def _count(self, request: Request) -> None:
        """Counts the request in its key's window, with no texts, and checks the auth epoch: one
        round trip, which also gives the quota headers."""
        self.admit_and_serve(request, lambda tenant, caller: (None, *admit(tenant=tenant, caller=caller)))

    def admit_and_serve(self, request: Request,
                        serve: Callable[[Tenant, Caller], tuple[_Result, QuotaState, RateState | None]]) -> _Result:
        """Calls serve(tenant, caller) -> (result, quota state, rate state), re-reading the key when
        the admission finds its auth epoch moved, and serving again without this process's copies
        of the tenant's cache scope when its cache epoch moved (DELETE /v1/cache); it counted
        nothing then."""
        for _ in range(3):
            # The request carries its admission's state to handle_exception and finalize_response:
            # attributes the stubs' Request does not declare.
            tenant = request.limit_tenant = request_tenant(request)  # type: ignore[attr-defined]
            caller = Caller(principal_id=request_principal_id(request), epoch=getattr(request.user, "epoch", ""))
            try:
                result, request.quota_state, request.rate_state = serve(tenant, caller)  # type: ignore[attr-defined]
                return result
            except AuthEpochMoved as moved:
                api_key_recheck(request, moved.epoch)
            except CacheEpochMoved as moved:
                cache_scope_epoch_learn(moved.scope, moved.epoch)
            finally:
                request.counted = caller.admitted  # type: ignore[attr-defined]
        raise Overloaded("API keys are changing too fast to admit this request; retry.", retry_after=1)

    def handle_exception(self, exc: Exception) -> Response:
        request = self.request
        # The user as authentication left it, without authenticating again: reading request.user
        # after authentication raised (Redis or the database down) would raise again, out of
        # DRF's exception handling (a 500 instead of the 503).
        user = vars(request).get("_user")
        # After a Redis error, counting (and the quota headers) would wait out the same timeouts again.
        redis_failed = request.redis_failed = isinstance(exc, RedisError)  # type: ignore[attr-defined]
        if (self.admits_in_view and not getattr(request, "counted", False)
                and not isinstance(exc, (AuthenticationFailed, NotAuthenticated)) and not redis_failed
                and getattr(user, "is_authenticated", False)):
            try:
                self._count(request)
            except Exception as counted:  # a key revoked meanwhile (401) or a spent window (429) comes first
                exc = counted
        for attr in ("quota", "rate"):
            if hasattr(exc, attr):
                setattr(request, f"{attr}_state", getattr(exc, attr))
        return super().handle_exception(exc)

    def finalize_response(self, request: Request, response: Response, *args: Any, **kwargs: Any) -> Response:
        response = super().finalize_response(request, response, *args, **kwargs)
        tenant = getattr(request, "limit_tenant", None)
        if tenant is not None:
            quota = getattr(request, "quota_state", None)
            if quota is None and not getattr(request, "redis_failed", False):
                with contextlib.suppress(RedisError):  # headers are best effort: Redis may be what failed
                    quota = quota_state(tenant=tenant)
            for name, value in (quota.headers() if quota else {}).items():
                response[name] = value
            rate = getattr(request, "rate_state", None)
            if rate is not None:
                for name, value in rate.headers().items():
                    response[name] = value
        return response


class EmbedEndpointApi(DataPlaneApi):
    admits_in_view = True

    def embed(self, request: Request, data: dict, texts: list[str], *, job_fallback: bool = False) -> EmbedResult | Job:
        wait = _wait(data)  # 0: do not wait
        options = _options(data)
        output_dtype_check(model=options.model, output_dtype=data["output_dtype"])  # before spending anything
        return self.admit_and_serve(request, lambda tenant, caller: embed_serve(
            tenant=tenant, texts=texts, options=options, wait=wait, caller=caller, job_fallback=job_fallback))


def _wait(data: dict) -> float:
    """The request's `wait`, else the server's SYNC_WAIT_SECONDS (within SYNC_WAIT_MAX)."""
    wait = data.get("wait")
    return min(settings.SYNC_WAIT_SECONDS, settings.SYNC_WAIT_MAX) if wait is None else wait


def _options(data: dict) -> EmbedOptions:
    return EmbedOptions(**{f: data[f] for f in _OPTION_FIELDS})


def _output_dtype(result: EmbedResult, data: dict) -> OutputDtype:
    return output_dtype_resolve(model=result.model, output_dtype=data["output_dtype"],
                                dimensions=data["dimensions"], normalize=data["normalize"])


def _accepted(job: Job) -> Response:
    """202: the work goes on as a job; poll its status_url."""
    payload = job_payload(job)
    return Response(payload, status=202, headers={"Location": payload["status_url"]})


class EmbeddingCreateApi(EmbedEndpointApi):
    """POST /v1/embeddings: OpenAI's embeddings API, with a `cached` flag per item."""

    @schemas.embeddings_create_schema
    def post(self, request: Request) -> HttpResponse:
        serializer = EmbeddingsRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        result = self.embed(request, data, data["input"])
        assert isinstance(result, EmbedResult)  # without job_fallback, never a Job
        return json_answer(embeddings_body(result, data["encoding_format"], out=_output_dtype(result, data)))


class EmbedApi(EmbedEndpointApi):
    """POST /v1/embed: one text, one vector."""

    @schemas.embed_schema
    def post(self, request: Request) -> HttpResponse:
        started = time.perf_counter()
        serializer = EmbedRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        result = self.embed(request, data, [data["text"]], job_fallback=True)
        if isinstance(result, Job):
            return _accepted(result)
        return json_answer(embed_body(result, data["encoding_format"], started=started,
                                      out=_output_dtype(result, data)))


class EmbedBatchApi(EmbedEndpointApi):
    """POST /v1/embed/batch: many texts, vectors in input order, per-text `cached` flags."""

    @schemas.embed_batch_schema
    def post(self, request: Request) -> HttpResponse:
        serializer = EmbedBatchRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        result = self.embed(request, data, data["texts"], job_fallback=True)
        if isinstance(result, Job):
            return _accepted(result)
        return json_answer(embed_batch_body(result, data["encoding_format"], out=_output_dtype(result, data)))


class CacheDeleteApi(APIView):
    """DELETE /v1/cache (JWT): deletes the tenant's own cached entries, some texts' or all
    (embeddings/retention.cache_delete); never the public scope or another tenant's."""

    permission_classes = [IsJwtAuthenticated]
    jwt_required_for = "your cached embeddings"

    class InputSerializer(serializers.Serializer):
        texts = TextsField(required=False, help_text="Texts whose entries to delete; omit to delete all.")
        model = serializers.CharField(max_length=200, required=False, help_text="Only this model's entries.")
        input_type = serializers.ChoiceField(choices=INPUT_TYPES, required=False,
                                             help_text="With texts: only the entries made with this prompt.")

    @schemas.cache_delete_schema(InputSerializer)
    def delete(self, request: Request) -> Response:
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        if "input_type" in data and "texts" not in data:
            raise InvalidInput(CACHE_INPUT_TYPE_WITHOUT_TEXTS, param="input_type")
        return Response(CacheDeletedSerializer({"deleted": cache_delete(tenant=request_tenant(request), **data)}).data)


class ModelListApi(APIView):
    """GET /v1/models: the served models, then the caller's providers' default models (byok)."""

    @schemas.model_list_schema
    def get(self, request: Request) -> Response:
        return Response(ModelListSerializer({"data": model_catalog(tenant=request_tenant(request))}).data)


class ModelDetailApi(APIView):
    """GET /v1/models/{id}: a model the caller can name, with the workers serving it and its queue depth."""

    @schemas.model_detail_schema
    def get(self, request: Request, model_id: str) -> Response:
        return Response(ModelDetailSerializer(model_detail(tenant=request_tenant(request), model=model_id)).data)


class JobListCreateApi(DataPlaneApi):
    """POST /v1/jobs queues texts as a job (202); GET /v1/jobs pages the tenant's jobs, newest first."""

    max_request_bytes = settings.JOB_MAX_REQUEST_BYTES

    class FilterSerializer(serializers.Serializer):
        status = serializers.ChoiceField(choices=Job.Status.values, required=False)
        limit = serializers.IntegerField(min_value=1, max_value=100, required=False, default=20)
        cursor = serializers.CharField(required=False, max_length=200)

    @schemas.job_create_schema
    def post(self, request: Request) -> Response:
        serializer = JobCreateRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        job = job_create(tenant=request_tenant(request), texts=data["texts"], options=_options(data),
                         webhook_url=data["webhook_url"])
        request.quota_state = None  # type: ignore[attr-defined]  # counted before the job's texts: read again
        return _accepted(job)

    @schemas.job_list_schema(FilterSerializer)
    def get(self, request: Request) -> Response:
        serializer = self.FilterSerializer(data=request.query_params)
        serializer.is_valid(raise_exception=True)
        jobs, next_cursor = job_list(tenant=request_tenant(request), **serializer.validated_data)
        return Response(job_list_body(jobs, next_cursor))


class JobDetailApi(DataPlaneApi):
    """GET /v1/jobs/{id}: status and progress (`done` of `total`)."""

    @schemas.job_detail_schema
    def get(self, request: Request, job_id: str) -> Response:
        return Response(job_payload(job_get(tenant=request_tenant(request), job_id=job_id)))


class JobCancelApi(DataPlaneApi):
    """POST /v1/jobs/{id}/cancel: queued work is dropped; the job ends as cancelled."""

    @schemas.job_cancel_schema
    def post(self, request: Request, job_id: str) -> Response:
        return Response(job_payload(job_cancel(tenant=request_tenant(request), job_id=job_id)))


class JobResultsApi(DataPlaneApi):
    """GET /v1/jobs/{id}/results?offset=&limit= (a page, index order) or ?format=jsonl (every
    result, streamed one chunk at a time). 409 until the job succeeded."""

    class FilterSerializer(serializers.Serializer):
        offset = serializers.IntegerField(min_value=0, required=False, default=0)
        limit = serializers.IntegerField(min_value=1, max_value=1000, required=False, default=100)
        format = serializers.ChoiceField(choices=("json", "jsonl"), required=False, default="json")
        encoding_format = serializers.ChoiceField(choices=("float", "base64"), required=False, default="float")
        output_dtype = output_dtype_field()

    @schemas.job_results_schema(FilterSerializer)
    def get(self, request: Request, job_id: str) -> Response | StreamingHttpResponse:
        serializer = self.FilterSerializer(data=request.query_params)
        serializer.is_valid(raise_exception=True)
        f = serializer.validated_data
        tenant = request_tenant(request)
        if f["format"] == "jsonl":
            job, results = job_results_iter(tenant=tenant, job_id=job_id)
            out = job_output_dtype(job, f["output_dtype"])
            return StreamingHttpResponse(job_result_lines(results, f["encoding_format"], out=out),
                                         content_type="application/x-ndjson")
        job, rows = job_results_page(tenant=tenant, job_id=job_id, offset=f["offset"], limit=f["limit"])
        return Response(job_results_body(job, rows, offset=f["offset"], limit=f["limit"],
                                         encoding_format=f["encoding_format"],
                                         out=job_output_dtype(job, f["output_dtype"])))


class RerankApi(DataPlaneApi):
    """POST /v1/rerank: documents scored against a query by a reranker, or by an embedding model's
    cosine (embeddings/rerank.py), highest first, in Cohere's shape."""

    admits_in_view = True

    @schemas.rerank_schema
    def post(self, request: Request) -> Response:
        serializer = RerankRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        wait = _wait(data)
        result = self.admit_and_serve(request, lambda tenant, caller: rerank_serve(
            tenant=tenant, model=data["model"], query=data["query"], documents=data["texts"], top_n=data["top_n"],
            wait=wait, caller=caller))
        return Response(rerank_body(result, data["documents"], return_documents=bool(data["return_documents"])))


class RerankV2Api(RerankApi):
    """POST /v2/rerank: the same endpoint where Cohere's v2 client (cohere.ClientV2) sends it."""

    @schemas.rerank_v2_schema
    def post(self, request: Request) -> Response:
        return super().post(request)
