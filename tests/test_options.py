"""Command-line options from the config dataclasses: flags, defaults and help come from the fields."""
import argparse
import dataclasses
import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from typing import Literal

import pytest

from dien.data.pipeline import PrepareConfig
from dien.data.readers import SourceConfig
from dien.data.samples import SampleConfig
from dien.data.synthetic import SyntheticConfig
from dien.options import add_options, field_docs, from_options
from dien.train.distributed import ClusterConfig
from dien.train.loop import TrainConfig

ROOT = Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class Knobs:
    rate: float = 0.5
    """How fast, per second."""
    dims: tuple[int, ...] = (3, 4)
    """Widths."""
    cap: int | None = None
    """An optional limit."""
    kind: Literal["a", "b"] = "a"
    on: bool = True
    """A switch."""


def test_fields_become_flags_with_their_defaults_docstrings_and_types():
    assert field_docs(Knobs) == {"rate": "How fast, per second.", "dims": "Widths.", "cap": "An optional limit.",
                                 "on": "A switch."}
    parser = argparse.ArgumentParser()
    add_options(parser, Knobs)
    assert from_options(parser.parse_args([]), Knobs) == Knobs()
    args = parser.parse_args(["--rate", "2", "--dims", "7", "8", "9", "--cap", "5", "--kind", "b", "--no-on"])
    assert from_options(args, Knobs) == Knobs(rate=2.0, dims=(7, 8, 9), cap=5, kind="b", on=False)
    assert from_options(parser.parse_args(["--cap", "none"]), Knobs).cap is None
    with pytest.raises(SystemExit):
        parser.parse_args(["--kind", "c"])
    help_text = " ".join(parser.format_help().split())
    assert "How fast, per second. (default: 0.5)" in help_text and "An optional limit. ('none' for None)" in help_text


def test_renamed_prefixed_and_overridden_defaults():
    parser = argparse.ArgumentParser()
    add_options(parser, Knobs, prefix="teacher_", names={"rate": "speed"}, defaults=Knobs(rate=9.0), exclude=("on",))
    args = parser.parse_args(["--teacher-cap", "3"])
    assert args.teacher_rate == 9.0 and args.teacher_cap == 3 and not hasattr(args, "teacher_on")
    assert parser.parse_args(["--speed", "1"]).teacher_rate == 1.0
    assert from_options(args, Knobs, prefix="teacher_", on=False) == Knobs(rate=9.0, cap=3, on=False)


@pytest.mark.parametrize("job", ["train.py", "distill.py"])
def test_the_training_jobs_show_the_libraries_defaults(job):
    help_text = " ".join(subprocess.run([sys.executable, str(ROOT / "jobs" / job), "--help"], capture_output=True,
                                        text=True, check=True).stdout.split())
    for config in (TrainConfig(), ClusterConfig()):
        for spec in dataclasses.fields(config):
            if spec.name in ("run_name",):
                continue
            value = getattr(config, spec.name)
            assert f"(default: {value})" in help_text, f"{job}: {spec.name} should show its default {value}"
    # A run name of the job's kind and the start time, so that runs never share checkpoints by default.
    assert re.search(r"\(default: (dien|distill)-\d{8}-\d{6}\)", help_text), help_text


def _prepare_job():
    spec = importlib.util.spec_from_file_location("prepare_data", ROOT / "jobs" / "prepare_data.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    return job


def test_prepare_data_defaults_are_the_libraries_and_every_flag_reaches_its_config():
    job = _prepare_job()
    config = job.build_config(job.parse_args(["--out", "x"]))
    assert config == PrepareConfig(out="x", source=dataclasses.replace(SourceConfig(), kind="synthetic"))
    args = job.parse_args(["--out", "x", "--protocol", "sliding", "--eval-targets", "4", "--seed", "3",
                           "--min-count", "2", "--partitions", "6", "--users", "50", "--categories", "10",
                           "--taste-step", "0", "--data-seed", "9"])
    config = job.build_config(args)
    assert config.samples == SampleConfig(protocol="sliding", eval_targets=4, seed=3)
    assert (config.min_count, config.partitions) == (2, 6)
    assert config.source.synthetic == SyntheticConfig(n_users=50, n_categories=10, taste_step=0, seed=9)


def test_prepare_data_help_shows_every_sample_and_generator_default():
    help_text = " ".join(subprocess.run([sys.executable, str(ROOT / "jobs" / "prepare_data.py"), "--help"],
                                        capture_output=True, text=True, check=True).stdout.split())
    for config in (SampleConfig(), SyntheticConfig()):
        for spec in dataclasses.fields(config):
            if spec.name in ("n_users", "seed") and isinstance(config, SyntheticConfig):
                continue
            assert f"(default: {getattr(config, spec.name)})" in help_text, spec.name
