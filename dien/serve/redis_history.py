"""User histories in Redis: one store that every ingress replica reads, ``POST /v1/events`` and
``jobs/load_histories.py`` write, so a behavior is seen by the next request through any replica.

Two keys per user; the braces make them one Redis Cluster slot::

    <prefix>:{<user_id>}:b   sorted set of the user's newest ``max_len`` behaviors: score = timestamp,
                             member = 16-digit arrival number + JSON [event id, item, category, event type]
    <prefix>:{<user_id>}:e   hash of the kept behaviors' event ids (a repeated id is a duplicate), and the
                             arrival counter under the field ""

The sorted set keeps timestamp order whatever order events arrive in; the arrival number in front of each
member orders behaviors of equal timestamp as they came and keeps a repeated item a distinct member. One Lua
script appends a user's events (and trims to ``max_len``) atomically, so concurrent writers (replicas, the
bulk job) never see or leave half an update; reading a history is one ``ZRANGE``.
"""
from __future__ import annotations

import json
from collections import defaultdict
from typing import Any, Iterable, Sequence
from urllib.parse import urlsplit, urlunsplit

import redis
import redis.asyncio
from redis.backoff import NoBackoff

from dien.serve.config import RedisStoreConfig
from dien.serve.history import AppendResult, BehaviorEvent, Behaviors, StoreUnavailable

APPEND_SCRIPT = """
-- KEYS[1]: the user's behaviors (sorted set), KEYS[2]: their event ids (hash; field '' counts arrivals)
-- ARGV[1]: max_len, ARGV[2]: '1' replaces the history,
-- ARGV[3]: the events as JSON, [[event id, timestamp, item, category, event type], ...]
-- Returns the 0-based positions of the events appended (the others were duplicates).
if ARGV[2] == '1' then
  redis.call('DEL', KEYS[1], KEYS[2])
end
local appended = {}
for i, event in ipairs(cjson.decode(ARGV[3])) do
  if redis.call('HSETNX', KEYS[2], event[1], 1) == 1 then
    local arrival = redis.call('HINCRBY', KEYS[2], '', 1)
    local member = string.format('%016d', arrival) .. cjson.encode({event[1], event[3], event[4], event[5]})
    redis.call('ZADD', KEYS[1], event[2], member)
    appended[#appended + 1] = i - 1
  end
end
local excess = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[1])
if excess > 0 then
  for _, member in ipairs(redis.call('ZRANGE', KEYS[1], 0, excess - 1)) do
    redis.call('HDEL', KEYS[2], cjson.decode(string.sub(member, 17))[1])
  end
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, excess - 1)
end
return appended
"""
ARRIVAL_DIGITS = 16


def behaviors_key(prefix: str, user_id: str) -> str:
    return f"{prefix}:{{{user_id}}}:b"


def event_ids_key(prefix: str, user_id: str) -> str:
    return f"{prefix}:{{{user_id}}}:e"


def script_events(events: Iterable[BehaviorEvent]) -> str:
    """One user's events as ``APPEND_SCRIPT``'s JSON argument: one argument per user, not per event, because
    redis-py's packing of each argument costs more than the script's work on it. Timestamps travel as
    strings, which Redis parses as doubles exactly (Lua's numbers would print with 14 digits)."""
    return json.dumps([[e.key(), repr(float(e.timestamp)), e.item_id, e.category, e.event_type] for e in events],
                      separators=(",", ":"))


def parse_members(members: Sequence[bytes]) -> Behaviors:
    """(items, categories) of ``ZRANGE`` members, oldest first."""
    rows = json.loads(b"[" + b",".join(m[ARRIVAL_DIGITS:] for m in members) + b"]")
    return [row[1] for row in rows], [row[2] for row in rows]


def by_user(events: Sequence[BehaviorEvent]) -> dict[str, list[int]]:
    """Positions of ``events`` per user, in request order."""
    positions: dict[str, list[int]] = defaultdict(list)
    for i, event in enumerate(events):
        positions[event.user_id].append(i)
    return positions


def redacted(url: str) -> str:
    """``url`` without its password, for messages and ``/healthz``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _client_options(config: RedisStoreConfig) -> dict[str, Any]:
    # One retry, no backoff: a pooled connection that died with a restarted server reconnects at once, and a
    # server that is down costs a request one timeout, not redis-py's default backoff of seconds.
    return {"socket_timeout": config.timeout_s, "socket_connect_timeout": config.timeout_s}


class RedisHistoryStore:
    """The :class:`dien.serve.history.HistoryStore` of the Serve ingress (asyncio client, one pool per replica)."""

    def __init__(self, config: RedisStoreConfig) -> None:
        self.config = config
        self.name = f"redis {redacted(config.url)}"
        self.client = redis.asyncio.Redis.from_url(
            config.url, retry=redis.asyncio.retry.Retry(NoBackoff(), 1), **_client_options(config))
        self._append = self.client.register_script(APPEND_SCRIPT)

    def _unavailable(self, error: redis.RedisError) -> StoreUnavailable:
        return StoreUnavailable(f"the user-history store ({self.name}) did not answer: "
                                f"{type(error).__name__}: {error}")

    async def history(self, user_id: str) -> Behaviors | None:
        try:
            members = await self.client.zrange(behaviors_key(self.config.key_prefix, user_id), 0, -1)
        except redis.RedisError as error:
            raise self._unavailable(error) from error
        return parse_members(members) if members else None

    async def append(self, events: Sequence[BehaviorEvent]) -> AppendResult:
        positions = by_user(events)
        prefix = self.config.key_prefix
        try:
            async with self.client.pipeline(transaction=False) as pipeline:
                for user_id, rows in positions.items():
                    await self._append(keys=[behaviors_key(prefix, user_id), event_ids_key(prefix, user_id)],
                                       args=[self.config.max_len, 0, script_events(events[i] for i in rows)],
                                       client=pipeline)
                answers = await pipeline.execute()
        except redis.RedisError as error:
            raise self._unavailable(error) from error
        stored = sorted(rows[int(k)] for rows, appended in zip(positions.values(), answers) for k in appended)
        kept = set(stored)
        return AppendResult(stored=stored, duplicates=[i for i in range(len(events)) if i not in kept])

    async def health(self) -> dict[str, object]:
        try:
            await self.client.ping()
        except redis.RedisError as error:
            raise self._unavailable(error) from error
        return {"store": "redis", "url": redacted(self.config.url), "key_prefix": self.config.key_prefix}

    async def close(self) -> None:
        await self.client.aclose()


class RedisHistoryWriter:
    """Whole users' histories into Redis from a synchronous process (the bulk load's Ray Data workers):
    one pipeline round trip per call, the same script and layout as the Serve store."""

    def __init__(self, config: RedisStoreConfig) -> None:
        self.config = config
        self.name = f"redis {redacted(config.url)}"
        self.client = redis.Redis.from_url(config.url, retry=redis.retry.Retry(NoBackoff(), 1),
                                           **_client_options(config))
        self._append = self.client.register_script(APPEND_SCRIPT)

    def ping(self) -> None:
        """Raises :class:`StoreUnavailable` naming the store when it does not answer."""
        try:
            self.client.ping()
        except redis.RedisError as error:
            raise StoreUnavailable(f"{self.name}: {type(error).__name__}: {error}") from error

    def write(self, histories: dict[str, list[BehaviorEvent]], replace: bool) -> int:
        """Append each user's events (``replace``: instead of what the user had); the behaviors appended."""
        prefix = self.config.key_prefix
        try:
            pipeline = self.client.pipeline(transaction=False)
            for user_id, events in histories.items():
                self._append(keys=[behaviors_key(prefix, user_id), event_ids_key(prefix, user_id)],
                             args=[self.config.max_len, int(replace), script_events(events)], client=pipeline)
            return sum(len(appended) for appended in pipeline.execute())
        except redis.RedisError as error:
            raise StoreUnavailable(f"{self.name}: {type(error).__name__}: {error}") from error

    def close(self) -> None:
        self.client.close()
