"""Writes that span several fleet objects. Each owns its transaction."""

from __future__ import annotations

import secrets

from django.db import IntegrityError, transaction
from django.utils import timezone

from fleet.models import EnrollmentToken, Node
from inference.protocol import EnrollRequest, hash_secret


class EnrollmentError(Exception):
    """The token cannot enroll a node; the message says why, for the node's operator."""


def enroll_node(request: EnrollRequest) -> tuple[Node, str]:
    """Spend a one-time token on a new node; return the node and its credential (shown once)."""
    credential, credential_hash = Node.new_credential()
    with transaction.atomic():
        token = (
            EnrollmentToken.objects.select_for_update()
            .select_related("region", "node_class")
            .filter(secret_hash=hash_secret(request.token))
            .first()
        )
        if token is None:
            raise EnrollmentError("unknown enrollment token")
        if token.used_at is not None:
            raise EnrollmentError("this enrollment token was already used")
        if token.expires_at <= timezone.now():
            raise EnrollmentError("this enrollment token has expired; ask for a new one")
        try:
            with transaction.atomic():
                node = Node.objects.create(
                    uid=f"nd-{secrets.token_hex(6)}",
                    name=token.node_name,
                    region=token.region,
                    node_class=token.node_class,
                    endpoint=request.endpoint,
                    hostname=request.hostname,
                    agent_version=request.agent_version,
                    credential_hash=credential_hash,
                )
        except IntegrityError:
            raise EnrollmentError(f"a node named {token.node_name!r} already exists") from None
        token.used_at = timezone.now()
        token.node = node
        token.save(update_fields=["used_at", "node"])
    return node, credential
