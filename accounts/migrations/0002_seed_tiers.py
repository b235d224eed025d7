from django.db import migrations

from accounts.seeds import tiers_seed


def seed(apps, schema_editor):
    tiers_seed(apps.get_model("accounts", "Tier"))


class Migration(migrations.Migration):
    dependencies = [("accounts", "0001_initial")]
    operations = [migrations.RunPython(seed, migrations.RunPython.noop)]
