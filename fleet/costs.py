"""The node class cost model, as pure arithmetic over Decimals.

An hour of a node costs its amortised capital plus its energy at the expected utilisation:
    capex / (amortisation_months × hours per month)
  + (idle_W + (peak_W − idle_W) × utilisation) / 1000 × price per kWh
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

HOURS_PER_MONTH = Decimal("730")  # 8,760 h / 12, the usual convention for monthly rates


@dataclass(frozen=True)
class CostModel:
    capex: Decimal
    amortisation_months: int
    idle_watts: Decimal
    peak_watts: Decimal
    energy_price_per_kwh: Decimal
    expected_utilisation: Decimal


def watts_at(model: CostModel, utilisation: Decimal) -> Decimal:
    return model.idle_watts + (model.peak_watts - model.idle_watts) * utilisation


def hourly_cost(model: CostModel, utilisation: Decimal | None = None) -> Decimal:
    if utilisation is None:
        utilisation = model.expected_utilisation
    capital = model.capex / (model.amortisation_months * HOURS_PER_MONTH)
    energy = watts_at(model, utilisation) / 1000 * model.energy_price_per_kwh
    return capital + energy


def monthly_cost(model: CostModel) -> Decimal:
    return hourly_cost(model) * HOURS_PER_MONTH
