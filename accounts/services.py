from __future__ import annotations

from django.db import transaction
from django.utils import timezone

from accounts.keys import key_make
from accounts.models import ApiKey, Tenant, Tier, User
from embedplatform.errors import InvalidInput, NotFound


def tenant_create(*, email: str, tier: str, password: str | None = None, tenant_name: str = "") -> tuple[Tenant, User]:
    """Creates a tenant and its first user. Raises InvalidInput for an unknown tier or a taken email."""
    try:
        tier_obj = Tier.objects.get(name=tier)
    except Tier.DoesNotExist:
        names = ", ".join(Tier.objects.order_by("name").values_list("name", flat=True))
        raise InvalidInput(f"Unknown tier `{tier}`; known tiers: {names}.", param="tier") from None
    email = email.strip().lower()
    if User.objects.filter(email=email).exists():
        raise InvalidInput(f"A user with email {email} already exists.", param="email", code="email_taken")
    with transaction.atomic():
        tenant = Tenant.objects.create(name=tenant_name or email, tier=tier_obj)
        user = User.objects.create_user(email=email, password=password, tenant=tenant)
    return tenant, user


def api_key_create(*, tenant: Tenant, name: str = "", created_by: User | None = None) -> tuple[ApiKey, str]:
    """Creates a key and returns (row, clear key). The clear key exists only in this return value."""
    new = key_make()
    key = ApiKey.objects.create(tenant=tenant, name=name, prefix=new.prefix, key_hash=new.key_hash, created_by=created_by)
    return key, new.key


def api_key_revoke(*, tenant: Tenant, prefix: str) -> ApiKey:
    """Revokes one of the tenant's keys; another tenant's prefix is NotFound."""
    updated = ApiKey.objects.filter(tenant=tenant, prefix=prefix, revoked_at__isnull=True).update(revoked_at=timezone.now())
    key = ApiKey.objects.filter(tenant=tenant, prefix=prefix).first()
    if key is None or (not updated and key.revoked_at is None):
        raise NotFound(f"No API key with prefix {prefix}.", param="prefix")
    return key
