"""The user-history stores against a real redis-server: order, duplicates, trimming, outages, bulk loads."""
import asyncio
import itertools
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from dien.data.dataset_dir import USER_HISTORY_FILE
from dien.data.events import ColumnMapping
from dien.data.readers import SourceConfig
from dien.serve.config import RedisStoreConfig, ServeArgs
from dien.serve.history import BehaviorEvent, ReadOnlyStore, StoreUnavailable, UserHistoryStore
from dien.serve.history_load import LoadConfig, load_histories
from dien.serve.redis_history import RedisHistoryStore, redacted
from servers import redis_server_in

_prefixes = itertools.count()


def store_config(redis_server, **settings) -> RedisStoreConfig:
    """Settings for a fresh key prefix, so tests share the server without seeing each other's keys."""
    return RedisStoreConfig(url=redis_server.url, key_prefix=f"test{next(_prefixes)}", **settings)


def run(coroutine):
    return asyncio.run(coroutine)


async def appended_then_read(config: RedisStoreConfig, batches: list[list[BehaviorEvent]], user: str):
    store = RedisHistoryStore(config)
    try:
        results = [await store.append(batch) for batch in batches]
        return results, await store.history(user)
    finally:
        await store.close()


def test_events_are_kept_in_time_order_and_the_newest_max_len(redis_server):
    events = [BehaviorEvent("u", f"i{t}", float(t), f"c{t % 3}") for t in (5, 1, 9, 3, 7)]
    results, history = run(appended_then_read(store_config(redis_server, max_len=4), [events[:2], events[2:]], "u"))
    assert [r.stored for r in results] == [[0, 1], [0, 1, 2]]
    assert history == (["i3", "i5", "i7", "i9"], ["c0", "c2", "c1", "c0"])


def test_equal_timestamps_keep_arrival_order_and_a_repeated_item_counts_twice(redis_server):
    events = [BehaviorEvent("u", item, 100.0, event_id=str(i)) for i, item in enumerate(["b", "a", "b", "c"])]
    _, history = run(appended_then_read(store_config(redis_server), [events], "u"))
    assert history == (["b", "a", "b", "c"], [None, None, None, None])


def test_a_duplicate_event_id_is_applied_once(redis_server):
    first = [BehaviorEvent("u", "a", 1.0, event_id="e1"), BehaviorEvent("u", "b", 2.0)]
    again = [BehaviorEvent("u", "other", 3.0, event_id="e1"), BehaviorEvent("u", "b", 2.0),
             BehaviorEvent("v", "a", 1.0, event_id="e1"), BehaviorEvent("u", "c", 4.0, event_id="e2"),
             BehaviorEvent("u", "c", 4.0, event_id="e2")]
    results, history = run(appended_then_read(store_config(redis_server), [first, again], "u"))
    assert results[1].stored == [2, 3] and results[1].duplicates == [0, 1, 4]
    assert history == (["a", "b", "c"], [None, None, None])


def test_an_unknown_user_has_no_history_and_the_name_hides_the_password(redis_server):
    store = RedisHistoryStore(store_config(redis_server))
    assert run(store.history("nobody")) is None
    assert redacted("redis://:s3cret@host:6380/1") == "redis://:***@host:6380/1"
    assert redacted("redis://user:s3cret@host/0") == "redis://user:***@host/0"
    assert "s3cret" not in RedisHistoryStore(RedisStoreConfig(url="redis://:s3cret@127.0.0.1:1/0")).name


def test_a_store_that_is_down_is_named_and_one_that_is_back_answers_again(redis_server):
    config = store_config(redis_server, timeout_s=0.5)

    async def scenario() -> None:
        store = RedisHistoryStore(config)
        await store.append([BehaviorEvent("u", "a", 1.0)])
        redis_server.stop()
        try:
            for call in (store.history("u"), store.append([BehaviorEvent("u", "b", 2.0)]), store.health()):
                with pytest.raises(StoreUnavailable, match=f"redis redis://127.0.0.1:{redis_server.port}/0"):
                    await call
        finally:
            redis_server.start()
        # No persistence: the restarted server is empty, and the pool reconnects by itself.
        assert await store.history("u") is None
        assert (await store.append([BehaviorEvent("u", "b", 2.0)])).stored == [0]
        assert (await store.health())["store"] == "redis"
        await store.close()

    run(scenario())


def test_with_append_only_persistence_a_killed_server_loses_no_acknowledged_event(tmp_path):
    server = redis_server_in(tmp_path, append_only=True)
    config = RedisStoreConfig(url=server.url, key_prefix="durable", max_len=1000)
    users = [f"u{k}" for k in range(5)]
    events = [BehaviorEvent(users[t % 5], f"i{t}", float(t), f"c{t % 7}") for t in range(500)]

    async def acknowledged() -> int:
        store = RedisHistoryStore(config)
        try:
            return sum([len((await store.append(events[i:i + 50])).stored) for i in range(0, len(events), 50)])
        finally:
            await store.close()

    async def kept() -> dict[str, list[str]]:
        store = RedisHistoryStore(config)
        try:
            return {user: (await store.history(user))[0] for user in users}
        finally:
            await store.close()

    try:
        assert run(acknowledged()) == 500
        server.stop(kill=True)  # SIGKILL: nothing is flushed on the way out
        server.start()
        histories = run(kept())
    finally:
        server.stop()
    assert {user: len(items) for user, items in histories.items()} == {user: 100 for user in users}
    assert histories["u3"] == [f"i{t}" for t in range(3, 500, 5)]


def test_the_snapshot_is_read_only(prepared_dataset):
    store = UserHistoryStore.load(prepared_dataset.path)
    with pytest.raises(ReadOnlyStore, match="read-only snapshot"):
        run(store.append([BehaviorEvent("u", "a", 1.0)]))
    assert run(store.health()) == {"store": "snapshot", "users": len(store)}


def test_serve_args_take_a_path_or_a_store_mapping():
    assert ServeArgs(model="m", history="data/x").history == "data/x"
    assert ServeArgs.model_validate({"model": "m", "history": {"store": "snapshot", "path": "data/x"}}).history.path \
        == "data/x"
    redis_args = ServeArgs.model_validate({"model": "m", "history": {"store": "redis", "key_prefix": "ml"}})
    assert redis_args.history.url == "redis://127.0.0.1:6379/0" and redis_args.history.max_len == 200
    with pytest.raises(ValueError, match="key_prefix"):
        ServeArgs.model_validate({"model": "m", "history": {"store": "redis", "key_prefix": "a b"}})
    with pytest.raises(ValueError, match="memcached"):
        ServeArgs.model_validate({"model": "m", "history": {"store": "memcached"}})


def test_a_prepared_dataset_loads_into_redis_as_the_snapshot_holds_it(ray_session, redis_server, prepared_dataset):
    config = store_config(redis_server)
    summary = load_histories(LoadConfig(redis=config, dataset=str(prepared_dataset.path), users_per_write=64))
    snapshot = UserHistoryStore.load(prepared_dataset.path)
    users = pq.read_table(prepared_dataset.path / USER_HISTORY_FILE, columns=["user_id"]).column(0).to_pylist()
    assert summary.users == len(users) == len(snapshot)
    assert summary.behaviors == sum(len(snapshot.lookup(u)[0]) for u in users)

    async def mismatches() -> list[str]:
        store = RedisHistoryStore(config)
        wrong = [u for u in users if snapshot.lookup(u) != await store.history(u)]
        await store.close()
        return wrong

    assert run(mismatches()) == []
    again = load_histories(LoadConfig(redis=config, dataset=str(prepared_dataset.path)))
    assert again.behaviors == summary.behaviors and run(mismatches()) == []


def write_log(path: Path) -> Path:
    path.write_text("uid,sku,cat,ts\n"
                    "u1,a,x,30\nu2,b,y,5\nu1,b,y,10\n"
                    "u1,c,x,not-a-time\n"      # rejected: the timestamp does not parse
                    "u1,d,y,20\nu2,a,x,1\nu1,e,x,40\n")
    return path


def test_a_raw_log_loads_each_users_newest_events_in_time_order(ray_session, redis_server, tmp_path):
    config = store_config(redis_server, max_len=3)
    source = SourceConfig(kind="events", inputs=(str(write_log(tmp_path / "log.csv")),),
                          columns=ColumnMapping.parse("user=uid,item=sku,category=cat,timestamp=ts"))
    summary = load_histories(LoadConfig(redis=config, source=source, groups=2))
    assert (summary.events_read, summary.events_rejected, summary.users, summary.behaviors) == (7, 1, 2, 5)

    async def histories():
        store = RedisHistoryStore(config)
        found = [await store.history(u) for u in ("u1", "u2")]
        await store.close()
        return found

    assert run(histories()) == [(["d", "a", "e"], ["y", "x", "x"]), (["a", "b"], ["x", "y"])]
    appended = load_histories(LoadConfig(redis=config, source=source, replace=False, groups=2))
    assert appended.behaviors == 0 and run(histories())[0] == (["d", "a", "e"], ["y", "x", "x"])


def test_a_load_refuses_two_sources_and_a_store_that_is_down(ray_session, prepared_dataset):
    with pytest.raises(ValueError, match="exactly one"):
        LoadConfig(dataset=str(prepared_dataset.path), source=SourceConfig())
    with pytest.raises(ValueError, match="replace"):
        LoadConfig(dataset=str(prepared_dataset.path), replace=False)
    down = RedisStoreConfig(url="redis://127.0.0.1:1/0", timeout_s=0.5)
    with pytest.raises(StoreUnavailable, match="redis redis://127.0.0.1:1/0"):
        load_histories(LoadConfig(redis=down, dataset=str(prepared_dataset.path)))
