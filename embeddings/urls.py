from django.urls import path

from embeddings.views import (
    CacheDeleteApi,
    EmbedApi,
    EmbedBatchApi,
    EmbeddingCreateApi,
    JobCancelApi,
    JobDetailApi,
    JobListCreateApi,
    JobResultsApi,
    ModelDetailApi,
    ModelListApi,
    RerankApi,
)

urlpatterns = [
    path("embeddings", EmbeddingCreateApi.as_view(), name="embeddings"),
    path("embed", EmbedApi.as_view(), name="embed"),
    path("embed/batch", EmbedBatchApi.as_view(), name="embed-batch"),
    path("rerank", RerankApi.as_view(), name="rerank"),
    path("models", ModelListApi.as_view(), name="models"),
    path("models/<path:model_id>", ModelDetailApi.as_view(), name="model"),  # ids of BYOK models hold "/"
    path("jobs", JobListCreateApi.as_view(), name="jobs"),
    path("jobs/<str:job_id>", JobDetailApi.as_view(), name="job"),
    path("jobs/<str:job_id>/results", JobResultsApi.as_view(), name="job-results"),
    path("jobs/<str:job_id>/cancel", JobCancelApi.as_view(), name="job-cancel"),
    path("cache", CacheDeleteApi.as_view(), name="cache"),
]
