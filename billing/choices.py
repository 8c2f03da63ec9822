from django.db import models


class MemberRole(models.TextChoices):
    OWNER = "owner", "Owner"
    DEVELOPER = "developer", "Developer"
    VIEWER = "viewer", "Viewer"


class PriceGrade(models.TextChoices):
    """The workload grades prices are set for. The same words as fleet.choices.Grade (billing
    may not import fleet): usage records carry the grade as a word, and rating matches on it."""

    TINY = "tiny", "Tiny"
    MEDIUM = "medium", "Medium"
    LARGE = "large", "Large"


class Serving(models.TextChoices):
    """Where a request was served (the usage record's `served_by`): regional is dearer."""

    LOCAL = "local", "Local"
    REGIONAL = "regional", "Regional"


class PriceState(models.TextChoices):
    """Where a row of the price book stands at a moment (derived, not stored)."""

    IN_EFFECT = "in_effect", "in effect"
    SCHEDULED = "scheduled", "scheduled"
    SUPERSEDED = "superseded", "superseded"


PRICE_STATE_BADGE = {
    PriceState.IN_EFFECT: "success",
    PriceState.SCHEDULED: "info",
    PriceState.SUPERSEDED: "secondary",
}
