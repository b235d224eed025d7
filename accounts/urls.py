from django.urls import path

from accounts.views import (
    KeyListCreateApi,
    KeyRevokeApi,
    LoginApi,
    RefreshApi,
    SignupApi,
    UsageApi,
    WebhookSecretApi,
)

urlpatterns = [
    path("auth/signup", SignupApi.as_view(), name="signup"),
    path("auth/login", LoginApi.as_view(), name="login"),
    path("auth/refresh", RefreshApi.as_view(), name="refresh"),
    path("keys", KeyListCreateApi.as_view(), name="keys"),
    path("keys/<str:prefix>", KeyRevokeApi.as_view(), name="key-revoke"),
    path("usage", UsageApi.as_view(), name="usage"),
    path("webhook-secret", WebhookSecretApi.as_view(), name="webhook-secret"),
]
