"""Redis lists as a stream engine (``redis-list://``): a queue that others fill, consumed as a reliable queue.

MinIO's ``notify_redis`` with ``format=access`` RPUSHes each bucket
notification to a Redis LIST (MinIO refuses a key of any other type), so a
``redis://`` source, which reads Redis Streams, cannot take them: a mapping
says ``redis-list://[:PASSWORD@]HOST:PORT/DB/KEY`` (``rediss-list://`` with
TLS) to read a list instead. The scheme, not the key's type, chooses: a key
that does not exist yet (MinIO has not published) has no type, and a stream
made for it would make MinIO refuse to publish.

A list is one partition (``0``) consumed destructively, so it is the
reliable-queue pattern:

- one consumer at a time holds the list: a lease key (``SET NX PX``, renewed
  by a thread while the source is open) per list, whatever the mapping, so
  entries are taken in order and two workers never split them;
- ``poll`` moves entries from the head of KEY to the tail of
  ``KEY:fileproc-processing`` atomically (a script that checks the lease
  first), so an entry is always in one list or the other; when none waits it
  blocks on ``BLMOVE`` and gives the entry back if the lease was lost
  meanwhile;
- ``commit`` removes the entries given up to the position from the
  processing list (``LREM``, by value: equal entries are interchangeable),
  again only while the lease is this consumer's;
- a new holder (after a worker was killed, its lease ran out) first gives
  what is in the processing list, in order: what the last holder took and
  never committed. Nothing is lost; only what was in flight runs again (at
  least once, as on Lambda).

Positions: an entry has no id in a list, so each is numbered when it is
given, from a counter in the hash ``KEY:fileproc-positions`` (``given``,
and ``committed``, the last position committed): numbers only grow, across
holdings and workers; an entry given again after a worker died gets a new,
higher one. ``fileproc streams status`` shows the committed position, the
newest given, and as lag the entries waiting plus those taken and not
committed (``LLEN`` of both lists). A list keeps no times: a record's
timestamp is when it was taken, and the lag in seconds is unknown.

Starting positions: a list holds only what was not consumed yet, so
``trim_horizon`` takes what waits; ``latest`` on a mapping's first start
(and ``fileproc streams reset --to latest``) drops what waits and what was
taken, to begin with what comes next; a time is refused (no times kept).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import redis

from fileproc.errors import StreamError, network_reason
from fileproc.streams.redis_lease import Lease, client_of
from fileproc.streams.sources import PartitionStatus, Put, Record, Revoking

if TYPE_CHECKING:
    from fileproc.mappings import StreamMapping

log = logging.getLogger(__name__)

PARTITION = "0"
PROCESSING = ":fileproc-processing"  # KEY + this: entries taken, not yet committed
POSITIONS = ":fileproc-positions"  # KEY + this: a hash of the counters (given, committed, started)
LEASE_PREFIX = "fileproc:list-lease:"  # + KEY: which consumer holds the list


class RedisListSource:
    """One mapping's Redis list, consumed as a reliable queue (see the module's docstring)."""

    engine = "redis"  # its records are Kinesis' (as a Redis stream's), its filters too

    def __init__(self, mapping: StreamMapping, *, consumer: str = "") -> None:
        parts = urlsplit(mapping.source)
        db, key = [p for p in parts.path.split("/") if p]
        self.mapping = mapping
        self.key = unquote(key)
        self.processing = self.key + PROCESSING
        self.positions = self.key + POSITIONS
        self.stream_name = self.key  # the poller makes it an ARN with the region
        self.event_source_arn = self.key
        self.holder = consumer or f"{id(self):x}"
        self.where = f"Redis at {parts.hostname}:{parts.port or 6379}"
        self.client: Any = client_of(parts, db, tls=parts.scheme == "rediss-list")
        self.lease = Lease(self.client, LEASE_PREFIX + self.key, self.holder)
        self._delivered: deque[tuple[int, bytes]] = deque()  # (position, entry) given in this holding
        self._retaken: deque[bytes] = deque()  # the last holder's uncommitted entries, still to give
        self._holding = False
        self._revoke = False  # a holding ended (the lease was lost): the next poll tells the poller
        self._lock = threading.Lock()  # _delivered and _holding: the lease renewer may end a holding
        self._revoking: Revoking | None = None

    # -- consuming --------------------------------------------------------------------------

    def start(self, revoking: Revoking) -> None:
        """Check the list and the starting position; renew the lease from now on (taken by ``poll``)."""
        self._revoking = revoking
        position = self.mapping.starting_position
        if position == "at_timestamp":
            raise StreamError(f"stream {self.mapping.name!r}: a Redis list keeps no times: use "
                              "starting_position = 'trim_horizon' or 'latest'")
        try:
            kind = self.client.type(self.key).decode()
            if kind not in ("list", "none"):
                raise StreamError(f"stream {self.mapping.name!r}: {self.key} is a Redis {kind}, not a list"
                                  + (": use redis://, which reads streams" if kind == "stream" else ""))
            first = self.client.hsetnx(self.positions, "started", str(time.time()))
            if first and position == "latest":  # what waits now came before this mapping: skipped
                self.client.delete(self.key, self.processing)
        except redis.RedisError as exc:
            raise self._error(exc) from exc
        self.lease.keep(lambda: self._holding, self._lost, f"lease-{self.mapping.name}")

    def _lost(self) -> None:
        """The lease ran out (another consumer may hold the list): stop using it; the next poll revokes."""
        with self._lock:
            if not self._holding:
                return
            self._holding, self._revoke = False, True
            self._delivered.clear()
            self._retaken.clear()
        log.warning("stream %s: lost the lease of the list %s; giving it up", self.mapping.name, self.key)

    def _begin_holding(self) -> None:
        """The lease is ours: what the processing list holds (the last holder's, uncommitted) comes first."""
        retaken = self.client.lrange(self.processing, 0, -1)
        with self._lock:
            self._holding = True
            self._delivered.clear()
            self._retaken = deque(retaken)
        if retaken:
            log.info("stream %s: taking %d entries of %s the last consumer left uncommitted", self.mapping.name,
                     len(retaken), self.key)

    def poll(self, max_records: int, timeout: float) -> list[Record]:
        """Up to ``max_records`` entries in list order (waits up to ``timeout`` s for one)."""
        if self._revoke:  # (here, in the poller's thread, never inside a commit the poller is making)
            self._revoke = False
            if self._revoking is not None:
                self._revoking([PARTITION])
        try:
            if not self._holding:
                if not self.lease.take():
                    time.sleep(min(timeout, 0.5) if timeout else 0.05)
                    return []
                self._begin_holding()
            if self._retaken:
                entries = [self._retaken.popleft() for _ in range(min(max_records, len(self._retaken)))]
                first = int(self.client.hincrby(self.positions, "given", len(entries))) - len(entries) + 1
                return self._records(first, entries)
            moved = self.client.eval(_MOVE, 4, self.lease.key, self.key, self.processing, self.positions,
                                     self.holder, max_records)
            if moved[0] == -1:
                self._lost()
                return []
            if moved[1:] or timeout <= 0:
                return self._records(int(moved[0]), list(moved[1:]))
            return self._wait_for_one(timeout)
        except redis.RedisError as exc:
            raise self._error(exc) from exc

    def _wait_for_one(self, timeout: float) -> list[Record]:
        """Block until an entry comes (moved as it comes); given back if the lease was lost meanwhile."""
        entry = self.client.blmove(self.key, self.processing, timeout, "LEFT", "RIGHT")
        if entry is None:
            return []
        position = int(self.client.eval(_CLAIM, 4, self.lease.key, self.key, self.processing, self.positions,
                                        self.holder, entry))
        if position == -1:
            self._lost()
            return []
        return self._records(position, [entry])

    def _records(self, first: int, entries: list[bytes]) -> list[Record]:
        now = time.time()
        with self._lock:
            if not self._holding:
                return []
            self._delivered.extend((first + i, entry) for i, entry in enumerate(entries))
        return [Record(PARTITION, str(first + i), entry, timestamp=now) for i, entry in enumerate(entries)]

    def commit(self, partition: str, position: str) -> None:
        """Remove the entries given up to ``position`` from the processing list (only while holding it)."""
        upto = int(position)
        with self._lock:
            done = []
            while self._delivered and self._delivered[0][0] <= upto:
                done.append(self._delivered.popleft())
        if not done:
            return
        try:
            kept = self.client.eval(_COMMIT, 3, self.lease.key, self.processing, self.positions, self.holder,
                                    done[-1][0], *[entry for _, entry in done])
        except redis.RedisError as exc:
            with self._lock:
                self._delivered.extendleft(reversed(done))
            raise self._error(exc, "cannot commit") from exc
        if not kept:
            self._lost()
            raise StreamError(f"stream {self.mapping.name!r}: another consumer holds {self.key} now; the "
                              f"entries up to {position} run again there")

    def close(self) -> None:
        self.lease.release(self._holding)
        self._holding = False
        self.client.close()

    # -- reading and writing from anywhere --------------------------------------------------

    def status(self) -> list[PartitionStatus]:
        """The committed and newest positions given, and as lag the entries waiting or taken and not committed."""
        try:
            with self.client.pipeline(transaction=False) as pipe:
                pipe.llen(self.key).llen(self.processing).hmget(self.positions, "given", "committed")
                waiting, taken, (given, committed) = pipe.execute()
        except redis.ResponseError:  # not a list
            return [PartitionStatus(PARTITION, None, None, None)]
        except redis.RedisError as exc:
            raise self._error(exc) from exc
        return [PartitionStatus(PARTITION, committed.decode() if committed else None,
                                given.decode() if given else None, int(waiting) + int(taken))]

    def read(self, partition: str, first: str, last: str) -> list[Record]:
        """Nothing to read: a committed entry left the list, and positions are numbers given, not places in it."""
        raise StreamError("a Redis list keeps no records once taken: nothing to replay")

    def put(self, records: Sequence[tuple[bytes | None, bytes]]) -> list[Put]:
        """Append entries to the list (a list keeps no keys); each Put's position is its place in the queue."""
        if any(key is not None for key, _ in records):
            raise StreamError(f"stream {self.mapping.name!r}: a Redis list keeps no keys: put records without one")
        try:
            with self.client.pipeline(transaction=True) as pipe:
                for _, data in records:
                    pipe.rpush(self.key, data)
                lengths = pipe.execute()
        except redis.RedisError as exc:
            raise self._error(exc, "cannot put") from exc
        return [Put(PARTITION, str(length)) for length in lengths]

    def reset(self, to: str | datetime) -> None:
        """``trim_horizon``: nothing to move (what waits is taken anyway); ``latest``: drop what waits or was taken."""
        if to == "trim_horizon":
            return
        if to != "latest":
            raise StreamError(f"stream {self.mapping.name!r}: a Redis list keeps no times: reset it to "
                              "trim_horizon or latest")
        try:
            self.client.delete(self.key, self.processing)
        except redis.RedisError as exc:
            raise self._error(exc, "cannot reset") from exc

    def _error(self, exc: redis.RedisError, doing: str = "") -> StreamError:
        reason = network_reason(exc) if isinstance(exc, redis.ConnectionError | redis.TimeoutError) else None
        what = f"{self.where} unreachable: {reason}" if reason else str(exc)
        return StreamError(f"stream {self.mapping.name!r}: {doing + ': ' if doing else ''}{what}")


# KEYS: lease, list, processing, positions; ARGV: holder, most. -> {first position, entries...}, {-1}: not ours.
_MOVE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {-1} end
local out = {0}
for i = 1, tonumber(ARGV[2]) do
  local entry = redis.call('LMOVE', KEYS[2], KEYS[3], 'LEFT', 'RIGHT')
  if not entry then break end
  out[#out + 1] = entry
end
if #out > 1 then out[1] = redis.call('HINCRBY', KEYS[4], 'given', #out - 1) - #out + 2 end
return out
"""
# KEYS: lease, list, processing, positions; ARGV: holder, the entry BLMOVE took. -> its position, -1: given back.
_CLAIM = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  redis.call('LREM', KEYS[3], -1, ARGV[2])
  redis.call('LPUSH', KEYS[2], ARGV[2])
  return -1
end
return redis.call('HINCRBY', KEYS[4], 'given', 1)
"""
# KEYS: lease, processing, positions; ARGV: holder, position, entries... -> 1, 0: not ours (nothing removed).
_COMMIT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
for i = 3, #ARGV do redis.call('LREM', KEYS[2], 1, ARGV[i]) end
redis.call('HSET', KEYS[3], 'committed', ARGV[2])
return 1
"""


__all__ = ["RedisListSource"]
