"""The console's Ed25519 signing key.

Nodes pin its public half at enrollment and later verify policy bundles and ephemeral
tokens against it. Production passes it in OUTPOST_SIGNING_KEY; development generates one
under VAR_DIR on first use so the demo needs no setup.
"""

from __future__ import annotations

import base64
import hashlib
import os
from functools import cache
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.conf import settings

from inference import protocol


@cache
def console_private_key() -> Ed25519PrivateKey:
    if settings.OUTPOST_SIGNING_KEY:
        return protocol.private_key_from_b64(settings.OUTPOST_SIGNING_KEY)
    path = Path(settings.VAR_DIR) / "signing_key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        encoded = protocol.private_key_to_b64(protocol.generate_private_key())
        # O_EXCL: when two processes start together, one writes and the other reads its key.
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as fh:
                fh.write(encoded)
    return protocol.private_key_from_b64(path.read_text().strip())


def console_public_key_b64() -> str:
    return protocol.public_key_to_b64(console_private_key().public_key())


def fleet_forward_key_b64() -> str:
    """The fleet's HMAC key for node-to-node forwards (protocol.forward_auth), derived from the
    signing key: stable while the key is, so an unchanged policy compiles to an unchanged
    bundle, and new with each signing key."""
    from cryptography.hazmat.primitives import serialization

    raw = console_private_key().private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    return base64.b64encode(hashlib.sha256(b"outpost forward key v1\n" + raw).digest()).decode()
