from __future__ import annotations

import io

import pytest
from cryptography.fernet import Fernet
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection

from embedplatform.masking import secret_mask
from providers.crypto import secret_decrypt, secret_encrypt
from providers.errors import SecretUnreadable
from providers.models import ProviderConfig
from tests.factories import ProviderFactory
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
    return ProviderFactory(tenant=alice.tenant, endpoint=fake.url())


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


HEADER_VALUE = "org-secret-value-56789"


@pytest.fixture
def with_header(alice, fake, settings):
    settings.ENCRYPTION_KEY = KEY_A
    return ProviderFactory(tenant=alice.tenant, name="withheader", endpoint=fake.url(),
                           headers={"Authorization": "Bearer {{api_key}}", "X-Org": HEADER_VALUE})


def test_rotation_reencrypts_the_secret_header_values_too(with_header, settings):
    before = with_header.headers_encrypted
    settings.ENCRYPTION_KEY = f"{KEY_B},{KEY_A}"
    out = io.StringIO()
    call_command("rotate_encryption_key", stdout=out)
    assert "Re-encrypted 2 provider secret(s)" in out.getvalue()
    with_header.refresh_from_db()
    assert with_header.headers_encrypted != before
    settings.ENCRYPTION_KEY = KEY_B
    assert with_header.headers_clear()["X-Org"] == HEADER_VALUE
    dumped = io.StringIO()
    call_command("dumpdata", "providers", stdout=dumped)
    assert HEADER_VALUE not in dumped.getvalue() and "org...6789" in dumped.getvalue()


def test_the_migration_encrypts_existing_header_values_in_place(with_header, settings):
    """A row as the previous schema stored it (clear values in `headers`) is converted in place."""
    import importlib

    from django.apps import apps

    migration = importlib.import_module("providers.migrations.0002_secret_headers")
    clear = {"Authorization": "Bearer {{api_key}}", "X-Org": HEADER_VALUE, "X-Plain": "Token {{api_key}}"}
    ProviderConfig.objects.filter(pk=with_header.pk).update(headers=clear, headers_encrypted="", headers_digest="")
    migration.encrypt_header_values(apps, None)
    with connection.cursor() as cur:
        cur.execute(f"SELECT headers::text, headers_encrypted FROM {ProviderConfig._meta.db_table}")
        raw = repr(cur.fetchall())
    assert HEADER_VALUE not in raw and "Token {{api_key}}" in raw
    with_header.refresh_from_db()
    assert with_header.headers == {**clear, "X-Org": "org...6789"}
    assert with_header.headers_clear() == clear
    migration.encrypt_header_values(apps, None)  # idempotent: an encrypted row is left alone
    with_header.refresh_from_db()
    assert with_header.headers_clear() == clear
    migration.decrypt_header_values(apps, None)  # and it goes back
    assert ProviderConfig.objects.get(pk=with_header.pk).headers == clear
