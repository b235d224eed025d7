"""Request serializers shared by the embedding endpoints (OpenAI's shape and ours), and the job's
shape (embedplatform/responses.py), which the job endpoints, the 202 answers and the webhook share."""

from __future__ import annotations

from collections.abc import Mapping
from functools import cached_property
from typing import Annotated, Any, ClassVar, Literal, TypedDict

from django.conf import settings
from rest_framework import serializers
from rest_framework.utils.serializer_helpers import BindingDict

from dispatch.base import INPUT_TYPES
from embeddings import models, tokenids
from embeddings.quantize import OUTPUT_DTYPES
from embeddings.registry import DEFAULT_MODEL
from embedplatform.errors import WAIT_TOO_LONG, InvalidInput

IsoTime = Annotated[str, serializers.DateTimeField]  # a time as datetime.isoformat() writes it


def _check_text(value: Any, where: str) -> str:
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
    """A string or a non-empty array of non-empty strings -> list[str].

    At most settings.<max_items_setting> items (MAX_INPUTS_PER_REQUEST for sync requests).
    """

    default_error_messages = {"required": "input is required: a string or an array of strings."}

    def __init__(self, *, max_items_setting: str = "MAX_INPUTS_PER_REQUEST", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.max_items_setting = max_items_setting

    def to_internal_value(self, data: Any) -> list[str]:
        if isinstance(data, str):
            return [_check_text(data, self.field_name or "input")]
        if not isinstance(data, list):
            raise serializers.ValidationError(
                f"{self.field_name} must be a string or an array of strings, not {type(data).__name__}."
            )
        if not data:
            raise serializers.ValidationError(f"{self.field_name} is an empty array; send at least one string.")
        limit = getattr(settings, self.max_items_setting)
        if len(data) > limit:
            raise serializers.ValidationError(f"{self.field_name} has {len(data)} items; the limit is {limit} per request.")
        return [self.item(v, f"{self.field_name}[{i}]") for i, v in enumerate(data)]

    def item(self, value: Any, where: str) -> str:
        """One item of the array, `where` naming it in errors."""
        return _check_text(value, where)

    def to_representation(self, value: list[str]) -> list[str]:
        return value


class EmbeddingsInputField(TextsField):
    """OpenAI's `input`: a string, an array of strings, one array of cl100k_base token ids, or an
    array whose items are strings or token-id arrays -> list[str], each token array decoded to its
    text (embeddings/tokenids.py). A bad id is a 400 naming its position (`input[0][5]`)."""

    def to_internal_value(self, data: Any) -> list[str]:
        if isinstance(data, list) and data and type(data[0]) is int:  # one token array: one input
            return [self._decoded(data, self.field_name or "input")]
        return super().to_internal_value(data)

    def item(self, value: Any, where: str) -> str:
        if isinstance(value, list):
            if not value:
                raise serializers.ValidationError(f"{where} is an empty token array; send at least one token id.")
            return self._decoded(value, where)
        if type(value) is int:
            raise serializers.ValidationError(
                f"{where} is an integer among texts: send token ids as an array of them, either the whole input "
                "([1, 2, 3]) or one item of it ([[1, 2, 3], \"text\"]).")
        return _check_text(value, where)

    @staticmethod
    def _decoded(ids: list, where: str) -> str:
        try:
            tokenids.token_ids_check(ids)
        except tokenids.TokenIdError as bad:
            raise serializers.ValidationError(bad.describe(f"{where}[{bad.position}]")) from None
        return _check_text(tokenids.tokens_decode(ids), f"{where} (decoded)")


class TextField(serializers.Field):
    """One non-empty string (no coercion of numbers): /v1/embed's `text`, /v1/rerank's `query`."""

    def __init__(self, *, name: str = "text", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.name = name  # what the errors call it
        self.error_messages["required"] = f"{name} is required: a non-empty string."

    def to_internal_value(self, data: Any) -> str:
        return _check_text(data, self.name)

    def to_representation(self, value: str) -> str:
        return value


class WaitField(serializers.FloatField):
    """Seconds to wait, at most settings.SYNC_WAIT_MAX (read per request: a waiting request holds
    a web thread, so the bound is the server's, not the client's)."""

    def to_internal_value(self, data: Any) -> float:
        value = super().to_internal_value(data)
        if value > settings.SYNC_WAIT_MAX:
            raise serializers.ValidationError(WAIT_TOO_LONG.format(max=settings.SYNC_WAIT_MAX))
        return value


class StrictBooleanField(serializers.BooleanField):
    """true/false only: a misspelt flag must not silently mean something."""

    def to_internal_value(self, data: Any) -> bool:
        if isinstance(data, bool):
            return data
        self.fail("invalid", input=data)


def output_dtype_field() -> serializers.ChoiceField:
    """`output_dtype`, as Voyage names it: the vectors as floats, int8/uint8 (scaled per dimension by
    the model's calibration ranges) or sign bits packed 8 per byte (embeddings/quantize.py)."""
    return serializers.ChoiceField(
        choices=OUTPUT_DTYPES, required=False, default="float",
        help_text="float, or quantized as sentence-transformers' quantize_embeddings does: int8 / uint8 "
                  "(each dimension scaled between the model's calibration min and max; 503 until a worker "
                  "has calibrated the model, 400 for provider models), ubinary (the sign bits, v > 0, packed "
                  "8 per byte) or binary (the same bytes minus 128, as int8). Integer arrays in JSON; with "
                  "encoding_format=base64 the raw bytes. After `dimensions` and `normalize`.",
    )


UNKNOWN_FIELD = "Unknown field `{field}`{hint}. This endpoint takes: {fields}."
# Names clients send for our fields (other APIs', or a neighbouring endpoint's): the first of a
# name's candidates that the endpoint declares is the hint.
FIELD_ALIASES: dict[str, tuple[str, ...]] = {
    "model_name": ("model",),
    "model_id": ("model",),
    "inputs": ("texts", "text", "input"),
    "input": ("texts", "text"),
    "texts": ("input", "text"),
    "text": ("texts", "input"),
    "sentences": ("texts", "input", "text"),
    "documents": ("texts", "input", "text"),
    "dimension": ("dimensions",),
    "dims": ("dimensions",),
    "output_dimension": ("dimensions",),
    "normalise": ("normalize",),
    "normalize_embeddings": ("normalize",),
    "truncation": ("truncate",),
    "encoding": ("encoding_format",),
    "embedding_type": ("output_dtype",),
    "embedding_types": ("output_dtype",),
    "webhook": ("webhook_url",),
    "callback_url": ("webhook_url",),
}


class ClosedBodyMixin:
    """A request body that takes only its declared fields: any other is a 400 naming it (param =
    the field, code `unknown_field`), with a hint where it is a known alias of a declared one, so
    a misspelt option never silently means its default. For our own endpoints; OpenAI's keeps
    ignoring what OpenAI ignores. Checked before the fields: the hint says more than the error of
    a required field that the alias stood for. embeddings/schemas.py marks these bodies
    `additionalProperties: false`."""

    _declared_fields: ClassVar[dict[str, serializers.Field]]

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, Mapping):
            for name in data:
                if name not in self._declared_fields:
                    raise self.unknown_field(str(name))
        return super().to_internal_value(data)  # type: ignore[misc]  # a mixin of a Serializer

    @classmethod
    def unknown_field(cls, name: str) -> InvalidInput:
        known = next((f for f in FIELD_ALIASES.get(name, ()) if f in cls._declared_fields), None)
        return InvalidInput(UNKNOWN_FIELD.format(field=name, hint=f" (did you mean `{known}`?)" if known else "",
                                                 fields=", ".join(cls._declared_fields)),
                            param=name, code="unknown_field")


# Each request body class's fields, bound once (SharedFieldsMixin).
_SHARED_FIELDS: dict[type, BindingDict] = {}


class SharedFieldsMixin:
    """A request body whose fields are built and bound once per class, not per request.

    DRF deep-copies and binds every declared field for each serializer it makes (Serializer.fields),
    the largest share of a body's validation on the data plane (docs/BENCHMARKS.md, "Cache-hit path
    in one process"). These bodies' fields keep no per-request state: validation reads only the
    field's own settings, and their parent is asked for nothing but `partial` (never set here) and
    a context these bodies are never given. So one bound set, parented by a template instance of the
    class, serves every request and thread. A body with per-instance fields (context, partial,
    fields changed after init) must not use this.
    """

    @cached_property
    def fields(self) -> BindingDict:
        cls = type(self)
        bound = _SHARED_FIELDS.get(cls)
        if bound is None:  # two threads may both build it: the same fields, either one kept
            template = cls()
            bound = BindingDict(template)  # type: ignore[arg-type]  # a mixin of a Serializer
            for name, field in template.get_fields().items():  # type: ignore[attr-defined]  # a mixin of a Serializer
                bound[name] = field
            _SHARED_FIELDS[cls] = bound
        return bound


class EmbedOptionsSerializer(SharedFieldsMixin, serializers.Serializer):
    """The options every embedding endpoint takes."""

    model = serializers.CharField(required=False, default=DEFAULT_MODEL, max_length=200)
    dimensions = serializers.IntegerField(
        required=False, allow_null=True, default=None, min_value=1,
        help_text="Keep the first N components, renormalized. A model with `matryoshka_dims` (GET /v1/models/{id}) "
                  "takes one of those or its full width; any other model 1..its dimensions.")
    normalize = StrictBooleanField(required=False, allow_null=True, default=None)
    truncate = StrictBooleanField(required=False, default=True)
    input_type = serializers.ChoiceField(choices=INPUT_TYPES, required=False, allow_null=True, default=None)
    public = StrictBooleanField(required=False, default=False)
    wait = WaitField(
        required=False, allow_null=True, default=None, min_value=0,
        help_text="Seconds to wait for the vectors (default: the server's SYNC_WAIT_SECONDS), at most the "
                  "server's SYNC_WAIT_MAX (60 by default; 400 above it). When they run out, the texts go on "
                  "as a job (202 with the job). 0: do not wait: 202 with the job at once, unless every text "
                  "is a cache hit (then 200).",
    )


class EmbeddingsRequestSerializer(EmbedOptionsSerializer):
    """POST /v1/embeddings: OpenAI's body plus our extensions."""

    input = EmbeddingsInputField()
    model = serializers.CharField(max_length=200)
    wait = WaitField(
        required=False, allow_null=True, default=None, min_value=0.01,
        help_text="Seconds to wait for the vectors (default: the server's SYNC_WAIT_SECONDS), at most the "
                  "server's SYNC_WAIT_MAX (60 by default; 400 above it); then 504. "
                  "OpenAI's shape has no job to fall back to, so 0 is refused: use POST /v1/embed/batch.",
        error_messages={"min_value": "must be over 0 here: /v1/embeddings has no job to fall back to; "
                                     "POST /v1/embed/batch takes wait 0 (a job at once)."},
    )
    encoding_format = serializers.ChoiceField(choices=("float", "base64"), required=False, default="float")
    output_dtype = output_dtype_field()
    user = serializers.CharField(required=False, allow_blank=True, max_length=256)


class EmbedRequestSerializer(ClosedBodyMixin, EmbedOptionsSerializer):
    text = TextField()
    encoding_format = serializers.ChoiceField(choices=("float", "base64"), required=False, default="float")
    output_dtype = output_dtype_field()


TEXTS_OR_INPUT = "Send the texts once: as `texts` or as `input` (OpenAI's name for them), not both."
TEXTS_REQUIRED = "texts is required (or input, OpenAI's name for it): a string or an array of strings."
_INPUT_HELP = "OpenAI's name for `texts`, taken as the same: send one of the two."


class TextsOrInputMixin:
    """`texts`, or `input` for it (the name OpenAI's body and clients written for it use): exactly
    one of the two, validated as `texts` is; validated_data holds `texts` either way.
    embeddings/schemas.py says so in the body's schema (one of the two required)."""

    one_of_required = ("texts", "input")

    def validate(self, attrs: dict) -> dict:
        if "input" in attrs:
            if "texts" in attrs:
                raise serializers.ValidationError({"input": TEXTS_OR_INPUT})
            attrs["texts"] = attrs.pop("input")
        elif "texts" not in attrs:
            raise serializers.ValidationError({"texts": TEXTS_REQUIRED})
        return super().validate(attrs)  # type: ignore[misc]  # a mixin of a Serializer


class EmbedBatchRequestSerializer(TextsOrInputMixin, ClosedBodyMixin, EmbedOptionsSerializer):
    texts = TextsField(required=False)
    input = TextsField(required=False, help_text=_INPUT_HELP)
    encoding_format = serializers.ChoiceField(choices=("float", "base64"), required=False, default="float")
    output_dtype = output_dtype_field()


class JobCreateRequestSerializer(TextsOrInputMixin, ClosedBodyMixin, EmbedOptionsSerializer):
    """POST /v1/jobs: texts (up to the tier's max_job_texts) and the embedding options."""

    texts = TextsField(max_items_setting="JOB_MAX_TEXTS", required=False)
    input = TextsField(max_items_setting="JOB_MAX_TEXTS", required=False, help_text=_INPUT_HELP)
    webhook_url = serializers.URLField(required=False, allow_blank=True, default="", max_length=2000)


class Job(TypedDict):
    """A job: its status, progress and where its results are; also the body of its webhook."""

    id: Annotated[str, serializers.UUIDField]
    object: Literal["job"]
    status: Annotated[str, serializers.ChoiceField(choices=models.Job.Status.values)]
    model: str
    total: int
    done: Annotated[int, "Texts done so far (progress)."]
    cached: Annotated[int, "Texts served from the cache."]
    created_at: IsoTime
    started_at: IsoTime | None
    finished_at: IsoTime | None
    error: str | None
    webhook_url: str | None
    status_url: str
    results_url: str


def job_payload(job: models.Job) -> Job:
    """The job as the API, and its webhook, show it."""
    base = f"{settings.PUBLIC_BASE_URL}/v1/jobs/{job.pk}"
    return {
        "id": str(job.pk),
        "object": "job",
        "status": job.status,
        "model": job.model,
        "total": job.total,
        "done": job.done,
        "cached": job.cached,
        "created_at": job.created_at.isoformat(),
        "started_at": job.started_at.isoformat() if job.started_at else None,
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
        "error": job.error or None,
        "webhook_url": job.webhook_url or None,
        "status_url": base,
        "results_url": f"{base}/results",
    }


class RerankDocumentsField(serializers.Field):
    """`documents`: strings, or objects whose `text` (or, with `rank_fields`, those fields) is what
    is ranked, as Cohere takes them -> the list as sent (the view reads the texts with
    rerank_texts). At most MAX_INPUTS_PER_REQUEST; the tier's max_rerank_documents is checked later."""

    default_error_messages = {"required": "documents is required: an array of strings or of objects with `text`."}

    def to_internal_value(self, data: Any) -> list[str | dict]:
        if not isinstance(data, list):
            raise serializers.ValidationError(f"documents must be an array of strings or objects, not {type(data).__name__}.")
        if not data:
            raise serializers.ValidationError("documents is an empty array; send at least one document.")
        limit = settings.MAX_INPUTS_PER_REQUEST
        if len(data) > limit:
            raise serializers.ValidationError(f"documents has {len(data)} items; the limit is {limit} per request.")
        for i, doc in enumerate(data):
            if isinstance(doc, dict):
                for key, value in doc.items():
                    if not isinstance(value, str):
                        raise serializers.ValidationError(
                            f"documents[{i}].{key} must be a string, not {type(value).__name__}.")
            elif not isinstance(doc, str):
                raise serializers.ValidationError(f"documents[{i}] must be a string or an object with `text`, "
                                                  f"not {type(doc).__name__}.")
        return data

    def to_representation(self, value: list[str | dict]) -> list[str | dict]:
        return value


class RerankRequestSerializer(SharedFieldsMixin, ClosedBodyMixin, serializers.Serializer):
    """POST /v1/rerank: Cohere's body (what Cohere's, Jina's and Voyage's clients, LangChain's
    CohereRerank and LlamaIndex send)."""

    model = serializers.CharField(max_length=200, help_text="A reranker (kind rerank in GET /v1/models), or an "
                                  "embedding model: then documents are ranked by the cosine of their vectors to the query's.")
    query = TextField(name="query", help_text="The search query the documents are scored against.")
    documents = RerankDocumentsField(help_text="Strings, or objects with `text` (or the fields of `rank_fields`).")
    top_n = serializers.IntegerField(required=False, allow_null=True, default=None, min_value=1,
                                     help_text="Return the best N (all by default; more than the documents gives all).")
    top_k = serializers.IntegerField(required=False, allow_null=True, default=None, min_value=1,
                                     help_text="Voyage's name for top_n.")
    return_documents = StrictBooleanField(required=False, default=False, allow_null=True,
                                          help_text="Put each document in its result (null otherwise).")
    rank_fields = serializers.ListField(child=serializers.CharField(max_length=200), required=False, allow_null=True,
                                        min_length=1,
                                        help_text="For object documents: the fields ranked, in this order "
                                                  "(`field: value` lines); default `text`.")
    max_chunks_per_doc = serializers.IntegerField(required=False, allow_null=True, min_value=1,
                                                  help_text="Accepted for Cohere's clients; a pair longer than the "
                                                            "model's max_tokens is truncated instead.")
    max_tokens_per_doc = serializers.IntegerField(required=False, allow_null=True, min_value=1,
                                                  help_text="Accepted for Cohere's clients; pairs are truncated at "
                                                            "the model's max_tokens.")
    truncation = serializers.BooleanField(required=False, default=True,
                                          help_text="Voyage's flag; only true: pairs are truncated at the model's max_tokens.")
    priority = serializers.IntegerField(required=False, allow_null=True, help_text="Accepted for Cohere's v2 client; the tier's "
                                        "priority orders the work.")
    wait = WaitField(required=False, allow_null=True, default=None, min_value=0.01,
                     help_text="Seconds to wait for the scores (default: the server's SYNC_WAIT_SECONDS), at most "
                               "SYNC_WAIT_MAX; then 504.")

    def validate(self, attrs: dict) -> dict:
        if attrs.get("top_n") is not None and attrs.get("top_k") is not None and attrs["top_n"] != attrs["top_k"]:
            raise InvalidInput("Send top_n or top_k (Voyage's name for it), not both with different values.",
                               param="top_k")
        if attrs["top_n"] is None:
            attrs["top_n"] = attrs["top_k"]
        if not attrs["truncation"]:
            raise InvalidInput("truncation=false is not supported: pairs longer than the model's max_tokens are "
                               "truncated. Send shorter documents, or leave truncation out.", param="truncation")
        attrs["texts"] = rerank_texts(attrs["documents"], attrs.get("rank_fields"))
        return attrs


def rerank_texts(documents: list[str | dict], rank_fields: list[str] | None) -> list[str]:
    """The text ranked of each document: itself, its `text`, or its rank_fields as `field: value` lines."""
    texts = []
    for i, doc in enumerate(documents):
        if isinstance(doc, str):
            text = doc
        elif rank_fields:
            missing = [f for f in rank_fields if f not in doc]
            if len(missing) == len(rank_fields):
                raise InvalidInput(f"documents[{i}] has none of rank_fields ({', '.join(rank_fields)}).",
                                   param="documents")
            text = "\n".join(f"{f}: {doc[f]}" for f in rank_fields if f in doc)
        elif "text" in doc:
            text = doc["text"]
        else:
            raise InvalidInput(f"documents[{i}] is an object without `text`; give it one, or name the fields to "
                               "rank with rank_fields.", param="documents")
        try:
            texts.append(_check_text(text, f"documents[{i}]"))
        except serializers.ValidationError as exc:
            detail = exc.detail
            raise InvalidInput(str(detail[0] if isinstance(detail, list) else detail), param="documents") from None
    return texts
