from __future__ import annotations

import pytest

from providers.models import ProviderConfig
from tests.providers.conftest import SECRET, openai_body


@pytest.fixture
def alice_provider(alice, jwt_client, fake) -> dict:
    response = jwt_client(alice).post("/v1/providers", openai_body(fake), format="json")
    assert response.status_code == 201, response.content
    return response.json()


def test_crud_shows_only_a_mask(alice, jwt_client, fake):
    client = jwt_client(alice)
    created = client.post("/v1/providers", openai_body(fake, model="text-embedding-3-large"), format="json")
    assert created.status_code == 201, created.content
    body = created.json()
    assert body["api_key_mask"] == "sk-...WXYZ"
    assert body["endpoint"] == fake.url()
    assert body["request_template"] == {"model": "{{model}}", "input": "{{texts}}", "encoding_format": "float"}
    assert body["response_path"] == "$.data[*].embedding"
    assert body["models"] == ["myopenai/text-embedding-3-large"]
    pid = body["id"]

    listed = client.get("/v1/providers")
    assert [p["id"] for p in listed.json()["data"]] == [pid]
    assert client.get(f"/v1/providers/{pid}").json()["name"] == "myopenai"

    patched = client.patch(f"/v1/providers/{pid}", {"api_key": "sk-another-key-0000abcd", "max_inputs": 10},
                           format="json")
    assert patched.status_code == 200, patched.content
    assert patched.json()["api_key_mask"] == "sk-...abcd"
    assert patched.json()["max_inputs"] == 10

    for response in (created, listed, patched, client.get(f"/v1/providers/{pid}")):
        assert SECRET not in response.content.decode()
        assert "sk-another-key-0000abcd" not in response.content.decode()

    deleted = client.delete(f"/v1/providers/{pid}")
    assert deleted.json() == {"id": pid, "deleted": True}
    assert client.get(f"/v1/providers/{pid}").status_code == 404


def test_an_api_key_cannot_manage_providers(alice, client_for, fake):
    response = client_for(alice).post("/v1/providers", openai_body(fake), format="json")
    assert response.status_code == 403
    assert "needs a user session" in response.json()["error"]["message"]
    assert client_for(alice).get("/v1/providers").status_code == 403
    assert client_for().get("/v1/providers").status_code == 401
    assert not ProviderConfig.objects.exists()


@pytest.mark.parametrize(
    ("changes", "param", "message"),
    [
        ({"preset": "nope"}, "preset", "is not a valid choice"),
        ({"name": "has/slash"}, "name", "no '/'"),
        ({"request_template": {"model": "{{model}}"}}, "request_template", 'must contain "{{texts}}"'),
        ({"request_template": "not an object"}, "request_template", "must be a JSON object"),
        ({"response_path": "$.data["}, "response_path", "not a valid JSONPath"),
        ({"headers": {"X-Key": "{{secret}}"}}, "headers", "unknown placeholder"),
        ({"endpoint": "http://api.example.com/v1/embeddings"}, "endpoint", "must use https"),
        ({"endpoint": "https://localhost/v1/embeddings"}, "endpoint", "loopback"),
        ({"endpoint": "https://169.254.169.254/latest"}, "endpoint", "link-local"),
        ({"endpoint": "https://[::ffff:10.0.0.1]/x"}, "endpoint", "embeds 10.0.0.1"),
        ({"api_key": ""}, "api_key", "required by this preset"),
        ({"max_inputs": 0}, "max_inputs", "greater than or equal to 1"),
    ],
)
def test_bad_configurations_are_400_naming_the_field(alice, jwt_client, fake, changes, param, message):
    response = jwt_client(alice).post("/v1/providers", {**openai_body(fake), **changes}, format="json")
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["param"] == param
    assert message in error["message"]


def test_custom_needs_endpoint_template_and_path(alice, jwt_client, fake):
    client = jwt_client(alice)
    response = client.post("/v1/providers", {"name": "mine", "endpoint": fake.url(), "api_key": SECRET}, format="json")
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "request_template"
    response = client.post("/v1/providers", {
        "name": "mine", "preset": "custom", "endpoint": fake.url("/v2/embed"), "api_key": SECRET,
        "request_template": {"model": "{{model}}", "texts": "{{texts}}"},
        "response_path": "$.embeddings.float[*]", "model": "embed-english-v3.0",
    }, format="json")
    assert response.status_code == 201, response.content
    assert response.json()["headers"] == {"Authorization": "Bearer {{api_key}}"}


def test_names_are_unique_per_tenant(alice, bob, jwt_client, fake, alice_provider):
    again = jwt_client(alice).post("/v1/providers", openai_body(fake), format="json")
    assert again.status_code == 400 and again.json()["error"]["code"] == "name_taken"
    assert jwt_client(bob).post("/v1/providers", openai_body(fake), format="json").status_code == 201


def test_bob_cannot_see_change_delete_or_test_alices_provider(bob, jwt_client, alice_provider):
    client, pid = jwt_client(bob), alice_provider["id"]
    assert client.get("/v1/providers").json()["data"] == []
    assert client.get(f"/v1/providers/{pid}").status_code == 404
    assert client.patch(f"/v1/providers/{pid}", {"model": "x"}, format="json").status_code == 404
    assert client.delete(f"/v1/providers/{pid}").status_code == 404
    assert client.post(f"/v1/providers/{pid}/test").status_code == 404
    assert client.get("/v1/providers/99999999999999999999999").status_code == 404
    assert ProviderConfig.objects.filter(pk=pid, model="text-embedding-3-small").exists()


def test_the_test_endpoint_makes_one_real_call(alice, jwt_client, fake, alice_provider):
    response = jwt_client(alice).post(f"/v1/providers/{alice_provider['id']}/test")
    assert response.status_code == 200
    body = response.json()
    assert body["ok"] is True and body["dimensions"] == 8 and body["model"] == "text-embedding-3-small"
    assert len(fake.requests) == 1


def test_the_test_endpoint_says_what_failed(alice, jwt_client, fake, alice_provider):
    fake.then(redirect="http://169.254.169.254/latest/meta-data/")
    body = jwt_client(alice).post(f"/v1/providers/{alice_provider['id']}/test").json()
    assert body["ok"] is False and body["status"] == 502
    assert "redirects are not followed" in body["error"]
    fake.expected_key = "sk-something-else"
    body = jwt_client(alice).post(f"/v1/providers/{alice_provider['id']}/test").json()
    assert "answered 401: Incorrect API key provided: sk-...WXYZ" in body["error"]
    assert SECRET not in str(body)


def test_with_no_provider_worker_a_miss_is_a_fast_503(charlie, client_for, fake, redis_db):
    """No worker consumes the provider queue (none started, heartbeat key absent): the request
    is refused at once with 503 + Retry-After instead of waiting out SYNC_WAIT_SECONDS."""
    from providers.services import provider_create

    provider_create(tenant=charlie.tenant, name="lonely", preset="openai", endpoint=fake.url(), api_key="sk-test-1234")
    response = client_for(charlie).post("/v1/embeddings", {"model": "lonely/text-embedding-3-small", "input": "x"},
                                        format="json")
    assert response.status_code == 503 and response["Retry-After"] == "5"
    assert response.json()["error"]["code"] == "no_worker"
