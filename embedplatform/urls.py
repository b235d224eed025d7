from django.contrib import admin
from django.urls import include, path

from embedplatform import health, metrics

handler400 = "embedplatform.errors.handler400"
handler403 = "embedplatform.errors.handler403"
handler404 = "embedplatform.errors.handler404"
handler500 = "embedplatform.errors.handler500"

urlpatterns = [
    path("v1/", include("embeddings.urls")),
    path("v1/", include("accounts.urls")),
    path("v1/", include("providers.urls")),
    path("health/live", health.live, name="health-live"),
    path("health/ready", health.ready, name="health-ready"),
    path("admin/", admin.site.urls),
    # django-prometheus' HTTP metrics + ours, and the cluster-wide queue depth / jobs (metrics.py).
    path("metrics", metrics.metrics_view, name="prometheus-django-metrics"),
]
