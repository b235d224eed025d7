"""factory_boy factories for the rows tests need: tiers, tenants, users, API keys, jobs, providers.

Tiers, tenants, users and keys are plain rows (no service rules in the way: a test that checks a
rule such as max_keys calls the service itself). Jobs and providers go through their services,
because a bare row would be wrong: a job needs its chunks and its quota count, a provider its
validated endpoint and encrypted secret.
"""

from __future__ import annotations

import factory
from factory.django import DjangoModelFactory

from accounts.keys import key_hash, key_make, key_parse_prefix
from accounts.models import ApiKey, Tenant, Tier, User
from accounts.seeds import SEED_TIERS
from embeddings.inputs import EmbedOptions
from embeddings.jobs import job_create
from embeddings.models import Job
from embeddings.registry import DEFAULT_MODEL
from providers.models import ProviderConfig
from providers.services import provider_create

PASSWORD = "correct horse battery"
PROVIDER_SECRET = "sk-test-0123456789abcdefWXYZ"  # what the fake upstream expects (tests/fakes/provider_server.py)


class TierFactory(DjangoModelFactory):
    """A tier by name: the seeded `free` and `paid` rows (made with their seed values where the
    test database has none yet), or a new tier with the paid tier's values."""

    class Meta:
        model = Tier

    name = factory.Sequence(lambda n: f"tier-{n}")

    @classmethod
    def _create(cls, model_class, *, name: str, **fields) -> Tier:
        tier, _ = model_class.objects.get_or_create(name=name, defaults={**SEED_TIERS.get(name, SEED_TIERS["paid"]),
                                                                        **fields})
        return tier


class TenantFactory(DjangoModelFactory):
    class Meta:
        model = Tenant

    name = factory.Sequence(lambda n: f"tenant{n}@example.com")
    tier = factory.SubFactory(TierFactory, name="paid")


class UserFactory(DjangoModelFactory):
    """A tenant's user (its tenant named after its email, as sign-up does), with a usable password;
    `staff=True`: an operator of the admin, with no tenant."""

    class Meta:
        model = User

    class Params:
        staff = factory.Trait(is_staff=True, is_superuser=True, tenant=None)

    email = factory.Sequence(lambda n: f"user{n}@example.com")
    password = PASSWORD
    tenant = factory.SubFactory(TenantFactory, name=factory.SelfAttribute("..email"))

    @classmethod
    def _create(cls, model_class, *args, **kwargs) -> User:
        return cls._get_manager(model_class).create_user(*args, **kwargs)  # hashes the password


class ApiKeyFactory(DjangoModelFactory):
    """An active API key. The clear key, which production shows once and never stores, is on the
    returned row as `.clear`."""

    class Meta:
        model = ApiKey

    tenant = factory.SubFactory(TenantFactory)
    name = "test"
    clear = factory.LazyFunction(lambda: key_make().key)
    prefix = factory.LazyAttribute(lambda o: key_parse_prefix(o.clear))
    key_hash = factory.LazyAttribute(lambda o: key_hash(o.clear))

    @classmethod
    def _create(cls, model_class, *args, clear: str, **kwargs) -> ApiKey:
        row = super()._create(model_class, *args, **kwargs)
        row.clear = clear
        return row


class JobFactory(factory.Factory):
    """A job as the API admits it (embeddings.jobs.job_create: quota counted, chunks stored,
    workers signalled). Extra keywords are EmbedOptions fields (normalize, dimensions, public ...)."""

    class Meta:
        model = Job

    tenant = factory.SubFactory(TenantFactory)
    texts = factory.LazyFunction(lambda: ["a job text"])
    model = DEFAULT_MODEL
    webhook_url = ""

    @classmethod
    def _create(cls, model_class, *, tenant: Tenant, texts: list[str], model: str, webhook_url: str,
                **options) -> Job:
        return job_create(tenant=tenant, texts=texts, options=EmbedOptions(model=model, **options),
                          webhook_url=webhook_url)


class ProviderFactory(factory.Factory):
    """A tenant's BYOK provider made by providers.services.provider_create (validated, secret
    encrypted): by default the openai preset with the fake upstream's key; pass `endpoint`."""

    class Meta:
        model = ProviderConfig

    tenant = factory.SubFactory(TenantFactory)
    name = "myopenai"
    preset = "openai"
    api_key = PROVIDER_SECRET

    @classmethod
    def _create(cls, model_class, **kwargs) -> ProviderConfig:
        return provider_create(**kwargs)
