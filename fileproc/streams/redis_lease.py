"""What the Redis engines share: a client from a mapping's URL, and the lease that says which consumer reads a key.

A stream or list is read by one consumer at a time, so its records run in
order: the consumer holds a lease key (``SET NX PX``, :meth:`Lease.take`)
that a thread of its own renews while the consumer holds it
(:meth:`Lease.keep`); a consumer killed stops renewing, and the lease runs
out after :data:`LEASE_MS` for the next one to take.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Any
from urllib.parse import SplitResult, unquote, urlsplit

import redis

LEASE_MS = 10_000


def client_of(parts: SplitResult, db: str, *, tls: bool) -> Any:
    """A redis-py client of a mapping's ``redis://[:PASSWORD@]HOST:PORT/DB/...`` (its types are too loose: Any)."""
    return redis.Redis(host=parts.hostname or "127.0.0.1", port=parts.port or 6379, db=int(db),
                       password=unquote(parts.password) if parts.password else None, ssl=tls,
                       socket_connect_timeout=5)


def redis_py_url(url: str) -> str:
    """redis-py's URL of a Celery/kombu broker URL (``redis+socket://:PASSWORD@/path`` is ``unix://``)."""
    if url.startswith("redis+socket://"):
        parts = urlsplit(url.replace("redis+socket://", "unix://", 1))
        auth = f":{parts.password}@" if parts.password else ""
        return f"unix://{auth}{parts.path}"
    return url


class Lease:
    """One consumer's lease of a Redis key (``key``), as ``holder``."""

    def __init__(self, client: Any, key: str, holder: str) -> None:
        self.client, self.key, self.holder = client, key, holder
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def take(self) -> bool:
        """Whether this consumer holds the key now (taking it if it is free)."""
        try:
            if self.client.set(self.key, self.holder, nx=True, px=LEASE_MS):
                return True
            return bool(self.client.get(self.key) == self.holder.encode())
        except redis.RedisError:
            return False

    def keep(self, holding: Callable[[], bool], lost: Callable[[], None], name: str) -> None:
        """Renew the lease while ``holding()``; ``lost()`` once another consumer has it (from the renewer's thread)."""
        def renew() -> None:
            while not self._stop.wait(LEASE_MS / 3000):
                if not holding():
                    continue
                try:
                    kept = self.client.eval(_RENEW, 1, self.key, self.holder, LEASE_MS)
                except redis.RedisError:
                    continue  # still ours until it runs out; the consumer's next call finds out then
                if not kept:
                    lost()

        self._renewer = threading.Thread(target=renew, name=name, daemon=True)
        self._renewer.start()

    def release(self, held: bool) -> None:
        """Stop renewing; give the lease up at once if it is ``held`` (the next consumer need not wait it out)."""
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join(timeout=2)
        if held:
            with contextlib.suppress(redis.RedisError):
                self.client.eval(_RELEASE, 1, self.key, self.holder)


_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

__all__ = ["LEASE_MS", "Lease", "client_of", "redis_py_url"]
