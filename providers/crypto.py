"""Secrets at rest: Fernet tokens under the keys of ENCRYPTION_KEY (a comma list).

The first key encrypts, every key decrypts (cryptography's MultiFernet), so keys rotate by
putting a new key first (`ENCRYPTION_KEY=new,old`) and running
`manage.py rotate_encryption_key`, which re-encrypts every secret under the new key; after
that the old key can go. settings.ENCRYPTION_KEY is generated once under VAR_DIR on the
embedded path and required in production (embedplatform/settings/base.py).
"""

from __future__ import annotations

from functools import cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.utils.crypto import salted_hmac

from providers.errors import SECRET_UNREADABLE, SecretUnreadable

BAD_KEY = (
    "ENCRYPTION_KEY entry {index} is not a Fernet key (32 url-safe base64-encoded bytes). Generate one with: "
    'python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())"'
)


@cache
def _fernet(raw: str) -> MultiFernet:
    keys = [k.strip() for k in raw.split(",") if k.strip()]
    if not keys:
        raise ImproperlyConfigured("ENCRYPTION_KEY is empty; it must name at least one Fernet key.")
    fernets = []
    for index, key in enumerate(keys, start=1):
        try:
            fernets.append(Fernet(key))
        except (ValueError, TypeError):
            raise ImproperlyConfigured(BAD_KEY.format(index=index)) from None
    return MultiFernet(fernets)


def fernet() -> MultiFernet:
    """The MultiFernet of the current settings. Raises ImproperlyConfigured with a clear message for a bad key."""
    return _fernet(settings.ENCRYPTION_KEY or "")


def secret_encrypt(plain: str) -> str:
    return fernet().encrypt(plain.encode("utf-8")).decode("ascii")


def secret_decrypt(token: str) -> str:
    """The clear secret. Raises SecretUnreadable when no key of ENCRYPTION_KEY opens the token."""
    try:
        return fernet().decrypt(token.encode("ascii")).decode("utf-8")
    except (InvalidToken, UnicodeError):
        raise SecretUnreadable(SECRET_UNREADABLE) from None


def secret_rotate(token: str) -> str:
    """The same secret re-encrypted under the first key. Raises SecretUnreadable like secret_decrypt."""
    try:
        return fernet().rotate(token.encode("ascii")).decode("ascii")
    except (InvalidToken, UnicodeError):
        raise SecretUnreadable(SECRET_UNREADABLE) from None


def secret_digest(plain: str) -> str:
    """A keyed digest (HMAC under SECRET_KEY) that tells whether a secret changed without revealing
    it, even a guessable one, to whoever reads the database alone."""
    return salted_hmac("providers.secret_digest", plain, algorithm="sha256").hexdigest()


