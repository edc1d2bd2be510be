"""Where notifications come in: every source of objects, one module each.

Every source turns what it sees into ObjectEvents with one function,
:func:`fileproc.objects.event_for`, and hands them to one path,
:func:`fileproc.dispatch.submit_many` (through the ``submit`` callable it is
given: ``service.submit``). Sources: the webhook (:mod:`.webhook`, bodies parsed by
:mod:`.notifications`), the folder watcher (:mod:`.watcher`), backfill
(:mod:`.backfill`) and the reconciler (:mod:`.reconcile`). A queue source
(AMQP, Redis streams, NATS) is one more module implementing :class:`Source`.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from fileproc.objects import Submit


@runtime_checkable
class Source(Protocol):
    """Something that finds objects and feeds them to ``submit``.

    An implementation SHALL:

    - build every event with :func:`~fileproc.objects.event_for` and
      refuse names :func:`~fileproc.objects.name_problem` refuses,
      logging the reason, without retrying them;
    - hand events to the ``submit`` callable it was built with, in batches
      where it can (one transaction per batch), and treat an event as taken
      only once ``submit`` returned: when it raises (the database is
      unavailable), keep or re-read the event and try again later, or, for a
      push source, answer its sender so that the sender retries;
    - return from :meth:`start` promptly (work happens on its own threads or
      the event loop) and, on :meth:`stop`, stop taking new work and finish
      or abandon (to be found again) what it holds, within a few seconds.

    An implementation MAY:

    - deliver an event more than once (dispatch keeps one job per version);
    - leave out the eTag, a size (or send 0) or the content type: dispatch
      fills them from a HEAD of the object (:func:`~fileproc.objects.complete`);
    - keep simple counters of what it saw and refused.
    """

    name: str

    def start(self) -> None:
        """Begin feeding events to ``submit``."""

    def stop(self) -> None:
        """Stop feeding events; return within a few seconds."""


__all__ = ["Source", "Submit"]
