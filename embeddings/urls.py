from django.urls import path

from embeddings.views import EmbedApi, EmbedBatchApi, EmbeddingCreateApi, ModelListApi

urlpatterns = [
    path("embeddings", EmbeddingCreateApi.as_view(), name="embeddings"),
    path("embed", EmbedApi.as_view(), name="embed"),
    path("embed/batch", EmbedBatchApi.as_view(), name="embed-batch"),
    path("models", ModelListApi.as_view(), name="models"),
]
