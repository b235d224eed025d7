"""manage.py models_pull [NAME ...]: fetch the hub models of EMBED_MODELS ahead of time."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError, CommandParser

from embeddings import registry


class Command(BaseCommand):
    help = ("Download the hub models EMBED_MODELS names (all, or the NAMEs given) into VAR_DIR/models, once, "
            "so that an install without hub access serves them: run it where the hub is reachable "
            "(HF_ENDPOINT names a mirror), then copy VAR_DIR/models over. Progress goes to stderr.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("names", nargs="*", metavar="NAME", help="Models to fetch (EMBED_MODELS names); all by default.")

    def handle(self, *args: Any, **opts: Any) -> None:
        try:
            found = registry.models_pull(opts["names"] or None, log=lambda line: self.stderr.write(line))
            specs = {name: registry.model_spec_read(name) for name in found}  # as the web and worker will read them
        except ImproperlyConfigured as exc:
            raise CommandError(str(exc)) from None
        for name, directory in found.items():
            spec = specs[name]
            self.stdout.write(f"{name}: present at {directory} (dims {spec.dims}, max_tokens {spec.max_tokens}, "
                              f"version {spec.version})")
