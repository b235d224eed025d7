"""Every bad input gets the SPEC's status and OpenAI's envelope, never a 500."""

import pytest
from django.test import override_settings

URL = "/v1/embeddings"
MODEL = "all-MiniLM-L6-v2"
pytestmark = pytest.mark.django_db


def _error(response, status):
    assert response.status_code == status, response.content
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    return error


@pytest.fixture
def api(alice, client_for, redis_db):
    return client_for(alice)


@pytest.mark.parametrize(
    ("body", "param", "fragment"),
    [
        ({"model": MODEL}, "input", "required"),
        ({"model": MODEL, "input": ""}, "input", "empty string"),
        ({"model": MODEL, "input": []}, "input", "empty array"),
        ({"model": MODEL, "input": ["ok", ""]}, "input", "input[1] is an empty string"),
        ({"model": MODEL, "input": ["ok", 3]}, "input", "input[1] is an integer among texts"),
        ({"model": MODEL, "input": [[1, 2, 100256]]}, "input", "input[0][2] is 100256, not a cl100k_base token id"),
        ({"model": MODEL, "input": {"a": 1}}, "input", "not dict"),
        ({"model": MODEL, "input": None}, "input", ""),
        ({"model": MODEL, "input": "x", "encoding_format": "int8"}, "encoding_format", "not a valid choice"),
        ({"model": MODEL, "input": "x", "dimensions": 0}, "dimensions", ""),
        ({"model": MODEL, "input": "x", "dimensions": "many"}, "dimensions", "valid integer"),
        ({"model": MODEL, "input": "x", "normalize": "yes"}, "normalize", "boolean"),
        ({"model": MODEL, "input": "x", "input_type": "poem"}, "input_type", "not a valid choice"),
        ({"input": "x"}, "model", "required"),
    ],
)
def test_bad_fields_are_400_naming_the_field(api, body, param, fragment):
    error = _error(api.post(URL, body, format="json"), 400)
    assert error["param"] == param
    assert fragment in error["message"]


def test_dimensions_over_the_model_are_400(api):
    error = _error(api.post(URL, {"model": MODEL, "input": "x", "dimensions": 385}, format="json"), 400)
    assert error["message"] == "dimensions must be between 1 and 384 for model `all-MiniLM-L6-v2`; got 385."


def test_an_unknown_model_is_404_like_openai(api):
    error = _error(api.post(URL, {"model": "gpt-9", "input": "x"}, format="json"), 404)
    assert error["code"] == "model_not_found" and error["param"] == "model"


def test_a_free_tenant_asking_for_a_server_model_gets_403(charlie, client_for, redis_db):
    error = _error(client_for(charlie).post(URL, {"model": MODEL, "input": "x"}, format="json"), 403)
    assert "configure a provider" in error["message"]


def test_a_tier_that_excludes_the_model_gets_403(alice, client_for, redis_db):
    tier = alice.tenant.tier
    tier.allowed_models = ["some-other-model"]
    tier.save()
    _error(client_for(alice).post(URL, {"model": MODEL, "input": "x"}, format="json"), 403)


@pytest.mark.parametrize("raw", [b"{not json", b"[1,2", b"", b'{"input": "\xff\xfe"}', b'"just a string"'])
def test_malformed_bodies_are_400(api, raw):
    r = api.generic("POST", URL, raw, content_type="application/json")
    _error(r, 400)


def test_a_lone_surrogate_is_400(api):
    r = api.generic("POST", URL, b'{"model": "all-MiniLM-L6-v2", "input": "\\ud800"}', content_type="application/json")
    _error(r, 400)


def test_curl_style_form_content_type_is_read_as_json(api, drainer):
    r = api.generic("POST", URL, b'{"model": "all-MiniLM-L6-v2", "input": ["a"]}',
                    content_type="application/x-www-form-urlencoded")
    assert r.status_code == 200, r.content


@override_settings(MAX_REQUEST_BYTES=1000)
def test_an_oversized_body_is_413(api):
    error = _error(api.post(URL, {"model": MODEL, "input": "x" * 2000}, format="json"), 413)
    assert "1000" in error["message"]


@override_settings(MAX_INPUTS_PER_REQUEST=3)
def test_too_many_inputs_is_400_with_the_limit(api):
    error = _error(api.post(URL, {"model": MODEL, "input": ["a"] * 4}, format="json"), 400)
    assert "limit is 3" in error["message"]


@override_settings(MAX_INPUT_CHARS=10)
def test_a_text_over_the_char_limit_is_400(api):
    _error(api.post(URL, {"model": MODEL, "input": ["a" * 11]}, format="json"), 400)


def test_truncate_false_refuses_an_overlong_text(api):
    error = _error(api.post(URL, {"model": MODEL, "input": ["ok", "word " * 400], "truncate": False}, format="json"), 400)
    assert error["code"] == "context_length_exceeded"
    assert error["message"].startswith("input[1] has ")


def test_no_worker_is_503_with_retry_after(api):
    r = api.post(URL, {"model": MODEL, "input": "nobody serves me"}, format="json")
    _error(r, 503)
    assert int(r["Retry-After"]) >= 1


def test_wrong_method_and_unknown_route(api):
    _error(api.get(URL), 405)
    _error(api.get("/v1/nothing-here"), 404)
