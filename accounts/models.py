from __future__ import annotations

import secrets
from typing import Any, ClassVar

from django.contrib.auth.models import AbstractBaseUser, BaseUserManager, PermissionsMixin
from django.db import models
from django.utils import timezone


def _webhook_secret() -> str:
    return secrets.token_hex(32)


class Tier(models.Model):
    """What a tenant may do. Seeded rows: `free` (BYOK only) and `paid` (server compute)."""

    name = models.SlugField(max_length=32, unique=True)
    daily_limit = models.PositiveIntegerField(help_text="Texts per UTC day, hits and misses alike.")
    monthly_limit = models.PositiveIntegerField(help_text="Texts per calendar month (UTC).")
    requests_per_minute = models.PositiveIntegerField(default=600)
    max_batch_size = models.PositiveIntegerField(default=2048, help_text="Texts per request.")
    max_job_texts = models.PositiveIntegerField(default=100_000)
    max_rerank_documents = models.PositiveIntegerField(default=1000, help_text="Documents per rerank request.")
    server_compute = models.BooleanField(default=False, help_text="May use the platform's models.")
    allowed_models = models.JSONField(default=list, blank=True, help_text="Model names; empty = all.")
    priority = models.SmallIntegerField(default=0, help_text="Higher goes first in shared queues.")
    max_sync_in_flight = models.PositiveIntegerField(
        default=8, help_text="Sync requests (and provider-worker calls) of one tenant in flight at once; past it 429."
    )
    max_keys = models.PositiveIntegerField(default=20, help_text="Active (unrevoked) API keys per tenant.")
    max_cache_bytes = models.PositiveBigIntegerField(
        default=1 << 30, help_text="Bytes of vectors the tenant's private cache may hold; 0 = no limit."
    )

    def __str__(self) -> str:
        return self.name

    def allows_model(self, model: str) -> bool:
        return not self.allowed_models or model in self.allowed_models


class Tenant(models.Model):
    name = models.CharField(max_length=200)
    tier = models.ForeignKey(Tier, on_delete=models.PROTECT, related_name="tenants")
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now)
    webhook_secret = models.CharField(
        max_length=64, default=_webhook_secret, help_text="Signs job webhooks (X-Signature: HMAC-SHA256 of the body)."
    )

    def __str__(self) -> str:
        return self.name


class UserManager(BaseUserManager["User"]):
    use_in_migrations = True

    def create_user(self, email: str, password: str | None = None, **extra: Any) -> User:
        if not email:
            raise ValueError("email is required")
        user = self.model(email=self.normalize_email(email).lower(), **extra)
        user.set_password(password)
        user.save(using=self._db)
        return user

    def create_superuser(self, email: str, password: str | None = None, **extra: Any) -> User:
        extra.setdefault("is_staff", True)
        extra.setdefault("is_superuser", True)
        return self.create_user(email, password, **extra)


class User(AbstractBaseUser, PermissionsMixin):  # type: ignore[misc]  # the stubs' two abstract Metas differ
    """Logs in with email. Staff users run the admin; tenant users own API keys."""

    email = models.EmailField(unique=True)
    tenant = models.ForeignKey(Tenant, null=True, blank=True, on_delete=models.CASCADE, related_name="users")
    is_active = models.BooleanField(default=True)
    is_staff = models.BooleanField(default=False)
    date_joined = models.DateTimeField(default=timezone.now)

    USERNAME_FIELD = "email"
    EMAIL_FIELD = "email"
    REQUIRED_FIELDS: ClassVar[list[str]] = []

    objects = UserManager()

    def __str__(self) -> str:
        return self.email


class ApiKey(models.Model):
    """An API key: shown once, stored as prefix + HMAC-SHA256 (see accounts/keys.py)."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="api_keys")
    created_by = models.ForeignKey(User, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    name = models.CharField(max_length=100, blank=True, default="")
    prefix = models.CharField(max_length=16, unique=True)
    key_hash = models.CharField(max_length=64)
    created_at = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["tenant", "-created_at"])]

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.tenant})"


class DailyUsage(models.Model):
    """Texts served per tenant, UTC day and model. Written in batches from Redis (accounts.services.usage_flush)."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="usage")
    day = models.DateField()
    model = models.CharField(max_length=200)
    cache_hits = models.BigIntegerField(default=0)
    cache_misses = models.BigIntegerField(default=0)
    tokens = models.BigIntegerField(default=0)
    compute_ms = models.FloatField(default=0.0, help_text="Worker forward-pass time attributed to these texts.")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["tenant", "day", "model"], name="daily_usage_key")]
        indexes = [models.Index(fields=["tenant", "-day"])]
        verbose_name_plural = "daily usage"

    def __str__(self) -> str:
        return f"{self.tenant} {self.day} {self.model}"
