"""Request serializers shared by the embedding endpoints (OpenAI's shape and ours)."""

from __future__ import annotations

from django.conf import settings
from rest_framework import serializers

from embeddings.registry import DEFAULT_MODEL, INPUT_TYPES


def _check_text(value, where: str) -> str:
    if not isinstance(value, str):
        if isinstance(value, int) or (isinstance(value, list) and value and isinstance(value[0], int)):
            raise serializers.ValidationError(f"{where} is a token array; send text (a string) instead.")
        raise serializers.ValidationError(f"{where} must be a string, not {type(value).__name__}.")
    if not value:
        raise serializers.ValidationError(f"{where} is an empty string; send non-empty text.")
    if len(value) > settings.MAX_INPUT_CHARS:
        raise serializers.ValidationError(
            f"{where} has {len(value)} characters; the limit is {settings.MAX_INPUT_CHARS}."
        )
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise serializers.ValidationError(f"{where} is not valid Unicode (it holds a lone surrogate).") from None
    return value


class TextsField(serializers.Field):
    """A string or a non-empty array of non-empty strings -> list[str]."""

    default_error_messages = {"required": "input is required: a string or an array of strings."}

    def to_internal_value(self, data) -> list[str]:
        if isinstance(data, str):
            return [_check_text(data, "input")]
        if not isinstance(data, list):
            raise serializers.ValidationError(
                f"input must be a string or an array of strings, not {type(data).__name__}."
            )
        if not data:
            raise serializers.ValidationError("input is an empty array; send at least one string.")
        limit = settings.MAX_INPUTS_PER_REQUEST
        if len(data) > limit:
            raise serializers.ValidationError(f"input has {len(data)} items; the limit is {limit} per request.")
        return [_check_text(v, f"input[{i}]") for i, v in enumerate(data)]

    def to_representation(self, value):
        return value


class TextField(serializers.Field):
    """One non-empty string (no coercion of numbers)."""

    default_error_messages = {"required": "text is required: a non-empty string."}

    def to_internal_value(self, data) -> str:
        return _check_text(data, "text")

    def to_representation(self, value):
        return value


class StrictBooleanField(serializers.BooleanField):
    """true/false only: a misspelt flag must not silently mean something."""

    def to_internal_value(self, data):
        if isinstance(data, bool):
            return data
        self.fail("invalid", input=data)


class EmbedOptionsSerializer(serializers.Serializer):
    model = serializers.CharField(required=False, default=DEFAULT_MODEL, max_length=200)
    dimensions = serializers.IntegerField(required=False, allow_null=True, default=None, min_value=1)
    normalize = StrictBooleanField(required=False, allow_null=True, default=None)
    truncate = StrictBooleanField(required=False, default=True)
    input_type = serializers.ChoiceField(choices=INPUT_TYPES, required=False, allow_null=True, default=None)
    public = StrictBooleanField(required=False, default=False)
    wait = serializers.FloatField(required=False, allow_null=True, default=None, min_value=0.01, max_value=600)


class EmbeddingsRequestSerializer(EmbedOptionsSerializer):
    """POST /v1/embeddings: OpenAI's body plus our extensions."""

    input = TextsField()
    model = serializers.CharField(max_length=200)
    encoding_format = serializers.ChoiceField(choices=("float", "base64"), required=False, default="float")
    user = serializers.CharField(required=False, allow_blank=True, max_length=256)


class EmbedRequestSerializer(EmbedOptionsSerializer):
    text = TextField()
    encoding_format = serializers.ChoiceField(choices=("float", "base64"), required=False, default="float")


class EmbedBatchRequestSerializer(EmbedOptionsSerializer):
    texts = TextsField()
    encoding_format = serializers.ChoiceField(choices=("float", "base64"), required=False, default="float")
