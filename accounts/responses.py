"""What the sign-up, login, key, usage and webhook-secret endpoints answer: one serializer each,
which the view answers with and the schema shows (embedplatform/responses.py)."""

from __future__ import annotations

from rest_framework import serializers

from accounts.models import ApiKey, DailyUsage
from accounts.selectors import UsageSummary
from embedplatform.responses import IsoDateTimeField

CLEAR_KEY_HELP = "The clear API key, shown this once."


class SignupResponseSerializer(serializers.Serializer):  # of {"user", "tenant", "api_key"} from tenant_signup

    user_id = serializers.IntegerField(source="user.pk")
    tenant_id = serializers.IntegerField(source="tenant.pk")
    tier = serializers.CharField(source="tenant.tier.name")
    api_key = serializers.CharField(help_text=CLEAR_KEY_HELP)


class LoginResponseSerializer(serializers.Serializer):  # of {"refresh": RefreshToken, "expires_in": seconds}

    access = serializers.CharField(source="refresh.access_token",
                                   help_text="JWT access token: `Authorization: Bearer <access>`.")
    refresh = serializers.CharField(help_text="Refresh token for POST /v1/auth/refresh.")
    token_type = serializers.CharField(default="Bearer")
    expires_in = serializers.IntegerField(help_text="Seconds until the access token expires.")


class RefreshResponseSerializer(serializers.Serializer):  # of {"access": AccessToken, "expires_in": seconds}

    access = serializers.CharField()
    expires_in = serializers.IntegerField()


class ApiKeySerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    prefix = serializers.CharField(help_text="The key's public id (DELETE /v1/keys/{prefix}).")
    created_at = serializers.DateTimeField()
    last_used_at = serializers.DateTimeField(allow_null=True)
    revoked_at = serializers.DateTimeField(allow_null=True)


class ApiKeyListSerializer(serializers.Serializer):
    object = serializers.CharField(default="list")
    data = ApiKeySerializer(many=True)  # type: ignore[assignment]  # a field: DRF's metaclass keeps .data


class ApiKeyCreatedSerializer(ApiKeySerializer):  # of the ApiKey, with context={"api_key": its clear value}

    last_used_at = None  # type: ignore[assignment]  # None removes the inherited field (DRF)
    revoked_at = None  # type: ignore[assignment]
    api_key = serializers.SerializerMethodField(help_text=CLEAR_KEY_HELP)

    def get_api_key(self, key: ApiKey) -> str:
        return self.context["api_key"]


class ApiKeyRevokedSerializer(serializers.Serializer):
    revoked = serializers.SerializerMethodField()
    prefix = serializers.CharField()
    revoked_at = IsoDateTimeField()

    def get_revoked(self, key: ApiKey) -> bool:
        return key.revoked_at is not None


class UsageTotalsSerializer(serializers.Serializer):
    texts = serializers.IntegerField()
    cache_hits = serializers.IntegerField()
    cache_misses = serializers.IntegerField()
    tokens = serializers.IntegerField()
    compute_ms = serializers.FloatField()


class UsageCacheModelSerializer(serializers.Serializer):
    model = serializers.CharField()
    entries = serializers.IntegerField()
    bytes = serializers.IntegerField()


class UsageCacheSerializer(serializers.Serializer):
    entries = serializers.IntegerField(source="total_cached", help_text="Vectors stored in the tenant's cache scope.")
    bytes = serializers.IntegerField(source="cache_bytes", help_text="Their float32 vectors' size (entries x dims x 4).")
    models = UsageCacheModelSerializer(source="cache", many=True)
    limit_bytes = serializers.SerializerMethodField(
        help_text="The most your tier's cache keeps (max_cache_bytes); null: no limit.")
    full = serializers.BooleanField(
        source="cache_full",
        help_text="At the limit: new vectors are still returned but not stored, and POST /v1/jobs "
                  "is refused (403 cache_full) until entries are deleted or expire.",
    )

    def get_limit_bytes(self, summary: UsageSummary) -> int | None:
        return summary.cache_limit_bytes or None


class QuotaSerializer(serializers.Serializer):
    daily_limit = serializers.IntegerField()
    used_today = serializers.IntegerField()
    monthly_limit = serializers.IntegerField()
    used_month = serializers.IntegerField()
    resets_at = IsoDateTimeField(source="day_reset", help_text="Next daily reset (midnight UTC).")


class UsageRowSerializer(serializers.Serializer):
    day = serializers.DateField()
    model = serializers.CharField()
    cache_hits = serializers.IntegerField()
    cache_misses = serializers.IntegerField()
    tokens = serializers.IntegerField()
    compute_ms = serializers.SerializerMethodField()

    def get_compute_ms(self, row: DailyUsage) -> float:
        return round(row.compute_ms, 3)


class UsageSerializer(serializers.Serializer):  # of accounts.selectors.UsageSummary

    object = serializers.CharField(default="usage")
    from_ = serializers.DateField(source="date_from")
    to = serializers.DateField(source="date_to")
    cache_hits = serializers.SerializerMethodField()
    cache_misses = serializers.SerializerMethodField()
    total_cached = serializers.IntegerField(help_text="Vectors stored in the tenant's cache scope.")
    cache = UsageCacheSerializer(source="*")
    today = UsageTotalsSerializer()
    month = UsageTotalsSerializer()
    quota = QuotaSerializer()
    data = UsageRowSerializer(source="rows", many=True)  # type: ignore[assignment]  # a field, as above

    def get_fields(self) -> dict:
        # `from` is a Python keyword, so the field is declared as from_.
        return {"from" if name == "from_" else name: field for name, field in super().get_fields().items()}

    def get_cache_hits(self, summary: UsageSummary) -> int:
        return sum(r.cache_hits for r in summary.rows)

    def get_cache_misses(self, summary: UsageSummary) -> int:
        return sum(r.cache_misses for r in summary.rows)


class WebhookSecretSerializer(serializers.Serializer):

    webhook_secret = serializers.CharField()
    header = serializers.CharField(help_text="The request header that carries the signature.")
    algorithm = serializers.CharField(
        help_text="The signature's format (Stripe's scheme): refuse a delivery whose t is more "
                  "than 300 s from now, or whose v1 differs from the HMAC you compute.")
