from __future__ import annotations

from django.db.models import QuerySet

from accounts.models import Tenant
from embedplatform.errors import NotFound
from providers.errors import PROVIDER_NOT_FOUND
from providers.models import ProviderConfig


def provider_list(*, tenant: Tenant) -> QuerySet[ProviderConfig]:
    return ProviderConfig.objects.filter(tenant=tenant).order_by("name", "id")


def provider_get(*, tenant: Tenant, provider_id: int) -> ProviderConfig:
    """The tenant's provider; NotFound for an unknown id or another tenant's (never 403)."""
    if not 0 < int(provider_id) < 2**63:  # the URL takes any digits; the column is a bigint
        raise NotFound(PROVIDER_NOT_FOUND.format(name=provider_id))
    provider = ProviderConfig.objects.filter(tenant=tenant, pk=provider_id).first()
    if provider is None:
        raise NotFound(PROVIDER_NOT_FOUND.format(name=provider_id))
    return provider


def provider_for_model(*, tenant: Tenant, model: str) -> tuple[ProviderConfig, str] | None:
    """(provider, upstream model) for `<provider name>/<upstream model>`, or None.

    The name ends at the first "/", so upstream names may hold more ("together/BAAI/bge-m3").
    """
    name, slash, upstream = model.partition("/")
    if not slash or not name or not upstream:
        return None
    provider = ProviderConfig.objects.filter(tenant=tenant, name=name).first()
    return (provider, upstream) if provider is not None else None

