from django.db import migrations

TIERS = [
    # name, daily, monthly, rpm, max_batch, max_job_texts, server_compute, priority
    ("free", 1_000, 30_000, 60, 256, 10_000, False, 0),
    ("paid", 50_000, 1_500_000, 3_000, 2_048, 100_000, True, 10),
]


def seed(apps, schema_editor):
    Tier = apps.get_model("accounts", "Tier")
    for name, daily, monthly, rpm, batch, job, compute, priority in TIERS:
        Tier.objects.get_or_create(
            name=name,
            defaults=dict(daily_limit=daily, monthly_limit=monthly, requests_per_minute=rpm, max_batch_size=batch,
                          max_job_texts=job, server_compute=compute, priority=priority),
        )


class Migration(migrations.Migration):
    dependencies = [("accounts", "0001_initial")]
    operations = [migrations.RunPython(seed, migrations.RunPython.noop)]
