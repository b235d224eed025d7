from __future__ import annotations

import time

import numpy as np
import pytest
from prometheus_client import REGISTRY

from providers.clients import (
    TemplateError,
    Upstream,
    embed_call,
    headers_validate,
    path_parse,
    template_render,
    template_validate,
    vectors_extract,
)
from providers.errors import ProviderError, ProviderTimeout
from providers.presets import PRESETS
from tests.providers.conftest import SECRET


def _openai(fake, **kw) -> Upstream:
    preset = PRESETS["openai"]
    return Upstream(name="myopenai", endpoint=fake.url(), template=preset.request_template,
                    response_path=preset.response_path, headers=preset.headers, api_key=SECRET,
                    max_inputs=kw.pop("max_inputs", preset.max_inputs), usage_path=preset.usage_path, preset="openai",
                    **kw)


@pytest.mark.parametrize(
    ("template", "error"),
    [
        ([], "must be a JSON object"),
        ({"model": "{{model}}"}, 'must contain "{{texts}}"'),
        ({"a": "{{texts}}", "b": "{{text}}"}, "exactly once"),
        ({"input": "x {{texts}}"}, "must be a whole JSON value"),
        ({"input": "{{texts}}", "k": "{{api_key}}"}, 'unknown placeholder "{{api_key}}"'),
    ],
)
def test_bad_templates_are_refused(template, error):
    with pytest.raises(TemplateError, match=error):
        template_validate(template)


def test_rendering_substitutes_json_values_not_strings():
    evil = '", "model": "other", "x": "'
    body = template_render({"model": "{{model}}", "input": "{{texts}}", "meta": ["m={{model}}"]},
                           texts=[evil, "b"], model="m1")
    assert body == {"model": "m1", "input": [evil, "b"], "meta": ["m=m1"]}


def test_bad_headers_and_paths_are_refused():
    with pytest.raises(TemplateError, match="set by the platform"):
        headers_validate({"Host": "x"})
    with pytest.raises(TemplateError, match="single-line"):
        headers_validate({"X-A": "a\r\nX-B: b"})
    with pytest.raises(TemplateError, match="not a valid JSONPath"):
        path_parse("$.data[")


def test_vectors_extract_checks_count_and_shape():
    body = {"embeddings": {"float": [[1, 2], [3, 4]]}}
    assert vectors_extract(body, path="$.embeddings.float[*]", n=2).tolist() == [[1, 2], [3, 4]]
    assert vectors_extract(body, path="$.embeddings.float", n=2).tolist() == [[1, 2], [3, 4]]
    with pytest.raises(ValueError, match=r"2 vectors at .* for 3 texts"):
        vectors_extract(body, path="$.embeddings.float[*]", n=3)
    with pytest.raises(ValueError, match="not a list of numbers"):
        vectors_extract({"data": [{"embedding": ["x"]}]}, path="$.data[*].embedding", n=1)


def test_it_embeds_in_order_in_batches_of_the_provider_limit(fake):
    texts = [f"text {i}" for i in range(7)]
    vectors, tokens = embed_call(_openai(fake, max_inputs=3), model="text-embedding-3-small", texts=texts)
    assert [len(r.body["input"]) for r in fake.requests] == [3, 3, 1]
    assert fake.requests[0].body["model"] == "text-embedding-3-small"
    assert fake.requests[0].headers["authorization"] == f"Bearer {SECRET}"
    assert np.allclose(vectors, [fake.vector(t) for t in texts])
    assert len(tokens) == 7


def test_it_speaks_cohere(fake):
    preset = PRESETS["cohere"]
    up = Upstream(name="co", endpoint=fake.url("/v2/embed"), template=preset.request_template,
                  response_path=preset.response_path, headers=preset.headers, api_key=SECRET, max_inputs=96,
                  usage_path=preset.usage_path)
    vectors, tokens = embed_call(up, model="embed-english-v3.0", texts=["ab", "cdef"])
    assert fake.requests[0].body == {"model": "embed-english-v3.0", "texts": ["ab", "cdef"],
                                     "input_type": "search_document", "embedding_types": ["float"]}
    assert np.allclose(vectors, [fake.vector("ab"), fake.vector("cdef")])
    assert tokens == [2, 4]  # meta.billed_units.input_tokens, spread by length


def _errors(kind: str) -> float:
    return REGISTRY.get_sample_value("embed_provider_errors_total", {"provider": "openai", "kind": kind}) or 0.0


def test_5xx_is_retried_then_reported_with_the_upstream_message(fake, settings):
    settings.PROVIDER_MAX_RETRIES = 2
    before = _errors("http_5xx")
    for _ in range(3):
        fake.then(status=500, message="model overloaded, try later")
    with pytest.raises(ProviderError, match="answered 500: model overloaded, try later") as exc:
        embed_call(_openai(fake), model="m", texts=["a"])
    assert exc.value.status == 502
    assert len(fake.requests) == 3
    assert _errors("http_5xx") == before + 3  # every failed attempt is counted


def test_a_transient_failure_then_success(fake):
    fake.then(status=503).then(status=502)
    vectors, _ = embed_call(_openai(fake), model="m", texts=["a"])
    assert len(fake.requests) == 3 and vectors.shape == (1, 8)


def test_429_retry_after_is_honored(fake):
    fake.then(status=429, message="slow down", headers={"Retry-After": "1"})
    embed_call(_openai(fake), model="m", texts=["a"])
    first, second = fake.requests
    assert second.at - first.at >= 1.0


def test_a_retry_after_beyond_the_bound_fails_at_once(fake, settings):
    settings.PROVIDER_MAX_BACKOFF_SECONDS = 2
    fake.then(status=429, message="quota exhausted", headers={"Retry-After": "3600"})
    with pytest.raises(ProviderError, match="answered 429: quota exhausted"):
        embed_call(_openai(fake), model="m", texts=["a"])
    assert len(fake.requests) == 1


def test_4xx_is_permanent_and_never_shows_the_secret(fake):
    fake.expected_key = "sk-the-right-one"
    with pytest.raises(ProviderError) as exc:
        embed_call(_openai(fake), model="m", texts=["a"])
    assert len(fake.requests) == 1
    assert "answered 401: Incorrect API key provided: sk-...WXYZ" in exc.value.message
    assert SECRET not in exc.value.message


def test_a_slow_upstream_times_out(fake, settings):
    settings.PROVIDER_TIMEOUT_SECONDS = 0.5
    fake.then(sleep=2)
    started = time.monotonic()
    with pytest.raises(ProviderTimeout, match=r"did not answer within 0\.5 s") as exc:
        embed_call(_openai(fake), model="m", texts=["a"])
    assert exc.value.status == 504
    assert time.monotonic() - started < 1.5


def test_a_huge_response_is_cut_off(fake, settings):
    settings.PROVIDER_MAX_RESPONSE_BYTES = 100_000
    fake.then(huge=5_000_000)
    with pytest.raises(ProviderError, match="over 100000 bytes"):
        embed_call(_openai(fake), model="m", texts=["a"])


def test_the_deadline_bounds_retries(fake):
    fake.then(status=500).then(status=500).then(status=500)
    started = time.monotonic()
    with pytest.raises((ProviderError, ProviderTimeout)):
        embed_call(_openai(fake), model="m", texts=["a"], deadline=time.time() + 0.3)
    assert time.monotonic() - started < 1.0
