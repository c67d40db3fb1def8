"""What :func:`dien.allocator.retain_freed_memory` buys a scorer: offline candidates/s of DIEN models with glibc's
default allocator and with the setting, each measured in a fresh process (the setting is process-wide and
cannot be undone), on one core, 16 requests x 100 candidates with histories of up to 100 behaviors
(``jobs/bench_allocator.py``)."""
from __future__ import annotations

import subprocess
import sys

import torch

from dien.allocator import retain_freed_memory
from dien.bench.kernels import random_batch
from dien.bench.scoring_cost import candidates_per_second
from dien.model import ModelConfig, build_model

MODES = ("default", "retain")


def score(mode: str, hidden: int, repeats: int = 5) -> float:
    """Candidates/s of a random DIEN of ``hidden`` in this process, after applying ``mode``."""
    if mode == "retain" and not retain_freed_memory():
        raise RuntimeError("mallopt is not available here (not glibc)")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_model("dien", ModelConfig(10_000, 100, hidden=hidden))
    batch = random_batch(16, 100, 10_000, 100, torch.Generator().manual_seed(0))
    return candidates_per_second(model, batch, candidates_per_request=100, repeats=repeats)


def score_in_fresh_process(mode: str, hidden: int) -> float:
    done = subprocess.run([sys.executable, "-m", "dien.bench.allocator", mode, str(hidden)], capture_output=True,
                          text=True, check=True)
    return float(done.stdout.split()[-1])


if __name__ == "__main__":
    print(score(sys.argv[1], int(sys.argv[2])))
