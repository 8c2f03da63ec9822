"""Billing background work. Tasks are thin: load, call an action, return."""

from __future__ import annotations

from celery import shared_task

from billing.ingest import refresh_rollups


@shared_task
def refresh_usage_rollups_task() -> int:
    """Recompute the hourly rollups that ingest marked stale; returns how many (tenant, hour)
    pairs. Runs until none is left, a batch at a time."""
    total = 0
    while done := refresh_rollups():
        total += done
    return total


@shared_task
def refresh_drafts_task() -> int:
    """Bring every tenant's draft of its current month up to date; returns how many."""
    from billing.invoicing import draft_all

    return draft_all()
