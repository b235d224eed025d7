from __future__ import annotations

import io

import pytest
from cryptography.fernet import Fernet
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection

from providers.crypto import secret_decrypt, secret_encrypt, secret_mask
from providers.errors import SecretUnreadable
from providers.models import ProviderConfig
from providers.services import provider_create
from tests.providers.conftest import SECRET

KEY_A = Fernet.generate_key().decode()
KEY_B = Fernet.generate_key().decode()


def test_it_encrypts_with_the_first_key_and_decrypts_with_any(settings):
    settings.ENCRYPTION_KEY = KEY_A
    token = secret_encrypt("sk-secret")
    assert "sk-secret" not in token
    settings.ENCRYPTION_KEY = f"{KEY_B},{KEY_A}"
    assert secret_decrypt(token) == "sk-secret"
    settings.ENCRYPTION_KEY = KEY_B
    with pytest.raises(SecretUnreadable, match="cannot be decrypted with ENCRYPTION_KEY"):
        secret_decrypt(token)


def test_it_masks_secrets():
    assert secret_mask("sk-proj-abcdefghijklmnopwxyz") == "sk-...wxyz"
    assert secret_mask("short12") == "...12"
    assert secret_mask("abc") == "..."
    assert secret_mask("") == ""


def test_a_bad_key_is_a_clear_configuration_error(settings):
    settings.ENCRYPTION_KEY = "not-a-fernet-key"
    with pytest.raises(ImproperlyConfigured, match="ENCRYPTION_KEY entry 1 is not a Fernet key"):
        secret_encrypt("x")


@pytest.fixture
def stored(alice, fake, settings):
    settings.ENCRYPTION_KEY = KEY_A
    return provider_create(tenant=alice.tenant, name="myopenai", preset="openai", endpoint=fake.url(), api_key=SECRET)


def test_the_secret_is_not_in_the_database_nor_in_dumpdata(stored):
    with connection.cursor() as cur:
        cur.execute(f"SELECT * FROM {ProviderConfig._meta.db_table}")
        rows = cur.fetchall()
    assert rows and SECRET not in repr(rows)
    assert SECRET[3:-4] not in repr(rows)  # not even the middle of it
    out = io.StringIO()
    call_command("dumpdata", "providers", stdout=out)
    assert '"secret_mask": "sk-...WXYZ"' in out.getvalue()
    assert SECRET not in out.getvalue()


def test_rotation_reencrypts_every_secret_under_the_new_key(stored, settings):
    """GIVEN a secret under key A WHEN ENCRYPTION_KEY=B,A and the command runs THEN B alone opens it."""
    before = stored.secret_encrypted
    settings.ENCRYPTION_KEY = f"{KEY_B},{KEY_A}"
    out = io.StringIO()
    call_command("rotate_encryption_key", stdout=out)
    assert "Re-encrypted 1 provider secret(s)" in out.getvalue()
    stored.refresh_from_db()
    assert stored.secret_encrypted != before
    settings.ENCRYPTION_KEY = KEY_B
    assert secret_decrypt(stored.secret_encrypted) == SECRET


def test_rotation_without_the_old_key_fails_clearly_and_changes_nothing(stored, settings):
    before = stored.secret_encrypted
    settings.ENCRYPTION_KEY = KEY_B
    with pytest.raises(CommandError, match="no key in ENCRYPTION_KEY decrypts its secret"):
        call_command("rotate_encryption_key", stdout=io.StringIO())
    stored.refresh_from_db()
    assert stored.secret_encrypted == before


def test_the_system_check_names_a_bad_key(settings):
    from providers.checks import encryption_key_check

    assert encryption_key_check() == []
    settings.ENCRYPTION_KEY = f"{KEY_A},oops"
    (error,) = encryption_key_check()
    assert error.id == "providers.E001" and "entry 2 is not a Fernet key" in error.msg
