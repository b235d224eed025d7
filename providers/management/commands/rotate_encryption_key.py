"""`manage.py rotate_encryption_key`: re-encrypt every provider secret (API keys and secret header
values) with ENCRYPTION_KEY's first key.

Rotation: put the new key first (ENCRYPTION_KEY=new,old), run this, then drop the old key.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from providers.crypto import secret_rotate
from providers.errors import SecretUnreadable
from providers.models import ProviderConfig


class Command(BaseCommand):
    help = "Re-encrypts every stored provider secret (API keys, secret header values) with the first key of ENCRYPTION_KEY."

    def handle(self, *args: Any, **options: Any) -> None:
        rotated = 0
        try:
            with transaction.atomic():
                providers = ProviderConfig.objects.select_for_update().exclude(secret_encrypted="", headers_encrypted="")
                for provider in providers.order_by("pk"):
                    fields = [f for f in ("secret_encrypted", "headers_encrypted") if getattr(provider, f)]
                    try:
                        for field in fields:
                            setattr(provider, field, secret_rotate(getattr(provider, field)))
                    except SecretUnreadable:
                        raise CommandError(
                            f"Provider {provider.pk} ({provider.name}, tenant {provider.tenant_id}): no key in "
                            "ENCRYPTION_KEY decrypts its secret. Add the key it was encrypted with (new,old) and "
                            "run again; nothing was changed."
                        ) from None
                    provider.save(update_fields=fields)
                    rotated += len(fields)
        except ImproperlyConfigured as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"Re-encrypted {rotated} provider secret(s) with the first ENCRYPTION_KEY key.")
