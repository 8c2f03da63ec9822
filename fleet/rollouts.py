"""Rollout decisions as pure functions over plain data.

A deployment moves a model version onto a selector of nodes in steps (canary 5 % → 25 % →
100 %, or all at once). At each step the new version takes that share of the model's traffic
on the selected nodes and the previous version the rest. After the step's soak time the
health gates compare the new version with the previous one over the step's traffic; passing
moves to the next step, failing rolls back. fleet.actions applies these decisions and
fleet.tasks.advance_rollouts_task runs them every few seconds.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from itertools import pairwise


class Decision(StrEnum):
    WAIT = "wait"
    ADVANCE = "advance"
    COMPLETE = "complete"
    ROLL_BACK = "roll_back"


@dataclass(frozen=True)
class Gates:
    # The new version may fail at most this much more often than the previous (absolute).
    max_error_rate_increase: float = 0.02
    # … and be at most this many times slower at p95.
    max_p95_ratio: float = 1.5
    # A step is judged only once the new version has served this many requests in it.
    min_requests: int = 50


@dataclass(frozen=True)
class VersionHealth:
    """One version's traffic during the current step, summed over the deployment's nodes."""

    requests: int = 0
    errors: int = 0
    p95_ms: float | None = None

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


@dataclass(frozen=True)
class GateResult:
    passed: bool
    judged: bool  # False while there is too little traffic to judge
    reason: str


def parse_steps(text: str) -> list[int]:
    """ "5, 25, 100" → [5, 25, 100]; strictly increasing percentages ending at 100."""
    try:
        steps = [int(part) for part in text.replace("%", "").split(",") if part.strip()]
    except ValueError:
        raise ValueError(
            "steps are whole percentages separated by commas, e.g. 5, 25, 100"
        ) from None
    if not steps or steps[-1] != 100:
        raise ValueError("the last step must be 100 %")
    if any(not 0 < s <= 100 for s in steps) or any(a >= b for a, b in pairwise(steps)):
        raise ValueError("steps must increase from above 0 to 100, e.g. 5, 25, 100")
    return steps


def check_gates(new: VersionHealth, old: VersionHealth | None, gates: Gates) -> GateResult:
    if new.requests < gates.min_requests:
        return GateResult(True, False, f"{new.requests} of {gates.min_requests} requests so far")
    baseline_rate = old.error_rate if old is not None else 0.0
    if new.error_rate - baseline_rate > gates.max_error_rate_increase:
        return GateResult(
            False,
            True,
            f"error rate {new.error_rate:.1%} against {baseline_rate:.1%} for the previous "
            f"version (allowed increase {gates.max_error_rate_increase:.1%})",
        )
    if old is not None and old.p95_ms and new.p95_ms is not None:
        if new.p95_ms > old.p95_ms * gates.max_p95_ratio:
            return GateResult(
                False,
                True,
                f"p95 {new.p95_ms:.1f} ms against {old.p95_ms:.1f} ms for the previous version "
                f"(allowed ×{gates.max_p95_ratio:g})",
            )
    return GateResult(
        True, True, f"{new.requests} requests, error rate {new.error_rate:.1%}: gates pass"
    )


def decide(
    *,
    now: datetime,
    step_started_at: datetime,
    soak: timedelta,
    is_last_step: bool,
    gate: GateResult,
) -> tuple[Decision, str]:
    """What a rolling deployment does next, and why."""
    if not gate.passed:
        return Decision.ROLL_BACK, f"health gate failed: {gate.reason}"
    if now - step_started_at < soak:
        return Decision.WAIT, "soaking"
    if not gate.judged:
        return Decision.WAIT, f"waiting for traffic: {gate.reason}"
    if is_last_step:
        return Decision.COMPLETE, f"soaked at 100 %: {gate.reason}"
    return Decision.ADVANCE, f"soaked: {gate.reason}"


def step_health(
    reports: Iterable[Mapping], baseline: Mapping[str, Mapping[str, int]], sha256: str
) -> VersionHealth:
    """A version's requests and errors since the step began, from the nodes' reported
    per-version totals (`models_loaded` rows) minus the totals recorded when the step began.
    p95 is the worst node's last-minute p95 (a conservative merge of percentiles)."""
    requests = errors = 0
    p95s: list[float] = []
    for row in reports:
        if row.get("sha256") != sha256:
            continue
        requests += int(row.get("requests_total") or 0)
        errors += int(row.get("errors_total") or 0)
        if row.get("latency_p95_ms") is not None:
            p95s.append(float(row["latency_p95_ms"]))
    start = baseline.get(sha256, {})
    # An agent restart resets its totals; never count below zero.
    return VersionHealth(
        requests=max(0, requests - int(start.get("requests", 0))),
        errors=max(0, errors - int(start.get("errors", 0))),
        p95_ms=max(p95s) if p95s else None,
    )


def totals(reports: Iterable[Mapping]) -> dict[str, dict[str, int]]:
    """Per-sha256 request and error totals over the given `models_loaded` rows."""
    result: dict[str, dict[str, int]] = {}
    for row in reports:
        entry = result.setdefault(row["sha256"], {"requests": 0, "errors": 0})
        entry["requests"] += int(row.get("requests_total") or 0)
        entry["errors"] += int(row.get("errors_total") or 0)
    return result


def _dims_agree(a: list[int], b: list[int]) -> bool:
    return len(a) == len(b) and all(x == y or -1 in (x, y) for x, y in zip(a, b, strict=True))


def signature_problems(new: Mapping, old: Mapping) -> list[str]:
    """Why clients of the old version would break on the new one, which takes a share of the
    same model name's traffic: every input the new one needs must be one the old one took
    (same datatype, compatible shape), and every output of the old one must still be there.
    `new` and `old` hold `inputs` and `outputs` lists of {name, datatype, shape}."""
    problems = []
    old_inputs = {t["name"]: t for t in old["inputs"]}
    for tensor in new["inputs"]:
        before = old_inputs.get(tensor["name"])
        if before is None:
            problems.append(f"input '{tensor['name']}' is new: clients do not send it")
        elif before["datatype"] != tensor["datatype"]:
            problems.append(
                f"input '{tensor['name']}' is {tensor['datatype']}, was {before['datatype']}"
            )
        elif not _dims_agree(tensor["shape"], before["shape"]):
            problems.append(
                f"input '{tensor['name']}' has shape {tensor['shape']}, was {before['shape']}"
            )
    new_outputs = {t["name"]: t for t in new["outputs"]}
    for tensor in old["outputs"]:
        after = new_outputs.get(tensor["name"])
        if after is None:
            problems.append(f"output '{tensor['name']}' is gone: clients may ask for it")
        elif after["datatype"] != tensor["datatype"]:
            problems.append(
                f"output '{tensor['name']}' is {after['datatype']}, was {tensor['datatype']}"
            )
    return problems
