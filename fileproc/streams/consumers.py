"""The pollers of one worker process: every enabled mapping, or those named by ``fileproc worker --streams``."""

from __future__ import annotations

import logging
import os
import socket
from typing import TYPE_CHECKING

from fileproc.errors import ConfigError, FileprocError
from fileproc.runtime.app import broker_url
from fileproc.streams.poller import Poller

if TYPE_CHECKING:
    from fileproc.config import Settings
    from fileproc.mappings import StreamMapping
    from fileproc.service import Service

log = logging.getLogger(__name__)


def own_redis(settings: Settings) -> str | None:
    """fileproc's own Redis (the embedded broker, or a redis:// broker): where ``embedded:NAME`` streams live."""
    url = broker_url(settings)
    return url if url.startswith(("redis://", "rediss://", "redis+socket://", "unix://")) else None


def chosen(settings: Settings, names: list[str] | None) -> list[StreamMapping]:
    """The enabled mappings named (all of them for None); ConfigError for a name no mapping has."""
    known = {m.name: m for m in settings.streams}
    unknown = [n for n in names or [] if n not in known]
    if unknown:
        raise ConfigError(f"--streams: no stream named {unknown[0]!r} (configured: {', '.join(known) or 'none'})")
    return [known[n] for n in names] if names is not None else [m for m in settings.streams if m.enabled]


class Consumers:
    """Starts a poller per mapping; stops them (their batches in flight end and are committed)."""

    def __init__(self, service: Service, names: list[str] | None = None) -> None:
        self.service = service
        self.mappings = chosen(service.settings, names)
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self.pollers: list[Poller] = []

    def start(self) -> None:
        embedded = own_redis(self.service.settings)
        for mapping in self.mappings:
            try:
                self.pollers.append(Poller(self.service, mapping, worker=self.worker, embedded_url=embedded).start())
            except FileprocError as exc:
                log.error("stream %s: not consumed: %s", mapping.name, exc)

    def stop(self) -> None:
        for poller in self.pollers:
            poller.stopping.set()
        for poller in self.pollers:
            poller.stop()
        self.pollers = []


__all__ = ["Consumers", "chosen", "own_redis"]
