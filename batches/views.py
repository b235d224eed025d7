"""OpenAI's Batch API for embeddings: /v1/files and /v1/batches, in OpenAI's shapes, so that the
official SDK's client.files and client.batches work unchanged. Each view counts against the
tenant's requests per minute like every data-plane endpoint (embeddings.views.DataPlaneApi)."""

from __future__ import annotations

from collections.abc import Iterable

from django.conf import settings
from django.core.files.uploadhandler import TemporaryFileUploadHandler
from django.http import StreamingHttpResponse
from rest_framework import serializers
from rest_framework.parsers import MultiPartParser
from rest_framework.renderers import BaseRenderer
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.authentication import request_tenant
from batches import schemas
from batches.responses import batch_list_body, batch_payload, file_deleted_body, file_list_body, file_payload
from batches.selectors import batch_get, batch_list, file_chunks, file_get, file_list
from batches.services import FILE_TOO_LARGE, batch_cancel, batch_create, batch_sync, file_create, file_delete
from embeddings.views import DataPlaneApi
from embedplatform.errors import InvalidInput, PayloadTooLarge

UPLOAD_NOT_MULTIPART = "POST /v1/files takes multipart/form-data with `file` (a JSONL file) and `purpose` (batch)."
PURPOSE_UNSUPPORTED = ("purpose {purpose} is not supported here: files are for the Batch API (purpose batch, "
                       "requests to /v1/embeddings).")
METADATA_BAD = "metadata takes at most 16 keys of at most 64 characters, each value a string of at most 512."
MULTIPART_SLACK = 64 * 1024  # the form's other fields and boundaries around the file


class _BoundedUpload(TemporaryFileUploadHandler):
    """Django's upload to a temporary file, refused (413) as soon as it passes BATCH_MAX_FILE_BYTES."""

    def receive_data_chunk(self, raw_data: bytes, start: int) -> bytes | None:
        limit = settings.BATCH_MAX_FILE_BYTES
        if start + len(raw_data) > limit:
            raise PayloadTooLarge(f"The file is over the {limit}-byte limit.", param="file")
        return super().receive_data_chunk(raw_data, start)


class FileListCreateApi(DataPlaneApi):
    """POST /v1/files uploads a batch input file (multipart, as client.files.create sends it);
    GET /v1/files pages the tenant's files."""

    parser_classes = [MultiPartParser]

    class InputSerializer(serializers.Serializer):
        file = serializers.FileField(help_text="A JSONL file: one request per line, "
                                               "{custom_id, method: POST, url: /v1/embeddings, body}.")
        purpose = serializers.CharField(max_length=64, help_text="batch (the only purpose taken here).")

        def validate_purpose(self, value: str) -> str:
            if value != "batch":
                raise serializers.ValidationError(PURPOSE_UNSUPPORTED.format(purpose=value))
            return value

    class FilterSerializer(serializers.Serializer):
        purpose = serializers.ChoiceField(choices=("batch", "batch_output"), required=False)
        after = serializers.CharField(max_length=64, required=False, help_text="The last id of the previous page.")
        limit = serializers.IntegerField(min_value=1, max_value=10000, required=False, default=10000)
        order = serializers.ChoiceField(choices=("asc", "desc"), required=False, default="desc")

    @schemas.file_create_schema(InputSerializer)
    def post(self, request: Request) -> Response:
        if not (request.content_type or "").startswith("multipart/form-data"):
            raise InvalidInput(UPLOAD_NOT_MULTIPART, param="file", code="invalid_content_type")
        length = request.META.get("CONTENT_LENGTH") or ""
        limit = settings.BATCH_MAX_FILE_BYTES
        if length.isdigit() and int(length) > limit + MULTIPART_SLACK:
            raise PayloadTooLarge(FILE_TOO_LARGE.format(size=length, limit=limit), param="file")
        request._request.upload_handlers = [_BoundedUpload(request._request)]
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        file = file_create(tenant=request_tenant(request), upload=data["file"], purpose=data["purpose"])
        return Response(file_payload(file))

    @schemas.file_list_schema(FilterSerializer)
    def get(self, request: Request) -> Response:
        serializer = self.FilterSerializer(data=request.query_params)
        serializer.is_valid(raise_exception=True)
        files, more = file_list(tenant=request_tenant(request), **serializer.validated_data)
        return Response(file_list_body(files, more))


class FileDetailApi(DataPlaneApi):
    """GET /v1/files/{id}: the file; DELETE /v1/files/{id}: deletes it."""

    @schemas.file_retrieve_schema
    def get(self, request: Request, file_id: str) -> Response:
        return Response(file_payload(file_get(tenant=request_tenant(request), file_id=file_id)))

    @schemas.file_delete_schema
    def delete(self, request: Request, file_id: str) -> Response:
        file_delete(tenant=request_tenant(request), file_id=file_id)
        return Response(file_deleted_body(file_id))


class FileContentApi(DataPlaneApi):
    """GET /v1/files/{id}/content: the file's bytes (an input file as uploaded, or a batch's output
    or error file: JSONL), streamed one stored part at a time."""

    def perform_content_negotiation(self, request: Request, force: bool = False) -> tuple[BaseRenderer, str]:
        # The SDK asks for `Accept: application/binary`: the bytes are answered whatever is asked
        # for, and an error as JSON.
        return super().perform_content_negotiation(request, force=True)

    @schemas.file_content_schema
    def get(self, request: Request, file_id: str) -> StreamingHttpResponse:
        file = file_get(tenant=request_tenant(request), file_id=file_id)
        chunks: Iterable[bytes] = file_chunks(file)
        response = StreamingHttpResponse(chunks, content_type="application/octet-stream")
        response["Content-Length"] = str(file.bytes)
        response["Content-Disposition"] = f'attachment; filename="{file.filename.replace(chr(34), "")}"'
        return response


class BatchListCreateApi(DataPlaneApi):
    """POST /v1/batches runs an uploaded file's requests as jobs; GET /v1/batches pages the
    tenant's batches, newest first."""

    class InputSerializer(serializers.Serializer):
        input_file_id = serializers.CharField(max_length=64, help_text="A file uploaded with purpose batch.")
        endpoint = serializers.CharField(max_length=200, help_text="/v1/embeddings (the only one here).")
        completion_window = serializers.CharField(max_length=16, help_text="24h (the only one, as OpenAI).")
        metadata = serializers.DictField(child=serializers.CharField(max_length=512, allow_blank=True),
                                         required=False, allow_null=True, default=None,
                                         help_text="Up to 16 string pairs, shown with the batch.")
        output_expires_after = serializers.DictField(required=False, help_text="Accepted; output files are kept "
                                                     "until deleted.")

        def validate_metadata(self, value: dict[str, str] | None) -> dict[str, str] | None:
            if value is not None and (len(value) > 16 or any(len(k) > 64 for k in value)):
                raise serializers.ValidationError(METADATA_BAD)
            return value

    class FilterSerializer(serializers.Serializer):
        after = serializers.CharField(max_length=64, required=False, help_text="The last id of the previous page.")
        limit = serializers.IntegerField(min_value=1, max_value=100, required=False, default=20)

    @schemas.batch_create_schema(InputSerializer)
    def post(self, request: Request) -> Response:
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        batch = batch_create(tenant=request_tenant(request), input_file_id=data["input_file_id"],
                             endpoint=data["endpoint"], completion_window=data["completion_window"],
                             metadata=data["metadata"])
        request.quota_state = None  # type: ignore[attr-defined]  # counted before the batch's inputs: read again
        return Response(batch_payload(batch))

    @schemas.batch_list_schema(FilterSerializer)
    def get(self, request: Request) -> Response:
        serializer = self.FilterSerializer(data=request.query_params)
        serializer.is_valid(raise_exception=True)
        batches, more = batch_list(tenant=request_tenant(request), **serializer.validated_data)
        return Response(batch_list_body([batch_sync(b) for b in batches], more))


class BatchDetailApi(DataPlaneApi):
    """GET /v1/batches/{id}: its status and counts, brought up to date with its jobs."""

    @schemas.batch_retrieve_schema
    def get(self, request: Request, batch_id: str) -> Response:
        return Response(batch_payload(batch_sync(batch_get(tenant=request_tenant(request), batch_id=batch_id))))


class BatchCancelApi(DataPlaneApi):
    """POST /v1/batches/{id}/cancel: its jobs are cancelled; answered lines stay in the output."""

    @schemas.batch_cancel_schema
    def post(self, request: Request, batch_id: str) -> Response:
        return Response(batch_payload(batch_cancel(tenant=request_tenant(request), batch_id=batch_id)))
