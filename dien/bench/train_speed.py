"""Training samples/s of our DIEN against DeepCTR-Torch's at the same shapes (``jobs/bench_train_speed.py``).

Both train DIEN with AUGRU and the auxiliary loss (hidden = 36, the embeddings' width) for one epoch over the same
random samples (histories of lengths uniform in 1..100, padded to 100; batch 128), each through its own training
loop as a user runs it: ours through ``fit`` (batching, collation, the step) with the default settings and
once with length-bucketed batches (less padding; an option, since it cost validation AUC on MovieLens),
DeepCTR-Torch through ``model.fit``. The variants are timed in interleaved rounds and each keeps
its best round, so a busy machine slows them alike.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import pyarrow as pa
import torch

from dien.bench import peers
from dien.data.samples import SAMPLE_SCHEMA
from dien.model import ModelConfig, build_model
from dien.train.loop import TrainConfig, fit


@dataclass(frozen=True)
class SpeedConfig:
    samples: int = 128 * 48
    """Samples per timed epoch."""
    max_len: int = 100
    items: int = 10_000
    categories: int = 100
    batch_size: int = 128
    rounds: int = 3
    threads: int = 2
    length_buckets: int = 16
    """``TrainConfig.length_buckets`` of the bucketed variant."""
    seed: int = 0


@dataclass
class SpeedResult:
    name: str
    description: str
    samples_per_second: list[float] = field(default_factory=list)
    """One per round."""

    @property
    def best(self) -> float:
        return max(self.samples_per_second)


def random_samples(config: SpeedConfig) -> pa.Table:
    """Sample rows (``SAMPLE_SCHEMA``) with random ids and history lengths uniform in 1..max_len."""
    rng = np.random.default_rng(config.seed)
    lengths = rng.integers(1, config.max_len + 1, config.samples)
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))

    def lists(high: int) -> pa.Array:
        return pa.ListArray.from_arrays(offsets, pa.array(rng.integers(2, high, lengths.sum()).astype(np.int32)))

    return pa.table({
        "user": pa.array(np.arange(config.samples, dtype=np.int32)),
        "hist_item": lists(config.items), "hist_cat": lists(config.categories),
        "neg_hist_item": lists(config.items), "neg_hist_cat": lists(config.categories),
        "target_item": pa.array(rng.integers(2, config.items, config.samples).astype(np.int32)),
        "target_cat": pa.array(rng.integers(2, config.categories, config.samples).astype(np.int32)),
        "label": pa.array(rng.integers(0, 2, config.samples).astype(np.int8)),
        "timestamp": pa.array(np.zeros(config.samples, dtype=np.int64)),
    }, schema=SAMPLE_SCHEMA)


def run_benchmark(config: SpeedConfig) -> dict:
    torch.set_num_threads(config.threads)
    table = random_samples(config)
    ours = replace(TrainConfig(), epochs=1, patience=None, batch_size=config.batch_size, seed=config.seed)
    model_config = ModelConfig(config.items, config.categories)
    labels = table.column("label").to_numpy().astype(np.float32)
    peer_config = peers.PeerConfig(embedding_dim=model_config.item_dim, mlp_dims=model_config.mlp_dims,
                                   batch_size=config.batch_size)
    features = peers.inputs(table, config.max_len, negatives=True)

    def train_ours(train_config: TrainConfig) -> float:
        torch.manual_seed(config.seed)
        model = build_model("dien", model_config)
        return fit(model, table, None, train_config).samples_per_second

    def train_peer() -> float:
        model = peers.build("deepctr_dien", config.items, config.categories, config.max_len, peer_config, config.seed)
        started = time.perf_counter()
        peers.quiet_fit(model, features, labels, config.batch_size)
        return config.samples / (time.perf_counter() - started)

    bucketed = replace(ours, length_buckets=config.length_buckets)
    variants = [(SpeedResult("ours", "DIEN, fit, default settings"), lambda: train_ours(ours)),
                (SpeedResult("ours_bucketed", f"DIEN, fit, length buckets {config.length_buckets}"),
                 lambda: train_ours(bucketed)),
                (SpeedResult("deepctr_dien", peers.PEERS["deepctr_dien"]), train_peer)]
    for _ in range(config.rounds):
        for result, train in variants:
            result.samples_per_second.append(train())
    results = [result for result, _ in variants]
    peer = results[-1]

    def paired(result: SpeedResult) -> float:
        # Each round times the variants back to back, so the per-round ratio cancels the machine's drift.
        return float(np.median(np.array(result.samples_per_second) / np.array(peer.samples_per_second)))

    return {"config": asdict(config), "torch_version": torch.__version__,
            "results": [{**asdict(r), "best": r.best, "ratio_to_deepctr": r.best / peer.best,
                         "paired_ratio_to_deepctr": paired(r)} for r in results]}


def format_report(report: dict) -> str:
    lines = [f"{'variant':<16} {'description':<44} {'best samples/s':>14} {'vs DeepCTR':>10} {'paired':>7}"]
    for r in report["results"]:
        lines.append(f"{r['name']:<16} {r['description']:<44} {r['best']:>14.0f} {r['ratio_to_deepctr']:>9.2f}x "
                     f"{r['paired_ratio_to_deepctr']:>6.2f}x")
    c = report["config"]
    lines.append(f"{c['samples']} samples per epoch, batch {c['batch_size']}, lengths uniform in 1..{c['max_len']}, "
                 f"{c['threads']} torch threads, best of {c['rounds']} interleaved rounds; paired: the median over "
                 f"rounds of the ratio within a round")
    return "\n".join(lines)
