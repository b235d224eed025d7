"""JobChunk.texts: jsonb -> bytea holding the same JSON as UTF-8 (embeddings.models.TextListField).

PostgreSQL's jsonb refuses the escape \\u0000, so a job whose text held a NUL character could not
be stored. The column is converted in place (one table rewrite); existing chunks keep their
texts, as jsonb's own JSON output. Going back works for chunks without a NUL.
"""

from django.db import migrations

import embeddings.models


class Migration(migrations.Migration):
    dependencies = [
        ("embeddings", "0003_cache_hit_stats"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[
                migrations.RunSQL(
                    "ALTER TABLE embeddings_jobchunk ALTER COLUMN texts TYPE bytea "
                    "USING convert_to(texts::text, 'UTF8')",
                    reverse_sql="ALTER TABLE embeddings_jobchunk ALTER COLUMN texts TYPE jsonb "
                    "USING convert_from(texts, 'UTF8')::jsonb",
                ),
            ],
            state_operations=[
                migrations.AlterField(
                    model_name="jobchunk",
                    name="texts",
                    field=embeddings.models.TextListField(
                        help_text="The chunk's model inputs: a JSON array of strings, as UTF-8 bytes."
                    ),
                ),
            ],
        ),
    ]
