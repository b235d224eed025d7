"""OpenAPI documentation of the Batch API (/v1/files, /v1/batches): summaries, examples, error
answers. The shapes are batches/responses.py's; the request bodies the views' own serializers."""

from __future__ import annotations

from collections.abc import Callable

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import F, OpenApiExample, OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework.serializers import Serializer

from batches.responses import Batch, BatchList, FileDeleted, FileList, FileObject
from embedplatform.responses import shape_serializer
from embedplatform.schemas import error_responses, named

TAGS = ["batches"]
FILE_ID = OpenApiParameter("file_id", OpenApiTypes.STR, OpenApiParameter.PATH, description="The file's id.")
BATCH_ID = OpenApiParameter("batch_id", OpenApiTypes.STR, OpenApiParameter.PATH, description="The batch's id.")
EXAMPLE_TS = 1768469400
FILE_EXAMPLE = {"id": "file-5b0e8f3c2f4e4a519c572b1f", "object": "file", "bytes": 412, "created_at": EXAMPLE_TS,
                "expires_at": None, "filename": "requests.jsonl", "purpose": "batch", "status": "processed",
                "status_details": None}
BATCH_EXAMPLE = {
    "id": "batch_9c572b1f0b7d9e415b0e8f3c", "object": "batch", "endpoint": "/v1/embeddings", "errors": None,
    "input_file_id": FILE_EXAMPLE["id"], "completion_window": "24h", "status": "in_progress",
    "output_file_id": None, "error_file_id": None, "created_at": EXAMPLE_TS, "in_progress_at": EXAMPLE_TS,
    "expires_at": EXAMPLE_TS + 86400, "finalizing_at": None, "completed_at": None, "failed_at": None,
    "expired_at": None, "cancelling_at": None, "cancelled_at": None,
    "request_counts": {"total": 3, "completed": 0, "failed": 1}, "metadata": {"project": "docs"},
    "model": "all-MiniLM-L6-v2", "usage": None,
}
COMPLETED_EXAMPLE = BATCH_EXAMPLE | {
    "status": "completed", "output_file_id": "file-0b7d9e415b0e8f3c9c572b1f", "error_file_id":
    "file-8f3c9c572b1f0b7d9e415b0e", "finalizing_at": EXAMPLE_TS + 60, "completed_at": EXAMPLE_TS + 61,
    "request_counts": {"total": 3, "completed": 2, "failed": 1},
    "usage": {"input_tokens": 12, "input_tokens_details": {"cached_tokens": 4}, "output_tokens": 0,
              "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 12},
}
OUTPUT_LINE = ('{"id":"batch_req_3f9c...","custom_id":"doc-1","response":{"status_code":200,"request_id":"req_7a1e...",'
               '"body":{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.0123,-0.0456],'
               '"cached":false}],"model":"all-MiniLM-L6-v2","usage":{"prompt_tokens":4,"total_tokens":4}}},'
               '"error":null}\n')


def _ok(shape: type, name: str, value: dict, status: int = 200) -> dict:
    return {status: OpenApiResponse(shape_serializer(shape), examples=[
        OpenApiExample(name, value=value, status_codes=[str(status)], response_only=True)])}


def file_create_schema(input_serializer: type[Serializer]) -> Callable[[F], F]:
    return extend_schema(
        operation_id="files_create",
        tags=TAGS,
        summary="Upload a batch input file (JSONL of /v1/embeddings requests)",
        description=(
            "As OpenAI's POST /v1/files (the SDK's client.files.create), for purpose `batch`: a JSONL file, one "
            "request per line: `{\"custom_id\": \"doc-1\", \"method\": \"POST\", \"url\": \"/v1/embeddings\", "
            "\"body\": {\"model\": \"all-MiniLM-L6-v2\", \"input\": \"...\"}}`. At most the server's "
            "BATCH_MAX_FILE_BYTES (413 above it). The lines are checked when a batch runs the file."
        ),
        request={"multipart/form-data": named(input_serializer, "FileUpload")},
        responses={**_ok(FileObject, "file", FILE_EXAMPLE), **error_responses(400, 401, 403, 413, 429)},
    )


def file_list_schema(filter_serializer: type[Serializer]) -> Callable[[F], F]:
    return extend_schema(
        operation_id="files_list", tags=TAGS, summary="Your files (uploads and batch outputs)",
        parameters=[filter_serializer],
        responses={**_ok(FileList, "files", {"object": "list", "data": [FILE_EXAMPLE], "first_id": FILE_EXAMPLE["id"],
                                             "last_id": FILE_EXAMPLE["id"], "has_more": False}),
                   **error_responses(400, 401, 403, 429)},
    )


file_retrieve_schema = extend_schema(
    operation_id="files_retrieve", tags=TAGS, summary="A file", parameters=[FILE_ID],
    responses={**_ok(FileObject, "file", FILE_EXAMPLE), **error_responses(401, 403, 404, 429)},
)

file_delete_schema = extend_schema(
    operation_id="files_delete", tags=TAGS, summary="Delete a file", parameters=[FILE_ID],
    description="A batch that was made from the file keeps running (its requests were read when it was created).",
    responses={**_ok(FileDeleted, "deleted", {"id": FILE_EXAMPLE["id"], "object": "file", "deleted": True}),
               **error_responses(401, 403, 404, 429)},
)

file_content_schema = extend_schema(
    operation_id="files_content", tags=TAGS, summary="A file's bytes: an upload, or a batch's output or error file",
    description=(
        "The output file has one line per answered request, in input order: `{id, custom_id, response: "
        "{status_code: 200, request_id, body}, error: null}`, body being POST /v1/embeddings' answer to the line. "
        "The error file has the other lines: refused ones with `response.status_code` 4xx and the error envelope "
        "as body, those whose job failed with 500, and those never run (batch cancelled or expired) with "
        "`response: null` and `error: {code, message}`."
    ),
    parameters=[FILE_ID],
    responses={
        (200, "application/octet-stream"): OpenApiResponse(OpenApiTypes.BINARY, description="The file's bytes.",
                                                           examples=[OpenApiExample("output file", value=OUTPUT_LINE,
                                                                                    response_only=True)]),
        **error_responses(401, 403, 404, 429),
    },
)


def batch_create_schema(input_serializer: type[Serializer]) -> Callable[[F], F]:
    return extend_schema(
        operation_id="batches_create",
        tags=TAGS,
        summary="Run an uploaded file's /v1/embeddings requests as a batch",
        description=(
            "As OpenAI's POST /v1/batches (client.batches.create): endpoint `/v1/embeddings`, completion_window "
            "`24h`. Each line is checked as POST /v1/embeddings checks its body; a refused line goes to the error "
            "file (the batch fails only when no line is valid, its lines' errors in `errors`). The valid lines' "
            "inputs are counted against your quota at once (429 when they do not fit) and must fit your tier's "
            "max_job_texts together (413); at most BATCH_MAX_REQUESTS lines (413). They run as jobs, one per "
            "model and options, and GET /v1/batches/{batch_id} follows them."
        ),
        request=named(input_serializer, "BatchCreate"),
        responses={**_ok(Batch, "batch", BATCH_EXAMPLE), **error_responses(400, 401, 403, 404, 413, 429)},
        examples=[OpenApiExample("embeddings", request_only=True, value={
            "input_file_id": FILE_EXAMPLE["id"], "endpoint": "/v1/embeddings", "completion_window": "24h",
            "metadata": {"project": "docs"}})],
    )


def batch_list_schema(filter_serializer: type[Serializer]) -> Callable[[F], F]:
    return extend_schema(
        operation_id="batches_list", tags=TAGS, summary="Your batches, newest first",
        parameters=[filter_serializer],
        responses={**_ok(BatchList, "batches", {"object": "list", "data": [BATCH_EXAMPLE],
                                                "first_id": BATCH_EXAMPLE["id"], "last_id": BATCH_EXAMPLE["id"],
                                                "has_more": False}),
                   **error_responses(400, 401, 403, 429)},
    )


batch_retrieve_schema = extend_schema(
    operation_id="batches_retrieve", tags=TAGS, summary="A batch: status, counts, output and error files",
    description=(
        "in_progress while its jobs run (request_counts.completed: the lines of its finished jobs), then finalizing "
        "while one read writes its output and error files, then completed (or cancelled, expired)."
    ),
    parameters=[BATCH_ID],
    responses={**_ok(Batch, "completed", COMPLETED_EXAMPLE), **error_responses(401, 403, 404, 429)},
)

batch_cancel_schema = extend_schema(
    operation_id="batches_cancel", tags=TAGS, summary="Cancel a batch; its queued work is dropped",
    parameters=[BATCH_ID], request=None,
    responses={**_ok(Batch, "cancelled", BATCH_EXAMPLE | {"status": "cancelled", "cancelling_at": EXAMPLE_TS + 5,
                                                          "cancelled_at": EXAMPLE_TS + 5}),
               **error_responses(401, 403, 404, 429)},
)
