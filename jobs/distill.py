"""Distil a teacher DIEN (hidden 108) into a student (hidden 32) on Ray Train, as the paper served it.

    python jobs/distill.py --teacher artifacts/teacher --data data/synthetic --hidden 32 --out artifacts/student
    python jobs/distill.py --mode joint --data data/synthetic --hidden 32 --out artifacts/student
"""
from __future__ import annotations

import argparse
import logging
import sys

from dien.artifacts import ArtifactError
from dien.model import MODELS, ModelConfig
from dien.train.cli import (add_cluster_arguments, add_model_arguments, add_optimization_arguments, cluster_config,
                            default_run_name, format_summary, model_options, train_config)
from dien.train.distill import MODES, DistillJob
from dien.train.distributed import export_artifact, run_training


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="prepared dataset directory")
    parser.add_argument("--teacher", help="teacher artifact (frozen mode)")
    parser.add_argument("--mode", choices=MODES, default="frozen",
                        help="frozen: distil a trained teacher; joint: train teacher and student together")
    parser.add_argument("--hint-weight", type=float, default=DistillJob.hint_weight,
                        help="lambda of the hint loss (default: %(default)s)")
    parser.add_argument("--init-embeddings", action=argparse.BooleanOptionalAction, default=True,
                        help="frozen mode: start the student from a copy of the teacher's embedding tables")
    parser.add_argument("--model", default="dien", choices=list(MODELS), help="the student's model (default: %(default)s)")
    parser.add_argument("--teacher-model", default="dien", choices=list(MODELS),
                        help="joint mode: the teacher's model (default: %(default)s)")
    parser.add_argument("--teacher-hidden", type=int, default=108,
                        help="joint mode: the teacher's hidden size (default: %(default)s)")
    parser.add_argument("--out", required=True, help="student artifact directory")
    add_model_arguments(parser, title="student", defaults=ModelConfig(0, 0, hidden=32))
    add_optimization_arguments(parser)
    add_cluster_arguments(parser, run_name="distill")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.run_name == parser.get_default("run_name"):
        args.run_name = default_run_name(args.model)  # the model's name, not the job's
    print(f"run {args.run_name!r} in {args.storage} (re-run with --run-name {args.run_name} to resume it)")

    try:
        job = DistillJob(
            data=args.data, model=args.model, model_options=model_options(args), train=train_config(args),
            cluster=cluster_config(args), bf16=args.bf16,
            teacher=args.teacher, teacher_model=args.teacher_model,
            teacher_options={"hidden": args.teacher_hidden}, hint_weight=args.hint_weight, mode=args.mode,
            init_embeddings=args.init_embeddings,
        )
        described = job.describe()
        result = run_training(job)
    except (ArtifactError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if result.error:
        print(f"distillation failed: {result.error}", file=sys.stderr)
        return 1
    print(format_summary(result.metrics))
    print(f"student artifact: {export_artifact(job, result, args.out, extra=described)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
