"""The seeded tiers (SPEC "Tenancy, tiers, quotas"); the data migration and tests use them."""

from django.db import models

SEED_TIERS = {
    "free": dict(daily_limit=1_000, monthly_limit=30_000, requests_per_minute=60, max_batch_size=256,
                 max_job_texts=10_000, server_compute=False, priority=0, max_sync_in_flight=4, max_keys=5,
                 max_cache_bytes=256 << 20),
    "paid": dict(daily_limit=50_000, monthly_limit=1_500_000, requests_per_minute=3_000, max_batch_size=2_048,
                 max_job_texts=100_000, server_compute=True, priority=10, max_sync_in_flight=8, max_keys=50,
                 max_cache_bytes=16 << 30),
}


def tiers_seed(Tier: type[models.Model]) -> None:
    """Creates the seeded tiers that do not exist yet (never overwrites an admin's edits)."""
    known = {f.name for f in Tier._meta.get_fields()}  # a migration's historical model may lack later fields
    for name, fields in SEED_TIERS.items():
        Tier.objects.get_or_create(name=name, defaults={k: v for k, v in fields.items() if k in known})


def tiers_seed_fields(Tier: type[models.Model], *names: str) -> None:
    """Sets `names` on the seeded tiers to their seed values (a migration that adds tier fields)."""
    for name, fields in SEED_TIERS.items():
        Tier.objects.filter(name=name).update(**{k: fields[k] for k in names})
