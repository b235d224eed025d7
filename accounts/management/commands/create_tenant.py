from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from accounts.services import api_key_create, tenant_create
from embedplatform.errors import ApiError


class Command(BaseCommand):
    help = "Create a tenant and its first user; prints a new API key as the last line."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("email")
        parser.add_argument("--tier", default="free", help="Tier name (seeded: free, paid).")
        parser.add_argument("--password", default=None, help="Password for login (optional).")
        parser.add_argument("--name", default="", help="Tenant name (default: the email).")

    def handle(self, *args: Any, **opts: Any) -> None:
        try:
            tenant, user = tenant_create(email=opts["email"], tier=opts["tier"], password=opts["password"], tenant_name=opts["name"])
        except ApiError as exc:
            raise CommandError(exc.message) from None
        _, key = api_key_create(tenant=tenant, name="default", created_by=user)
        self.stderr.write(f"Created tenant {tenant.pk} ({tenant.tier.name}) for {user.email}. API key (shown once):")
        self.stdout.write(key)
