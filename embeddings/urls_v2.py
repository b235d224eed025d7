"""/v2/: only rerank, where Cohere's v2 client (cohere.ClientV2) sends it."""

from django.urls import path

from embeddings.views import RerankV2Api

urlpatterns = [
    path("rerank", RerankV2Api.as_view(), name="rerank-v2"),
]
