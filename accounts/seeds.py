"""The seeded tiers (SPEC "Tenancy, tiers, quotas"); the data migration and tests use them."""

SEED_TIERS = {
    "free": dict(daily_limit=1_000, monthly_limit=30_000, requests_per_minute=60, max_batch_size=256,
                 max_job_texts=10_000, server_compute=False, priority=0),
    "paid": dict(daily_limit=50_000, monthly_limit=1_500_000, requests_per_minute=3_000, max_batch_size=2_048,
                 max_job_texts=100_000, server_compute=True, priority=10),
}


def tiers_seed(Tier) -> None:
    """Creates the seeded tiers that do not exist yet (never overwrites an admin's edits)."""
    for name, fields in SEED_TIERS.items():
        Tier.objects.get_or_create(name=name, defaults=fields)
