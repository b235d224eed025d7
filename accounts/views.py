"""Sign-up, login, API keys and usage. Key management needs a JWT (accounts/permissions.py)."""

from __future__ import annotations

from typing import cast

from django.contrib.auth import authenticate
from django.contrib.auth.models import update_last_login
from rest_framework import serializers
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView
from rest_framework_simplejwt.exceptions import TokenError
from rest_framework_simplejwt.settings import api_settings as jwt_settings
from rest_framework_simplejwt.tokens import RefreshToken

from accounts import schemas
from accounts.authentication import request_tenant
from accounts.models import User
from accounts.permissions import IsJwtAuthenticated
from accounts.responses import (
    ApiKeyCreatedSerializer,
    ApiKeyListSerializer,
    ApiKeyRevokedSerializer,
    LoginResponseSerializer,
    RefreshResponseSerializer,
    SignupResponseSerializer,
    UsageSerializer,
    WebhookSecretSerializer,
)
from accounts.selectors import api_key_list
from accounts.services import api_key_create, api_key_revoke, tenant_signup, usage_report
from accounts.signing import SIGNATURE_HEADER, SIGNATURE_SCHEME
from accounts.throttles import login_check, login_failed, signup_check
from embedplatform.errors import AuthenticationError, InvalidInput

LOGIN_FAILED = "Wrong email or password."
REFRESH_INVALID = "The refresh token is invalid or expired; log in again with POST /v1/auth/login."


def _expires_in() -> int:
    return int(jwt_settings.ACCESS_TOKEN_LIFETIME.total_seconds())


class SignupApi(APIView):
    """POST /v1/auth/signup: a free-tier tenant, its user and a first API key (shown once). Throttled per address."""

    authentication_classes: list = []
    permission_classes = [AllowAny]

    class InputSerializer(serializers.Serializer):
        email = serializers.EmailField(max_length=254)
        password = serializers.CharField(max_length=128, trim_whitespace=False)
        tenant_name = serializers.CharField(max_length=200, required=False, default="")

    @schemas.signup_schema(InputSerializer)
    def post(self, request: Request) -> Response:
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        signup_check(request)
        tenant, user, key = tenant_signup(**serializer.validated_data)
        return Response(SignupResponseSerializer({"user": user, "tenant": tenant, "api_key": key}).data, status=201)


class LoginApi(APIView):
    """POST /v1/auth/login: email + password -> JWT access and refresh tokens. Throttled per address, and
    failed attempts per (address, email) and per email (accounts/throttles.py)."""

    authentication_classes: list = []
    permission_classes = [AllowAny]

    class InputSerializer(serializers.Serializer):
        email = serializers.CharField(max_length=254)
        password = serializers.CharField(max_length=128, trim_whitespace=False)

    @schemas.login_schema(InputSerializer)
    def post(self, request: Request) -> Response:
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        login_check(request, email=data["email"])
        user = authenticate(request, email=data["email"].strip().lower(), password=data["password"])
        if user is None:
            login_failed(request, email=data["email"])
            raise AuthenticationError(LOGIN_FAILED, code="invalid_credentials")
        if jwt_settings.UPDATE_LAST_LOGIN:  # as simplejwt's own login view does: the admin shows it
            update_last_login(type(user), user)
        refresh = RefreshToken.for_user(user)
        return Response(LoginResponseSerializer({"refresh": refresh, "expires_in": _expires_in()}).data)


class RefreshApi(APIView):
    """POST /v1/auth/refresh: a refresh token -> a new access token."""

    authentication_classes: list = []
    permission_classes = [AllowAny]

    class InputSerializer(serializers.Serializer):
        refresh = serializers.CharField(max_length=4096)

    @schemas.refresh_schema(InputSerializer)
    def post(self, request: Request) -> Response:
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        try:
            access = RefreshToken(serializer.validated_data["refresh"]).access_token
        except TokenError:
            raise AuthenticationError(REFRESH_INVALID, code="invalid_token") from None
        return Response(RefreshResponseSerializer({"access": access, "expires_in": _expires_in()}).data)


class KeyListCreateApi(APIView):
    """GET /v1/keys lists the tenant's keys; POST /v1/keys makes one (the clear key is in this answer only)."""

    permission_classes = [IsJwtAuthenticated]
    jwt_required_for = "API keys"

    class InputSerializer(serializers.Serializer):
        name = serializers.CharField(max_length=100, required=False, default="", allow_blank=True)

    @schemas.key_list_schema
    def get(self, request: Request) -> Response:
        keys = api_key_list(tenant=request_tenant(request))
        return Response(ApiKeyListSerializer({"data": keys}).data)

    @schemas.key_create_schema(InputSerializer)
    def post(self, request: Request) -> Response:
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        user = cast(User, request.user)  # IsJwtAuthenticated: a signed-in user
        key, clear = api_key_create(tenant=request_tenant(request), created_by=user, **serializer.validated_data)
        return Response(ApiKeyCreatedSerializer(key, context={"api_key": clear}).data, status=201)


class KeyRevokeApi(APIView):
    """DELETE /v1/keys/{prefix}: revokes the key; it fails on its very next request."""

    permission_classes = [IsJwtAuthenticated]
    jwt_required_for = "API keys"

    @schemas.key_revoke_schema
    def delete(self, request: Request, prefix: str) -> Response:
        key = api_key_revoke(tenant=request_tenant(request), prefix=prefix)
        return Response(ApiKeyRevokedSerializer(key).data)


class UsageApi(APIView):
    """GET /v1/usage?from=YYYY-MM-DD&to=YYYY-MM-DD: usage per day and model, totals and quota."""

    permission_classes = [IsAuthenticated]

    class FilterSerializer(serializers.Serializer):
        date_from = serializers.DateField(required=False)
        date_to = serializers.DateField(required=False)

    @schemas.usage_schema
    def get(self, request: Request) -> Response:
        params = {"date_from": request.query_params.get("from"), "date_to": request.query_params.get("to")}
        serializer = self.FilterSerializer(data={k: v for k, v in params.items() if v})
        serializer.is_valid(raise_exception=True)
        f = serializer.validated_data
        if f.get("date_from") and f.get("date_to") and f["date_from"] > f["date_to"]:
            raise InvalidInput("`from` must not be after `to`.", param="from")
        return Response(UsageSerializer(usage_report(tenant=request_tenant(request), **f)).data)


class WebhookSecretApi(APIView):
    """GET /v1/webhook-secret (JWT): the secret that signs this tenant's job webhooks."""

    permission_classes = [IsJwtAuthenticated]
    jwt_required_for = "the webhook secret"

    @schemas.webhook_secret_schema
    def get(self, request: Request) -> Response:
        tenant = request_tenant(request)
        return Response(WebhookSecretSerializer({"webhook_secret": tenant.webhook_secret, "header": SIGNATURE_HEADER,
                                                 "algorithm": SIGNATURE_SCHEME}).data)
