from django.apps import AppConfig


class PlatformConfig(AppConfig):
    """The project package as an app only for its system checks (no models, no migrations)."""

    name = "embedplatform"
    verbose_name = "Embedding platform"

    def ready(self) -> None:
        from embedplatform import checks  # noqa: F401  (registers the deploy checks)
