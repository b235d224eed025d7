"""The data plane's shortcuts give what DRF's general machinery gives (issue 21: the web's share of a
request): the renderer picked without media-range parsing, and request bodies validated by fields
bound once per class."""

from __future__ import annotations

import threading

import pytest
from rest_framework import serializers
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.renderers import BaseRenderer, JSONRenderer, TemplateHTMLRenderer
from rest_framework.request import Request
from rest_framework.test import APIRequestFactory

from embeddings.serializers import (
    EmbedBatchRequestSerializer,
    EmbeddingsRequestSerializer,
    EmbedRequestSerializer,
    RerankRequestSerializer,
)
from embedplatform.parsers import ContentNegotiation
from embedplatform.renderers import JSONRenderer as OrjsonRenderer


class _JsonLines(BaseRenderer):
    media_type = "application/jsonl"
    format = "jsonl"


ACCEPTS = ["", "*/*", "application/json", "text/html", "application/jsonl", "application/json; indent=4",
           "text/*", "image/png", "application/*, */*;q=0.1"]
RENDERER_SETS = [[OrjsonRenderer()], [JSONRenderer(), _JsonLines()], [_JsonLines(), JSONRenderer()],
                 [TemplateHTMLRenderer(), JSONRenderer()]]


def _choice(negotiation: DefaultContentNegotiation, accept: str, renderers: list) -> tuple:
    headers = {"HTTP_ACCEPT": accept} if accept else {}
    request = Request(APIRequestFactory().post("/v1/embeddings", **headers))
    try:
        renderer, media_type = negotiation.select_renderer(request, renderers)
    except Exception as exc:  # NotAcceptable: the same exception class both ways
        return ("raised", type(exc).__name__)
    return (type(renderer).__name__, media_type)


@pytest.mark.parametrize("renderers", RENDERER_SETS, ids=lambda rs: "+".join(type(r).__name__ for r in rs))
@pytest.mark.parametrize("accept", ACCEPTS)
def test_the_renderer_is_the_one_drf_would_pick(accept, renderers):
    assert _choice(ContentNegotiation(), accept, renderers) == _choice(DefaultContentNegotiation(), accept, renderers)


BODIES = {
    EmbeddingsRequestSerializer: [
        {"model": "all-MiniLM-L6-v2", "input": "one text"},
        {"input": ["a", "b"], "model": "m", "dimensions": 64, "encoding_format": "base64", "user": "u"},
        {"input": "x", "model": "m", "dimensions": 0},
        {"input": "", "model": "m"},
        {"input": [], "model": "m", "normalize": "yes"},
        {"model": "m"},
        {"input": "x", "model": "m", "wait": 0},
        {"input": [1, 2, 3], "model": "m", "encoding_format": "int8"},
    ],
    EmbedRequestSerializer: [
        {"text": "hello"},
        {"text": "hello", "truncate": False, "public": True, "input_type": "query"},
        {"text": 3},
        {"text": "hello", "model_name": "m"},
    ],
    EmbedBatchRequestSerializer: [
        {"texts": ["a", "b"]},
        {"input": ["a"], "wait": 0},
        {"texts": ["a"], "input": ["b"]},
        {},
    ],
    RerankRequestSerializer: [
        {"model": "r", "query": "q", "documents": ["a", {"text": "b"}], "top_n": 1},
        {"model": "r", "query": "", "documents": []},
    ],
}


class _FreshFields:
    """The same body class with DRF's own per-instance fields (deep copies bound to this instance)."""

    @staticmethod
    def of(cls: type[serializers.Serializer]) -> serializers.Serializer:
        class Fresh(cls):  # type: ignore[valid-type, misc]
            fields = serializers.Serializer.fields

        Fresh.__name__ = cls.__name__
        return Fresh


def _outcome(serializer: serializers.Serializer) -> tuple:
    try:
        ok = serializer.is_valid()
    except Exception as exc:  # ClosedBodyMixin raises its 400 for an unknown field
        return ("raised", type(exc).__name__, str(exc))
    return (ok, dict(serializer.validated_data) if ok else serializer.errors)


@pytest.mark.parametrize("cls,body", [(c, b) for c, bodies in BODIES.items() for b in bodies],
                         ids=lambda v: getattr(v, "__name__", None) or ",".join(v) or "empty")
def test_shared_fields_validate_as_fresh_fields_do(cls, body):
    assert _outcome(cls(data=body)) == _outcome(_FreshFields.of(cls)(data=body))


def test_shared_fields_are_bound_once_per_class_and_keep_their_names():
    first, second = EmbedRequestSerializer(data={}), EmbedRequestSerializer(data={})
    assert first.fields is second.fields
    assert EmbedBatchRequestSerializer(data={}).fields is not first.fields
    assert all(field.field_name == name for name, field in first.fields.items())
    assert set(first.fields) == set(EmbedRequestSerializer._declared_fields)


def test_shared_fields_validate_many_bodies_at_once_without_mixing_them():
    """Threads validating different bodies with the one field set each get their own answer."""
    errors: list[str] = []

    def run(i: int) -> None:
        for j in range(300):
            good = (i + j) % 2 == 0
            body = {"input": [f"t{i}-{j}"], "model": f"m{i}"} if good else {"input": "", "model": f"m{i}"}
            s = EmbeddingsRequestSerializer(data=body)
            if s.is_valid() != good or (good and s.validated_data["input"] != [f"t{i}-{j}"]):
                errors.append(f"{i}/{j}: {s.errors if not good else s.validated_data}")
            if not good and "input" not in s.errors:
                errors.append(f"{i}/{j}: {s.errors}")

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_float_vectors_are_written_as_the_float32_they_are_shortest_form_and_exact():
    """Vectors go to JSON straight from numpy (no Python floats): each number reads back as exactly
    the stored float32, in fewer characters than a Python float's repr."""
    import numpy as np
    import orjson

    from embeddings.encoding import vector_encode
    from embedplatform.renderers import JSONRenderer as Renderer

    rng = np.random.default_rng(7)
    vectors = rng.standard_normal((8, 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors[0, :4] = [0.0, -0.0, 1e-38, np.float32(1) / 3]
    body = Renderer().render({"data": [{"embedding": vector_encode(v, "float")} for v in vectors]})
    back = np.array([d["embedding"] for d in orjson.loads(body)["data"]], dtype=np.float32)
    assert np.array_equal(back.view(np.uint32), vectors.view(np.uint32))  # bit for bit, -0.0 included
    as_python_floats = orjson.dumps({"data": [{"embedding": v.tolist()} for v in vectors]})
    assert len(body) < 0.7 * len(as_python_floats)
    quantized = np.array([-128, 0, 127], dtype=np.int8)
    assert orjson.loads(Renderer().render({"e": vector_encode(quantized, "float")})) == {"e": [-128, 0, 127]}
