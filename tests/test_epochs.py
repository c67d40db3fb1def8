"""The training order: a fresh, seeded, global permutation each epoch, split exactly across ranks."""
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from dien.data.epochs import OrderConfig, SampleOrder, ShardUnits, TableUnits, read_ahead, sample_checksum


@pytest.fixture(scope="module")
def shards(tmp_path_factory, small_dataset):
    """The small dataset's train split as three shards of user-grouped rows in row groups of 100."""
    table = small_dataset.splits["train"].sort_by("user")
    table = table.append_column("sample", pa.array(np.arange(table.num_rows)))
    directory = tmp_path_factory.mktemp("shards")
    bounds = [0, 300, 700, table.num_rows]  # whole row groups, so a table cut in units of 100 matches
    files = []
    for i, (start, stop) in enumerate(zip(bounds, bounds[1:])):
        files.append(str(directory / f"part-{i}.parquet"))
        pq.write_table(table.slice(start, stop - start), files[-1], row_group_size=100)
    return files, table


def order(files, **config) -> SampleOrder:
    return SampleOrder(ShardUnits(files), OrderConfig(**{"batch_size": 32, "seed": 0, **config}))


@pytest.mark.parametrize("world", [1, 2, 3])
def test_every_sample_once_per_epoch_and_ranks_step_together(shards, world):
    files, table = shards
    plans = [order(files).plan(4, rank, world) for rank in range(world)]
    assert len({plan.steps for plan in plans}) == 1
    ids = np.concatenate([plan.sample_ids() for plan in plans])
    assert np.array_equal(np.sort(ids), np.arange(table.num_rows))
    for plan in plans:
        sizes = [len(batch) for batch in plan.batches]
        assert max(sizes) <= 32 and max(sizes) - min(sizes) <= 1


def test_the_order_is_fresh_each_epoch_and_reproducible_from_seed_and_epoch(shards):
    files, _ = shards
    first, again = order(files).plan(0, 0, 2), order(files).plan(0, 0, 2)
    assert all(np.array_equal(a, b) for a, b in zip(first.batches, again.batches))
    for other in (order(files).plan(1, 0, 2), order(files, seed=1).plan(0, 0, 2)):
        assert not np.array_equal(first.sample_ids(), other.sample_ids())


def test_batches_mix_users_from_all_over_the_data(shards):
    files, table = shards
    users = table.column("user").to_numpy()
    plan = order(files).plan(0, 0, 2)
    per_batch = np.mean([len(np.unique(users[batch])) for batch in plan.batches])
    shuffled = np.random.default_rng(0).permutation(users)
    uniform = np.mean([len(np.unique(shuffled[start:start + 32])) for start in range(0, len(users), 32)])
    in_file_order = np.mean([len(np.unique(users[start:start + 32])) for start in range(0, len(users), 32)])
    assert per_batch > 0.95 * uniform > 1.5 * in_file_order


def test_reading_yields_the_planned_rows_and_resumes_at_any_batch(shards):
    files, table = shards
    sample_order = order(files, shuffle_window=100)
    plan = sample_order.plan(2, 1, 2)
    read = list(sample_order.read(plan))
    assert [t.column("sample").to_numpy().tolist() for t in read] == [b.tolist() for b in plan.batches]
    for start in (0, 3, plan.window_batches, plan.steps - 1):
        resumed = list(sample_order.read(plan, start))
        assert [t.column("sample").to_pylist() for t in resumed] == [t.column("sample").to_pylist() for t in read[start:]]


def test_length_buckets_keep_the_samples_and_cut_padding(shards):
    files, table = shards
    lengths = pc.list_value_length(table.column("hist_item")).to_numpy()
    plain, bucketed = order(files).plan(0, 0, 1), order(files, length_buckets=8).plan(0, 0, 1)
    assert np.array_equal(np.sort(plain.sample_ids()), np.sort(bucketed.sample_ids()))
    padded = [sum(lengths[b].max() * len(b) for b in plan.batches) for plan in (plain, bucketed)]
    assert padded[1] < 0.8 * padded[0]


def test_an_in_memory_table_is_planned_like_shards_of_the_same_rows(shards):
    files, table = shards
    in_memory = SampleOrder(TableUnits(table, rows=100), OrderConfig(batch_size=32, seed=0))
    assert all(np.array_equal(a, b) for a, b in zip(in_memory.plan(3, 0, 1).batches, order(files).plan(3, 0, 1).batches))
    assert next(in_memory.read(in_memory.plan(3, 0, 1))).column("sample").to_pylist() == \
        next(order(files).read(order(files).plan(3, 0, 1))).column("sample").to_pylist()


def test_too_few_samples_for_the_workers_is_a_clear_error(shards):
    files, table = shards
    with pytest.raises(ValueError, match="cannot fill"):
        order(files, batch_size=1).plan(0, 0, table.num_rows + 1)


def test_read_ahead_keeps_order_and_raises_the_producers_error():
    assert list(read_ahead(iter(range(50)), depth=2)) == list(range(50))

    def failing():
        yield 1
        raise OSError("disk gone")

    reader = read_ahead(failing())
    assert next(reader) == 1
    with pytest.raises(OSError, match="disk gone"):
        next(reader)
    early = read_ahead(iter(range(10**6)), depth=2)
    assert next(early) == 0
    early.close()


def test_sample_checksum_ignores_order_and_tells_sets_apart():
    ids = np.arange(1000)
    assert sample_checksum(ids) == sample_checksum(ids[::-1])
    assert sample_checksum(ids) != sample_checksum(np.r_[ids[:-1], 0])
    assert (sample_checksum(ids[:400]) + sample_checksum(ids[400:])) % 2**64 == sample_checksum(ids)
