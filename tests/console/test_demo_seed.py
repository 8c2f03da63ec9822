"""The demo's seed data: what `make run` promises exists, and a second run changes nothing."""

from __future__ import annotations

import stat
from datetime import timedelta
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management import call_command
from django.utils import timezone

from billing.models import Membership, Tenant
from billing.roles import is_finance, is_operator
from console.demo.seed import LOGINS, class_serves, demo_nodes, seed
from fleet.actions import enroll_node
from fleet.models import EnrollmentToken, Node, NodeClass, Region
from inference.agent import save_identity
from inference.protocol import EnrollRequest, EnrollResponse

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def fast_passwords(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def demo_dirs(tmp_path):
    return {"state_root": tmp_path / "nodes", "token_root": tmp_path / "tokens"}


def snapshot() -> dict[str, list]:
    """Every row seeding touches, as plain values (password hashes included)."""
    models = [get_user_model(), Group, Membership, Tenant, Region, NodeClass, EnrollmentToken, Node]
    return {m.__name__: sorted(map(repr, m.objects.values())) for m in models}


def enroll_like_an_agent(name: str, secret: str, state_root) -> Node:
    """What the agent does with its token: enroll, then keep the identity in its state dir."""
    node, credential = enroll_node(
        EnrollRequest(
            token=secret, hostname="demo", endpoint="http://127.0.0.1:8101", agent_version="test"
        )
    )
    save_identity(
        state_root / name,
        EnrollResponse(
            node_uid=node.uid,
            name=node.name,
            region=node.region.code,
            node_class=node.node_class.name,
            credential=credential,
            console_public_key="A" * 44,
            heartbeat_interval_s=5,
        ),
    )
    return node


def test_a_second_run_changes_nothing(demo_dirs):
    first = seed(**demo_dirs)
    before = snapshot()

    second = seed(**demo_dirs)

    assert first.changes
    assert second.changes == []
    assert snapshot() == before
    assert second.enrollment == first.enrollment


def test_seed_demo_twice_changes_nothing(settings, tmp_path, capsys):
    settings.VAR_DIR = tmp_path
    call_command("seed_demo")
    before = snapshot()

    call_command("seed_demo")

    assert snapshot() == before
    assert "nothing changed" in capsys.readouterr().out


def test_the_printed_logins_work_with_their_roles(demo_dirs, client):
    seed(**demo_dirs)
    User = get_user_model()

    for login in LOGINS:
        assert client.login(username=login.username, password=login.password), login.username
    operator = User.objects.get(username="operator")
    assert is_operator(operator) and operator.is_superuser
    finance = User.objects.get(username="finance")
    assert is_finance(finance) and not is_operator(finance)
    owner = User.objects.get(username="acme")
    assert not is_operator(owner) and not is_finance(owner)
    assert list(owner.memberships.values_list("tenant__slug", "role")) == [("acme", "owner")]


def test_a_demo_login_changed_since_is_put_back(demo_dirs, client):
    seed(**demo_dirs)
    operator = get_user_model().objects.get(username="operator")
    operator.set_password("something-else")
    operator.is_staff = False
    operator.save()

    report = seed(**demo_dirs)

    assert report.changes == ["restored login operator: is_staff, password"]
    assert client.login(username="operator", password="operator")


def test_it_creates_two_regions_in_two_residency_zones(demo_dirs):
    seed(**demo_dirs)

    regions = {r.code: r for r in Region.objects.all()}
    assert set(regions) == {"eu-west", "us-east"}
    assert regions["eu-west"].residency_zone == "EU"
    assert regions["us-east"].residency_zone == "US"
    for region in regions.values():
        region.full_clean()


def test_node_classes_have_positive_and_plausible_costs(demo_dirs):
    seed(**demo_dirs)

    classes = {c.name: c for c in NodeClass.objects.all()}
    assert set(classes) == {"nano", "standard", "accelerator"}
    for node_class in classes.values():
        node_class.full_clean()
        assert node_class.capex > 0
        assert node_class.amortisation_months >= 12
        assert 0 < node_class.idle_watts < node_class.peak_watts
        assert node_class.energy_price_per_kwh > 0
        assert 0 < node_class.expected_utilisation <= 1
        assert node_class.memory_bytes > 0
        assert node_class.hourly_cost > 0
    assert [c.has_gpu for c in classes.values()] == [False, False, True]
    assert classes["nano"].monthly_cost < classes["standard"].monthly_cost
    assert classes["standard"].monthly_cost < classes["accelerator"].monthly_cost


def test_it_keeps_costs_an_operator_changed(demo_dirs):
    seed(**demo_dirs)
    NodeClass.objects.filter(name="nano").update(capex=Decimal("999.00"))

    seed(**demo_dirs)

    assert NodeClass.objects.get(name="nano").capex == Decimal("999.00")


def test_it_creates_the_demo_tenants(demo_dirs):
    seed(**demo_dirs)

    tenants = {t.slug: t for t in Tenant.objects.all()}
    assert {"acme", "globex"} <= set(tenants)
    assert len({t.currency for t in tenants.values()}) > 1
    for tenant in tenants.values():
        tenant.full_clean()


def test_it_issues_one_token_per_node_and_keeps_it_for_the_next_run(demo_dirs):
    report = seed(node_count=4, **demo_dirs)

    assert set(report.enrollment) == {n.name for n in demo_nodes(4)}
    assert all(report.enrollment.values())
    assert EnrollmentToken.objects.usable().count() == 4
    token_file = demo_dirs["token_root"] / "eu-west-nano-1.token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert token_file.read_text().strip() == report.enrollment["eu-west-nano-1"]

    assert seed(node_count=4, **demo_dirs).enrollment == report.enrollment
    assert EnrollmentToken.objects.count() == 4


def test_an_enrolled_node_gets_no_new_token(demo_dirs):
    report = seed(node_count=2, **demo_dirs)
    enroll_like_an_agent(
        "eu-west-nano-1", report.enrollment["eu-west-nano-1"], demo_dirs["state_root"]
    )

    again = seed(node_count=2, **demo_dirs)

    assert again.enrollment["eu-west-nano-1"] is None
    assert again.enrollment["eu-west-accelerator-1"] == report.enrollment["eu-west-accelerator-1"]
    assert again.changes == []
    assert EnrollmentToken.objects.count() == 2
    assert not (demo_dirs["token_root"] / "eu-west-nano-1.token").exists()


def test_an_expired_token_is_replaced(demo_dirs):
    report = seed(node_count=1, **demo_dirs)
    EnrollmentToken.objects.update(expires_at=timezone.now() - timedelta(minutes=1))

    again = seed(node_count=1, **demo_dirs)

    assert again.enrollment["eu-west-nano-1"] not in (None, report.enrollment["eu-west-nano-1"])
    assert EnrollmentToken.objects.usable().count() == 1


def test_a_node_whose_agent_lost_its_state_enrolls_afresh(demo_dirs):
    report = seed(node_count=1, **demo_dirs)
    old = enroll_like_an_agent(
        "eu-west-nano-1", report.enrollment["eu-west-nano-1"], demo_dirs["state_root"]
    )
    (demo_dirs["state_root"] / "eu-west-nano-1" / "identity.json").unlink()

    again = seed(node_count=1, **demo_dirs)

    assert not Node.objects.filter(pk=old.pk).exists()
    assert again.enrollment["eu-west-nano-1"]
    assert EnrollmentToken.objects.usable().count() == 1


def test_an_agent_identity_the_database_does_not_know_is_cleared(demo_dirs):
    report = seed(node_count=1, **demo_dirs)
    enroll_like_an_agent(
        "eu-west-nano-1", report.enrollment["eu-west-nano-1"], demo_dirs["state_root"]
    )
    Node.objects.all().delete()  # as if the database had been reset

    again = seed(node_count=1, **demo_dirs)

    assert not (demo_dirs["state_root"] / "eu-west-nano-1").exists()
    assert again.enrollment["eu-west-nano-1"]


def test_the_demo_fleet_spans_two_regions_with_mixed_classes():
    nodes = demo_nodes(4)

    assert [n.port for n in nodes] == [8101, 8102, 8103, 8104]
    by_region: dict[str, set[str]] = {}
    for node in nodes:
        by_region.setdefault(node.region, set()).add(node.node_class)
    assert {r: len(c) for r, c in by_region.items()} == {"eu-west": 2, "us-east": 2}
    assert len({n.node_class for n in nodes}) == 3
    many = demo_nodes(13)
    assert len({n.name for n in many}) == 13
    assert len({n.port for n in many}) == 13


def test_each_class_serves_the_grades_it_can():
    assert class_serves("nano", "tiny-classifier")
    assert not class_serves("nano", "random-mlp-medium")
    assert class_serves("standard", "random-mlp-medium")
    assert not class_serves("standard", "random-convnet-large")
    assert class_serves("accelerator", "random-convnet-large")
    assert class_serves("nano", "my-own-model")


def test_the_demo_models_go_into_the_catalogue_once(db, tmp_path, settings):
    from console.demo.seed import SeedReport, register_demo_models
    from fleet.models import ModelVersion
    from inference.demo_models import write_demo_models

    settings.OUTPOST_ARTIFACT_DIR = tmp_path / "artifacts"
    write_demo_models(tmp_path / "models")

    first, second = SeedReport(), SeedReport()
    register_demo_models(tmp_path / "models", first)
    register_demo_models(tmp_path / "models", second)

    assert len(first.changes) == 3 and second.changes == []
    assert sorted(ModelVersion.objects.values_list("model__name", flat=True)) == [
        "random-convnet-large",
        "random-mlp-medium",
        "tiny-classifier",
    ]
    assert not ModelVersion.objects.filter(model__owner__isnull=False).exists()


def test_every_demo_tenant_is_on_a_band_and_its_month_can_be_invoiced(demo_dirs):
    from billing.invoicing import month_of, refresh_draft
    from billing.models import Subscription, UsageBatch, UsageRecord

    seed(**demo_dirs)
    now = timezone.now()
    batch = UsageBatch.objects.create(
        node_uid="nd-demo", batch_seq=1, region="eu-west", node_class="nano",
        created_at=now, digest="x", raw=b"",
    )  # fmt: skip
    for tenant in Tenant.objects.all():
        assert Subscription.objects.current().filter(tenant=tenant).exists()
        for grade in ("tiny", "medium", "large"):
            for served_by, reason in (("local", ""), ("regional", "capacity")):
                UsageRecord.objects.create(
                    batch=batch, tenant=tenant, node_uid="nd-demo", region="eu-west",
                    node_class="nano", model="m", version="1", grade=grade, served_by=served_by,
                    offload_reason=reason, minute=now.replace(second=0, microsecond=0),
                    received_at=now, count=10_000, le_10ms=10_000,
                )  # fmt: skip

        draft = refresh_draft(tenant, *month_of(tenant, now), now=now)

        assert draft.band and draft.total > 0
        assert draft.lines.filter(kind="quality_credit").count() == 3


def test_the_demo_has_last_month_to_close_with_an_sla_credit_for_globex(demo_dirs):
    from billing.closing import close_rows
    from billing.invoicing import month_of, previous_month
    from billing.models import Invoice

    seed(**demo_dirs)
    seed(**demo_dirs)  # a second run writes no more history

    drafts = {i.tenant.slug: i for i in Invoice.objects.select_related("tenant")}
    assert set(drafts) == {"acme", "globex", "nakamura"}
    globex = drafts["globex"]
    assert (globex.year, globex.month) == previous_month(*month_of(globex.tenant, timezone.now()))
    assert globex.p95_ms == 50.0 and globex.lines.filter(kind="sla_credit").exists()
    assert drafts["acme"].lines.filter(kind="quality_credit").exists()
    assert not drafts["acme"].lines.filter(kind="sla_credit").exists()
    rows = close_rows(globex.year, globex.month)
    assert len(rows) == 3
