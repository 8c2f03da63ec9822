"""Usage ingest through the node API: each inference counted exactly once, nothing lost."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from django.db import connection
from django.db.models import Sum
from django.test import Client

from billing.ingest import refresh_rollups
from billing.models import (
    LATENCY_COLUMNS,
    QuarantinedUsage,
    StaleRollup,
    UsageBatch,
    UsageHourly,
    UsageRecord,
)
from billing.tasks import refresh_usage_rollups_task
from inference import protocol

MINUTE = datetime(2026, 11, 30, 10, 17, tzinfo=UTC)


@pytest.fixture
def edge(make_node, eu_west, nano):
    return make_node("fra-nano-1", eu_west, nano)


@pytest.fixture
def tiny_classifier(db):
    from fleet.models import Model, ModelVersion

    return ModelVersion.objects.create(
        model=Model.objects.create(name="tiny-classifier"),
        version=1,
        sha256="ab" * 32,
        size_bytes=1,
        opset=17,
        status="graded",
        grade="tiny",
    )


def record(**overrides) -> dict:
    latency = [0] * protocol.LATENCY_BUCKETS
    latency[4] = overrides.get("count", 30)
    body = {
        "tenant": "acme",
        "model": "tiny-classifier",
        "version": "1",
        "grade": "tiny",
        "served_by": "local",
        "offload_reason": None,
        "minute": MINUTE.isoformat(),
        "count": 30,
        "errors": 1,
        "latency_counts": latency,
        "latency_sum_s": 0.06,
        "energy_j": 1.5,
    }
    body.update(overrides)
    return body


def batch(node, seq: int, records: list[dict]) -> bytes:
    return orjson.dumps(
        {
            "node_uid": node.uid,
            "batch_seq": seq,
            "created_at": MINUTE.isoformat(),
            "records": records,
        }
    )


def upload(client, node, body: bytes, credential: str | None = None):
    return client.post(
        "/api/v1/nodes/usage",
        body,
        content_type="application/json",
        headers={"Authorization": f"Bearer {credential or node.credential}"},
    )


def billed(tenant) -> int:
    return UsageRecord.objects.filter(tenant=tenant).aggregate(n=Sum("count"))["n"] or 0


def test_the_histogram_columns_are_the_protocols_buckets():
    assert len(LATENCY_COLUMNS) == protocol.LATENCY_BUCKETS
    names = {f.name for f in UsageRecord._meta.fields}
    assert set(LATENCY_COLUMNS) <= names
    assert LATENCY_COLUMNS[0] == "le_100us" and LATENCY_COLUMNS[-1] == "le_inf"


def test_it_stores_a_batch_and_its_records_keyed_by_identifiers(
    client, edge, acme, tiny_classifier
):
    response = upload(
        client,
        edge,
        batch(edge, 1, [record(), record(served_by="regional", offload_reason="thermal", count=5)]),
    )

    assert response.status_code == 200
    assert response.json() == {
        "batch_seq": 1,
        "outcome": "stored",
        "accepted": 2,
        "quarantined": 0,
    }
    stored = UsageBatch.objects.get(node_uid=edge.uid, batch_seq=1)
    assert (stored.region, stored.node_class, stored.records_total) == ("eu-west", "nano", 2)
    local = UsageRecord.objects.get(served_by="local")
    assert (local.tenant, local.node_uid, local.region, local.model, local.version) == (
        acme,
        edge.uid,
        "eu-west",
        "tiny-classifier",
        "1",
    )
    assert (local.count, local.errors, local.le_2500us, local.minute) == (30, 1, 30, MINUTE)
    assert UsageRecord.objects.get(served_by="regional").offload_reason == "thermal"
    assert billed(acme) == 35


def test_a_repeated_batch_is_acknowledged_and_not_counted_again(
    client, edge, acme, tiny_classifier
):
    body = batch(edge, 7, [record()])
    upload(client, edge, body)

    again = upload(client, edge, body)

    assert again.status_code == 200
    assert again.json()["outcome"] == "duplicate"
    assert again.json()["accepted"] == 1
    assert billed(acme) == 30
    assert UsageBatch.objects.count() == 1


def test_another_batch_under_a_used_number_is_kept_in_quarantine_not_counted(
    client, edge, acme, tiny_classifier
):
    upload(client, edge, batch(edge, 3, [record()]))

    conflict = upload(
        client, edge, batch(edge, 3, [record(count=99, latency_counts=[99] + [0] * 15)])
    )
    once_more = upload(
        client, edge, batch(edge, 3, [record(count=99, latency_counts=[99] + [0] * 15)])
    )

    assert conflict.json()["outcome"] == once_more.json()["outcome"] == "conflict"
    assert billed(acme) == 30
    kept = QuarantinedUsage.objects.get()
    assert "arrived again with other content" in kept.reason
    assert kept.record["conflicting_batch"]["records"][0]["count"] == 99


def test_bad_records_are_quarantined_with_their_reason_and_the_rest_counted(
    client, edge, acme, tiny_classifier
):
    records = [
        record(),
        record(tenant="nobody"),
        record(version="9"),
        record(
            minute=(datetime.now(UTC) + timedelta(hours=1))
            .replace(second=0, microsecond=0)
            .isoformat()
        ),
        record(minute=MINUTE.replace(second=30).isoformat()),
        record(count=31, latency_counts=record()["latency_counts"]),
        record(count=-1),
        record(served_by="local", offload_reason="thermal"),
        record(served_by="regional", offload_reason=None),
        "not a record",
    ]

    response = upload(client, edge, batch(edge, 1, records))

    assert response.status_code == 200
    assert response.json()["accepted"] == 1
    assert response.json()["quarantined"] == 9
    assert billed(acme) == 30
    reasons = sorted(QuarantinedUsage.objects.values_list("reason", flat=True))
    assert any("unknown tenant 'nobody'" in r for r in reasons)
    assert any("unknown model version tiny-classifier v9" in r for r in reasons)
    assert any("is in the future" in r for r in reasons)
    assert any("is not the start of a minute" in r for r in reasons)
    assert any("histogram holds 30 inferences, the count says 31" in r for r in reasons)
    assert any("malformed record: count" in r for r in reasons)
    assert any("belongs to regional serving only" in r for r in reasons)
    assert any("needs its offload reason" in r for r in reasons)
    assert UsageBatch.objects.get().quarantined == 9
    assert QuarantinedUsage.objects.filter(tenant_slug="nobody").exists()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "not a usage batch"),
        (b'{"node_uid": "x", "batch_seq": 1}', "not a usage batch: created_at: Field required"),
        (
            b'{"node_uid": "x", "batch_seq": 0, "created_at": "2026-11-30T10:00:00Z", "records": []}',
            "batch_seq starts at 1",
        ),
    ],
)
def test_a_body_that_is_not_a_batch_is_refused_with_a_reason_and_nothing_stored(
    client, edge, body, message
):
    body = body.replace(b'"x"', orjson.dumps(edge.uid))
    response = upload(client, edge, body)

    assert response.status_code == 400
    assert message in response.json()["error"]
    assert UsageBatch.objects.count() == 0


def test_a_node_cannot_upload_for_another(client, edge, make_node, eu_west, nano, acme):
    other = make_node("fra-nano-2", eu_west, nano)

    response = upload(client, edge, batch(other, 1, [record()]))

    assert response.status_code == 403, response.json()
    assert other.uid in response.json()["error"]


def test_without_a_node_credential_nothing_is_taken(client, edge):
    response = upload(client, edge, batch(edge, 1, [record()]), credential="opn_wrong")

    assert response.status_code == 401
    assert UsageBatch.objects.count() == 0


def test_rollups_sum_the_records_of_each_hour_and_follow_late_records(
    client, edge, acme, tiny_classifier
):
    upload(
        client,
        edge,
        batch(
            edge,
            1,
            [
                record(),
                record(
                    minute=MINUTE.replace(minute=18).isoformat(),
                    count=10,
                    latency_counts=[10] + [0] * 15,
                ),
            ],
        ),
    )
    assert StaleRollup.objects.count() == 1

    assert refresh_usage_rollups_task() == 1

    hour = MINUTE.replace(minute=0)
    row = UsageHourly.objects.get(tenant=acme, hour=hour)
    assert (row.count, row.errors, row.le_100us, row.le_2500us) == (40, 2, 10, 30)
    assert row.energy_j == pytest.approx(3.0)
    assert StaleRollup.objects.count() == 0

    upload(client, edge, batch(edge, 2, [record(count=5, latency_counts=[5] + [0] * 15)]))
    assert refresh_rollups() == 1
    assert UsageHourly.objects.get(tenant=acme, hour=hour).count == 45


@pytest.mark.django_db(transaction=True)
def test_concurrent_uploads_of_one_batch_count_it_once(edge, acme, tiny_classifier):
    body = batch(
        edge, 1, [record(minute=(MINUTE + timedelta(minutes=i)).isoformat()) for i in range(50)]
    )
    outcomes: list[str] = []
    errors: list[BaseException] = []
    start = threading.Barrier(6)

    def send():
        try:
            start.wait()
            response = upload(Client(), edge, body)
            outcomes.append(response.json()["outcome"])
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=send) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert not errors
    assert sorted(outcomes) == ["duplicate"] * 5 + ["stored"]
    assert billed(acme) == 50 * 30
    assert UsageRecord.objects.count() == 50


def test_a_full_batch_of_long_names_is_taken_whatever_djangos_upload_cap(
    client, edge, acme, tiny_classifier, settings
):
    from fleet.models import Model, ModelVersion

    long_name = "m" * 100
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1_000_000  # a full batch can exceed the cap
    ModelVersion.objects.create(
        model=Model.objects.create(name=long_name), version=1, sha256="cd" * 32, size_bytes=1,
        opset=17, status="graded", grade="tiny",
    )  # fmt: skip
    records = [
        record(
            model=long_name, minute=(MINUTE + timedelta(minutes=i % 50)).isoformat(), version="1"
        )
        for i in range(protocol.USAGE_MAX_RECORDS)
    ]
    body = batch(edge, 1, records)
    assert len(body) > settings.DATA_UPLOAD_MAX_MEMORY_SIZE

    response = upload(client, edge, body)

    assert response.status_code == 200, response.content[:300]
    assert response.json()["accepted"] == protocol.USAGE_MAX_RECORDS


def test_a_body_beyond_the_usage_cap_is_refused_unread(client, edge):
    from fleet.api import USAGE_MAX_BODY_BYTES

    response = upload(client, edge, b" " * (USAGE_MAX_BODY_BYTES + 1))

    assert response.status_code == 413
    assert "at most" in response.json()["error"]
