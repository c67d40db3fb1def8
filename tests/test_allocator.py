"""retain_freed_memory: scoring stops page-faulting its large buffers in again on every batch (Linux, glibc)."""
import subprocess
import sys

import pytest

SCORE_AND_COUNT_FAULTS = """
import resource, sys, torch
from dien.allocator import retain_freed_memory
from dien.bench.kernels import random_batch
from dien.model import ModelConfig, build_model
from dien.bench.scoring_cost import candidates_per_second
if sys.argv[1] == "retain":
    assert retain_freed_memory()
torch.set_num_threads(1)
model = build_model("dien", ModelConfig(1000, 30, hidden=32))
batch = random_batch(16, 100, 1000, 30, torch.Generator().manual_seed(0))
def faults_of_one_scoring():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    candidates_per_second(model, batch, candidates_per_request=100, repeats=1)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
faults_of_one_scoring()
print(sum(faults_of_one_scoring() for _ in range(3)))
"""


def scoring_page_faults(mode: str) -> int:
    done = subprocess.run([sys.executable, "-c", SCORE_AND_COUNT_FAULTS, mode], capture_output=True, text=True,
                          check=True)
    return int(done.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_scoring_reuses_freed_memory_instead_of_faulting_it_in_again():
    # 16 requests x 100 candidates x 100 steps: buffers of tens of MB, which glibc's defaults mmap and unmap
    # on every allocation, so every scoring pass faults them in page by page.
    default, retained = scoring_page_faults("default"), scoring_page_faults("retain")
    assert default > 100_000
    assert retained < default / 10  # an order of magnitude; the exact count varies with what else runs
