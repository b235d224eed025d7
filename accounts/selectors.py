from __future__ import annotations

from functools import cache

from django.db import connection

from accounts.models import ApiKey, Tenant, Tier


@cache
def _auth_sql() -> tuple[str, list[tuple[type, list[str], list]]]:
    """SELECT of a key with its tenant and tier, built once from the models' fields.

    The ORM takes longer to compile this query than Postgres takes to run it, and it runs
    on every request, so it is compiled here once.
    """
    parts, layout = [], []
    for model, alias in ((ApiKey, "k"), (Tenant, "t"), (Tier, "r")):
        fields = model._meta.concrete_fields
        parts += [f'{alias}."{f.column}"' for f in fields]
        layout.append((model, [f.attname for f in fields], [getattr(f, "from_db_value", None) for f in fields]))
    sql = (
        f"SELECT {', '.join(parts)} FROM {ApiKey._meta.db_table} k "
        f"JOIN {Tenant._meta.db_table} t ON t.id = k.tenant_id "
        f"JOIN {Tier._meta.db_table} r ON r.id = t.tier_id "
        "WHERE k.prefix = %s AND k.revoked_at IS NULL AND t.is_active"
    )
    return sql, layout


def api_key_for_auth(*, prefix: str) -> ApiKey | None:
    """The live key with this prefix, its tenant and tier loaded; None if revoked, unknown or the tenant is inactive."""
    sql, layout = _auth_sql()
    with connection.cursor() as cur:
        cur.execute(sql, [prefix])
        row = cur.fetchone()
    if row is None:
        return None
    objs, i = [], 0
    for model, names, converters in layout:
        values = [
            conv(v, None, connection) if conv is not None else v
            for conv, v in zip(converters, row[i : i + len(names)], strict=True)
        ]
        objs.append(model.from_db(connection.alias, names, values))
        i += len(names)
    key, tenant, tier = objs
    tenant.tier = tier
    key.tenant = tenant
    return key
