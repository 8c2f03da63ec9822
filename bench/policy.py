"""What the policy plane costs: the per-request routing decision and the bundle it runs on.

Three sections, each with a baseline measured in the same run (the machine is shared and
noisy, so the ratios are what count):

1. decision: `inference.policy.decide(view, state, request)` — the pure function a node runs
   on every request — over a bundle compiled by the real compiler (`fleet.bundles
   .compile_bundle`, 1,000 tenants by default, mixed privacy modes, quality objectives, spend
   caps, some budgets exhausted; three regions with accelerator pools; prices per grade,
   serving and currency; per-class thresholds) and indexed with `PolicyView`, as a node does.
   The requests are a fixed mix of cases (mostly served here; thermal offload; predicted-heat
   shedding; cost and quality offload; capacity; model elsewhere; privacy refusal; spend cap
   402; budget block; unknown tenant), and every case is checked to take the rule it is meant
   to before anything is timed.
   Each call is timed on its own with `time.perf_counter_ns` (the samples include the timer's
   own cost, reported as `timer overhead`), in batches that alternate with the baseline, so
   both see the same background load; the garbage collector stays on, as on a node. A
   cross-check times whole loops over the mix and divides by the number of calls (`loop mean`).
   Baseline: `orjson.loads` of a small OIP v2 infer body (one 1×4 FP32 tensor), the cheapest
   thing the request path does anyway. Reference (published, not measured here): OPA's 45 µs
   per policy evaluation.

2. bundle: `compile_bundle` on 10,000 tenants, `inference.protocol.sign_bundle` with a fresh
   Ed25519 key, and what a node does on receipt — parse the signed JSON, `verify_bundle`, and
   index it with `PolicyView` — repeated, medians reported, with the canonical JSON's size.
   Baseline: plain serialisation, `orjson.dumps(bundle.model_dump(mode="json"))`.

3. convergence: how long 20 agents take to enforce a new revision. A throwaway console (a temp
   directory with its own SQLite database and VAR_DIR, `manage.py runserver`, heartbeats every
   second, no Celery worker: the bench delivers) and 20 agents on loopback, each enrolled with
   a one-time token and serving one tiny model. For each new revision (a tenant's policy
   changed with `fleet.policies.update_policy`, then `fleet.policy_plane.publish_bundle`),
   in turn: push - `push_bundle` to every node from a 20-thread pool right after the publish;
   push with a reused client - the same POST from one `httpx.Client` made once (not the
   console's code: `push_bundle` calls `httpx.post`, which builds a client, ~50 ms of TLS
   context and CA bundle, per push; this row says what that costs); pull only - no push, each
   node fetches it after the heartbeat answer that names it. Timed from publish_bundle's
   return until every agent's `/metrics` shows the revision (`outpost_policy_bundle_revision`).
   Baseline: one round of `GET /v2/health/live` to the 20 agents from the same pool, the
   floor of reaching them all. Targets: every node within 5 s by pull and within 2 s by push
   (`push_bundle`). `--no-convergence` skips it (a quick run of the others).
   Every process it starts is stopped on the way out, also on errors, Ctrl-C and SIGTERM.

The sections are a list (`SECTIONS`): a further measurement is one more function appended to
it, returning a `Section`; `main()` prints its table and targets and writes it into the JSON.

Run: .venv/bin/python bench/policy.py [--quick] [--duration S] [--repeats N] [--tenants N]
         [--no-convergence] [--agents N] [--revisions N]
Writes bench/results/policy.json. Exit 0 even when a target is missed; non-zero when something
failed to run.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench.common` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
import orjson

from bench.common import (
    LOOPBACK,
    REPO_ROOT,
    RESULTS_DIR,
    BenchError,
    ServerProcess,
    base_parser,
    free_port,
    http_request,
    log,
    machine_info,
    median,
    metric_value,
    percentile,
    print_table,
    resolve_timing,
    run_recorded,
    stop_all,
)
from fleet.bundles import Inputs, PoolMember, RegionSpec, compile_bundle
from inference.policy import NodeState, PolicyView, Request, decide
from inference.protocol import (
    ClassThresholds,
    PolicyBundle,
    PriceRow,
    SignedBundle,
    TenantRules,
    bundle_payload,
    generate_private_key,
    sign_bundle,
    verify_bundle,
)

NAME = "policy"
PACKAGES = ("pydantic", "pydantic-core", "orjson", "cryptography")

# Targets (issue 4, item 7).
OPA_REFERENCE_US = 45.0  # published OPA figure per policy evaluation: a reference, not a baseline
DECISION_P99_TARGET_US = 200.0
COMPILE_SIGN_TARGET_S = 2.0
COMPILE_TENANTS = 10_000

# The requests of the decision section: this many, drawn once from CASES' weights.
MIX_SIZE = 2_000

# The baseline's body: a standard OIP v2 infer request with one 1×4 FP32 tensor.
OIP_BODY = orjson.dumps(
    {
        "id": "req-0001",
        "inputs": [
            {"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [0.1, 0.2, 0.3, 0.4]}
        ],
    }
)


@dataclass
class Section:
    """What one measurement hands back to `main()`: a table, targets, and the JSON."""

    name: str
    title: str
    columns: list[tuple[str, str, str]]
    rows: list[dict[str, Any]]
    # {"target", "measured", "limit", "unit", "result"}; result PASS or MISS.
    targets: list[dict[str, Any]] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)


def target(name: str, measured: float, limit: float, unit: str) -> dict[str, Any]:
    return {
        "target": name,
        "measured": measured,
        "limit": limit,
        "unit": unit,
        "result": "PASS" if measured < limit else "MISS",
    }


# --- inputs: a realistic fleet ----------------------------------------------------------------

GRADES = ("tiny", "medium", "large")
CURRENCIES = {"EUR": Decimal("1"), "USD": Decimal("1.10"), "GBP": Decimal("0.86")}
# Per 1,000 inferences in EUR: (local, regional).
BASE_PRICES = {
    "tiny": (Decimal("0.05"), Decimal("0.08")),
    "medium": (Decimal("0.40"), Decimal("0.65")),
    "large": (Decimal("2.00"), Decimal("3.20")),
}
# node class -> (thermal envelope °C, cost ceilings per 1,000 by grade, hourly cost)
CLASSES = {
    "nano": (80.0, {"tiny": "0.03", "medium": "0.30", "large": "1.00"}, "0.02"),
    "standard": (85.0, {"tiny": "0.04", "medium": "0.35", "large": "1.50"}, "0.15"),
    "accelerator": (90.0, {"tiny": "0.05", "medium": "0.20", "large": "0.90"}, "1.10"),
}
# code -> (residency zone, pool size, fallback region)
REGIONS = {
    "eu-west": ("EU", 3, "eu-central"),
    "eu-central": ("EU", 2, None),
    "us-east": ("US", 3, "eu-west"),
}


def make_tenants(rng: random.Random, count: int) -> list[TenantRules]:
    tenants = []
    for index in range(count):
        privacy = rng.choices(["local_only", "in_region", "any"], [20, 30, 50])[0]
        fallback = "reject" if privacy == "local_only" else rng.choices(["regional", "reject"], [85, 15])[0]  # fmt: skip
        currency = rng.choices(list(CURRENCIES), [50, 35, 15])[0]
        tenants.append(
            TenantRules(
                slug=f"tenant-{index:05d}",
                privacy=privacy,
                fallback=fallback,
                quality="high" if rng.random() < 0.2 else "best_effort",
                max_spend_per_session=(
                    rng.choice(["0.50", "1.00", "5.00", "20.00"]) if rng.random() < 0.6 else None
                ),
                currency=currency,
                sensitive_fields=["email", "phone"] if rng.random() < 0.2 else [],
                on_budget_exhausted=rng.choices(["alert", "downgrade", "block"], [60, 25, 15])[0],
                budget_exhausted=rng.random() < 0.05,
                fail_closed_after_s=900 if rng.random() < 0.1 else None,
                residency_zone="EU" if currency == "EUR" and rng.random() < 0.5 else None,
                rate_limit_per_s=rng.choice([50, 200, 1000]) if rng.random() < 0.3 else None,
            )
        )
    return tenants


def make_inputs(rng: random.Random, tenants: int, revoked: int = 50) -> Inputs:
    regions = [
        RegionSpec(
            code=code,
            residency_zone=zone,
            pool=tuple(
                PoolMember(
                    uid=f"{code}-acc-{n}", endpoint=f"http://{code}-acc-{n}:8000", region=code
                )
                for n in range(size)
            ),
            fallback=fallback,
        )
        for code, (zone, size, fallback) in REGIONS.items()
    ]
    prices = [
        PriceRow(
            grade=grade,
            serving=serving,
            currency=currency,
            per_1000=str((BASE_PRICES[grade][i] * rate).quantize(Decimal("0.0001"))),
        )
        for grade in GRADES
        for i, serving in enumerate(("local", "regional"))
        for currency, rate in CURRENCIES.items()
    ]
    thresholds = [
        ClassThresholds(
            node_class=name, thermal_envelope_c=envelope, cost_ceilings=ceilings, hourly_cost=hourly
        )
        for name, (envelope, ceilings, hourly) in CLASSES.items()
    ]
    return Inputs(
        tenants=make_tenants(rng, tenants),
        regions=regions,
        prices=prices,
        thresholds=thresholds,
        revoked_tokens=[f"tok-{rng.getrandbits(64):016x}" for _ in range(revoked)],
    )


# --- section 1: the per-request decision ------------------------------------------------------


def node_state(rng: random.Random, region: str, node_class: str, **changes: Any) -> NodeState:
    """A node that is cool, idle enough, cheap enough, with a fresh bundle — unless changed."""
    envelope, ceilings, _ = CLASSES[node_class]
    values: dict[str, Any] = {
        "region": region,
        "node_class": node_class,
        "temperature_c": round(envelope - rng.uniform(15, 30), 1),
        "temperature_slope": round(rng.uniform(-0.05, 0.05), 3),
        "queue_depth": rng.randint(0, 8),
        "queue_limit": 64,
        "cost_per_1000": {g: Decimal(c) * Decimal("0.6") for g, c in ceilings.items()},
        "bundle_age_s": rng.uniform(1, 60),
    }
    values.update(changes)
    return NodeState(**values)


@dataclass(frozen=True)
class Case:
    name: str
    weight: int
    # (rng, pick) -> (state, request, expected rule, expected action or None for either)
    build: Callable[..., tuple[NodeState, Request, str, str | None]]


def decision_cases(view: PolicyView) -> list[Case]:
    """The request mix: each case picks a tenant and a node state that lead to one rule."""
    tenants = list(view.tenants.values())
    regions = list(REGIONS)

    def routed(t: TenantRules, region: str) -> bool:
        return (t.slug, region) in view.routes

    def pick(rng: random.Random, what: str, ok: Callable[[TenantRules], bool]) -> TenantRules:
        candidates = [t for t in tenants if ok(t)]
        if not candidates:
            raise BenchError(f"no tenant for the case {what!r}: use more --tenants")
        return rng.choice(candidates)

    def clean(t: TenantRules) -> bool:
        return not t.budget_exhausted

    def grade(rng: random.Random) -> str:
        return rng.choices(GRADES, [60, 30, 10])[0]

    def local(rng: random.Random):
        node_class = rng.choices(list(CLASSES), [10, 70, 20])[0]
        t = pick(
            rng,
            "local",
            lambda t: clean(t) and (t.quality == "best_effort" or node_class == "accelerator"),
        )
        state = node_state(rng, rng.choice(regions), node_class)
        return state, Request(t.slug, grade(rng)), "local", "local"

    def tenant_quality(rng: random.Random):
        t = pick(rng, "tenant_quality", lambda t: clean(t) and t.quality == "high")
        state = node_state(rng, rng.choice(regions), "standard")
        return state, Request(t.slug, grade(rng)), "tenant_quality", None

    def thermal(rng: random.Random):
        region = rng.choice(regions)
        t = pick(rng, "thermal", lambda t: clean(t) and routed(t, region))
        state = node_state(rng, region, "standard", temperature_c=CLASSES["standard"][0] + 2)
        return state, Request(t.slug, grade(rng)), "thermal", "offload"

    def predicted_heat(rng: random.Random):
        region = rng.choice(regions)
        t = pick(
            rng,
            "predicted_heat",
            lambda t: clean(t) and t.quality == "best_effort" and routed(t, region),
        )
        state = node_state(
            rng, region, "standard", temperature_c=CLASSES["standard"][0] - 6, temperature_slope=0.4
        )
        return state, Request(t.slug, grade(rng)), "thermal", "offload"

    def cost(rng: random.Random):
        region = rng.choice(regions)
        t = pick(rng, "cost", lambda t: clean(t) and t.quality == "best_effort")
        ceilings = CLASSES["standard"][1]
        over = {g: Decimal(c) * Decimal("1.5") for g, c in ceilings.items()}
        state = node_state(rng, region, "standard", cost_per_1000=over)
        return state, Request(t.slug, grade(rng)), "cost", None

    def capacity(rng: random.Random):
        region = rng.choice(regions)
        t = pick(rng, "capacity", lambda t: clean(t) and routed(t, region))
        state = node_state(rng, region, "standard", queue_depth=64)
        return state, Request(t.slug, grade(rng)), "capacity", "offload"

    def model_not_local(rng: random.Random):
        region = rng.choice(regions)
        t = pick(rng, "model_not_local", lambda t: clean(t) and routed(t, region))
        state = node_state(rng, region, rng.choice(["nano", "standard"]))
        return state, Request(t.slug, grade(rng), local=False), "model_not_local", "offload"

    def privacy(rng: random.Random):
        t = pick(rng, "privacy", lambda t: clean(t) and t.privacy == "local_only")
        state = node_state(rng, rng.choice(regions), "standard")
        return state, Request(t.slug, grade(rng), local=False), "privacy", "refuse"

    def spend_cap(rng: random.Random):
        t = pick(
            rng,
            "spend_cap",
            lambda t: clean(t) and t.quality == "best_effort" and t.max_spend_per_session,
        )
        state = node_state(rng, rng.choice(regions), "standard")
        spent = Decimal(t.max_spend_per_session or 0)
        return state, Request(t.slug, grade(rng), session_spent=spent), "spend_cap", "refuse"

    def budget_block(rng: random.Random):
        t = pick(
            rng,
            "budget_block",
            lambda t: t.budget_exhausted and t.on_budget_exhausted == "block",
        )
        state = node_state(rng, rng.choice(regions), "standard")
        return state, Request(t.slug, grade(rng)), "budget_block", "refuse"

    def unknown_tenant(rng: random.Random):
        state = node_state(rng, rng.choice(regions), "standard")
        slug = f"ghost-{rng.getrandbits(32):08x}"
        return state, Request(slug, grade(rng)), "unknown_tenant", "refuse"

    return [
        Case("local", 45, local),
        Case("tenant_quality", 8, tenant_quality),
        Case("thermal", 8, thermal),
        Case("predicted_heat", 8, predicted_heat),
        Case("cost", 8, cost),
        Case("capacity", 5, capacity),
        Case("model_not_local", 6, model_not_local),
        Case("privacy", 4, privacy),
        Case("spend_cap", 4, spend_cap),
        Case("budget_block", 2, budget_block),
        Case("unknown_tenant", 2, unknown_tenant),
    ]


def build_mix(
    rng: random.Random, view: PolicyView
) -> tuple[list[tuple[NodeState, Request]], list[str], dict[str, int]]:
    """MIX_SIZE (state, request) pairs, the case of each, and how many decisions each rule
    made; raises BenchError when a case does not lead to the rule it is meant to."""
    cases = decision_cases(view)
    mix, kinds = [], []
    rules: dict[str, int] = {}
    for case in rng.choices(cases, [c.weight for c in cases], k=MIX_SIZE):
        state, request, rule, action = case.build(rng)
        decision = decide(view, state, request)
        if decision.rule != rule or (action is not None and decision.action != action):
            raise BenchError(
                f"case {case.name}: expected rule {rule} ({action or 'any action'}), got "
                f"{decision.rule} ({decision.action}): {decision.reason}"
            )
        rules[f"{decision.rule}/{decision.action}"] = rules.get(f"{decision.rule}/{decision.action}", 0) + 1  # fmt: skip
        mix.append((state, request))
        kinds.append(case.name)
    return mix, kinds, dict(sorted(rules.items()))


def timer_overhead_ns(samples: int = 200_000) -> float:
    clock = time.perf_counter_ns
    values = []
    for _ in range(samples):
        t0 = clock()
        values.append(clock() - t0)
    return median(values)


def summarize_ns(values: list[int]) -> dict[str, Any]:
    values.sort()
    return {
        "calls": len(values),
        "median_us": percentile(values, 50) / 1000,
        "p90_us": percentile(values, 90) / 1000,
        "p99_us": percentile(values, 99) / 1000,
        "p999_us": percentile(values, 99.9) / 1000,
        "max_us": values[-1] / 1000,
        "mean_us": sum(values) / len(values) / 1000,
    }


def loop_mean_us(call: Callable[[], None], calls: int, rounds: int) -> float:
    """Median over `rounds` of one loop's time ÷ its calls (`call` makes `calls` calls)."""
    per_call = []
    for _ in range(rounds):
        t0 = time.perf_counter_ns()
        call()
        per_call.append((time.perf_counter_ns() - t0) / calls / 1000)
    return median(per_call)


def measure_decision(args: argparse.Namespace) -> Section:
    rng = random.Random(args.seed)
    inputs = make_inputs(rng, args.tenants)
    bundle = compile_bundle(inputs, revision=1, issued_at=datetime.now(UTC))
    view = PolicyView(bundle)
    mix, kinds, rules = build_mix(rng, view)
    names = list(dict.fromkeys(kinds))
    log(
        f"decision: {len(bundle.tenants)} tenants, {len(bundle.routes)} routes, "
        f"{len(mix)} requests in the mix; {args.warmup}s warm-up, {args.duration}s measuring"
    )

    clock = time.perf_counter_ns
    loads = orjson.loads
    body = OIP_BODY
    samples: dict[str, list[int]] = {name: [] for name in names}
    baseline: list[int] = []
    order = list(range(len(mix)))

    # This machine's speed changes from one moment to the next (other tenants of the host),
    # so each batch's decide median is also divided by the baseline median of the same batch.
    batch_ratios: list[float] = []

    def batch(record: bool) -> None:
        rng.shuffle(order)
        decided: list[int] = []
        loaded: list[int] = []
        for i in order:
            state, request = mix[i]
            t0 = clock()
            decide(view, state, request)
            t1 = clock()
            decided.append(t1 - t0)
        for _ in order:
            t0 = clock()
            loads(body)
            t1 = clock()
            loaded.append(t1 - t0)
        if record:
            for i, value in zip(order, decided, strict=True):
                samples[kinds[i]].append(value)
            baseline.extend(loaded)
            batch_ratios.append(median(decided) / median(loaded))

    end = time.monotonic() + args.warmup
    while time.monotonic() < end:
        batch(record=False)
    batches = 0
    end = time.monotonic() + args.duration
    while time.monotonic() < end:
        batch(record=True)
        batches += 1

    def decide_loop() -> None:
        for state, request in mix:
            decide(view, state, request)

    def loads_loop() -> None:
        for _ in range(len(mix)):
            loads(body)

    rounds = 10 if args.quick else 50
    loop_decide = loop_mean_us(decide_loop, len(mix), rounds)
    loop_loads = loop_mean_us(loads_loop, len(mix), rounds)
    overhead = timer_overhead_ns()

    every = [v for name in names for v in samples[name]]
    overall = summarize_ns(every)
    base = summarize_ns(baseline)
    per_case = {name: summarize_ns(samples[name]) for name in names}
    ratio = overall["median_us"] / base["median_us"]
    batch_ratio = median(batch_ratios)

    rows = [
        {"what": f"decide: {name}", "share": len(samples[name]) / len(every), **per_case[name]}
        for name in sorted(names, key=lambda n: -len(samples[n]))
    ]
    rows.append({"what": "decide: whole mix", "share": 1.0, **overall, "loop_mean_us": loop_decide})
    rows.append({"what": "baseline: orjson.loads OIP body", **base, "loop_mean_us": loop_loads})
    rows.append({"what": "ratio decide ÷ baseline (medians)", "ratio": ratio})
    rows.append({"what": "ratio, median of per-batch ratios", "ratio": batch_ratio})
    return Section(
        name="decision",
        title=(
            f"decision: decide(view, state, request), {len(bundle.tenants)} tenants, "
            f"{len(mix)} requests × {batches} batches; each call timed alone with "
            f"perf_counter_ns (timer overhead {overhead:.0f} ns, included); "
            "loop mean = loop over the mix ÷ calls"
        ),
        columns=[
            ("what", "measurement", ""),
            ("share", "share", ".1%"),
            ("calls", "calls", ","),
            ("median_us", "median µs", ".2f"),
            ("p99_us", "p99 µs", ".2f"),
            ("p999_us", "p99.9 µs", ".2f"),
            ("loop_mean_us", "loop mean µs", ".2f"),
            ("ratio", "ratio", ".2f"),
        ],
        rows=rows,
        targets=[
            target(
                "decision median < OPA's 45 µs (published reference)",
                overall["median_us"],
                OPA_REFERENCE_US,
                "µs",
            ),
            target("decision p99 < 200 µs", overall["p99_us"], DECISION_P99_TARGET_US, "µs"),
        ],
        data={
            "bundle": {
                "tenants": len(bundle.tenants),
                "routes": len(bundle.routes),
                "pools": {p.region: len(p.nodes) for p in bundle.pools},
                "prices": len(bundle.prices),
                "thresholds": [t.node_class for t in bundle.thresholds],
                "budget_exhausted": sum(t.budget_exhausted for t in bundle.tenants),
            },
            "mix_size": len(mix),
            "case_weights": {c.name: c.weight for c in decision_cases(view)},
            "rules_in_mix": rules,
            "batches": batches,
            "timing": "each call timed alone with time.perf_counter_ns (timer overhead "
            "included); decide and baseline batches alternate; gc enabled",
            "timer_overhead_ns": overhead,
            "decide": overall,
            "decide_by_case": per_case,
            "decide_loop_mean_us": loop_decide,
            "baseline": {
                "what": "orjson.loads of a 1x4 FP32 OIP v2 infer body",
                "body_bytes": len(OIP_BODY),
                **base,
                "loop_mean_us": loop_loads,
            },
            "ratio_decide_median_over_baseline_median": ratio,
            "ratio_decide_loop_over_baseline_loop": loop_decide / loop_loads,
            "ratio_median_of_per_batch_ratios": batch_ratio,
            "per_batch_ratio_p10_p90": [
                percentile(sorted(batch_ratios), 10),
                percentile(sorted(batch_ratios), 90),
            ],
            "opa_reference_us": OPA_REFERENCE_US,
        },
    )


# --- section 2: compiling, signing and verifying a bundle -------------------------------------


def timed(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[float, Any]:
    """(seconds, value) of one call."""
    t0 = time.perf_counter()
    value = fn(*args, **kwargs)
    return time.perf_counter() - t0, value


def serialise(bundle: PolicyBundle) -> bytes:
    """The baseline: plain serialisation of the bundle, no sorting, no signature."""
    return orjson.dumps(bundle.model_dump(mode="json"))


def measure_bundle(args: argparse.Namespace) -> Section:
    rng = random.Random(args.seed + 1)
    inputs = make_inputs(rng, args.compile_tenants)
    log(f"bundle: {args.compile_tenants} tenants, {args.repeats} repeats")
    runs: list[dict[str, float]] = []
    sizes: dict[str, int] = {}
    for repeat in range(args.repeats):
        key = generate_private_key()
        issued_at = datetime.now(UTC)
        compile_s, bundle = timed(compile_bundle, inputs, revision=repeat + 2, issued_at=issued_at)
        baseline_s, plain = timed(serialise, bundle)
        sign_s, signed = timed(sign_bundle, key, bundle)
        wire = signed.model_dump_json().encode()
        parse_s, received = timed(SignedBundle.model_validate_json, wire)
        verify_s, verified = timed(
            verify_bundle,
            received,
            key.public_key(),
            now=issued_at + timedelta(seconds=1),
            current_revision=repeat + 1,
        )
        index_s, _ = timed(PolicyView, verified)
        if verified != bundle:
            raise BenchError("the verified bundle differs from the one signed")
        runs.append({
            "compile_s": compile_s, "sign_s": sign_s, "compile_sign_s": compile_s + sign_s,
            "parse_s": parse_s, "verify_s": verify_s, "index_s": index_s,
            "receive_s": parse_s + verify_s + index_s, "baseline_s": baseline_s,
        })  # fmt: skip
        sizes = {
            "canonical_json_bytes": len(bundle_payload(bundle)),
            "plain_json_bytes": len(plain),
            "signed_wire_bytes": len(wire),
            "tenants": len(bundle.tenants),
            "routes": len(bundle.routes),
            "prices": len(bundle.prices),
            "revoked_tokens": len(bundle.revoked_tokens),
        }
        log(f"  repeat {repeat + 1}: compile {compile_s:.3f}s sign {sign_s:.3f}s")

    med = {k: median(r[k] for r in runs) for k in runs[0]}
    base = med["baseline_s"]
    steps = [
        ("compile_s", "compile_bundle (console)"),
        ("sign_s", "sign_bundle (console)"),
        ("compile_sign_s", "compile + sign"),
        ("parse_s", "parse signed JSON (node)"),
        ("verify_s", "verify_bundle (node)"),
        ("index_s", "PolicyView index (node)"),
        ("receive_s", "parse + verify + index"),
        ("baseline_s", "baseline: orjson.dumps(model_dump)"),
    ]
    rows = [
        {
            "what": label,
            "median_s": med[k],
            "min_s": min(r[k] for r in runs),
            "max_s": max(r[k] for r in runs),
            "ratio": med[k] / base,
        }
        for k, label in steps
    ]
    return Section(
        name="bundle",
        title=(
            f"bundle: {sizes['tenants']:,} tenants, {sizes['routes']:,} routes, canonical JSON "
            f"{sizes['canonical_json_bytes']:,} bytes; median of {args.repeats} repeats; "
            "ratio = ÷ baseline (plain serialisation)"
        ),
        columns=[
            ("what", "step", ""),
            ("median_s", "median s", ".3f"),
            ("min_s", "min s", ".3f"),
            ("max_s", "max s", ".3f"),
            ("ratio", "÷ baseline", ".2f"),
        ],
        rows=rows,
        targets=[
            target(
                f"compile + sign of {sizes['tenants']:,} tenants < 2 s",
                med["compile_sign_s"],
                COMPILE_SIGN_TARGET_S,
                "s",
            )
        ],
        data={
            **sizes,
            "repeats": args.repeats,
            "medians_s": med,
            "ratio_compile_over_baseline": med["compile_s"] / base,
            "ratio_sign_over_baseline": med["sign_s"] / base,
            "ratio_verify_over_baseline": med["verify_s"] / base,
            "baseline": 'orjson.dumps(bundle.model_dump(mode="json"))',
            "runs": runs,
        },
    )


# --- section 3: a fleet converging on a new revision -------------------------------------------

CONVERGENCE_AGENTS = 20
HEARTBEAT_S = 1
PULL_TARGET_S = 5.0
PUSH_TARGET_S = 2.0
# Starting 20 agents at once on 2 cores makes each take far longer; a short gap spreads the
# imports and model loads.
STAGGER_S = 0.3
# How often a waiting agent's /metrics is read: the resolution of the pull times. A push is
# confirmed by reading /metrics right after the node acknowledged it (the node activates a
# pushed bundle before it answers), so push times do not wait for a poll.
POLL_S = 0.05
BASELINE_ROUNDS = 3
# The delivery modes, interleaved revision by revision:
# - push: the console's fleet.policy_plane.push_bundle to every node from the pool;
# - push-reused-client: the same POST from one httpx.Client made once (not the console's code:
#   push_bundle's httpx.post makes a client, ~50 ms of TLS context and CA bundle, per push, and
#   20 of them in one process queue for the GIL - this says what a push costs without that);
# - pull: no push; each node fetches the bundle after the heartbeat answer that names it.
PUSH_MODES = ("push", "push-reused-client", "pull")


def console_env(work: Path) -> dict[str, str]:
    """A throwaway console: its own SQLite file and VAR_DIR (where the development signing key
    is generated), no broker server (Celery's in-memory transport: what the console enqueues
    is never run, so the only pushes are the bench's own), heartbeats every second."""
    return {
        "DJANGO_SETTINGS_MODULE": "console.settings",
        "OUTPOST_VAR_DIR": str(work / "var"),
        "DATABASE_URL": f"sqlite:///{work / 'console.sqlite3'}",
        "CELERY_BROKER_URL": "memory://",
        "OUTPOST_HEARTBEAT_INTERVAL_S": str(HEARTBEAT_S),
        "OUTPOST_LOG_LEVEL": "WARNING",
    }


def enforced_revision(agent: ServerProcess) -> int | None:
    """The revision the agent enforces, as its /metrics say (None: none, or no answer)."""
    try:
        resp = http_request("GET", agent.url("/metrics"), timeout=5)
    except OSError:
        return None
    value = metric_value(resp.body.decode(), "outpost_policy_bundle_revision")
    return None if value is None else int(value)


def heartbeats_sent(agent: ServerProcess) -> float:
    """Heartbeats the agent's console took so far (its /metrics)."""
    resp = http_request("GET", agent.url("/metrics"), timeout=5)
    value = metric_value(resp.body.decode(), "outpost_console_heartbeats_total", outcome="success")
    return value or 0.0


def wait_for_revision(
    agent: ServerProcess, revision: int, started: float, stop: threading.Event, timeout: float
) -> float:
    """Seconds from `started` until the agent's /metrics show `revision` (or a newer one)."""
    while not stop.is_set():
        current = enforced_revision(agent)
        if current is not None and current >= revision:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise BenchError(
                f"{agent.name} did not enforce revision {revision} within {timeout:.0f} s "
                f"(it enforces {current}); log tail:\n{agent.log_tail()}"
            )
        time.sleep(POLL_S)
    raise BenchError("stopped")


def client_creation_ms(samples: int = 5) -> float:
    """What `httpx.post` pays before it sends anything: a new client (TLS context, CA bundle)."""
    times = []
    for _ in range(samples):
        t0 = time.perf_counter()
        httpx.Client().close()
        times.append((time.perf_counter() - t0) * 1000)
    return median(times)


def spread(values: list[float]) -> dict[str, Any]:
    ordered = sorted(values)
    return {
        "samples": len(ordered),
        "median_s": median(ordered),
        "p90_s": percentile(ordered, 90),
        "max_s": ordered[-1] if ordered else float("nan"),
    }


def measure_convergence(args: argparse.Namespace) -> Section | None:
    """Start a console and `args.agents` enrolled agents, then publish new revisions and time
    how long the fleet takes to enforce each: pushed, and pulled from the heartbeat answer."""
    if args.no_convergence:
        log("convergence: skipped (--no-convergence)")
        return None
    # A TERM (from a supervisor, or `make` being stopped) unwinds like Ctrl-C, so the agents
    # and the console are stopped on the way out.
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        with tempfile.TemporaryDirectory(prefix="outpost-converge-") as tmp:
            return _converge(args, Path(tmp))
    finally:
        signal.signal(signal.SIGTERM, previous)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _converge(args: argparse.Namespace, work: Path) -> Section:
    env = console_env(work)
    os.environ.update(env)  # before django.setup(): the settings read the environment
    import django

    django.setup()
    count = args.agents
    log(f"convergence: a console and {count} agents (heartbeat {HEARTBEAT_S} s) in {work}")
    try:
        return _run_fleet(args, work, env, count)
    finally:
        from django.db import connections

        connections.close_all()  # the database file goes with the temp directory


def _run_fleet(args: argparse.Namespace, work: Path, env: dict[str, str], count: int) -> Section:
    import onnx
    from django.core.management import call_command

    from billing.models import Tenant
    from billing.signing import console_private_key
    from fleet.models import EnrollmentToken, Node, NodeClass, Region
    from fleet.policies import update_policy
    from fleet.policy_plane import PUSH_TIMEOUT_S, publish_bundle, push_bundle
    from inference.demo_models import tiny_classifier
    from inference.protocol import BUNDLE_PUSH_PATH

    call_command("migrate", interactive=False, verbosity=0)
    console_private_key()  # generated here, before the console process could race for it
    region = Region.objects.create(
        code="bench", name="Bench", jurisdiction="DE", residency_zone="EU"
    )
    node_class = NodeClass.objects.create(
        name="standard",
        capex=5000,
        amortisation_months=48,
        idle_watts=90,
        peak_watts=350,
        energy_price_per_kwh="0.25",
        expected_utilisation="0.5",
        memory_bytes=64 * 2**30,
    )
    tenant = Tenant.objects.create(slug="bench", name="Bench")
    first = publish_bundle(["bench: first bundle"])
    if first is None:
        raise BenchError("the console published no first bundle (see BundleCompileFailure)")
    models = work / "models"
    models.mkdir()
    onnx.save(tiny_classifier(), models / "tiny-classifier.onnx")

    port = free_port()
    console = ServerProcess(
        "console",
        [sys.executable, "manage.py", "runserver", "--noreload", f"{LOOPBACK}:{port}"],
        port=port,
        log_dir=work,
        ready_path="/api/v1/openapi.json",
        env=env,
        cwd=REPO_ROOT,
    )
    agents: list[ServerProcess] = []
    stop = threading.Event()
    with contextlib.ExitStack() as stack:
        stack.enter_context(console)
        stack.callback(stop_all, agents)  # filled below; stopped first (last in, first out)
        stack.callback(stop.set)
        for index in range(count):
            name = f"conv-{index:02d}"
            _, secret = EnrollmentToken.issue(node_name=name, region=region, node_class=node_class)
            agent_port = free_port()
            agent = ServerProcess(
                name,
                [sys.executable, "-m", "inference", "serve", "--models", str(models),
                 "--port", str(agent_port), "--state-dir", str(work / f"n{index}"),
                 "--console", console.base_url, "--enroll", secret],
                port=agent_port,
                log_dir=work,
            )  # fmt: skip
            agents.append(agent)
            agent.start()
            time.sleep(STAGGER_S)
        started = time.monotonic()
        for agent in agents:  # ready = enrolled, model loaded, and a bundle enforced
            agent.wait_ready(timeout=180)
        names = [a.name for a in agents]
        deadline = time.monotonic() + 60
        while Node.objects.filter(name__in=names, bundle_revision=first.revision).count() < count:
            if time.monotonic() > deadline:
                raise BenchError(f"the console never heard all {count} agents report a bundle")
            time.sleep(0.1)
        log(f"convergence: {count} agents online on revision {first.revision} "
            f"after {time.monotonic() - started:.1f}s")  # fmt: skip
        nodes = {n.name: n for n in Node.objects.filter(name__in=names)}
        pool = stack.enter_context(ThreadPoolExecutor(max_workers=count))
        stack.callback(stop.set)  # runs before the pool's shutdown waits for its threads
        # Not the console's code: the same POST as push_bundle, from one client made once
        # (push_bundle calls httpx.post, which builds a client - TLS context, CA bundle - per
        # push). What a push costs without that; see PUSH_MODES.
        shared = stack.enter_context(httpx.Client(timeout=PUSH_TIMEOUT_S))

        def baseline_round() -> float:
            t0 = time.monotonic()
            answers = list(
                pool.map(lambda a: http_request("GET", a.url("/v2/health/live")), agents)
            )
            elapsed = time.monotonic() - t0
            if any(r.status != 200 for r in answers):
                raise BenchError("an agent is not live")
            return elapsed

        def push_and_confirm(
            agent: ServerProcess, record: Any, t0: float, reused: bool
        ) -> tuple[float, float]:
            node = nodes[agent.name]
            try:
                if reused:
                    response = shared.post(
                        node.endpoint.rstrip("/") + BUNDLE_PUSH_PATH,
                        content=record.signed.encode(),
                        headers={"Content-Type": "application/json"},
                    )
                    accepted = response.status_code == 200
                else:
                    accepted = push_bundle(node, record)
            except Exception as exc:  # PushFailed: unreachable, or a server error
                raise BenchError(
                    f"pushing revision {record.revision} to {agent.name}: {exc}"
                ) from exc
            acked = time.monotonic() - t0
            if not accepted:
                raise BenchError(f"{agent.name} refused revision {record.revision}")
            return acked, wait_for_revision(agent, record.revision, t0, stop, timeout=30)

        rng = random.Random(args.seed + 2)
        modes = list(PUSH_MODES) * args.revisions
        rounds: list[dict[str, Any]] = []
        baseline: list[float] = []
        # The real heartbeat period: the agent sleeps the interval after each heartbeat's
        # answer (and bundle fetch), so it is the interval plus the console's answer time.
        beats_at, beats = time.monotonic(), [heartbeats_sent(a) for a in agents]
        for number, mode in enumerate(modes, start=1):
            baseline += [baseline_round() for _ in range(BASELINE_ROUNDS)]
            # Publish at a random phase of the agents' heartbeats, not right after one.
            time.sleep(rng.uniform(0, HEARTBEAT_S))
            spend = f"{10 + number}.00"
            update_policy(
                tenant, {"max_spend_per_session": spend}, actor=None, actor_kind="operator"
            )
            t_publish = time.monotonic()
            record = publish_bundle([f"bench: {mode} round {number}"])
            t0 = time.monotonic()
            if record is None:
                raise BenchError(f"round {number}: the policy change published no revision")
            if mode != "pull":
                reused = mode == "push-reused-client"
                futures = [pool.submit(push_and_confirm, a, record, t0, reused) for a in agents]
                results = [f.result() for f in futures]
                acks = [a for a, _ in results]
                seen = [s for _, s in results]
            else:
                futures = [
                    pool.submit(wait_for_revision, a, record.revision, t0, stop, 30) for a in agents
                ]
                seen = [f.result() for f in futures]
                acks = []
            deadline = t0 + 30
            while (
                Node.objects.filter(name__in=names, bundle_revision=record.revision).count() < count
            ):
                if time.monotonic() > deadline:
                    raise BenchError(
                        f"the console never heard every node enforce {record.revision}"
                    )
                time.sleep(0.02)
            confirmed = time.monotonic() - t0
            rounds.append({
                "mode": mode, "revision": record.revision, "publish_s": t0 - t_publish,
                "all_s": max(seen), "median_node_s": median(seen), "per_node_s": seen,
                "all_acked_s": max(acks) if acks else None, "console_confirmed_s": confirmed,
                "bundle_bytes": record.size_bytes,
            })  # fmt: skip
            log(f"  round {number} ({mode}): revision {record.revision} on all {count} agents "
                f"in {max(seen):.3f}s (median node {median(seen):.3f}s)")  # fmt: skip
        after = [heartbeats_sent(a) for a in agents]
        elapsed = time.monotonic() - beats_at
        periods = [elapsed / (n - b) for b, n in zip(beats, after, strict=True) if n > b]

    return _convergence_section(args, rounds, baseline, count, periods)


def _convergence_section(
    args: argparse.Namespace,
    rounds: list[dict[str, Any]],
    baseline: list[float],
    count: int,
    periods: list[float],
) -> Section:
    push = [r for r in rounds if r["mode"] == "push"]
    reused = [r for r in rounds if r["mode"] == "push-reused-client"]
    pull = [r for r in rounds if r["mode"] == "pull"]
    base = spread(baseline)
    stats = {
        "baseline": base,
        "push_all": spread([r["all_s"] for r in push]),
        "push_acked_all": spread([r["all_acked_s"] for r in push]),
        "push_per_node": spread([t for r in push for t in r["per_node_s"]]),
        "push_console_confirmed": spread([r["console_confirmed_s"] for r in push]),
        "reused_all": spread([r["all_s"] for r in reused]),
        "reused_per_node": spread([t for r in reused for t in r["per_node_s"]]),
        "pull_all": spread([r["all_s"] for r in pull]),
        "pull_per_node": spread([t for r in pull for t in r["per_node_s"]]),
        "pull_console_confirmed": spread([r["console_confirmed_s"] for r in pull]),
        "publish": spread([r["publish_s"] for r in rounds]),
        "heartbeat_period": spread(periods),
    }
    labels = [
        ("baseline", f"baseline: GET /v2/health/live to all {count} (one round)"),
        ("push_all", f"push: all {count} enforce it (/metrics)"),
        ("push_acked_all", f"push: all {count} acknowledged the POST"),
        ("push_per_node", "push: one node"),
        ("push_console_confirmed", "push: console heard all (heartbeats)"),
        ("reused_all", f"push, one reused client: all {count} enforce it"),
        ("reused_per_node", "push, one reused client: one node"),
        ("pull_all", f"pull only: all {count} enforce it (/metrics)"),
        ("pull_per_node", "pull only: one node"),
        ("pull_console_confirmed", "pull only: console heard all (heartbeats)"),
        ("publish", "publish_bundle (compile, sign, store)"),
        ("heartbeat_period", f"heartbeat period per agent (interval {HEARTBEAT_S} s)"),
    ]
    rows = [
        {
            "what": label,
            **stats[key],
            # The heartbeat period explains the pull times; it is not a delivery to compare.
            "ratio": None
            if key == "heartbeat_period"
            else stats[key]["median_s"] / base["median_s"],
        }
        for key, label in labels
    ]
    ratio = stats["push_all"]["median_s"] / base["median_s"]
    return Section(
        name="convergence",
        title=(
            f"convergence: {count} agents enrolled with a real console (runserver, SQLite), "
            f"heartbeat {HEARTBEAT_S} s; {len(push)} revisions per mode (push_bundle; the same "
            "POST from one reused httpx client; pull only), interleaved; seconds from "
            "publish_bundle's return to every agent's /metrics "
            f"showing the revision (polled every {POLL_S * 1000:.0f} ms when pulled); "
            "÷ baseline = median ÷ the baseline's median"
        ),
        columns=[
            ("what", "measurement", ""),
            ("samples", "n", ""),
            ("median_s", "median s", ".3f"),
            ("p90_s", "p90 s", ".3f"),
            ("max_s", "max s", ".3f"),
            ("ratio", "÷ baseline", ".1f"),
        ],
        rows=rows,
        targets=[
            target(
                f"every one of {count} nodes within 5 s by pull (worst revision)",
                stats["pull_all"]["max_s"],
                PULL_TARGET_S,
                "s",
            ),
            target(
                f"every one of {count} nodes within 2 s by push (worst revision)",
                stats["push_all"]["max_s"],
                PUSH_TARGET_S,
                "s",
            ),
        ],
        data={
            "agents": count,
            "heartbeat_interval_s": HEARTBEAT_S,
            "revisions_per_mode": args.revisions,
            "poll_interval_s": POLL_S,
            "baseline": f"one round of GET /v2/health/live to all {count} agents from the same "
            f"{count}-thread pool ({BASELINE_ROUNDS} rounds before each revision)",
            "timing": "from publish_bundle's return; push: push_bundle to every node from the "
            "pool, then its /metrics read; pull: no push, /metrics polled until the heartbeat "
            "answer's revision was fetched; the publish is at a random phase of the heartbeats",
            "ratio_push_all_over_baseline": ratio,
            "ratio_push_reused_client_all_over_baseline": stats["reused_all"]["median_s"]
            / base["median_s"],
            "modes": {
                "push": "fleet.policy_plane.push_bundle(node, record), all nodes at once",
                "push-reused-client": "the same POST from one httpx.Client made once (not the "
                "console's code; push_bundle makes a client per push)",
                "pull": "no push: fetched after the heartbeat answer naming the revision",
            },
            "httpx_client_creation_ms": client_creation_ms(),
            "ratio_pull_all_over_baseline": stats["pull_all"]["median_s"] / base["median_s"],
            "stats_s": stats,
            "baseline_rounds_s": baseline,
            "rounds": rounds,
        },
    )


# --- the run ------------------------------------------------------------------------------------

# Each section is a function of the parsed arguments returning a Section (None: skipped);
# main() runs them in order. A new measurement is appended here.
SECTIONS: list[Callable[[argparse.Namespace], Section | None]] = [
    measure_decision,
    measure_bundle,
    measure_convergence,
]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = base_parser(__doc__.splitlines()[0], duration=5, warmup=1)
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="bundle compile/sign/verify repetitions (default 5; 2 with --quick)",
    )
    parser.add_argument(
        "--tenants", type=int, default=1_000, help="tenants in the decision bundle (default 1000)"
    )
    parser.add_argument(
        "--compile-tenants",
        type=int,
        default=COMPILE_TENANTS,
        help=f"tenants in the compiled bundle (default {COMPILE_TENANTS}; the target is for it)",
    )
    parser.add_argument("--seed", type=int, default=7, help="random seed of the generated fleet")
    parser.add_argument(
        "--no-convergence",
        action="store_true",
        help="skip the convergence section (a console and 20 agents; about a minute)",
    )
    parser.add_argument(
        "--agents",
        type=int,
        default=CONVERGENCE_AGENTS,
        help=f"agents in the convergence section (default {CONVERGENCE_AGENTS}; the targets "
        "are for it)",
    )
    parser.add_argument(
        "--revisions",
        type=int,
        default=None,
        help="new revisions per delivery mode (push, pull) in the convergence section "
        "(default 6; 2 with --quick)",
    )
    args = parser.parse_args(argv)
    resolve_timing(args)
    if args.repeats is None:
        args.repeats = 2 if args.quick else 5
    if args.revisions is None:
        args.revisions = 2 if args.quick else 6
    if args.repeats < 1 or args.tenants < 200 or args.compile_tenants < 1:
        parser.error("--repeats must be >= 1, --tenants >= 200, --compile-tenants >= 1")
    if args.agents < 1 or args.revisions < 1:
        parser.error("--agents and --revisions must be >= 1")
    return args


def print_targets(targets: list[dict[str, Any]]) -> None:
    rows = [
        {
            **t,
            "measured": f"{t['measured']:.3g} {t['unit']}",
            "limit": f"{t['limit']:g} {t['unit']}",
        }
        for t in targets
    ]
    print_table(
        [("target", "target", ""), ("measured", "measured", ""), ("result", "result", "")],
        rows,
        title="targets",
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    output = args.output or RESULTS_DIR / f"{NAME}.json"
    result: dict[str, Any] = {
        "benchmark": NAME,
        "status": "running",
        "machine": machine_info(PACKAGES),
        "parameters": {
            "quick": args.quick,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "repeats": args.repeats,
            "tenants": args.tenants,
            "compile_tenants": args.compile_tenants,
            "seed": args.seed,
            "mix_size": MIX_SIZE,
            "convergence": not args.no_convergence,
            "agents": args.agents,
            "revisions_per_mode": args.revisions,
        },
        "targets": {
            "decision_median_us_below": OPA_REFERENCE_US,
            "decision_median_reference": "OPA, 45 µs per policy evaluation (published figure)",
            "decision_p99_us_below": DECISION_P99_TARGET_US,
            "compile_sign_s_below": COMPILE_SIGN_TARGET_S,
            "convergence_pull_all_s_below": PULL_TARGET_S,
            "convergence_push_all_s_below": PUSH_TARGET_S,
        },
        "sections": {},
        "results": [],
    }

    def body(result: dict) -> None:
        sections = []
        for measure in SECTIONS:
            section = measure(args)
            if section is None:
                continue
            sections.append(section)
            result["sections"][section.name] = section.data
            result["results"] += section.targets
        print()
        for section in sections:
            print_table(section.columns, section.rows, title=section.title)
        print_targets(result["results"])

    return run_recorded(NAME, output, result, body)


if __name__ == "__main__":
    sys.exit(main())
