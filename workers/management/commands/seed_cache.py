"""manage.py seed_cache FILE --model M: pre-compute common texts into the cache."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from accounts.models import Tenant
from dispatch.base import INPUT_TYPES
from embeddings.cache import PUBLIC_SCOPE
from embeddings.registry import DEFAULT_MODEL, model_get, model_specs
from embeddings.seeding import SeedProgress, cache_seed
from workers.devices import device_parse
from workers.runtime import ModelRuntime


def _lines(stream: Iterable[str]) -> Iterator[str]:
    for line in stream:
        text = line.rstrip("\r\n")
        if text.strip():
            yield text


class Command(BaseCommand):
    help = ("Embed the texts of FILE (one per line, UTF-8; '-' reads stdin) with a served model, in this "
            "process, and store them in the cache: the public scope by default, which every tenant reads. "
            "Texts already cached are skipped, so it can be re-run.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("file")
        parser.add_argument("--model", default=DEFAULT_MODEL)
        parser.add_argument("--tenant", type=int, default=None, help="A tenant id: seed its private scope instead.")
        parser.add_argument("--input-type", choices=INPUT_TYPES, default=None, help="Apply the model's prompt.")
        parser.add_argument("--batch-size", type=int, default=256)
        parser.add_argument("--device", default=settings.EMBED_DEVICE, help="cpu, cuda or cuda:N (default EMBED_DEVICE).")

    def handle(self, *args: Any, **opts: Any) -> None:
        spec = model_get(opts["model"])
        if spec is None:
            raise CommandError(f"Unknown model {opts['model']!r}; served models: {', '.join(model_specs())}.")
        if opts["batch_size"] < 1:
            raise CommandError("--batch-size must be at least 1.")
        scope = PUBLIC_SCOPE
        if opts["tenant"] is not None:
            if not Tenant.objects.filter(pk=opts["tenant"]).exists():
                raise CommandError(f"No tenant with id {opts['tenant']}.")
            scope = opts["tenant"]
        try:
            stream = sys.stdin if opts["file"] == "-" else open(opts["file"], encoding="utf-8")  # noqa: SIM115
        except OSError as exc:
            raise CommandError(f"Cannot read {opts['file']}: {exc.strerror}.") from None
        started = time.monotonic()
        runtime = ModelRuntime(spec, device_parse(opts["device"]))

        def report(p: SeedProgress) -> None:
            rate = p.seen / max(time.monotonic() - started, 1e-6)
            self.stderr.write(f"{p.seen} texts: {p.stored} stored, {p.cached} already cached ({rate:.0f} texts/s)")

        try:
            with stream:
                progress = cache_seed(texts=_lines(stream), spec=spec, runtime=runtime, scope=scope,
                                      batch_size=opts["batch_size"], input_type=opts["input_type"], on_batch=report)
        except UnicodeDecodeError:
            raise CommandError(f"{opts['file']} is not UTF-8 text.") from None
        where = "the public scope" if scope == PUBLIC_SCOPE else f"tenant {scope}'s scope"
        self.stdout.write(f"Seeded {progress.stored} new vectors of {spec.name} into {where} "
                          f"({progress.seen} texts read, {progress.cached} already cached).")
