from django.apps import AppConfig


class WorkersConfig(AppConfig):
    name = "workers"

    def ready(self) -> None:
        # Celery signal handlers (request id across the broker, worker metrics port), in every
        # process: the web publishes tasks, the workers run them.
        from workers import signals  # noqa: F401
