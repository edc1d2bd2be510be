"""Aggregates in bounded memory, whatever the size of the log.

Top-N counters keep at most ``2 * capacity`` keys (Misra-Gries, with its
error bound: see :class:`TopCounter`); response times go into a log-scale
histogram (about 2 % relative error on any percentile, mergeable across files).
"""

from __future__ import annotations

import heapq
import math
from collections import Counter
from collections.abc import Sequence


class TopCounter:
    """Counts of the most frequent keys in bounded memory (Misra-Gries, reduced in batches).

    Exact while at most ``2 * capacity`` distinct keys were seen. Past that,
    a *reduction* subtracts the (capacity+1)-th largest count from every
    count and forgets the keys left at zero or below, so at most ``capacity``
    keys stay. :attr:`error` is the sum of what reductions subtracted; for
    every key, ``true count - error <= counts[key] <= true count``, ``error``
    is at most ``total / (capacity + 1)``, and every key seen more than that
    often is kept. A reduction costs O(keys) and happens at most once per
    ``capacity`` new keys, so an ``add`` costs O(1) amortised, and
    :meth:`update` counts a whole column of keys in C (``Counter.update``).
    """

    def __init__(self, capacity: int = 1000) -> None:
        self.capacity = capacity
        self.counts: Counter[str] = Counter()
        self.total = 0
        self.error = 0

    def add(self, key: str, by: int = 1) -> None:
        self.total += by
        self.counts[key] += by
        if len(self.counts) > 2 * self.capacity:
            self._reduce()

    def update(self, keys: Sequence[str], *, less: str = "", less_by: int = 0) -> None:
        """Count every key of ``keys``, less ``less_by`` of the ``less`` among them (placeholders, not keys)."""
        counts = self.counts
        counts.update(keys)
        self.total += len(keys) - less_by
        if less_by:
            counts[less] -= less_by
            if counts[less] <= 0:
                del counts[less]
        if len(counts) > 2 * self.capacity:
            self._reduce()

    def _reduce(self) -> None:
        cut = heapq.nlargest(self.capacity + 1, self.counts.values())[-1]
        self.counts = Counter({key: count - cut for key, count in self.counts.items() if count > cut})
        self.error += cut

    @property
    def exact(self) -> bool:
        return self.error == 0

    def top(self, n: int) -> dict[str, int]:
        return dict(heapq.nsmallest(n, self.counts.items(), key=lambda kv: (-kv[1], kv[0])))


class Histogram:
    """Log-scale buckets of positive values: percentiles within ~2 %, mergeable (a dict of counts)."""

    GROWTH = 1.04

    def __init__(self, buckets: dict[str, int] | None = None) -> None:
        self.buckets: dict[int, int] = {int(k): v for k, v in (buckets or {}).items()}
        self.count = sum(self.buckets.values())

    def add(self, value: float, times: int = 1) -> None:
        index = -10_000 if value <= 0 else math.floor(math.log(value, self.GROWTH))
        self.buckets[index] = self.buckets.get(index, 0) + times
        self.count += times

    def merge(self, other: Histogram) -> None:
        for index, count in other.buckets.items():
            self.buckets[index] = self.buckets.get(index, 0) + count
        self.count += other.count

    def percentile(self, fraction: float) -> float | None:
        if not self.count:
            return None
        rank, seen = fraction * self.count, 0
        for index in sorted(self.buckets):
            seen += self.buckets[index]
            if seen >= rank:
                return 0.0 if index == -10_000 else round(self.GROWTH ** (index + 0.5), 2)
        return None

    def to_json(self) -> dict[str, int]:
        return {str(k): v for k, v in self.buckets.items()}


__all__ = ["Histogram", "TopCounter"]
