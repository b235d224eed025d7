"""DRF authentication for `Authorization: Bearer <api key>`."""

from __future__ import annotations

from dataclasses import dataclass

from rest_framework import authentication, exceptions

from accounts.keys import key_parse_prefix, key_verify
from accounts.models import ApiKey, Tenant
from accounts.selectors import api_key_for_auth

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
        return KeyPrincipal(tenant=key.tenant, api_key=key), key

    def authenticate_header(self, request):
        return self.keyword


def request_tenant(request) -> Tenant:
    """The tenant a request acts for; views never take it from the body."""
    return request.user.tenant
