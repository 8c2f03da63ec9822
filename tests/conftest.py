"""Fixtures shared by every app's tests. Data is built in plain sight: named users
(alice the operator, bob from finance, carol a tenant member), two regions, three classes."""

from __future__ import annotations

import os
import shutil
from datetime import timedelta
from decimal import Decimal
from typing import NoReturn

import pytest


def missing_locally(message: str, *, ci_hint: str) -> NoReturn:
    """What a test does when a tool or file CI installs is missing: in CI it fails (CI must
    never skip what it is meant to check); on a developer's machine it is skipped, saying why."""
    if os.environ.get("CI"):
        pytest.fail(f"{message}; {ci_hint}")
    pytest.skip(f"{message} (CI has it: {ci_hint})")


def require_binary(name: str) -> str:
    """Path of a tool a test needs. CI installs them (.ci/run) and must fail, not skip,
    when one is missing; on a developer's machine the test is skipped with the reason."""
    path = shutil.which(name)
    if path:
        return path
    missing_locally(f"{name} is not installed", ci_hint=".ci/run installs it")


@pytest.fixture
def alice(django_user_model):
    return django_user_model.objects.create_user(
        "alice", "alice@provider.example", "alice-password", is_staff=True
    )


@pytest.fixture
def bob(django_user_model):
    from django.contrib.auth.models import Group

    from billing.roles import FINANCE_GROUP

    user = django_user_model.objects.create_user("bob", "bob@provider.example", "bob-password")
    user.groups.add(Group.objects.get_or_create(name=FINANCE_GROUP)[0])
    return user


@pytest.fixture
def dave(django_user_model):
    """An auditor: reads compliance findings and the audit log, changes nothing."""
    from django.contrib.auth.models import Group

    from billing.roles import AUDITOR_GROUP

    user = django_user_model.objects.create_user("dave", "dave@provider.example", "dave-password")
    user.groups.add(Group.objects.get_or_create(name=AUDITOR_GROUP)[0])
    return user


@pytest.fixture
def acme(db):
    from billing.models import Tenant

    return Tenant.objects.create(slug="acme", name="Acme Analytics", time_zone="Europe/Berlin")


@pytest.fixture
def carol(django_user_model, acme):
    from billing.models import Membership

    user = django_user_model.objects.create_user("carol", "carol@acme.example", "carol-password")
    Membership.objects.create(user=user, tenant=acme, role="owner")
    return user


@pytest.fixture
def eu_west(db):
    from fleet.models import Region

    return Region.objects.create(
        code="eu-west", name="Frankfurt", jurisdiction="DE", residency_zone="EU"
    )


@pytest.fixture
def us_east(db):
    from fleet.models import Region

    return Region.objects.create(
        code="us-east", name="Virginia", jurisdiction="US", residency_zone="US"
    )


@pytest.fixture
def nano(db):
    from fleet.models import NodeClass

    return NodeClass.objects.create(
        name="nano",
        capex=Decimal("600"),
        amortisation_months=36,
        idle_watts=Decimal("7"),
        peak_watts=Decimal("25"),
        energy_price_per_kwh=Decimal("0.30"),
        expected_utilisation=Decimal("0.4"),
        memory_bytes=8 * 2**30,
    )


@pytest.fixture
def standard(db):
    from fleet.models import NodeClass

    return NodeClass.objects.create(
        name="standard",
        capex=Decimal("4500"),
        amortisation_months=48,
        idle_watts=Decimal("90"),
        peak_watts=Decimal("350"),
        energy_price_per_kwh=Decimal("0.30"),
        expected_utilisation=Decimal("0.5"),
        memory_bytes=128 * 2**30,
    )


@pytest.fixture
def accelerator(db):
    from fleet.models import NodeClass

    return NodeClass.objects.create(
        name="accelerator",
        capex=Decimal("32000"),
        amortisation_months=36,
        idle_watts=Decimal("250"),
        peak_watts=Decimal("1100"),
        energy_price_per_kwh=Decimal("0.30"),
        expected_utilisation=Decimal("0.6"),
        memory_bytes=512 * 2**30,
        has_gpu=True,
    )


@pytest.fixture
def make_node(db):
    """make_node("edge-1", region, node_class) → an enrolled Node (credential in `.credential`)."""
    from fleet.models import Node

    counter = iter(range(1, 10_000))

    def make(name, region, node_class, **fields):
        credential, credential_hash = Node.new_credential()
        fields.setdefault("endpoint", f"http://127.0.0.1:9/{name}")
        node = Node.objects.create(
            uid=f"nd-test{next(counter):04d}",
            name=name,
            region=region,
            node_class=node_class,
            credential_hash=credential_hash,
            **fields,
        )
        node.credential = credential
        return node

    return make


@pytest.fixture
def operator(client, alice):
    """A test client signed in as alice, the operator."""
    client.force_login(alice)
    return client


@pytest.fixture
def add_samples(db):
    """add_samples(node, start, minutes=10, per_minute=60): a heartbeat every `every_s` seconds
    from `start`, the request counter growing by `per_minute` a minute from `first_total`;
    CPU load cycles through 0.25, 0.35, 0.45, 0.55, temperature is 55 °C."""
    from fleet.models import NodeSample

    def add(node, start, *, minutes, per_minute=60, every_s=5, first_total=0):
        rows = [
            NodeSample(
                node=node,
                at=start + timedelta(seconds=step * every_s),
                cpu_load=0.25 + (step % 4) / 10,
                memory_pressure=0.5,
                temperature_c=55.0,
                queue_depth=1,
                requests_total=first_total + step * per_minute * every_s // 60,
                errors_total=0,
            )
            for step in range(minutes * 60 // every_s + 1)
        ]
        return NodeSample.objects.bulk_create(rows)

    return add
