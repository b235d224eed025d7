"""DRF authentication: `Authorization: Bearer <api key>` or `Bearer <JWT access token>`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

from django.utils import timezone
from rest_framework import authentication, exceptions
from rest_framework_simplejwt.authentication import AuthUser, JWTAuthentication
from rest_framework_simplejwt.exceptions import AuthenticationFailed as JwtAuthenticationFailed
from rest_framework_simplejwt.tokens import Token

from accounts.authcache import auth_epoch_get, key_cached, key_forget, key_remember
from accounts.keys import key_parse_prefix, key_verify
from accounts.models import ApiKey, Tenant, User
from accounts.selectors import api_key_for_auth
from embedplatform.errors import NO_TENANT, NotAllowed

if TYPE_CHECKING:
    from rest_framework.request import Request

# last_used_at is written at most this often per key, not on every request.
LAST_USED_RESOLUTION = timedelta(seconds=60)
INVALID_KEY = "Invalid API key. Send `Authorization: Bearer <api key>` with a key from POST /v1/keys."


@dataclass(frozen=True)
class KeyPrincipal:
    """request.user for API-key requests: the tenant, not a person."""

    tenant: Tenant
    api_key: ApiKey
    epoch: str = ""  # the auth epoch the key was read at (accounts/authcache.py)
    is_authenticated: bool = True
    is_staff: bool = False

    @property
    def pk(self) -> str:  # logging wants an id
        return f"key:{self.api_key.prefix}"


class ApiKeyAuthentication(authentication.BaseAuthentication):
    """Finds the key by its public prefix, then checks the HMAC in constant time.

    Returns None for a bearer token that is not shaped like one of our keys, so that a
    JWT authenticator listed after this one can try it. Keys come from the process's key
    cache (accounts/authcache.py) when it holds them; revoked keys and inactive tenants still
    fail on their next request: a view with `checks_auth_epoch` (the data plane) compares the
    key's epoch in its rate-limit round trip and calls `api_key_recheck`; for any other view
    it is compared here.
    """

    keyword = "Bearer"

    def authenticate(self, request: Request) -> tuple[KeyPrincipal, ApiKey] | None:
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
        cached = key_cached(prefix)
        if cached is None:
            key, epoch = _load(prefix)
        else:
            key, epoch = cached
            view = (getattr(request, "parser_context", None) or {}).get("view")
            if not getattr(view, "checks_auth_epoch", False):
                current = auth_epoch_get()
                if current != epoch:
                    key, epoch = _load(prefix, epoch=current)
        if key is None or not key_verify(token, key.key_hash):
            raise exceptions.AuthenticationFailed(INVALID_KEY)
        _touch(key)
        return KeyPrincipal(tenant=key.tenant, api_key=key, epoch=epoch), key

    def authenticate_header(self, request: Request) -> str:
        return self.keyword


def _load(prefix: str, epoch: str | None = None) -> tuple[ApiKey | None, str]:
    """Reads the key from Postgres and caches it, stamped with an epoch read *before* the row."""
    key_forget(prefix)
    epoch = epoch or auth_epoch_get()
    key = api_key_for_auth(prefix=prefix)
    if key is not None:
        key_remember(prefix, key, epoch)
    return key, epoch


def api_key_recheck(request: Request, epoch: str) -> None:
    """For a view with `checks_auth_epoch`: `epoch` is the current one, read after authentication.
    A key read at another epoch is read again (401 if it was revoked or its tenant deactivated;
    a changed tenant or tier replaces request.user)."""
    principal = request.user
    if not isinstance(principal, KeyPrincipal) or principal.epoch == epoch:
        return
    key, epoch = _load(principal.api_key.prefix, epoch=epoch)
    if key is None:
        raise exceptions.AuthenticationFailed(INVALID_KEY)
    # A key's principal stands in for a user (the stubs type request.user as a user).
    request.user = KeyPrincipal(tenant=key.tenant, api_key=key, epoch=epoch)  # type: ignore[assignment]
    request.auth = key


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

    def authenticate(self, request: Request) -> tuple[AuthUser, Token] | None:
        try:
            return super().authenticate(request)
        except JwtAuthenticationFailed as exc:
            raise exceptions.AuthenticationFailed(INVALID_TOKEN) from exc

    def get_user(self, validated_token: Token) -> User:  # type: ignore[override]  # simplejwt's is a bare TypeVar
        try:
            user_id = validated_token["user_id"]
        except KeyError:
            raise exceptions.AuthenticationFailed(INVALID_TOKEN) from None
        user = User.objects.select_related("tenant__tier").filter(pk=user_id, is_active=True).first()
        if user is None or (user.tenant is not None and not user.tenant.is_active):
            raise exceptions.AuthenticationFailed(INVALID_TOKEN)
        return user


INVALID_TOKEN = "Invalid or expired access token; POST /v1/auth/login or /v1/auth/refresh for a new one."


def is_jwt_request(request: Request) -> bool:
    """True when the request was authenticated with a JWT (a user session), not an API key."""
    return isinstance(request.auth, Token)


def request_principal_id(request: Request) -> str:
    """A stable id of the credential, for per-key rate limits: `key:<prefix>` or `user:<id>`."""
    if isinstance(request.auth, ApiKey):
        return f"key:{request.auth.prefix}"
    return f"user:{request.user.pk}"


def request_tenant(request: Request) -> Tenant:
    """The tenant a request acts for; views never take it from the body.

    Raises NotAllowed for a JWT user without a tenant (a staff-only account).
    """
    tenant = getattr(request.user, "tenant", None)
    if tenant is None:
        raise NotAllowed(NO_TENANT)
    return tenant
