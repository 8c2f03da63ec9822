from django.core.management.base import BaseCommand, CommandError

from console.demo.policy_story import StoryError, tell


class Command(BaseCommand):
    help = (
        "Tell the demo's story of the policy plane: a policy change reaching every node, a "
        "spend cap, a local-only refusal beside an offload, and a heated node shedding its "
        "traffic to the regional pool and taking it back."
    )

    def add_arguments(self, parser):
        parser.add_argument("--console", default="http://127.0.0.1:8000", help="the console's URL")
        parser.add_argument(
            "--cycles",
            type=int,
            default=None,
            help="heat cycles to run (default: one every five minutes until stopped)",
        )

    def handle(self, *args, **options):
        try:
            tell(
                options["console"],
                lambda line: self.stdout.write(line, ending="\n"),
                cycles=options["cycles"],
            )
        except StoryError as exc:
            raise CommandError(str(exc)) from None
