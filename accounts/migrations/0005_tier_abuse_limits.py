from django.db import migrations, models

from accounts.seeds import tiers_seed_fields


def seed(apps, schema_editor):
    tiers_seed_fields(apps.get_model("accounts", "Tier"), "max_sync_in_flight", "max_keys", "max_cache_bytes")


class Migration(migrations.Migration):

    dependencies = [
        ('accounts', '0004_tenant_webhook_secret'),
    ]

    operations = [
        migrations.AddField(
            model_name='tier',
            name='max_cache_bytes',
            field=models.PositiveBigIntegerField(default=1073741824, help_text="Bytes of vectors the tenant's private cache may hold; 0 = no limit."),
        ),
        migrations.AddField(
            model_name='tier',
            name='max_keys',
            field=models.PositiveIntegerField(default=20, help_text='Active (unrevoked) API keys per tenant.'),
        ),
        migrations.AddField(
            model_name='tier',
            name='max_sync_in_flight',
            field=models.PositiveIntegerField(default=8, help_text='Sync requests (and provider-worker calls) of one tenant in flight at once; past it 429.'),
        ),
        migrations.RunPython(seed, migrations.RunPython.noop),
    ]
