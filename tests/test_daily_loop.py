"""The daily loop end to end on a small MovieLens-shaped log: windows, warm starts with lineage, full
retraining, tests on the next window, the report and its plot. Uses the session's Ray (``ray_session``)."""
import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from dien.artifacts import load_artifact
from dien.bench.daily_loop import DailyLoop, DailyLoopConfig, format_report, window_bounds
from dien.data.samples import SPLITS
from dien.train.loop import TrainConfig

START = 1_500_000_000


@pytest.fixture(scope="module")
def movielens_like(tmp_path_factory):
    """60 users rating 40 movies (4 genres) over 60 days, genre preferences per user: ratings.csv, movies.csv."""
    root = tmp_path_factory.mktemp("ml")
    rng = np.random.default_rng(3)
    rows = ["userId,movieId,rating,timestamp"]
    for user in range(60):
        liked = rng.integers(0, 4)
        for day in sorted(rng.choice(60, size=12, replace=False)):
            genre = liked if rng.random() < 0.8 else rng.integers(0, 4)
            rows.append(f"{user},{int(genre * 10 + rng.integers(0, 10))},4.0,{START + int(day) * 86_400 + user}")
    (root / "ratings.csv").write_text("\n".join(rows) + "\n")
    genres = ["Action|Crime", "Comedy", "Drama|Romance", "Sci-Fi"]
    (root / "movies.csv").write_text("movieId,title,genres\n" + "".join(
        f"{movie},Movie {movie},{genres[movie // 10]}\n" for movie in range(40)))
    return root


def test_windows_hold_equal_numbers_of_events(movielens_like):
    bounds = window_bounds(str(movielens_like / "ratings.csv"), 4)
    timestamps = np.loadtxt(movielens_like / "ratings.csv", delimiter=",", skiprows=1, usecols=3)
    counts = np.histogram(timestamps, bins=bounds)[0]
    assert len(bounds) == 5 and counts.sum() == len(timestamps) and counts.max() - counts.min() <= 12


def test_the_loop_warm_starts_each_window_and_tests_on_the_next(ray_session, movielens_like, tmp_path):
    config = DailyLoopConfig(ratings=str(movielens_like / "ratings.csv"), movies=str(movielens_like / "movies.csv"),
                             windows=3, model="base", workers=1, train=TrainConfig(epochs=2, batch_size=32),
                             max_len=20, eval_targets=1, out=str(tmp_path / "loop"))
    report = DailyLoop(config).run()
    first, compared = report["rows"]
    assert first["window"] == 0 and compared["window"] == 1
    warm, full = (load_artifact(compared[kind]["artifact"]) for kind in ("warm", "full"))
    assert warm.manifest["extra"]["parent"]["version"] == load_artifact(first["warm"]["artifact"]).manifest["version"]
    assert "parent" not in (full.manifest.get("extra") or {})
    assert compared["warm"]["train_samples"] < compared["full"]["train_samples"]
    for key in ("stale_auc", "warm_auc", "full_auc"):
        assert 0 < compared[key] < 1
    summary = report["summary"]
    assert summary["mean_auc_gap_full_minus_warm"] == pytest.approx(compared["full_auc"] - compared["warm_auc"])
    assert summary["mean_time_share_warm_of_full"] == pytest.approx(
        compared["warm"]["train_seconds"] / compared["full"]["train_seconds"])

    loop = DailyLoop(config)
    windows = [loop.dataset(f"window{i}", i, i) for i in range(3)]
    for earlier, later in zip(windows, windows[1:]):  # each window's vocabulary extends the one before
        old, new = earlier.vocabularies().item.tokens.to_pylist(), later.vocabularies().item.tokens.to_pylist()
        assert new[:len(old)] == old
    tested = pa.concat_tables(windows[2].read_split(split) for split in SPLITS)
    assert pc.min(tested.column("timestamp")).as_py() >= report["bounds"][2]
    assert json.loads((tmp_path / "loop" / "daily_loop.json").read_text())["rows"][1]["window"] == 1
    assert (tmp_path / "loop" / "daily_loop.png").stat().st_size > 0
    assert "full - warm AUC" in format_report(report)
