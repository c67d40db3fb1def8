"""AUC, GAUC and logloss against hand-computed values."""
import math

import numpy as np
import pytest

from dien.train.metrics import auc, auc_standard_error, gauc, logloss, ranking_metrics


def test_auc_counts_pairs_and_half_credits_ties():
    labels = np.array([1, 0, 1, 0, 1])
    scores = np.array([0.9, 0.8, 0.8, 0.1, 0.3])
    # Positive/negative pairs: (0.9>0.8) 1, (0.9>0.1) 1, (0.8=0.8) 0.5, (0.8>0.1) 1, (0.3<0.8) 0, (0.3>0.1) 1.
    assert auc(labels, scores) == pytest.approx(4.5 / 6)


def test_auc_extremes_and_one_class():
    assert auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert auc([1, 1, 0, 0], [0.1, 0.2, 0.3, 0.4]) == 0.0
    assert auc([1, 0, 1, 0], [0.5, 0.5, 0.5, 0.5]) == 0.5
    assert math.isnan(auc([1, 1], [0.2, 0.3]))


def test_gauc_weights_users_by_samples_and_skips_one_class_users():
    users = np.array([7, 7, 7, 7, 3, 3, 9])
    labels = np.array([1, 0, 0, 1, 1, 0, 1])
    scores = np.array([0.9, 0.1, 0.5, 0.4, 0.2, 0.6, 0.5])
    # user 7: pairs (0.9>0.1, 0.9>0.5, 0.4>0.1, 0.4<0.5) = 3/4 with weight 4; user 3: 0 with weight 2; user 9 skipped.
    assert gauc(users, labels, scores) == pytest.approx((0.75 * 4 + 0.0 * 2) / 6)


def test_logloss_by_hand():
    expected = -(math.log(0.8) + math.log(1 - 0.3)) / 2
    assert logloss([1, 0], [0.8, 0.3]) == pytest.approx(expected)
    assert math.isfinite(logloss([1, 0], [0.0, 1.0]))


def test_auc_standard_error_matches_the_spread_of_repeated_test_sets():
    rng = np.random.default_rng(0)
    positives, negatives = 300, 500
    draws = [auc(np.r_[np.ones(positives), np.zeros(negatives)],
                 np.r_[rng.normal(1.0, 1.0, positives), rng.normal(0.0, 1.0, negatives)]) for _ in range(400)]
    predicted = auc_standard_error(float(np.mean(draws)), positives, negatives)
    assert abs(predicted / np.std(draws) - 1) < 0.15
    assert auc_standard_error(0.7, 4000, 4000) < auc_standard_error(0.7, 400, 400) / 3
    assert np.isnan(auc_standard_error(0.7, 0, 10))
    metrics = ranking_metrics(np.zeros(4), np.array([1, 0, 1, 0]), np.array([0.9, 0.1, 0.8, 0.3]))
    assert metrics["auc"] == 1.0 and metrics["auc_se"] == 0.0
