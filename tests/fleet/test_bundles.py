"""The policy bundle compiler (fleet/bundles.py): routes cut to each tenant's privacy and
residency, every broken rule refused with its reason, and a readable diff between revisions."""

from datetime import UTC, datetime, timedelta

import pytest

from fleet.bundles import (
    CompileError,
    Inputs,
    PoolMember,
    RegionSpec,
    check_bundle,
    compile_bundle,
    diff_bundles,
)
from inference.protocol import ClassThresholds, PriceRow, Route, TenantRules

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def tenant(slug, privacy="any", fallback="regional", zone=None, **fields):
    return TenantRules(
        slug=slug,
        privacy=privacy,
        fallback=fallback,
        quality="best_effort",
        currency="EUR",
        on_budget_exhausted="alert",
        residency_zone=zone,
        **fields,
    )


def pool(region, *uids):
    return tuple(PoolMember(uid, f"http://{uid}:8000", region) for uid in uids)


REGIONS = (
    RegionSpec("eu-west", "EU", pool("eu-west", "acc-fra"), fallback="eu-north"),
    RegionSpec("eu-north", "EU", pool("eu-north", "acc-sto"), fallback="us-east"),
    RegionSpec("us-east", "US", pool("us-east", "acc-nyc")),
)


def build(*tenants, regions=REGIONS, **inputs):
    return compile_bundle(
        Inputs(tenants=tenants, regions=regions, **inputs), revision=7, issued_at=NOW
    )


def routes(bundle):
    return {(r.tenant, r.region): r.pools for r in bundle.routes}


def test_routes_follow_the_fallback_chain_cut_to_each_tenants_privacy_and_zone():
    bundle = build(
        tenant("anywhere"),
        tenant("regional", privacy="in_region"),
        tenant("european", zone="EU"),
        tenant("local", privacy="local_only", fallback="reject"),
        tenant("strict", fallback="reject"),
    )
    got = routes(bundle)
    assert got[("anywhere", "eu-west")] == ["eu-west", "eu-north", "us-east"]
    assert got[("regional", "eu-west")] == ["eu-west"]
    assert got[("european", "eu-west")] == ["eu-west", "eu-north"]
    assert ("european", "us-east") not in got  # no EU pool reachable from us-east
    assert not any(t in ("local", "strict") for t, _ in got)
    assert bundle.revision == 7 and bundle.expires_at - bundle.issued_at == timedelta(hours=24)


def test_pools_without_nodes_are_skipped_in_routes():
    regions = (
        RegionSpec("eu-west", "EU", (), fallback="eu-north"),
        RegionSpec("eu-north", "EU", pool("eu-north", "acc-sto")),
    )
    assert routes(build(tenant("a"), regions=regions))[("a", "eu-west")] == ["eu-north"]


@pytest.mark.parametrize(
    ("regions", "message"),
    [
        (
            (
                RegionSpec("a", "EU", pool("a", "n1"), fallback="b"),
                RegionSpec("b", "EU", pool("b", "n2"), fallback="a"),
            ),
            "fallback cycle: a → b → a",
        ),
        ((RegionSpec("a", "EU", pool("a", "n1"), fallback="mars"),), "falls back to 'mars'"),
        ((RegionSpec("a", "EU", pool("b", "n1")),), "the pool of a lists node n1 of region b"),
    ],
)
def test_broken_topologies_are_refused_with_the_reason(regions, message):
    with pytest.raises(CompileError) as refused:
        build(tenant("t"), regions=regions)
    assert any(message in problem for problem in refused.value.problems), refused.value.problems


def test_contradictions_and_duplicates_are_refused_all_at_once():
    price = PriceRow(grade="tiny", serving="local", currency="EUR", per_1000="0.05")
    with pytest.raises(CompileError) as refused:
        build(
            tenant("dup"),
            tenant("dup"),
            tenant("odd", privacy="local_only", fallback="regional"),
            prices=[price, price],
        )
    text = str(refused.value)
    assert "tenant dup appears twice" in text
    assert "two prices for tiny local in EUR" in text
    assert "odd is local_only but falls back regional" in text


def test_the_route_check_catches_a_leak_the_inputs_did_not_cause():
    """check_bundle guards the compiled output: a hand-made route out of the zone is caught."""
    bundle = build(tenant("european", zone="EU"), tenant("regional", privacy="in_region"))
    leaked = bundle.model_copy(
        update={
            "routes": [
                Route(tenant="european", region="eu-west", pools=["us-east"]),
                Route(tenant="regional", region="eu-west", pools=["eu-north"]),
                Route(tenant="ghost", region="eu-west", pools=["eu-west"]),
                Route(tenant="european", region="eu-west", pools=["atlantis"]),
            ]
        }
    )
    problems = check_bundle(leaked)
    assert any("bound to zone EU, to pool us-east in zone US" in p for p in problems)
    assert any("in_region tenant regional from eu-west to eu-north" in p for p in problems)
    assert any("tenant ghost, which the bundle lacks" in p for p in problems)
    assert any("pool atlantis, which does not exist" in p for p in problems)


def test_the_same_inputs_compile_to_the_same_bundle_whatever_their_order():
    a = build(tenant("b"), tenant("a"), regions=REGIONS)
    b = build(tenant("a"), tenant("b"), regions=tuple(reversed(REGIONS)))
    assert a == b


def test_the_diff_says_what_changed_between_revisions():
    old = build(
        tenant("acme"),
        tenant("gone"),
        prices=[PriceRow(grade="tiny", serving="local", currency="EUR", per_1000="0.05")],
        thresholds=[ClassThresholds(node_class="nano", thermal_envelope_c=70)],
    )
    new = build(
        tenant("acme", privacy="in_region"),
        tenant("new"),
        prices=[PriceRow(grade="tiny", serving="local", currency="EUR", per_1000="0.06")],
        thresholds=[ClassThresholds(node_class="nano", thermal_envelope_c=65)],
        revoked_tokens=["tok-1"],
    )
    lines = diff_bundles(old, new)
    assert "tenant acme: privacy any → in_region" in lines
    assert "tenant gone removed" in lines and "tenant new added" in lines
    assert "price tiny local EUR: per_1000 0.05 → 0.06" in lines
    assert "thresholds of nano: thermal_envelope_c 70.0 → 65.0" in lines
    assert "route acme from eu-west: pools [eu-west, eu-north, us-east] → [eu-west]" in lines
    assert "tokens revoked: tok-1" in lines
    assert diff_bundles(new, new) == []


def test_billing_fleet_and_the_wire_name_the_same_grades():
    """billing cannot import fleet, so its price grades repeat fleet's: they must agree, and
    with the wire format's."""
    import typing

    from billing.choices import PriceGrade, Serving
    from fleet.choices import Grade
    from inference.protocol import Grade as WireGrade
    from inference.protocol import Serving as WireServing

    assert set(PriceGrade.values) == set(Grade.values) == set(typing.get_args(WireGrade))
    assert set(Serving.values) == set(typing.get_args(WireServing))


def test_it_warns_of_requests_no_price_covers_and_the_caps_that_cannot_hold_them():
    from fleet.bundles import bundle_warnings
    from inference.protocol import ModelGrade

    bundle = build(
        tenant("acme"),
        TenantRules(
            slug="nakamura",
            privacy="local_only",
            fallback="reject",
            quality="best_effort",
            currency="JPY",
            max_spend_per_session="80",
            on_budget_exhausted="alert",
        ),
        prices=[
            PriceRow(grade="tiny", serving="local", currency="EUR", per_1000="0.05"),
            PriceRow(grade="tiny", serving="regional", currency="EUR", per_1000="0.08"),
            PriceRow(grade="tiny", serving="local", currency="JPY", per_1000="8"),
        ],
        models=[ModelGrade(name="tiny-classifier", grade="tiny")],
    )

    assert bundle_warnings(bundle) == [
        "no JPY price for tiny regional: such requests state no cost, and the spend caps of "
        "nakamura cannot hold them"
    ]
