"""What the provider endpoints answer: one serializer each, which the view answers with and the
schema shows (embedplatform/responses.py). The secret goes in, never out: only its mask."""

from __future__ import annotations

from rest_framework import serializers

from providers.models import ProviderConfig


class ProviderSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    preset = serializers.CharField()
    kind = serializers.CharField(help_text="embed (POST /v1/embeddings) or rerank (POST /v1/rerank).")
    endpoint = serializers.CharField(source="effective_endpoint")
    request_template = serializers.JSONField(source="effective_template")
    response_path = serializers.CharField(source="effective_response_path")
    index_path = serializers.CharField(source="effective_index_path",
                                       help_text="A rerank provider's JSONPath to each score's document index.")
    headers = serializers.SerializerMethodField()
    model = serializers.CharField()
    max_inputs = serializers.IntegerField(source="effective_max_inputs")
    api_key_mask = serializers.CharField(source="secret_mask")
    models = serializers.SerializerMethodField()
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()

    def get_headers(self, obj: ProviderConfig) -> dict[str, str]:
        # {{api_key}} templates as written; every other value is a secret, stored encrypted and
        # shown by its mask (send the mask back to keep the value).
        return dict(obj.effective_headers)

    def get_models(self, obj: ProviderConfig) -> list[str]:
        return [f"{obj.name}/{obj.model}"] if obj.model else []


class ProviderListSerializer(serializers.Serializer):
    object = serializers.CharField(default="list")
    data = ProviderSerializer(many=True)  # type: ignore[assignment]  # a field: DRF's metaclass keeps .data


class ProviderDeletedSerializer(serializers.Serializer):  # of {"id": the deleted provider's id}
    id = serializers.IntegerField()
    deleted = serializers.BooleanField(default=True)


class ProviderTestResultSerializer(serializers.Serializer):  # of providers.services.TestResult
    ok = serializers.BooleanField()
    model = serializers.CharField()
    dimensions = serializers.IntegerField(allow_null=True)
    latency_ms = serializers.FloatField(allow_null=True)
    status = serializers.IntegerField(allow_null=True, help_text="The upstream's HTTP status.")
    error = serializers.CharField(allow_null=True)
