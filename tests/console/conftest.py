"""Fixtures of the console's page tests. The people, regions, classes and make_node are in
tests/conftest.py; these add a signed-in operator and heartbeat samples."""

from __future__ import annotations

from datetime import timedelta

import pytest


@pytest.fixture
def operator(client, alice):
    """A test client signed in as alice, the operator."""
    client.force_login(alice)
    return client


@pytest.fixture
def add_samples(db):
    """add_samples(node, start, minutes=10, per_minute=60): a heartbeat every 5 s from
    `start`, the counter growing by `per_minute` requests a minute from `first_total`."""
    from fleet.models import NodeSample

    def add(node, start, *, minutes, per_minute=60, every_s=5, first_total=0):
        rows = [
            NodeSample(
                node=node,
                at=start + timedelta(seconds=step * every_s),
                cpu_load=0.3,
                memory_pressure=0.5,
                temperature_c=50.0,
                queue_depth=0,
                requests_total=first_total + step * per_minute * every_s // 60,
                errors_total=0,
            )
            for step in range(minutes * 60 // every_s + 1)
        ]
        return NodeSample.objects.bulk_create(rows)

    return add
