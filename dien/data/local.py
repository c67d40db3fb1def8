"""An in-process dataset from raw events, for tests and single-machine comparisons (the Ray Data pipeline,
``dien.data.pipeline``, builds the same samples at scale from the same functions)."""
from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from dien.data.samples import SPLITS, SampleConfig, build_user_samples
from dien.data.vocab import Vocabularies

__all__ = ["LocalDataset", "Vocabularies", "build_local_dataset"]


@dataclass
class LocalDataset:
    splits: dict[str, pa.Table]
    """train / valid / test sample tables (``SAMPLE_SCHEMA``)."""
    vocabularies: Vocabularies
    user_history: pa.Table | None = None
    """Each user's latest history (``HISTORY_SCHEMA``)."""

    @property
    def n_items(self) -> int:
        return len(self.vocabularies.item)

    @property
    def n_cats(self) -> int:
        return len(self.vocabularies.category)


def build_local_dataset(events: pa.Table, config: SampleConfig, min_count: int = 1) -> LocalDataset:
    """Encode raw events (the raw-event schema), sort each user's behaviors by time and build samples."""
    vocabularies = Vocabularies.from_events(events, min_count)
    samples, user_history = build_user_samples(vocabularies.encode(events), config, vocabularies.sampler())
    split = samples.column("split")
    splits = {name: samples.filter(pc.equal(split, name)).drop_columns(["split"]) for name in SPLITS}
    return LocalDataset(splits, vocabularies, user_history)
