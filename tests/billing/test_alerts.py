"""Spending alerts: each fires once, by email, signed webhook and portal banner; exhaustion
reaches routing through the next policy bundle."""

from __future__ import annotations

import base64
import threading
from datetime import timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from django.core import mail

from billing.alerts import SIGNATURE_HEADER, check_budget, deliver, exhausted_tenants
from billing.invoicing import refresh_draft
from billing.models import BudgetStatus, SpendingAlert, Tenant
from inference import protocol
from tests.billing.usage_rows import NOV, served


class Receiver:
    """A tenant's webhook endpoint on loopback, keeping what it was sent."""

    def __init__(self) -> None:
        received = self.received = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.append((dict(self.headers), body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/outpost-alerts"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    server = Receiver()
    yield server
    server.close()


def budgeted(tenant, budget, **fields):
    Tenant.objects.filter(pk=tenant.pk).update(monthly_budget=Decimal(budget), **fields)
    tenant.refresh_from_db()
    return tenant


def test_each_share_of_the_budget_alerts_once(acme_on_silver):
    acme = budgeted(acme_on_silver, "100")  # 49 EUR band fee + 19 % VAT: 58.31 spent
    refresh_draft(acme, 2026, 11, now=NOV)

    first = check_budget(acme, now=NOV)
    again = check_budget(acme, now=NOV + timedelta(minutes=1))

    assert [(a.kind, a.percent) for a in first] == [("threshold", 50)]
    assert again == []
    assert first[0].message == "50 % of the monthly budget spent (58.310 of 100.00 EUR)"


def test_a_forecast_above_the_budget_alerts_before_the_spend_gets_there(acme_on_silver):
    acme = budgeted(acme_on_silver, "100")
    served(acme, NOV, 100_000, received=NOV, grade="medium")  # 99,000 beyond the inclusion
    refresh_draft(acme, 2026, 11, now=NOV)

    fired = check_budget(acme, now=NOV)

    assert [(a.kind, a.percent) for a in fired] == [
        ("threshold", 50),
        ("threshold", 80),
        ("forecast", 0),
    ]
    status = BudgetStatus.objects.get(tenant=acme)
    assert status.spend < 100 < status.forecast
    assert not status.exhausted


def test_exhaustion_reaches_the_nodes_through_the_next_bundle(acme_on_silver):
    from fleet.policy_plane import gather_inputs

    acme = budgeted(acme_on_silver, "50")
    refresh_draft(acme, 2026, 11, now=NOV)

    fired = check_budget(acme, now=NOV)

    assert ("exhausted", 0) in [(a.kind, a.percent) for a in fired]
    assert BudgetStatus.objects.get(tenant=acme).exhausted
    assert exhausted_tenants(NOV) == {"acme"}
    rules = {t.slug: t for t in gather_inputs(NOV).tenants}
    assert rules["acme"].budget_exhausted
    # A new month starts unspent.
    assert exhausted_tenants(NOV + timedelta(days=31)) == set()


def test_an_alert_is_emailed_and_posted_signed_by_the_console(acme_on_silver, receiver, client):
    acme = budgeted(
        acme_on_silver, "100", billing_email="billing@acme.example", alert_webhook_url=receiver.url
    )
    refresh_draft(acme, 2026, 11, now=NOV)
    (alert,) = check_budget(acme, now=NOV)

    deliver(alert)
    deliver(alert)  # a retry sends nothing twice

    assert len(mail.outbox) == 1
    assert mail.outbox[0].to == ["billing@acme.example"]
    assert "50 % of the monthly budget spent" in mail.outbox[0].subject
    assert len(receiver.received) == 1
    headers, body = receiver.received[0]
    key = client.get("/api/v1/keys").json()
    signature = dict(part.split("=", 1) for part in headers[SIGNATURE_HEADER].split(","))
    assert signature["keyid"] == key["key_id"]
    public = protocol.public_key_from_b64(key["public_key"])
    assert protocol.verify(public, body, signature["ed25519"])
    assert not protocol.verify(public, body + b" ", signature["ed25519"])
    assert SpendingAlert.objects.get(pk=alert.pk).webhook_result == "204"
    assert base64.b64decode(signature["ed25519"])


def test_an_unreachable_webhook_is_recorded_not_fatal(acme_on_silver):
    acme = budgeted(acme_on_silver, "100", alert_webhook_url="http://127.0.0.1:9/nowhere")
    refresh_draft(acme, 2026, 11, now=NOV)
    (alert,) = check_budget(acme, now=NOV)

    assert "ConnectError" in deliver(alert).webhook_result


def test_the_portal_shows_the_months_alerts(acme_on_silver, carol, client):
    from datetime import UTC, datetime

    from billing.invoicing import month_of

    acme = budgeted(acme_on_silver, "50")
    now = datetime.now(UTC)
    refresh_draft(acme, *month_of(acme, now), now=now)
    check_budget(acme, now=now)
    client.force_login(carol)

    for url in ("/portal/acme/", "/portal/acme/billing/"):
        page = client.get(url).content.decode()
        assert "Budget exhausted:" in page
        assert "the monthly budget of 50.00 EUR is spent" in page


def test_the_beat_task_refreshes_every_draft_and_checks_every_budget(acme_on_silver):
    from billing.tasks import refresh_drafts_task

    budgeted(acme_on_silver, "50")
    globex = Tenant.objects.create(slug="globex", name="Globex", currency="EUR")

    assert refresh_drafts_task() == 2

    assert SpendingAlert.objects.filter(tenant=acme_on_silver, kind="exhausted").exists()
    assert not SpendingAlert.objects.filter(tenant=globex).exists()


def test_a_mail_server_that_is_down_does_not_lose_the_webhook(acme_on_silver, receiver, settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", 9  # nothing listens there
    acme = budgeted(
        acme_on_silver, "100", billing_email="billing@acme.example", alert_webhook_url=receiver.url
    )
    refresh_draft(acme, 2026, 11, now=NOV)
    (alert,) = check_budget(acme, now=NOV)

    delivered = deliver(alert)

    assert delivered.emailed_to == ""  # tried again on the next delivery
    assert delivered.webhook_result == "204"
