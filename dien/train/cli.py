"""Command-line options shared by the training jobs (train, distill), and the configs they map to."""
from __future__ import annotations

import argparse

from dien.train.distributed import ClusterConfig
from dien.train.loop import TrainConfig


def add_optimization_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("optimization")
    group.add_argument("--epochs", type=int, default=2)
    group.add_argument("--batch-size", type=int, default=128, help="samples per step and worker")
    group.add_argument("--lr", type=float, default=1e-3)
    group.add_argument("--lr-decay", type=float, default=0.5, help="learning-rate multiplier per epoch")
    group.add_argument("--grad-clip", type=float, default=None, help="clip the global gradient norm")
    group.add_argument("--aux-weight", type=float, default=1.0, help="alpha of the auxiliary loss")
    group.add_argument("--patience", type=int, default=None,
                       help="early stopping: stop after N epochs without a better validation AUC and keep the "
                            "best epoch's weights (default: train every epoch, keep the last)")
    group.add_argument("--seed", type=int, default=0)
    group.add_argument("--length-buckets", type=int, default=0,
                       help="batch samples of similar history length, sorting groups of N batches (0: off)")
    group.add_argument("--shuffle-window", type=int, default=TrainConfig.shuffle_window,
                       help="samples per worker shuffled together each epoch (held in memory together)")
    group.add_argument("--bf16", action="store_true", help="bf16 autocast (GPU only)")


def add_cluster_arguments(parser: argparse.ArgumentParser, run_name: str) -> None:
    group = parser.add_argument_group("cluster")
    group.add_argument("--workers", type=int, default=2, help="Ray Train workers (DDP ranks)")
    group.add_argument("--cpus-per-worker", type=float, default=1.0)
    group.add_argument("--gpu", action="store_true", help="one GPU per worker (NCCL)")
    group.add_argument("--run-name", default=run_name, help="re-running with the same name resumes")
    group.add_argument("--storage", default="runs/train", help="checkpoint and run-state directory")
    group.add_argument("--max-failures", type=int, default=1, help="worker-group restarts allowed")
    group.add_argument("--checkpoint-every", type=int, default=0, help="also checkpoint every N steps")


def train_config(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, lr_decay=args.lr_decay,
                       aux_weight=args.aux_weight, grad_clip=args.grad_clip, patience=args.patience,
                       seed=args.seed, shuffle_window=args.shuffle_window, length_buckets=args.length_buckets)


def cluster_config(args: argparse.Namespace) -> ClusterConfig:
    return ClusterConfig(workers=args.workers, cpus_per_worker=args.cpus_per_worker, gpu=args.gpu,
                         storage=args.storage, run_name=args.run_name, max_failures=args.max_failures,
                         checkpoint_every_steps=args.checkpoint_every)


def format_summary(metrics: dict) -> str:
    """The final report of a training run, one line."""
    keys = ("epoch", "best_epoch", "global_step", "resumed_from_step", "samples_per_second", "valid_auc",
            "valid_auc_se", "valid_gauc", "valid_logloss", "test_auc", "test_auc_se", "test_gauc", "test_logloss")
    return "final: " + ", ".join(f"{k} {metrics[k]:.4f}" if isinstance(metrics[k], float) else f"{k} {metrics[k]}"
                                 for k in keys if k in metrics)
