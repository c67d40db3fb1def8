"""Shared fixtures: a small synthetic dataset built in-process."""
import pytest
import torch

from dien.data.local import build_local_dataset
from dien.data.samples import SampleConfig
from dien.data.synthetic import SyntheticConfig, generate


@pytest.fixture(scope="session", autouse=True)
def _torch_threads():
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def small_dataset():
    """~800 users of the default generator's kind, paper protocol, histories up to 30."""
    events = generate(SyntheticConfig(n_users=800, n_items=200, n_categories=20, min_events=5, max_events=30,
                                      block_size=250, seed=3))
    return build_local_dataset(events, SampleConfig(max_len=30, seed=3))
