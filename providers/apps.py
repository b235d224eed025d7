from django.apps import AppConfig


class ProvidersConfig(AppConfig):
    name = "providers"
    verbose_name = "BYOK providers"

    def ready(self) -> None:
        from providers import checks  # noqa: F401  (registers the ENCRYPTION_KEY check)
