"""Write (or print) the Prometheus file_sd targets file from the fleet registry."""

from __future__ import annotations

import json
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand

from fleet.observability.targets import targets, write_targets


class Command(BaseCommand):
    help = "Write Prometheus' file_sd scrape targets for every enrolled node."

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--output",
            type=Path,
            default=None,
            help="Where to write (default: OUTPOST_PROMETHEUS_TARGETS_FILE)",
        )
        parser.add_argument("--print", action="store_true", help="Print instead of writing")

    def handle(self, *args, output: Path | None, print: bool, **options) -> None:
        if print:
            self.stdout.write(json.dumps(targets(), indent=2, sort_keys=True))
            return
        path = output or settings.OUTPOST_PROMETHEUS_TARGETS_FILE
        changed = write_targets(path)
        self.stdout.write(f"{'wrote' if changed else 'unchanged'} {path} ({len(targets())} nodes)")
