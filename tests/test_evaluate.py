"""Evaluation helpers: accuracy against labels and the judge, calibration and ECE."""

import math

import pytest

from rrhf_lite.evaluate import calibration, gold_agreement, pairwise_accuracy


def test_accuracies():
    assert pairwise_accuracy([2, 1, 0], [1, 2, -1]) == pytest.approx(2 / 3)
    # The reward model orders pair 1 like the judge, pair 2 not.
    assert gold_agreement([2, 0], [1, 1], [5, 3], [0, 0]) == pytest.approx(0.5)


def test_calibration_is_symmetric_and_ece_hand_value():
    # One comparison with gap ln 3: predicted 0.75 for the chosen reply (outcome 1) and 0.25 reversed (outcome 0).
    cal = calibration([math.log(3)], [0.0], bins=4)
    assert cal.predicted == pytest.approx([0.25, 0.75]) and cal.observed == [0.0, 1.0] and cal.counts == [1, 1]
    assert cal.ece == pytest.approx(0.25)


def test_well_calibrated_synthetic_model_has_small_ece():
    # Gaps drawn so that outcome frequencies match sigmoid(gap): 3 of 4 pairs at gap ln 3 say chosen > rejected.
    chosen, rejected = [math.log(3)] * 3 + [0.0], [0.0] * 3 + [math.log(3)]
    assert calibration(chosen, rejected, bins=4).ece == pytest.approx(0.0)
