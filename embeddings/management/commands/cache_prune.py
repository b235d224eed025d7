"""manage.py cache_prune --unused-for 90d [--tenant ID] [--model M] [--dry-run]."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from accounts.models import Tenant
from embeddings.retention import PRUNE_BATCH, cache_prune, duration_parse


class Command(BaseCommand):
    help = ("Delete cache entries not used (last hit, else created) for a while, in short batches so the "
            "table is never locked for long. CACHE_RETENTION_DAYS runs this daily from beat.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--unused-for", required=True, metavar="DURATION",
                            help="How long an entry must have gone unused: 90d, 12h or 30m.")
        parser.add_argument("--tenant", type=int, default=None,
                            help="Only this tenant's scope (its id; 0 is the public scope).")
        parser.add_argument("--model", default=None, help="Only this model's entries.")
        parser.add_argument("--dry-run", action="store_true", help="Count what would be deleted; delete nothing.")
        parser.add_argument("--batch-size", type=int, default=PRUNE_BATCH, help="Rows per DELETE (one transaction each).")

    def handle(self, *args: Any, **opts: Any) -> None:
        try:
            unused_for = duration_parse(opts["unused_for"])
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        if unused_for.total_seconds() <= 0:
            raise CommandError("--unused-for must be more than 0.")
        if opts["batch_size"] < 1:
            raise CommandError("--batch-size must be at least 1.")
        if opts["tenant"] not in (None, 0) and not Tenant.objects.filter(pk=opts["tenant"]).exists():
            raise CommandError(f"No tenant with id {opts['tenant']}.")
        what = " ".join(filter(None, [
            f"of tenant {opts['tenant']}" if opts["tenant"] else ("of the public scope" if opts["tenant"] == 0 else ""),
            f"of model {opts['model']}" if opts["model"] else "",
        ]))
        what = f" {what}" if what else ""
        if opts["dry_run"]:
            n = cache_prune(unused_for=unused_for, tenant_id=opts["tenant"], model=opts["model"], dry_run=True)
            self.stdout.write(f"dry run: {n} entries{what} unused for {opts['unused_for']} would be deleted")
            return
        total = cache_prune(unused_for=unused_for, tenant_id=opts["tenant"], model=opts["model"],
                            batch_size=opts["batch_size"],
                            on_batch=lambda n: self.stdout.write(f"deleted {n} entries so far"))
        self.stdout.write(f"deleted {total} entries{what} unused for {opts['unused_for']}")
