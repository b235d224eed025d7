"""DRF authentication: `Authorization: Bearer <api key>` or `Bearer <JWT access token>`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from django.utils import timezone
from rest_framework import authentication, exceptions
from rest_framework_simplejwt.authentication import JWTAuthentication
from rest_framework_simplejwt.exceptions import AuthenticationFailed as JwtAuthenticationFailed
from rest_framework_simplejwt.tokens import Token

from accounts.keys import key_parse_prefix, key_verify
from accounts.models import ApiKey, Tenant, User
from accounts.selectors import api_key_for_auth
from embedplatform.errors import NO_TENANT, NotAllowed

# last_used_at is written at most this often per key, not on every request.
LAST_USED_RESOLUTION = timedelta(seconds=60)
INVALID_KEY = "Invalid API key. Send `Authorization: Bearer <api key>` with a key from POST /v1/keys."


@dataclass(frozen=True)
class KeyPrincipal:
    """request.user for API-key requests: the tenant, not a person."""

    tenant: Tenant
    api_key: ApiKey
    is_authenticated: bool = True
    is_staff: bool = False

    @property
    def pk(self):  # django-ratelimit and logging want an id
        return f"key:{self.api_key.prefix}"


class ApiKeyAuthentication(authentication.BaseAuthentication):
    """Finds the key by its public prefix, then checks the HMAC in constant time.

    Returns None for a bearer token that is not shaped like one of our keys, so that a
    JWT authenticator listed after this one can try it. Revoked keys and inactive tenants
    fail at once: nothing about a key is cached between requests.
    """

    keyword = "Bearer"

    def authenticate(self, request):
        header = request.META.get("HTTP_AUTHORIZATION", "")
        if not header:
            return None
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise exceptions.AuthenticationFailed(INVALID_KEY)
        token = token.strip()
        prefix = key_parse_prefix(token)
        if prefix is None:
            if token.count(".") == 2:  # looks like a JWT: leave it to the JWT authenticator
                return None
            raise exceptions.AuthenticationFailed(INVALID_KEY)
        key = api_key_for_auth(prefix=prefix)
        if key is None or not key_verify(token, key.key_hash):
            raise exceptions.AuthenticationFailed(INVALID_KEY)
        _touch(key)
        return KeyPrincipal(tenant=key.tenant, api_key=key), key

    def authenticate_header(self, request):
        return self.keyword


def _touch(key: ApiKey) -> None:
    """Keeps last_used_at to within LAST_USED_RESOLUTION with one conditional UPDATE a minute, at most."""
    now = timezone.now()
    if key.last_used_at is None or now - key.last_used_at >= LAST_USED_RESOLUTION:
        ApiKey.objects.filter(pk=key.pk).update(last_used_at=now)
        key.last_used_at = now


class JwtAuthentication(JWTAuthentication):
    """simplejwt's authenticator, loading the user's tenant and tier in the same query.

    A bad or expired token answers 401 with one plain message (simplejwt's own detail is
    a nested dict meant for its views).
    """

    def authenticate(self, request):
        try:
            return super().authenticate(request)
        except JwtAuthenticationFailed as exc:
            raise exceptions.AuthenticationFailed(INVALID_TOKEN) from exc

    def get_user(self, validated_token: Token) -> User:
        try:
            user_id = validated_token["user_id"]
        except KeyError:
            raise exceptions.AuthenticationFailed(INVALID_TOKEN) from None
        user = User.objects.select_related("tenant__tier").filter(pk=user_id, is_active=True).first()
        if user is None or (user.tenant is not None and not user.tenant.is_active):
            raise exceptions.AuthenticationFailed(INVALID_TOKEN)
        return user


INVALID_TOKEN = "Invalid or expired access token; POST /v1/auth/login or /v1/auth/refresh for a new one."


def is_jwt_request(request) -> bool:
    """True when the request was authenticated with a JWT (a user session), not an API key."""
    return isinstance(request.auth, Token)


def request_principal_id(request) -> str:
    """A stable id of the credential, for per-key rate limits: `key:<prefix>` or `user:<id>`."""
    if isinstance(request.auth, ApiKey):
        return f"key:{request.auth.prefix}"
    return f"user:{request.user.pk}"


def request_tenant(request) -> Tenant:
    """The tenant a request acts for; views never take it from the body.

    Raises NotAllowed for a JWT user without a tenant (a staff-only account).
    """
    tenant = getattr(request.user, "tenant", None)
    if tenant is None:
        raise NotAllowed(NO_TENANT)
    return tenant
