"""The demo's compliance story (console/demo/compliance_seed.py): once seeded and the demo's
nodes run, the checks find a real violation of each kind the data can hold, and a second
seeding adds nothing."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from billing.models import ApiKey
from console.demo.compliance_seed import seed_compliance
from console.demo.seed import SeedReport, seed
from fleet.actions import enroll_node
from fleet.compliance_actions import run_checks
from fleet.compliance_context import Thresholds
from fleet.models import ComplianceFinding, Deployment, ExportClassification, Node, TenantPolicy
from inference.protocol import EnrollRequest
from tests.fleet.compliance_support import upload_usage

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def fast_passwords(settings, tmp_path):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.OUTPOST_ARTIFACT_DIR = tmp_path / "artifacts"


@pytest.fixture
def seeded(tmp_path):
    report = seed(state_root=tmp_path / "nodes", token_root=tmp_path / "tokens")
    seed_compliance(report)
    return report


def test_it_binds_acme_rolls_its_model_everywhere_classifies_and_ages_a_key(seeded):
    assert TenantPolicy.objects.get(tenant__slug="acme").residency_zone == "EU"
    deployment = Deployment.objects.get(version__model__name="fraud-screen")
    assert deployment.regions.count() == 0  # every region
    assert deployment.version.model.owner.slug == "acme"
    classification = ExportClassification.objects.get(code="DEMO-AI-1")
    assert [r.jurisdiction for r in classification.rules.all()] == ["US"]
    assert [m.name for m in classification.models.all()] == ["random-mlp-medium"]
    key = ApiKey.objects.get(name="legacy ERP export")
    assert timezone.now() - key.created_at > timedelta(days=199)
    assert any("bound acme to residency zone EU" in c for c in seeded.changes)


def test_a_second_seeding_changes_nothing(seeded):
    before = {
        "policies": list(TenantPolicy.objects.values("tenant_id", "revision")),
        "deployments": Deployment.objects.count(),
        "keys": ApiKey.objects.count(),
    }
    again = SeedReport()

    seed_compliance(again)

    assert again.changes == []
    assert before == {
        "policies": list(TenantPolicy.objects.values("tenant_id", "revision")),
        "deployments": Deployment.objects.count(),
        "keys": ApiKey.objects.count(),
    }


def test_the_checks_find_the_seeded_violations_once_the_nodes_run(seeded):
    from fleet.models import ModelVersion

    # The demo's us-east standard node enrolls, loads the medium model and serves acme.
    iad, credential = enroll_node(
        EnrollRequest(
            token=seeded.enrollment["us-east-standard-1"],
            hostname="demo",
            endpoint="http://127.0.0.1:8103",
            agent_version="test",
        )
    )
    iad.credential = credential
    medium = ModelVersion.objects.create(
        model=ExportClassification.objects.get(code="DEMO-AI-1").models.get(),
        version=1,
        sha256="cd" * 32,
        size_bytes=1,
        opset=17,
        status="graded",
        grade="medium",
    )
    Node.objects.filter(pk=iad.pk).update(
        last_heartbeat_at=timezone.now(),
        last_report_healthy=True,
        models_loaded=[
            {"name": "random-mlp-medium", "version": "1", "sha256": medium.sha256, "ready": True}
        ],
    )
    upload_usage(
        iad, "acme", count=9, minute=(timezone.now() - timedelta(minutes=10)).replace(second=0, microsecond=0),
        model="random-mlp-medium",
    )  # fmt: skip

    run_checks(trigger="command", thresholds=Thresholds())

    found = {(f.check_id, f.subject) for f in ComplianceFinding.objects.open()}
    assert ("residency.deployments", "acme.fraud-screen in us-east") in found
    assert ("residency.traffic", "acme served in us-east") in found
    assert ("export.loaded", "random-mlp-medium on us-east-standard-1") in found
    assert any(check == "keys.api_keys" and "legacy ERP export" in s for check, s in found)
