"""Training curves kept with a model: per-epoch (and per-N-step) metrics as JSON and CSV, drawn as a PNG.

A curve is a list of points, each a dict of numbers with at least ``epoch`` (a fractional epoch for the points
written between epochs) and any of ``train_loss``, ``valid_auc``, ``valid_gauc``, ``valid_logloss``.
"""
from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

logger = logging.getLogger(__name__)

CURVES_JSON = "curves.json"
CURVES_CSV = "curves.csv"
CURVES_PNG = "training_curves.png"
PANELS = (("train_loss", "train loss"), ("valid_auc", "validation AUC"), ("valid_gauc", "validation GAUC"))


def numeric_points(points: Sequence[Mapping[str, Any]]) -> list[dict[str, float]]:
    """The points with their numeric fields only (a metrics dict also holds strings such as checksums)."""
    return [{k: float(v) for k, v in point.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            for point in points]


def write_curves(directory: str | Path, points: Sequence[Mapping[str, Any]]) -> list[Path]:
    """Write ``points`` to ``directory`` as curves.json, curves.csv and (with matplotlib) training_curves.png;
    returns the files written."""
    directory = Path(directory)
    rows = numeric_points(points)
    (directory / CURVES_JSON).write_text(json.dumps(rows, indent=1) + "\n")
    columns = sorted({k for row in rows for k in row}, key=lambda k: (k != "epoch", k))
    with open(directory / CURVES_CSV, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    written = [directory / CURVES_JSON, directory / CURVES_CSV]
    if draw_curves({"": rows}, directory / CURVES_PNG):
        written.append(directory / CURVES_PNG)
    return written


def read_curves(directory: str | Path) -> list[dict[str, float]]:
    """The curve written with a model, or [] for a model saved without one."""
    path = Path(directory) / CURVES_JSON
    return json.loads(path.read_text()) if path.exists() else []


def draw_curves(curves: Mapping[str, Sequence[Mapping[str, float]]], path: str | Path) -> bool:
    """Draw each named curve into one figure (a panel per metric of :data:`PANELS`), written to ``path``.
    Returns False, drawing nothing, where matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.info("matplotlib is not installed: %s not drawn (the curves are in %s)", path, CURVES_CSV)
        return False
    figure, axes = plt.subplots(1, len(PANELS), figsize=(4.2 * len(PANELS), 3.4))
    for axis, (key, title) in zip(axes, PANELS):
        for name, points in curves.items():
            xy = [(p["epoch"], p[key]) for p in points if key in p and "epoch" in p]
            if xy:
                xs, ys = zip(*xy)
                axis.plot(xs, ys, marker="o" if key != "train_loss" else None, label=name or None)
        axis.set_title(title)
        axis.set_xlabel("epoch")
        axis.grid(alpha=0.3)
    if any(curves):
        axes[-1].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True
