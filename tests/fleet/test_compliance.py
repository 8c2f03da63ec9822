"""Each compliance check, with a case it passes and one it fails, on data built in the test
and the checks run as a real run (fleet.compliance_actions.run_checks) at a fixed time."""

from __future__ import annotations

from datetime import timedelta

import pytest

from billing.models import ApiKey
from fleet.models import ExportClassification, ExportRule, Node, Region
from fleet.policies import set_accelerator_pool, update_policy
from fleet.policy_plane import publish_bundle
from tests.fleet.compliance_support import (
    NOW,
    deploy,
    found,
    model_version,
    reporting,
    upload_usage,
)


def bind(tenant, zone: str, **more) -> None:
    update_policy(tenant, {"residency_zone": zone, **more}, actor=None, actor_kind="operator")


@pytest.fixture
def eu_north(db):
    return Region.objects.create(
        code="eu-north", name="Stockholm", jurisdiction="SE", residency_zone="EU"
    )


# --- data residency: routes --------------------------------------------------------------------


@pytest.fixture
def leaky_pools(eu_west, us_east, accelerator, make_node):
    """eu-west's pool is empty and falls back to us-east's: an unbound tenant of eu-west is
    offloaded to Virginia."""
    iad = make_node("iad-gpu-1", us_east, accelerator)
    set_accelerator_pool(us_east, name="Virginia", nodes=[iad], actor=None)
    set_accelerator_pool(eu_west, name="Frankfurt", nodes=[], fallback=us_east, actor=None)
    return iad


def test_routes_pass_when_the_bundle_was_compiled_with_the_binding(
    acme, leaky_pools, make_node, eu_west, nano
):
    bind(acme, "EU")
    record = publish_bundle(["bound"], now=NOW)
    reporting(make_node("fra-nano-1", eu_west, nano), revision=record.revision)

    assert found("residency.routes") == []


def test_a_route_of_a_bundle_compiled_before_the_binding_is_found(
    acme, leaky_pools, make_node, eu_west, nano
):
    old = publish_bundle(["before the binding"], now=NOW - timedelta(hours=1))
    fra = reporting(make_node("fra-nano-1", eu_west, nano), revision=old.revision)
    bind(acme, "EU")  # not compiled yet

    # From eu-west on to Virginia, and within Virginia (a request that arrived there).
    finding, within_us = found("residency.routes")
    assert within_us.subject == "acme: us-east → pool us-east"

    assert finding.subject == "acme: eu-west → pool us-east"
    assert finding.severity == "critical"
    assert (finding.tenant, finding.region) == (acme, "eu-west")
    assert finding.message == (
        f"Bundle r{old.revision} routes acme's requests from eu-west to the us-east pool, in "
        "zone US; acme is bound to zone EU."
    )
    assert "Publish a new bundle" in finding.fix

    # The newest bundle cuts the route, but the node still enforces the old one.
    new = publish_bundle(["bound"], now=NOW)
    still, _ = found("residency.routes")
    assert still.pk == finding.pk
    assert still.details["revisions"] == [old.revision]

    reporting(fra, revision=new.revision)
    assert found("residency.routes") == []


# --- data residency: pools ---------------------------------------------------------------------


def test_a_pool_member_moved_to_another_zone_is_found(
    acme, eu_west, us_east, accelerator, make_node
):
    fra = make_node("fra-gpu-1", eu_west, accelerator)
    set_accelerator_pool(eu_west, name="Frankfurt", nodes=[fra], actor=None)
    bind(acme, "EU")
    publish_bundle(["pool"], now=NOW)

    assert found("residency.pools") == []

    # Re-homed in the admin: the bundle nodes enforce still sends acme's requests to it.
    Node.objects.filter(pk=fra.pk).update(region=us_east)
    [finding] = found("residency.pools")

    assert finding.subject == "acme: pool eu-west → fra-gpu-1"
    assert "fra-gpu-1, which is in us-east (zone US)" in finding.message
    assert finding.details["node"] == fra.uid


# --- data residency: deployments ---------------------------------------------------------------


def test_a_bound_tenants_model_deployed_into_another_zone_is_found(acme, eu_west, us_east, nano):
    bind(acme, "EU")
    version = model_version("churn", owner=acme)
    deployment = deploy(version, regions=[eu_west, us_east])

    [finding] = found("residency.deployments")

    assert finding.subject == "acme.churn in us-east"
    assert finding.severity == "high"
    assert finding.message == (
        f"Deployment #{deployment.pk} (v1) puts acme's model acme.churn on the nodes of "
        "us-east, in zone US; acme is bound to zone EU."
    )
    assert f"Roll back deployment #{deployment.pk}" in finding.fix


def test_a_deployment_within_the_zone_passes_and_an_empty_selector_means_every_region(
    acme, eu_west, us_east, eu_north, nano
):
    bind(acme, "EU")
    deploy(model_version("churn", owner=acme), regions=[eu_west, eu_north])
    assert found("residency.deployments") == []

    deploy(model_version("fraud", owner=acme))  # every region
    assert [f.subject for f in found("residency.deployments")] == ["acme.fraud in us-east"]


def test_a_later_deployment_decides_and_a_rolled_back_first_one_serves_nothing(
    acme, eu_west, us_east, nano
):
    bind(acme, "EU")
    v1 = model_version("churn", owner=acme)
    deploy(v1, regions=[us_east], state="rolled_back")  # a first deployment, rolled back
    assert found("residency.deployments") == []

    v2 = model_version("churn", owner=acme, version=2)
    # A canary at 5 %: both versions serve.
    later = deploy(v2, regions=[us_east], state="rolling", previous=v1, steps=(5, 100))
    later.created_at = NOW
    later.save(update_fields=["created_at"])
    [finding] = found("residency.deployments")
    assert finding.message.startswith(f"Deployment #{later.pk} (v2, v1) puts")


def test_an_unbound_tenants_and_the_catalogues_models_go_anywhere(acme, eu_west, us_east, nano):
    deploy(model_version("churn", owner=acme), regions=[us_east])
    deploy(model_version("tiny-classifier"), regions=[us_east])

    assert found("residency.deployments") == []


# --- data residency: traffic -------------------------------------------------------------------


@pytest.fixture
def nodes_both_sides(eu_west, us_east, nano, make_node):
    model_version("tiny-classifier")
    return make_node("fra-nano-1", eu_west, nano), make_node("iad-nano-1", us_east, nano)


def test_a_bound_tenant_served_in_its_zone_passes(acme, nodes_both_sides):
    fra, iad = nodes_both_sides
    bind(acme, "EU")
    upload_usage(fra, "acme", count=40, minute=NOW - timedelta(hours=2), model="tiny-classifier")
    # Served in Virginia two days ago: outside the window.
    upload_usage(iad, "acme", count=7, minute=NOW - timedelta(days=2), model="tiny-classifier")

    assert found("residency.traffic") == []


def test_a_bound_tenant_served_outside_its_zone_is_found(acme, nodes_both_sides):
    fra, iad = nodes_both_sides
    bind(acme, "EU")
    upload_usage(fra, "acme", count=40, minute=NOW - timedelta(hours=2), model="tiny-classifier")
    upload_usage(iad, "acme", count=7, minute=NOW - timedelta(hours=3), model="tiny-classifier")
    upload_usage(iad, "acme", count=5, minute=NOW - timedelta(hours=1), model="tiny-classifier")

    [finding] = found("residency.traffic")

    assert finding.subject == "acme served in us-east"
    assert finding.message == (
        "12 of acme's inferences were served in us-east (zone US) in the last 24 hours, by "
        "iad-nano-1; acme is bound to zone EU."
    )
    assert finding.details["inferences"] == {iad.uid: 12}


# --- tokenisation ------------------------------------------------------------------------------


def test_declared_fields_the_newest_bundle_carries_pass(acme, eu_west):
    update_policy(acme, {"sensitive_fields": ["email"]}, actor=None, actor_kind="operator")
    publish_bundle(["fields"], now=NOW)

    assert found("tokenisation.bundle") == []


def test_declared_fields_the_newest_bundle_lacks_are_found(acme, eu_west):
    assert found("tokenisation.bundle") == []  # nothing declared: nothing to carry
    update_policy(acme, {"sensitive_fields": ["email"]}, actor=None, actor_kind="operator")

    [none_yet] = found("tokenisation.bundle")
    assert "no policy bundle has been published" in none_yet.message

    record = publish_bundle(["fields"], now=NOW)
    update_policy(acme, {"sensitive_fields": ["email", "iban"]}, actor=None, actor_kind="operator")
    [finding] = found("tokenisation.bundle")
    assert finding.pk == none_yet.pk  # the same violation, still open
    assert finding.message == (
        f"acme declared email, iban sensitive, but bundle r{record.revision} does not carry "
        "iban: nodes do not tokenise them."
    )


def test_a_node_that_served_the_tenant_and_tokenises_for_it_passes(acme, nodes_both_sides):
    fra, _ = nodes_both_sides
    update_policy(acme, {"sensitive_fields": ["email"]}, actor=None, actor_kind="operator")
    reporting(fra, tokenisation_active=True, tokenised_tenants=["acme"])
    upload_usage(fra, "acme", count=3, minute=NOW - timedelta(hours=1), model="tiny-classifier")

    assert found("tokenisation.nodes") == []


def test_nodes_that_served_the_tenant_without_tokenising_for_it_are_found(acme, nodes_both_sides):
    fra, iad = nodes_both_sides
    update_policy(acme, {"sensitive_fields": ["email"]}, actor=None, actor_kind="operator")
    reporting(fra, tokenisation_active=False)
    reporting(iad, tokenisation_active=True, tokenised_tenants=["globex"])
    for node in (fra, iad):
        upload_usage(
            node, "acme", count=3, minute=NOW - timedelta(hours=1), model="tiny-classifier"
        )

    keyless, behind = found("tokenisation.nodes")

    assert keyless.subject == "fra-nano-1 for acme"
    assert keyless.message == (
        "fra-nano-1 served acme, which declared email sensitive, but reports no tokenisation key."
    )
    assert "tokenise.key" in keyless.fix
    assert behind.subject == "iad-nano-1 for acme"
    assert behind.message.endswith("but does not report tokenising acme's fields.")
    assert (behind.tenant, behind.region) == (acme, "us-east")


# --- export controls ---------------------------------------------------------------------------


@pytest.fixture
def restricted(db):
    classification = ExportClassification.objects.create(code="5D002", name="Encryption software")
    ExportRule.objects.create(classification=classification, jurisdiction="US", note="EAR")
    ExportRule.objects.create(classification=classification, jurisdiction="CN-SH")
    return classification


def test_a_classified_model_deployed_where_no_rule_forbids_it_passes(
    restricted, eu_west, us_east, nano
):
    deploy(model_version("cipher", classification=restricted), regions=[eu_west])
    shanghai_rules_only = Region.objects.create(
        code="cn-north", name="Beijing", jurisdiction="CN-BJ", residency_zone="CN"
    )
    deploy(model_version("other", classification=restricted), regions=[shanghai_rules_only])

    assert found("export.deployments") == []


def test_a_classified_model_deployed_where_a_rule_forbids_it_is_found(restricted, eu_west, nano):
    california = Region.objects.create(
        code="us-west", name="San Jose", jurisdiction="US-CA", residency_zone="US"
    )
    deployment = deploy(model_version("cipher", classification=restricted))  # every region

    [finding] = found("export.deployments")

    assert finding.subject == "cipher in us-west"
    assert finding.severity == "critical"
    assert finding.region == california.code
    assert finding.message == (
        f"Deployment #{deployment.pk} (v1) puts cipher, classified 5D002 (Encryption software), "
        "on the nodes of us-west (jurisdiction US-CA), where its rules forbid it: US (EAR)."
    )


def test_a_node_reporting_a_forbidden_model_loaded_is_found(
    restricted, eu_west, us_east, nano, make_node
):
    model_version("cipher", classification=restricted)
    loaded = [{"name": "cipher", "version": "1", "sha256": "0" * 64, "ready": True}]
    reporting(make_node("fra-nano-1", eu_west, nano), models_loaded=loaded)
    assert found("export.loaded") == []

    iad = reporting(make_node("iad-nano-1", us_east, nano), models_loaded=loaded)
    [finding] = found("export.loaded")

    assert finding.subject == "cipher on iad-nano-1"
    assert finding.message == (
        "iad-nano-1, in us-east (jurisdiction US), reports cipher v1 loaded, classified 5D002 "
        "(Encryption software), which its rules forbid there: US (EAR)."
    )
    assert finding.details["node"] == iad.uid


# --- stale policy ------------------------------------------------------------------------------


def test_nodes_on_the_newest_bundle_or_just_behind_pass(acme, eu_west, nano, make_node):
    first = publish_bundle(["first"], now=NOW - timedelta(hours=2))
    update_policy(acme, {"quality": "high"}, actor=None, actor_kind="operator")
    newest = publish_bundle(["second"], now=NOW - timedelta(minutes=5))
    reporting(make_node("fra-nano-1", eu_west, nano), revision=newest.revision)
    reporting(make_node("fra-nano-2", eu_west, nano), revision=first.revision)  # 5 min behind

    assert found("policy.stale", policy_max_staleness_s=600) == []


def test_nodes_behind_for_longer_than_allowed_are_found(acme, eu_west, nano, make_node):
    first = publish_bundle(["first"], now=NOW - timedelta(hours=2))
    update_policy(acme, {"quality": "high"}, actor=None, actor_kind="operator")
    newest = publish_bundle(["second"], now=NOW - timedelta(minutes=30))
    enrolled = NOW - timedelta(days=1)
    behind = reporting(
        make_node("fra-nano-1", eu_west, nano, enrolled_at=enrolled),
        revision=first.revision,
        bundle_problem="the bundle is signed by a key this node does not trust",
    )
    reporting(make_node("fra-nano-2", eu_west, nano, enrolled_at=enrolled), revision=None)
    # Enrolled a minute ago: it cannot have been behind for longer.
    reporting(make_node("fra-nano-3", eu_west, nano, enrolled_at=NOW - timedelta(minutes=1)))
    offline = make_node("fra-nano-4", eu_west, nano, enrolled_at=enrolled)  # never heartbeated
    assert offline.last_heartbeat_at is None

    stale = found("policy.stale", policy_max_staleness_s=600)

    assert [f.subject for f in stale] == ["fra-nano-1", "fra-nano-2"]
    assert stale[0].message == (
        f"fra-nano-1 enforces bundle r{first.revision}, not the newest r{newest.revision}, and "
        "has for 30 min (allowed 10 min). It says: the bundle is signed by a key this node "
        "does not trust"
    )
    assert stale[0].details["behind_since"] == (NOW - timedelta(minutes=30)).isoformat()
    assert stale[1].message.startswith(
        f"fra-nano-2 enforces no bundle, not the newest r{newest.revision}"
    )
    assert behind.uid in stale[0].subject_key


# --- keys --------------------------------------------------------------------------------------


def test_api_keys_within_the_rotation_period_or_revoked_pass(acme):
    recent, _ = ApiKey.issue(acme, "recent")
    ApiKey.objects.filter(pk=recent.pk).update(created_at=NOW - timedelta(days=30))
    old, _ = ApiKey.issue(acme, "old but revoked")
    ApiKey.objects.filter(pk=old.pk).update(
        created_at=NOW - timedelta(days=200), revoked_at=NOW - timedelta(days=1)
    )

    assert found("keys.api_keys", api_key_rotation_days=90) == []


def test_api_keys_older_than_the_rotation_period_are_found(acme):
    key, _ = ApiKey.issue(acme, "billing export")
    ApiKey.objects.filter(pk=key.pk).update(created_at=NOW - timedelta(days=120))

    [finding] = found("keys.api_keys", api_key_rotation_days=90)

    assert finding.subject == f"acme key {key.prefix}… (billing export)"
    assert finding.severity == "medium"
    assert finding.tenant == acme
    assert finding.message == (
        f"acme's API key {key.prefix}… “billing export” is 120 days old and not revoked; keys "
        "are rotated every 90 days."
    )


def test_node_credentials_rotated_lately_pass(eu_west, nano, make_node):
    make_node("fra-nano-1", eu_west, nano, enrolled_at=NOW - timedelta(days=10))
    make_node(
        "fra-nano-2",
        eu_west,
        nano,
        enrolled_at=NOW - timedelta(days=400),
        credential_rotated_at=NOW - timedelta(days=20),
    )

    assert found("keys.node_credentials", node_credential_rotation_days=90) == []


def test_node_credentials_never_or_long_ago_rotated_are_found(eu_west, nano, make_node):
    make_node("fra-nano-1", eu_west, nano, enrolled_at=NOW - timedelta(days=100))
    make_node(
        "fra-nano-2",
        eu_west,
        nano,
        enrolled_at=NOW - timedelta(days=400),
        credential_rotated_at=NOW - timedelta(days=95),
    )

    never, long_ago = found("keys.node_credentials", node_credential_rotation_days=90)

    assert never.message == (
        "fra-nano-1's credential has never been rotated since it enrolled 100 days ago; "
        "credentials are rotated every 90 days."
    )
    assert long_ago.message.startswith("fra-nano-2's credential was last rotated 95 days ago")
    assert "Rotate credential" in never.fix


# --- transport ---------------------------------------------------------------------------------


def test_endpoints_pass_with_tls_or_when_the_console_does_not_require_it(eu_west, nano, make_node):
    make_node("fra-nano-1", eu_west, nano)  # http://127.0.0.1:9/…
    assert found("transport.node_tls", require_node_tls=False) == []

    Node.objects.update(endpoint="https://fra-nano-1.example:8001")
    assert found("transport.node_tls", require_node_tls=True) == []


def test_endpoints_without_tls_are_found_when_the_console_requires_it(eu_west, nano, make_node):
    make_node("fra-nano-1", eu_west, nano)

    [finding] = found("transport.node_tls", require_node_tls=True)

    assert finding.subject == "fra-nano-1"
    assert finding.severity == "high"
    assert finding.message == (
        "fra-nano-1 serves at http://127.0.0.1:9/fra-nano-1, without TLS: requests, tokens and "
        "the bundles pushed to it travel in clear."
    )


def test_tls_is_required_by_default_in_production(settings, eu_west, nano, make_node):
    from fleet.compliance_actions import run_checks
    from fleet.models import ComplianceFinding

    make_node("fra-nano-1", eu_west, nano)
    settings.OUTPOST_REQUIRE_NODE_TLS = True  # what `not DEBUG` gives in production
    run_checks(trigger="command", now=NOW)

    assert ComplianceFinding.objects.open().filter(check_id="transport.node_tls").count() == 1
