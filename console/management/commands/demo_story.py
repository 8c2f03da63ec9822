from django.core.management.base import BaseCommand, CommandError

from console.demo.story import tell


class Command(BaseCommand):
    help = (
        "Tell the demo's story of a model: register with the SDK, roll out, canary a retrained "
        "version, watch a broken one roll itself back."
    )

    def add_arguments(self, parser):
        parser.add_argument("--console", default="http://127.0.0.1:8000", help="the console's URL")

    def handle(self, *args, **options):
        try:
            tell(options["console"], lambda line: self.stdout.write(line, ending="\n"))
        except TimeoutError as exc:
            raise CommandError(str(exc)) from None
