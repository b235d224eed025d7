import pytest
from django.core.management import call_command
from django.utils import timezone

from accounts.models import ApiKey

pytestmark = pytest.mark.django_db


def _error(response, status):
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def test_it_accepts_a_valid_key(alice, client_for):
    assert client_for(alice).get("/v1/models").status_code == 200


@pytest.mark.parametrize(
    "header",
    ["", "Bearer", "Bearer ", "Basic abc", "Bearer sk-not-ours", "Bearer ep_aaaaaaaaaaaa_wrongsecret"],
)
def test_it_refuses_missing_or_bad_credentials(alice, client, header):
    kwargs = {"HTTP_AUTHORIZATION": header} if header else {}
    error = _error(client.get("/v1/models", **kwargs), 401)
    assert error["type"] == "authentication_error"


def test_a_right_prefix_with_a_wrong_secret_fails(alice, client_for):
    forged = f"ep_{alice.api_key.prefix}_{'x' * 43}"
    _error(client_for(key=forged).get("/v1/models"), 401)


def test_a_revoked_key_fails_on_its_next_request(alice, client_for):
    api = client_for(alice)
    assert api.get("/v1/models").status_code == 200
    ApiKey.objects.filter(pk=alice.api_key.pk).update(revoked_at=timezone.now())
    _error(api.get("/v1/models"), 401)


def test_an_inactive_tenant_is_refused(alice, client_for):
    alice.tenant.is_active = False
    alice.tenant.save()
    _error(client_for(alice).get("/v1/models"), 401)


def test_keys_are_stored_hashed(alice):
    row = ApiKey.objects.get(pk=alice.api_key.pk)
    assert alice.key not in (row.key_hash, row.prefix)
    assert len(row.key_hash) == 64


def test_create_tenant_prints_a_working_key_last(tiers, client_for, capsys):
    call_command("create_tenant", "dora@example.com", "--tier", "paid")
    out = capsys.readouterr().out.strip().splitlines()
    key = out[-1]
    assert key.startswith("ep_")
    assert client_for(key=key).get("/v1/models").status_code == 200


def test_create_tenant_refuses_an_unknown_tier(tiers):
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="Unknown tier `gold`"):
        call_command("create_tenant", "eve@example.com", "--tier", "gold")
