"""Any saved or deleted key, tenant or tier invalidates the web processes' key caches
(accounts/authcache.py). Queryset .update() sends no signal: its callers bump themselves."""

from __future__ import annotations

from typing import Any

from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from accounts.authcache import auth_epoch_bump
from accounts.models import ApiKey, Tenant, Tier


@receiver(post_save, sender=ApiKey, dispatch_uid="accounts.authcache.key_saved")
@receiver(post_delete, sender=ApiKey, dispatch_uid="accounts.authcache.key_deleted")
@receiver(post_save, sender=Tenant, dispatch_uid="accounts.authcache.tenant_saved")
@receiver(post_delete, sender=Tenant, dispatch_uid="accounts.authcache.tenant_deleted")
@receiver(post_save, sender=Tier, dispatch_uid="accounts.authcache.tier_saved")
@receiver(post_delete, sender=Tier, dispatch_uid="accounts.authcache.tier_deleted")
def auth_changed(**kwargs: Any) -> None:
    auth_epoch_bump()
