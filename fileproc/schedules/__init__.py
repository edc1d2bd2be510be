"""Schedules: functions run on EventBridge's ``rate(...)`` and ``cron(...)`` expressions.

A ``[[schedules]]`` entry (:class:`fileproc.mappings.Schedule`) names a
function and an expression (parsed by :mod:`fileproc.cron`, in the core, so
a bad one stops fileproc at start). Every ``fileproc serve`` and ``fileproc
worker`` runs a :class:`~.scheduler.Scheduler`: at each tick, each host
tries to claim the tick in the state database (:mod:`fileproc.state.schedules`)
and the one that wins runs the function on EventBridge's Scheduled Event
(:mod:`.events`), or on the schedule's ``input``, through
:func:`fileproc.runtime.direct.invoke_event`: recorded as a job of the
pipeline ``_event.FUNCTION`` whose bucket is ``schedule:NAME``. A tick
missed while no fileproc ran is run once at the next start, and logged.
"""
