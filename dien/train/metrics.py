"""Exact ranking and calibration metrics over a whole evaluation set (never batch averages)."""
from __future__ import annotations

import numpy as np


def _average_ranks(scores: np.ndarray) -> np.ndarray:
    """1-based ranks of ``scores``; tied scores share the mean of their ranks."""
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    starts = np.concatenate([[True], sorted_scores[1:] != sorted_scores[:-1]])
    group = np.cumsum(starts) - 1
    first = np.flatnonzero(starts)
    last = np.concatenate([first[1:], [len(scores)]]) - 1
    ranks = np.empty(len(scores), dtype=np.float64)
    ranks[order] = (first[group] + last[group]) / 2.0 + 1.0
    return ranks


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve: P(score of a positive > score of a negative), ties counting 1/2.

    NaN when only one class is present.
    """
    labels = np.asarray(labels) > 0.5
    scores = np.asarray(scores, dtype=np.float64)
    positives = int(labels.sum())
    negatives = len(labels) - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    rank_sum = _average_ranks(scores)[labels].sum()
    return float((rank_sum - positives * (positives + 1) / 2.0) / (positives * negatives))


def auc_standard_error(value: float, positives: int, negatives: int) -> float:
    """Standard error of an AUC over ``positives`` and ``negatives`` samples (Hanley & McNeil, 1982):
    how far the AUC of another draw of a test set this size would typically land. NaN without both classes."""
    if positives == 0 or negatives == 0 or np.isnan(value):
        return float("nan")
    q1, q2 = value / (2 - value), 2 * value**2 / (1 + value)
    variance = (value * (1 - value) + (positives - 1) * (q1 - value**2)
                + (negatives - 1) * (q2 - value**2)) / (positives * negatives)
    return float(np.sqrt(max(variance, 0.0)))


def gauc(users: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> float:
    """Group AUC (DIN paper): per-user AUC averaged with weights = the user's number of samples.

    Users whose samples are all one class have no AUC and are left out. NaN when no user has both classes.
    """
    users = np.asarray(users)
    order = np.argsort(users, kind="mergesort")
    users, labels, scores = users[order], np.asarray(labels)[order], np.asarray(scores)[order]
    bounds = np.flatnonzero(users[1:] != users[:-1]) + 1
    total, weight = 0.0, 0
    for start, stop in zip(np.concatenate([[0], bounds]), np.concatenate([bounds, [len(users)]])):
        user_auc = auc(labels[start:stop], scores[start:stop])
        if not np.isnan(user_auc):
            total += user_auc * (stop - start)
            weight += stop - start
    return float(total / weight) if weight else float("nan")


def logloss(labels: np.ndarray, probabilities: np.ndarray, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy of click probabilities, clipped to [eps, 1 - eps]."""
    p = np.clip(np.asarray(probabilities, dtype=np.float64), eps, 1 - eps)
    y = np.asarray(labels, dtype=np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def ranking_metrics(users: np.ndarray, labels: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    """AUC (with its standard error ``auc_se``), GAUC and logloss of one evaluation set."""
    positives = int((np.asarray(labels) > 0.5).sum())
    value = auc(labels, probabilities)
    return {
        "auc": value,
        "auc_se": auc_standard_error(value, positives, len(labels) - positives),
        "gauc": gauc(users, labels, probabilities),
        "logloss": logloss(labels, probabilities),
    }
