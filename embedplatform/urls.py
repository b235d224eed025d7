from django.contrib import admin
from django.urls import include, path

from embedplatform import health

handler400 = "embedplatform.errors.handler400"
handler403 = "embedplatform.errors.handler403"
handler404 = "embedplatform.errors.handler404"
handler500 = "embedplatform.errors.handler500"

urlpatterns = [
    path("v1/", include("embeddings.urls")),
    path("health/live", health.live, name="health-live"),
    path("health/ready", health.ready, name="health-ready"),
    path("admin/", admin.site.urls),
    path("", include("django_prometheus.urls")),
]
