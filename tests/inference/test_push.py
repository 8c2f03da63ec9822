"""A node applies a desired state the console pushed only when the console signed it, for
this node, recently."""

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from inference import protocol
from inference.agent import ConsoleLink
from inference.metrics import AgentMetrics

KEY = protocol.generate_private_key()


class Repository:
    def __init__(self):
        self.applied = []
        self.budgets = []

    def apply_desired(self, desired):
        self.applied.append(desired)

    def offer_memory_budget(self, budget):
        self.budgets.append(budget)


@pytest.fixture
def link():
    link = ConsoleLink(
        "http://console.invalid",
        Path("/nonexistent"),
        enroll_token=None,
        endpoint="http://127.0.0.1:1",
        repository=Repository(),
        metrics=AgentMetrics(),
        on_fatal=lambda message: None,
    )
    link.identity = protocol.EnrollResponse(
        node_uid="nd-1",
        name="fra-1",
        region="eu-west",
        node_class="nano",
        credential="opn_x",
        console_public_key=protocol.public_key_to_b64(KEY.public_key()),
        heartbeat_interval_s=5,
    )
    return link


def signed(node_uid="nd-1", issued_at=None, key=KEY):
    push = protocol.DesiredPush(
        node_uid=node_uid,
        issued_at=issued_at or datetime.now(UTC),
        desired_models=[],
        memory_budget_bytes=2**30,
    )
    body = protocol.canonical_json(push.model_dump(mode="json"))
    return body, protocol.sign(key, body)


def test_a_push_signed_by_the_console_for_this_node_is_applied(link):
    assert link.accept_push(*signed()) == (200, "applied")
    assert link.repository.applied == [[]]
    assert link.repository.budgets == [2**30]


@pytest.mark.parametrize(
    ("push", "status", "message"),
    [
        (lambda: signed(key=protocol.generate_private_key()), 401, "does not verify"),
        (lambda: (signed()[0], None), 401, "needs the x-outpost-signature header"),
        (lambda: signed(node_uid="nd-2"), 403, "for node nd-2"),
        (lambda: signed(issued_at=datetime.now(UTC) - timedelta(minutes=5)), 400, "older than"),
        (lambda: (b"{}", protocol.sign(KEY, b"{}")), 400, "not a desired-state push"),
    ],
)
def test_a_push_that_is_forged_foreign_stale_or_malformed_is_refused(link, push, status, message):
    got_status, got_message = link.accept_push(*push())
    assert got_status == status and message in got_message
    assert link.repository.applied == []


def test_a_tampered_body_fails_its_signature(link):
    body, signature = signed()
    assert link.accept_push(body.replace(b"nd-1", b"nd-9"), signature)[0] == 401
