"""Shared fixtures: one Ray per test session, small synthetic datasets (in-process and prepared on disk)."""
import logging
import os

import pytest
import ray
import torch

from dien.data.dataset_dir import DatasetDir
from dien.data.local import build_local_dataset
from dien.data.pipeline import PrepareConfig, prepare
from dien.data.readers import SourceConfig
from dien.data.samples import SampleConfig
from dien.data.synthetic import SyntheticConfig, generate
from dien.serve.proxy_guard import PROXY_ENVIRONMENT
from servers import redis_server_in

SMALL_WORLD = SyntheticConfig(n_users=800, n_items=200, n_categories=20, min_events=5, max_events=30,
                              drift=0.3, successors=2, noise=0.05, block_size=250, seed=3)


PROXY_BODY_TIMEOUT_S = 3.0


@pytest.fixture(scope="session", autouse=True)
def _torch_threads():
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def ray_session():
    """One Ray for the whole session, with more logical CPUs than cores so Data's stages never starve; Serve's
    proxies run the request guard, as on the clusters this project starts (a short body deadline, so that the
    held-connection test is quick)."""
    started = not ray.is_initialized()
    if started:
        os.environ.update(PROXY_ENVIRONMENT, DIEN_PROXY_BODY_TIMEOUT_S=str(PROXY_BODY_TIMEOUT_S))
        ray.init(address="local", num_cpus=4, include_dashboard=False, logging_level=logging.WARNING)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    if started:
        ray.shutdown()


@pytest.fixture(scope="session")
def small_dataset():
    """~800 users of the default generator's kind, paper protocol, histories up to 30 (in memory)."""
    return build_local_dataset(generate(SMALL_WORLD), SampleConfig(max_len=30, seed=3))


@pytest.fixture(scope="session")
def long_tail_dataset():
    """Sliding-protocol samples with enough items that min_count 4 sends a tail of them (about 5% of the
    events) to the out-of-vocabulary id."""
    world = SyntheticConfig(n_users=800, n_items=1500, n_categories=20, min_events=5, max_events=30,
                            block_size=400, seed=3)
    return build_local_dataset(generate(world), SampleConfig(protocol="sliding", max_len=30, seed=3), min_count=4)


@pytest.fixture(scope="session")
def prepared_dataset(ray_session, tmp_path_factory) -> DatasetDir:
    """The same kind of data written by the Ray Data pipeline: what training and serving read."""
    out = tmp_path_factory.mktemp("prepared") / "synthetic"
    world = SyntheticConfig(**{**SMALL_WORLD.__dict__, "n_users": 1500, "block_size": 500})
    prepare(PrepareConfig(out=str(out), source=SourceConfig(synthetic=world), samples=SampleConfig(max_len=30),
                          partitions=2))
    return DatasetDir(out)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """A real redis-server for the session (tests keep apart by key prefix)."""
    server = redis_server_in(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()
