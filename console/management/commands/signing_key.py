from django.core.management.base import BaseCommand

from inference import protocol


class Command(BaseCommand):
    help = "Print a new Ed25519 signing key for OUTPOST_SIGNING_KEY (keep it secret)."

    def handle(self, *args, **options):
        key = protocol.generate_private_key()
        self.stdout.write(protocol.private_key_to_b64(key))
        self.stderr.write(f"public key: {protocol.public_key_to_b64(key.public_key())}")
