"""POST/GET /v1/providers, GET/PATCH/DELETE /v1/providers/{id}, POST /v1/providers/{id}/test.

Management needs a JWT (a user session): an API key is refused with 403
(accounts.permissions.IsJwtAuthenticated). The secret goes in, never out: responses carry
only its mask.
"""

from __future__ import annotations

from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.authentication import request_tenant
from accounts.permissions import IsJwtAuthenticated
from accounts.quotas import provider_test_check
from providers import schemas
from providers.presets import CUSTOM, KINDS, PRESET_CHOICES
from providers.responses import (
    ProviderDeletedSerializer,
    ProviderListSerializer,
    ProviderSerializer,
    ProviderTestResultSerializer,
)
from providers.selectors import provider_get, provider_list
from providers.services import MAX_INPUTS_LIMIT, provider_create, provider_delete, provider_test, provider_update


class ProviderInputSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=64)
    preset = serializers.ChoiceField(choices=PRESET_CHOICES, default=CUSTOM)
    kind = serializers.ChoiceField(choices=KINDS, required=False,
                                   help_text="embed or rerank; default: the preset's (custom: embed).")
    endpoint = serializers.CharField(max_length=2000, required=False, allow_blank=True)
    request_template = serializers.JSONField(required=False, allow_null=True)
    response_path = serializers.CharField(max_length=500, required=False, allow_blank=True)
    index_path = serializers.CharField(max_length=500, required=False, allow_blank=True,
                                       help_text="Rerank: JSONPath to each score's document index; blank: the "
                                                 "preset's, or (custom) scores in document order.")
    headers = serializers.JSONField(required=False, allow_null=True)
    api_key = serializers.CharField(max_length=4000, required=False, allow_blank=True, write_only=True)
    model = serializers.CharField(max_length=200, required=False, allow_blank=True)
    max_inputs = serializers.IntegerField(min_value=1, max_value=MAX_INPUTS_LIMIT, required=False, allow_null=True)


class ProviderListCreateApi(APIView):
    permission_classes = [IsJwtAuthenticated]
    jwt_required_for = "providers"

    @schemas.provider_list_schema
    def get(self, request: Request) -> Response:
        return Response(ProviderListSerializer({"data": provider_list(tenant=request_tenant(request))}).data)

    @schemas.provider_create_schema(ProviderInputSerializer)
    def post(self, request: Request) -> Response:
        serializer = ProviderInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        provider = provider_create(tenant=request_tenant(request), **serializer.validated_data)
        return Response(ProviderSerializer(provider).data, status=201)


class ProviderDetailApi(APIView):
    permission_classes = [IsJwtAuthenticated]
    jwt_required_for = "providers"

    @schemas.provider_detail_schema
    def get(self, request: Request, provider_id: int) -> Response:
        provider = provider_get(tenant=request_tenant(request), provider_id=provider_id)
        return Response(ProviderSerializer(provider).data)

    @schemas.provider_update_schema(ProviderInputSerializer)
    def patch(self, request: Request, provider_id: int) -> Response:
        serializer = ProviderInputSerializer(data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        changes = {k: v for k, v in serializer.validated_data.items() if k in request.data}  # no defaults on PATCH
        provider = provider_update(tenant=request_tenant(request), provider_id=provider_id, **changes)
        return Response(ProviderSerializer(provider).data)

    @schemas.provider_delete_schema
    def delete(self, request: Request, provider_id: int) -> Response:
        provider_delete(tenant=request_tenant(request), provider_id=provider_id)
        return Response(ProviderDeletedSerializer({"id": provider_id}).data)


class ProviderTestApi(APIView):
    """One tiny real upstream call; 200 either way, with `ok` and what failed (a 504 result past
    PROVIDER_TEST_TIMEOUT_SECONDS). 429 past the tenant's PROVIDER_TEST_RATE."""

    permission_classes = [IsJwtAuthenticated]
    jwt_required_for = "providers"

    class InputSerializer(serializers.Serializer):
        model = serializers.CharField(max_length=200, required=False, allow_blank=True)

    @schemas.provider_test_schema(InputSerializer)
    def post(self, request: Request, provider_id: int) -> Response:
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        tenant = request_tenant(request)
        provider_test_check(request, tenant=tenant)  # 429 past PROVIDER_TEST_RATE
        result = provider_test(tenant=tenant, provider_id=provider_id,
                               model=serializer.validated_data.get("model") or None)
        return Response(ProviderTestResultSerializer(result).data)
