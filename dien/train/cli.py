"""Command-line options shared by the training jobs (train, distill): the model, training and cluster configs'
own fields, their defaults and their docstrings (``dien.options``), so ``--help`` always shows the library's
defaults."""
from __future__ import annotations

import argparse
import time
from typing import Any

from dien.model import ModelConfig
from dien.options import add_options, from_options
from dien.train.distributed import ClusterConfig
from dien.train.loop import TrainConfig

MODEL_FIXED = ("n_items", "n_cats", "evolution", "use_aux")
"""ModelConfig fields a job does not take: the dataset gives the vocabulary sizes, the model name the rest."""


def add_model_arguments(parser: argparse.ArgumentParser, prefix: str = "", title: str = "model",
                        defaults: ModelConfig | None = None) -> None:
    add_options(parser.add_argument_group(f"{title} (ModelConfig)"), ModelConfig, exclude=MODEL_FIXED, prefix=prefix,
                defaults=defaults)


def model_options(args: argparse.Namespace, prefix: str = "") -> dict[str, Any]:
    """The ModelConfig fields given on the command line (everything but the vocabulary sizes)."""
    config = from_options(args, ModelConfig, prefix=prefix, n_items=0, n_cats=0)
    return {key: value for key, value in config.to_dict().items() if key not in MODEL_FIXED}


def add_optimization_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("optimization (TrainConfig)")
    add_options(group, TrainConfig)
    group.add_argument("--bf16", action="store_true", help="bf16 autocast of the forward (GPU only)")


def default_run_name(kind: str) -> str:
    """A run name that a later run does not collide with: the kind of run and its start time."""
    return f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}"


def add_cluster_arguments(parser: argparse.ArgumentParser, run_name: str) -> None:
    """The ClusterConfig options; ``--run-name`` defaults to :func:`default_run_name` of ``run_name``, so a
    run resumes only when named again explicitly."""
    group = parser.add_argument_group("cluster (ClusterConfig)")
    add_options(group, ClusterConfig, defaults=ClusterConfig(run_name=default_run_name(run_name)),
                names={"checkpoint_every_steps": "checkpoint_every"})


def train_config(args: argparse.Namespace) -> TrainConfig:
    return from_options(args, TrainConfig)


def cluster_config(args: argparse.Namespace) -> ClusterConfig:
    return from_options(args, ClusterConfig)


def format_summary(metrics: dict) -> str:
    """The final report of a training run, one line."""
    keys = ("epoch", "best_epoch", "global_step", "resumed_from_step", "samples_per_second", "valid_auc",
            "valid_auc_se", "valid_gauc", "valid_logloss", "test_auc", "test_auc_se", "test_gauc", "test_logloss")
    return "final: " + ", ".join(f"{k} {metrics[k]:.4f}" if isinstance(metrics[k], float) else f"{k} {metrics[k]}"
                                 for k in keys if k in metrics)
