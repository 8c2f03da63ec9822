from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from console.demo.seed import LOGINS, seed


class Command(BaseCommand):
    help = (
        "Create the demo's logins, regions, node classes, tenants and the enrollment tokens of "
        "demo nodes that have not enrolled yet. Safe to run again: it only adds what is missing."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--nodes", type=int, default=4, metavar="N", help="how many demo nodes (default 4)"
        )

    def handle(self, *args, **options):
        if not 1 <= options["nodes"] <= 20:
            raise CommandError("--nodes must be between 1 and 20")
        var = Path(settings.VAR_DIR)
        report = seed(
            node_count=options["nodes"],
            state_root=var / "nodes",
            token_root=var / "demo" / "tokens",
        )
        if report.changes:
            for change in report.changes:
                self.stdout.write(change)
        else:
            self.stdout.write("the demo data is complete; nothing changed")
        waiting = sorted(name for name, secret in report.enrollment.items() if secret)
        if waiting:
            self.stdout.write(
                f"{len(waiting)} nodes will enroll at their next start: {', '.join(waiting)}"
            )
        logins = ", ".join(f"{login.username}/{login.password}" for login in LOGINS)
        self.stdout.write(f"logins: {logins}")
