from django.conf import settings
from django.core.checks import Error, register


@register()
def grading_thresholds_check(app_configs, **kwargs):
    """Bad grading thresholds stop the console at start, not at the first upload."""
    from fleet import grading

    try:
        grading.Thresholds.from_setting(settings.OUTPOST_GRADING or grading.DEFAULT_THRESHOLDS)
    except ValueError as exc:
        return [Error(f"OUTPOST_GRADING: {exc}", id="fleet.E001")]
    return []


@register()
def drift_settings_check(app_configs, **kwargs):
    """Bad drift settings stop the console at start."""
    from fleet.drift_actions import drift_settings

    try:
        drift_settings()
    except (TypeError, ValueError) as exc:
        return [Error(f"OUTPOST_DRIFT: {exc}", id="fleet.E002")]
    return []
