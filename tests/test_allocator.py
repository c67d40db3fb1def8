"""retain_freed_memory: scoring stops page-faulting its large buffers in again on every batch (Linux, glibc)."""
import subprocess
import sys

import pytest

STEP_AND_COUNT_FAULTS = """
import ctypes, resource, statistics, sys, torch
ctypes.CDLL(None).prctl(41, 1, 0, 0, 0)  # PR_SET_THP_DISABLE: faults counted in 4 KiB pages whatever the kernel's THP
from dien.allocator import retain_freed_memory
from dien.bench.kernel_cases import forward_backward, make_inputs
if sys.argv[1] == "retain":
    assert retain_freed_memory()
torch.set_num_threads(1)
case = make_inputs(2048, 100, 32, 32, full_lengths=True)  # every buffer as large as the shapes say
def faults_of_one_step():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    forward_backward("augru", case, "cpu")
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
# The heap settles within a few steps; after that a retained heap still grows now and then by one step's
# worth (measured: 19,200 faults in one step of ten, 0 in the others), so the median step is compared.
for _ in range(6):
    faults_of_one_step()
print(statistics.median(faults_of_one_step() for _ in range(9)))
"""


def page_faults(mode: str) -> int:
    done = subprocess.run([sys.executable, "-c", STEP_AND_COUNT_FAULTS, mode], capture_output=True, text=True,
                          check=True)
    return int(float(done.stdout.split()[-1]))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_large_buffers_reuse_freed_memory_instead_of_faulting_it_in_again():
    # An AUGRU forward and backward over 2048 rows x 100 steps: saved gates of 100 MB and more buffers above glibc's
    # largest mmap threshold (32 MiB), which its defaults mmap and unmap on every allocation, so every step faults
    # them in page by page. (Below 32 MiB glibc's threshold adapts after a few frees and the faults stop anyway.)
    default, retained = page_faults("default"), page_faults("retain")
    # Measured per step: 25,000-70,000 faults with glibc's defaults, a median of 0 retained.
    assert default > 5_000
    assert retained < default / 10
