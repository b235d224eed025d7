from django.urls import path

from providers.views import ProviderDetailApi, ProviderListCreateApi, ProviderTestApi

urlpatterns = [
    path("providers", ProviderListCreateApi.as_view(), name="providers"),
    path("providers/<int:provider_id>", ProviderDetailApi.as_view(), name="provider-detail"),
    path("providers/<int:provider_id>/test", ProviderTestApi.as_view(), name="provider-test"),
]
