from pathlib import Path

import drf_spectacular_sidecar
from django.conf import settings
from django.contrib import admin
from django.urls import include, path, re_path
from django.views.static import serve
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from accounts.throttles import admin_login
from embeddings import health
from embedplatform import metrics

handler400 = "embedplatform.errors.handler400"
handler403 = "embedplatform.errors.handler403"
handler404 = "embedplatform.errors.handler404"
handler500 = "embedplatform.errors.handler500"

# Swagger UI's JS/CSS come from the drf-spectacular-sidecar package, served here (no CDN, no
# collectstatic): /api/docs works on a machine without internet and without a static server.
SIDECAR_STATIC = Path(drf_spectacular_sidecar.__file__).parent / "static" / "drf_spectacular_sidecar"

urlpatterns = [
    path("v1/", include("embeddings.urls")),
    path("v1/", include("accounts.urls")),
    path("v1/", include("providers.urls")),
    path("v1/", include("batches.urls")),  # OpenAI's Batch API: /v1/files, /v1/batches
    path("v2/", include("embeddings.urls_v2")),  # rerank, where cohere.ClientV2 sends it
    path("health/live", health.live, name="health-live"),
    path("health/ready", health.ready, name="health-ready"),
    # The admin's login behind per-address throttles (accounts/throttles.py); ahead of admin.site.urls.
    path("admin/login/", admin_login, name="admin-login"),
    path("admin/", admin.site.urls),
    # django-prometheus' HTTP metrics + ours, and the cluster-wide queue depth / jobs (metrics.py).
    path("metrics", metrics.metrics_view, name="prometheus-django-metrics"),
    # OpenAPI 3 (YAML, or JSON with `Accept: application/json`) and Swagger UI.
    path("api/schema", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    re_path(rf"^{settings.STATIC_URL.strip('/')}/drf_spectacular_sidecar/(?P<path>.+)$", serve,
            {"document_root": SIDECAR_STATIC}),
]
