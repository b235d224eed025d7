from django.apps import AppConfig


class EmbeddingsConfig(AppConfig):
    name = "embeddings"

    def ready(self) -> None:
        # Imported here: these modules import models, which exist once the app registry is ready.
        from accounts.services import cache_figures_register
        from embeddings import checks  # noqa: F401  (registers the system checks)
        from embeddings.cachecap import cache_figures
        from embeddings.collectors import JobStatusCollector, QueueDepthCollector
        from embedplatform.metrics import CLUSTER_REGISTRY

        CLUSTER_REGISTRY.register(QueueDepthCollector())
        CLUSTER_REGISTRY.register(JobStatusCollector())
        cache_figures_register(cache_figures)  # GET /v1/usage shows the cache (accounts sits below embeddings)
