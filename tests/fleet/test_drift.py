"""The drift arithmetic (fleet/drift.py): PSI, merging windows, and when drift is sustained."""

import math

import pytest

from fleet.drift import (
    DriftSettings,
    Summary,
    compared_bins,
    judge,
    level,
    merge,
    psi,
    summary_psi,
    value_bin_labels,
)


def classes(*counts, rows=None):
    return {"rows": rows if rows is not None else sum(counts), "classes": list(counts)}


def values(name, histogram, mean=0.0):
    return {
        "rows": sum(histogram),
        "values": [{"name": name, "mean": mean, "histogram": histogram}],
    }


def test_the_same_distribution_has_no_drift_whatever_the_volume():
    assert psi([100, 200, 700], [100, 200, 700]) == pytest.approx(0.0)
    assert psi([10, 20, 70], [100, 200, 700]) == pytest.approx(0.0, abs=1e-3)  # smoothing


def test_psi_matches_the_formula_with_half_a_row_of_smoothing():
    expected, actual = [49.5, 49.5], [79.5, 19.5]  # + 0.5 each: 50/100 and 80/100
    by_hand = (0.8 - 0.5) * math.log(0.8 / 0.5) + (0.2 - 0.5) * math.log(0.2 / 0.5)
    assert psi(expected, actual) == pytest.approx(by_hand)


def test_a_class_that_appears_from_nowhere_counts_but_finitely():
    value = psi([100, 0], [50, 50])
    assert 1 < value < 10


def test_lists_of_different_lengths_are_padded_and_empty_sides_give_zero():
    assert psi([10, 10], [10, 10, 0, 0]) == pytest.approx(0.0)
    assert psi([], [1, 2]) == 0.0


def test_windows_merge_across_nodes_and_minutes():
    summary = merge([classes(1, 2), classes(3, 0, 5), {"rows": 0, "classes": None}])
    assert summary.kind == "classes" and summary.rows == 11
    assert summary.classes == [4, 2, 5]


def test_value_windows_merge_histograms_and_weight_means_by_rows():
    summary = merge([values("y", [1, 1, 0], mean=1.0), values("y", [0, 0, 2], mean=4.0)])
    assert summary.values["y"][0] == [1, 1, 2]
    assert summary.means()["y"] == pytest.approx(2.5)


def test_a_window_of_the_other_kind_is_ignored():
    summary = merge([classes(1, 1), values("y", [5])])
    assert summary.kind == "classes" and summary.rows == 2


def test_summaries_survive_a_round_trip_through_json():
    summary = merge([values("y", [1, 2, 3], mean=2.0)])
    assert Summary.from_json(summary.to_json()) == summary


def test_summary_psi_takes_the_worst_output_and_refuses_to_compare_apples_and_pears():
    base = merge(
        [
            {
                "rows": 100,
                "values": [
                    {"name": "a", "mean": 0, "histogram": [50, 50]},
                    {"name": "b", "mean": 0, "histogram": [50, 50]},
                ],
            }
        ]
    )
    now = merge(
        [
            {
                "rows": 100,
                "values": [
                    {"name": "a", "mean": 0, "histogram": [50, 50]},
                    {"name": "b", "mean": 0, "histogram": [90, 10]},
                ],
            }
        ]
    )
    assert summary_psi(base, now) == pytest.approx(
        psi([50, 50], [90, 10]) - (2 - 1) * (1 / 100 + 1 / 100)
    )
    assert summary_psi(base, merge([classes(1, 2)])) is None
    assert summary_psi(Summary(), now) is None


SETTINGS = DriftSettings(threshold=0.25, sustained_minutes=3)


def test_drift_is_sustained_only_after_enough_judged_minutes_in_a_row():
    assert judge([(1, 0.5), (2, 0.6)], SETTINGS).sustained is False
    verdict = judge([(1, 0.5), (2, None), (3, 0.6), (4, 0.7)], SETTINGS)
    assert verdict.sustained and verdict.latest == 0.7
    assert "3 minutes in a row" in verdict.reason
    assert judge([(1, 0.5), (2, 0.1), (3, 0.6)], SETTINGS).sustained is False


def test_without_judged_minutes_there_is_no_verdict():
    verdict = judge([(1, None)], SETTINGS)
    assert verdict.latest is None and "no minute" in verdict.reason


@pytest.mark.parametrize(
    "settings",
    [{"threshold": 0}, {"sustained_minutes": 0}, {"min_rows": 0}, {"baseline_minutes": 0}],
)
def test_bad_settings_are_refused(settings):
    with pytest.raises(ValueError):
        DriftSettings(**settings)


def test_levels_follow_the_usual_reading_and_the_threshold():
    assert [level(v) for v in (None, 0.05, 0.2, 0.3)] == [
        "unknown",
        "none",
        "moderate",
        "significant",
    ]
    assert level(0.2, threshold=0.15) == "significant"


def test_the_chart_compares_class_shares_or_the_worst_outputs_value_bins():
    title, labels, base, now = compared_bins(
        merge([classes(50, 50)]), merge([classes(10, 80, 10)]), edges=(0.0,), max_classes=2
    )
    assert title == "top class" and labels == ["class 0", "class 1", "other"]
    assert base == [0.5, 0.5, 0.0] and now == [0.1, 0.8, 0.1]
    title, labels, _, _ = compared_bins(
        merge([values("y", [1, 1])]), merge([values("y", [2, 0])]), edges=(0.0,), max_classes=2
    )
    assert title == "values of output 'y'" and labels == value_bin_labels((0.0,)) == [
        "< 0",
        "≥ 0",
    ]


def test_the_noise_of_small_samples_is_taken_out():
    import numpy as np

    from fleet.drift import corrected_psi, sampling_noise

    rng = np.random.default_rng(0)
    shares = np.full(16, 1 / 16)
    raw, corrected = [], []
    for _ in range(200):  # two small samples of the same 16-class distribution
        a = np.bincount(rng.choice(16, 30, p=shares), minlength=16).tolist()
        b = np.bincount(rng.choice(16, 300, p=shares), minlength=16).tolist()
        raw.append(psi(b, a))
        corrected.append(corrected_psi(b, a))
    assert np.mean(raw) > 0.25  # alone, noise would look like significant drift
    assert np.mean(corrected) < 0.1
    assert sampling_noise([50, 50], [0, 0]) == 0.0 and sampling_noise([100], [100]) == 0.0


def test_a_real_shift_survives_the_correction():
    from fleet.drift import corrected_psi

    assert corrected_psi([500, 500], [900, 100]) > 0.25
