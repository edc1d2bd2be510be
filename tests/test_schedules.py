"""Schedules: EventBridge's expressions, its Scheduled Event, and one run per tick across hosts.

The expressions are checked against a calendar (month ends, leap years,
weekdays). The scheduler runs a real deployed Lambda handler (the real CLI,
warm runners) on a real SQLite state database; its clock is a test's
(:class:`Clock`), moved minute by minute, so ``rate(1 minute)`` ticks in
milliseconds. Two schedulers with their own services (their own database
connections, as two hosts) race on every tick.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from fileproc.cli import cli
from fileproc.config import load_settings
from fileproc.cron import Cron, Rate, parse
from fileproc.errors import ConfigError
from fileproc.schedules.events import NAMESPACE
from fileproc.schedules.scheduler import Scheduler
from fileproc.service import Service
from fileproc.state import schedules as ticks
from fileproc.state.records import Job
from tests.procs import wait_for, write_config
from tests.test_lambda import deploy, service_for

HANDLERS = '''
def echo(event, context):
    """Returns the event it got (recorded on its job: the test reads it)."""
    return {"event": event, "function": context.function_name}

def odd_minutes(event, context):
    """Fails on a tick at an even minute."""
    if int(event["time"][14:16]) % 2 == 0:
        raise RuntimeError("even minute: " + event["time"])
    return {"time": event["time"]}
'''

T0 = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def upcoming(expression: str, after: datetime, count: int) -> list[datetime]:
    found, parsed = [], parse(expression)
    for _ in range(count):
        tick = parsed.next_after(after)
        assert tick is not None
        found.append(tick)
        after = tick
    return found


# -- expressions --------------------------------------------------------------------


def test_rate_ticks_are_whole_periods_since_1970_so_every_host_computes_the_same() -> None:
    assert upcoming("rate(5 minutes)", utc(2026, 12, 5, 12, 3), 3) == [
        utc(2026, 12, 5, 12, 5), utc(2026, 12, 5, 12, 10), utc(2026, 12, 5, 12, 15)]
    assert upcoming("rate(1 day)", utc(2028, 2, 28, 9, 30), 2) == [utc(2028, 2, 29), utc(2028, 3, 1)]
    (seventh,) = upcoming("rate(7 hours)", T0, 1)
    assert (seventh - utc(1970, 1, 1)) % timedelta(hours=7) == timedelta(0) and T0 < seventh <= T0 + timedelta(hours=7)
    every = parse("rate(1 minute)")
    assert isinstance(every, Rate) and every.seconds == 60
    assert every.next_after(T0) == T0 + timedelta(minutes=1)  # strictly after
    assert every.latest_at(T0) == T0 and every.latest_at(T0 + timedelta(seconds=59.9)) == T0
    assert parse("rate(2 hours)").latest_at(utc(2026, 12, 5, 13, 59)) == utc(2026, 12, 5, 12)
    assert every.next_after(datetime(2026, 12, 5, 12, 0, 30)) == utc(2026, 12, 5, 12, 1)  # naive: UTC


@pytest.mark.parametrize(("expression", "after", "expected"), [
    # every day at 12:00; the question mark in Day-of-week
    ("cron(0 12 * * ? *)", utc(2026, 12, 5, 12), [utc(2026, 12, 6, 12), utc(2026, 12, 7, 12)]),
    # weekdays by name, a step in minutes: Saturday 5 December goes to Monday the 7th
    ("cron(0/20 8 ? * MON-FRI *)", utc(2026, 12, 4, 8, 45),
     [utc(2026, 12, 7, 8), utc(2026, 12, 7, 8, 20), utc(2026, 12, 7, 8, 40)]),
    # day-of-week numbers: 1 is Sunday, 7 Saturday
    ("cron(30 6 ? * 1,7 *)", T0, [utc(2026, 12, 6, 6, 30), utc(2026, 12, 12, 6, 30)]),
    # L: the last day of the month, across February in a leap year and not
    ("cron(0 0 L * ? *)", utc(2028, 1, 31), [utc(2028, 2, 29), utc(2028, 3, 31), utc(2028, 4, 30)]),
    ("cron(0 0 L 2 ? *)", utc(2026, 3, 1), [utc(2027, 2, 28), utc(2028, 2, 29), utc(2029, 2, 28)]),
    # 29 February runs in leap years only (2100 is not one)
    ("cron(0 0 29 FEB ? *)", utc(2096, 3, 1), [utc(2104, 2, 29)]),
    # 31st: months without one are passed over
    ("cron(15 10 31 * ? *)", utc(2026, 3, 31, 11), [utc(2026, 5, 31, 10, 15), utc(2026, 7, 31, 10, 15)]),
    # W: the weekday nearest the 15th (Sunday 15 November 2026 -> Monday 16th; Saturday 15 May -> Friday 14th)
    ("cron(0 9 15W * ? *)", utc(2026, 11, 1), [utc(2026, 11, 16, 9), utc(2026, 12, 15, 9)]),
    ("cron(0 9 15W * ? *)", utc(2027, 5, 1), [utc(2027, 5, 14, 9)]),
    # 1W on a Saturday is Monday the 3rd, never the last month's Friday (1 May 2027 is a Saturday)
    ("cron(0 9 1W * ? *)", utc(2027, 4, 2), [utc(2027, 5, 3, 9)]),
    # LW: the last weekday (Sunday 31 January 2027 -> Friday the 29th)
    ("cron(0 18 LW * ? *)", utc(2027, 1, 1), [utc(2027, 1, 29, 18), utc(2027, 2, 26, 18)]),
    # #: the second Tuesday; 6L: the last Friday; L alone in Day-of-week: Saturday
    ("cron(0 9 ? * 3#2 *)", T0, [utc(2026, 12, 8, 9), utc(2027, 1, 12, 9)]),
    ("cron(0 9 ? * TUE#5 *)", T0, [utc(2026, 12, 29, 9), utc(2027, 3, 30, 9)]),  # months with a 5th Tuesday
    ("cron(0 9 ? * 6L *)", T0, [utc(2026, 12, 25, 9), utc(2027, 1, 29, 9)]),
    ("cron(0 9 ? * L *)", T0, [utc(2026, 12, 12, 9)]),
    # ranges, lists, wrapping ranges and month names; the year field
    ("cron(0 22-1 1 JAN,JUL ? 2027-2028)", T0,
     [utc(2027, 1, 1, 0), utc(2027, 1, 1, 1), utc(2027, 1, 1, 22), utc(2027, 1, 1, 23), utc(2027, 7, 1, 0)]),
    ("cron(0 0 1 1 ? 2030/5)", T0, [utc(2030, 1, 1), utc(2035, 1, 1)]),
    ("cron(0 0 ? * FRI-MON 2027)", utc(2027, 1, 1, 12), [utc(2027, 1, 2), utc(2027, 1, 3), utc(2027, 1, 4)]),
    # across a year's end
    ("cron(59 23 31 12 ? *)", utc(2026, 12, 31, 23, 59), [utc(2027, 12, 31, 23, 59)]),
])
def test_cron_next_ticks(expression: str, after: datetime, expected: list[datetime]) -> None:
    assert upcoming(expression, after, len(expected)) == expected


def test_cron_latest_tick_at_or_before_a_time_and_the_ends_of_time() -> None:
    noon = parse("cron(0 12 * * ? *)")
    assert isinstance(noon, Cron)
    assert noon.latest_at(T0) == T0 and noon.latest_at(T0 - timedelta(seconds=1)) == T0 - timedelta(days=1)
    assert parse("cron(0 0 L * ? *)").latest_at(utc(2028, 3, 15)) == utc(2028, 2, 29)
    assert parse("cron(0 9 ? * 6L *)").latest_at(utc(2027, 1, 1)) == utc(2026, 12, 25, 9)
    once = parse("cron(0 0 1 1 ? 2027)")
    assert once.next_after(utc(2027, 1, 1)) is None and once.latest_at(utc(2026, 6, 1)) is None
    assert parse("cron(0 0 30 2 ? *)").next_after(T0) is None  # never: 30 February
    assert parse("rate(1 day)").next_after(utc(2199, 12, 31)) is None


@pytest.mark.parametrize(("expression", "message"), [
    ("rate(1 minutes)", "a value of 1 takes the singular unit: rate(1 minute)"),
    ("rate(5 minute)", "a value above 1 takes the plural unit: rate(5 minutes)"),
    ("rate(0 hours)", "a whole number of 1 or more"),
    ("rate(1.5 hours)", "a whole number of 1 or more"),
    ("rate(2 weeks)", "the unit must be minute(s), hour(s) or day(s)"),
    ("rate(5)", "use rate(VALUE UNIT)"),
    ("every 5 minutes", "use rate(VALUE UNIT)"),
    ("cron(0 12 * * *)", "has 6 fields"),
    ("cron(0 12 * * * *)", "one of Day-of-month and Day-of-week must be '?'"),
    ("cron(0 12 ? * ? *)", "one of Day-of-month and Day-of-week must be '?'"),
    ("cron(60 12 * * ? *)", "Minutes '60': 60 is outside 0-59"),
    ("cron(0 24 * * ? *)", "Hours '24': 24 is outside 0-23"),
    ("cron(0 12 32 * ? *)", "Day-of-month '32': 32 is outside 1-31"),
    ("cron(0 12 ? * 8 *)", "Day-of-week '8': 8 is outside 1-7"),
    ("cron(0 12 1 1 ? 2200)", "Year '2200': 2200 is outside 1970-2199"),
    ("cron(0 12 * JANUARY ? *)", "Month 'JANUARY': 'JANUARY' is not a number, or JAN-DEC"),
    ("cron(0 12 ? * 3#1,6#3 *)", "a '#' item must be the field's only one"),
    ("cron(0 12 ? * 3#6 *)", "the number after '#' must be 1-5"),
    ("cron(L 12 * * ? *)", "Minutes 'L': 'L' is not allowed here"),
    ("cron(0 12 ? * 2W *)", "'2W' is not a number"),
    ("cron(*/0 * * * ? *)", "the step after '/' must be a number from 1 to 60"),
])
def test_a_bad_expression_says_what_is_wrong(expression: str, message: str) -> None:
    with pytest.raises(ValueError, match="^" + re.escape(repr(expression))) as caught:
        parse(expression)
    assert message in str(caught.value)


def test_a_bad_expression_stops_fileproc_at_start_naming_the_setting(tmp_path: Path) -> None:
    config = write_config(tmp_path / "fileproc.toml", {"data_dir": str(tmp_path / "data"), "pipelines": [],
                                                       "schedules": [{"name": "ok", "function": "f",
                                                                      "expression": "rate(5 minutes)"},
                                                                     {"name": "bad", "function": "f",
                                                                      "expression": "rate(5 minute)"}]})
    with pytest.raises(ConfigError, match=r"schedules\.1\.expression: .*rate\(5 minutes\)"):
        load_settings(config, env={})


# -- the scheduler ------------------------------------------------------------------


class Clock:
    """The scheduler's ``now``, moved by the test."""

    def __init__(self, start: datetime) -> None:
        self.at = start
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            return self.at

    def set(self, moment: datetime) -> None:
        with self._lock:
            self.at = moment


@pytest.fixture
def deployed(tmp_path: Path) -> Iterator[Callable[..., Service]]:
    """Deploys HANDLERS and writes a config with the given schedules; each call a new service on the same
    state database (another host's)."""
    code = tmp_path / "code"
    code.mkdir()
    (code / "app.py").write_text(HANDLERS)
    config = tmp_path / "fileproc.toml"
    started: list[Scheduler] = []

    def make(*schedules: dict[str, Any]) -> Service:
        write_config(config, {"data_dir": str(tmp_path / "data"), "functions": {"alias_seconds": 0},
                              "pipelines": [], "schedules": list(schedules)})
        for handler in {s["function"] for s in schedules}:
            deploy(config, code, handler, f"app.{handler}")
        return service_for(config)

    def host(schedules: list[dict[str, Any]] | None = None) -> Service:
        return service_for(config) if schedules is None else make(*schedules)

    def scheduler(service: Service, clock: Clock, worker: str) -> Scheduler:
        found = Scheduler(service, now=clock, interval=0.01, worker=worker)
        started.append(found)
        return found

    host.config = config  # type: ignore[attr-defined]
    host.scheduler = scheduler  # type: ignore[attr-defined]
    yield host
    for each in started:
        each.stop()


def runs(service: Service, name: str) -> list[Job]:
    """Schedule ``name``'s runs (its jobs), oldest first, with their attempts."""
    found = sorted(service.db.list_jobs(bucket=f"schedule:{name}", limit=1000), key=lambda job: job.id)
    assert len(found) < 1000
    return found


def finished(service: Service, name: str, count: int) -> bool:
    """Whether ``count`` runs of schedule ``name`` have ended."""
    return len([job for job in runs(service, name) if job.finished]) >= count


def settle(*schedulers: Scheduler) -> None:
    for scheduler in schedulers:
        assert scheduler.wait_for_runs(), "runs still in flight after 30 s"


def test_the_handler_gets_eventbridges_scheduled_event_and_the_run_is_a_job(deployed: Any) -> None:
    service = deployed([{"name": "noon", "function": "echo", "expression": "cron(0 12 * * ? *)"}])
    clock = Clock(T0 - timedelta(minutes=1))
    scheduler = deployed.scheduler(service, clock, "host-a")
    scheduler.run_due()  # first seen at 11:59: nothing owed
    assert runs(service, "noon") == []
    clock.set(T0 + timedelta(seconds=0.2))
    scheduler.run_due()
    settle(scheduler)
    (job,) = runs(service, "noon")
    assert job.status == "succeeded" and job.pipeline == "_event.echo" and job.key == "2026-12-05T12:00:00Z"
    event = job.attempts[0].result["event"]
    assert set(event) == {"version", "id", "detail-type", "source", "account", "time", "region", "resources",
                          "detail"}
    assert event["version"] == "0" and event["detail-type"] == "Scheduled Event" and event["source"] == "aws.events"
    assert event["account"] == "000000000000" and event["region"] == "us-east-1"
    assert event["time"] == "2026-12-05T12:00:00Z"  # the tick's, not when it ran
    assert event["resources"] == ["arn:aws:events:us-east-1:000000000000:rule/noon"]
    assert event["detail"] == {}
    # The same id for every run of this tick (a run taken over from a dead host keeps it).
    assert event["id"] == str(uuid.uuid5(NAMESPACE, "noon/2026-12-05T12:00:00Z"))
    assert job.event == event  # the job keeps the (small) event it ran on
    full = service.db.get_job(job.id)
    assert full is not None and "REPORT RequestId:" in (full.attempts[0].log or "")
    claimed = ticks.last_claimed(service.db, "noon")
    assert claimed is not None and claimed.tick == T0 and claimed.ok and claimed.job_id == job.id
    assert claimed.worker == "host-a" and claimed.runs == 1


def test_a_schedule_with_input_gets_it_verbatim(deployed: Any) -> None:
    given = {"report": "daily", "limits": [1, 2], "nested": {"a": [True, 1.5]}}
    service = deployed([{"name": "with-input", "function": "echo", "expression": "rate(1 minute)", "input": given}])
    clock = Clock(T0 - timedelta(seconds=30))
    scheduler = deployed.scheduler(service, clock, "host-a")
    scheduler.run_due()
    clock.set(T0)
    scheduler.run_due()
    settle(scheduler)
    (job,) = runs(service, "with-input")
    assert job.attempts[0].result["event"] == given


def test_two_hosts_racing_run_each_tick_exactly_once(deployed: Any) -> None:
    schedules = [{"name": "every-minute", "function": "echo", "expression": "rate(1 minute)"}]
    host_a = deployed(schedules)
    host_b = deployed()  # the same config and database, its own connections
    clock = Clock(T0 - timedelta(seconds=30))
    a = deployed.scheduler(host_a, clock, "host-a").start()
    b = deployed.scheduler(host_b, clock, "host-b").start()
    count = 12
    for minute in range(count):
        tick = T0 + timedelta(minutes=minute)
        clock.set(tick + timedelta(seconds=0.5))
        # Both threads wake within 10 ms of the clock moving and both try to claim the tick.
        wait_for(partial(ticks.find, host_a.db, "every-minute", tick), timeout=10, interval=0.01)
    wait_for(partial(finished, host_a, "every-minute", count), timeout=60)
    settle(a, b)
    done = runs(host_a, "every-minute")
    keys = [job.key for job in done]
    assert sorted(keys) == [(T0 + timedelta(minutes=m)).strftime("%Y-%m-%dT%H:%M:%SZ") for m in range(count)]
    assert all(job.status == "succeeded" for job in done)
    workers = {job.attempts[0].worker for job in done}
    assert workers <= {"host-a", "host-b"}
    # One claim per tick in the state database, each finished by the host that won it.
    for minute in range(count):
        claimed = ticks.find(host_b.db, "every-minute", T0 + timedelta(minutes=minute))
        assert claimed is not None and claimed.runs == 1 and claimed.ok


def test_claims_racing_on_one_tick_one_wins(deployed: Any) -> None:
    service = deployed([{"name": "r", "function": "echo", "expression": "rate(1 minute)"}])
    hosts = [service, *(deployed() for _ in range(3))]  # four connections to the database, as four hosts
    barrier = threading.Barrier(8)
    won: list[tuple[datetime, str]] = []

    def race(host: Service, tick: datetime, worker: str) -> None:
        barrier.wait()
        if ticks.claim(host.db, "r", tick, worker, 60) is not None:
            won.append((tick, worker))

    for minute in range(10):
        tick = T0 + timedelta(minutes=minute)
        threads = [threading.Thread(target=race, args=(hosts[i % 4], tick, f"w{i}")) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        (winner,) = [worker for at, worker in won if at == tick]  # exactly one of the eight
        held = ticks.find(service.db, "r", tick)
        assert held is not None and held.worker == winner and held.runs == 1
    # And a live claim is never taken over, however often it is tried.
    assert all(ticks.claim(host.db, "r", T0, "late", 60) is None for host in hosts)


def test_a_tick_missed_while_fileproc_was_down_runs_once_at_start(deployed: Any,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    service = deployed([{"name": "every-minute", "function": "echo", "expression": "rate(1 minute)"}])
    clock = Clock(T0 - timedelta(seconds=30))
    first = deployed.scheduler(service, clock, "host-a")
    first.run_due()
    clock.set(T0 + timedelta(seconds=1))
    first.run_due()  # runs 12:00
    settle(first)
    first.stop()
    assert [job.key for job in runs(service, "every-minute")] == ["2026-12-05T12:00:00Z"]

    # Down from 12:00:01 to 12:03:40: 12:01, 12:02 and 12:03 were missed; only the latest runs, once.
    clock.set(T0 + timedelta(minutes=3, seconds=40))
    caplog.set_level(logging.WARNING, logger="fileproc.schedules.scheduler")
    second = deployed.scheduler(deployed(), clock, "host-b")
    third = deployed.scheduler(deployed(), clock, "host-c")  # another host starting at the same time
    second.run_due()
    third.run_due()
    settle(second, third)
    assert [job.key for job in runs(service, "every-minute")] == ["2026-12-05T12:00:00Z", "2026-12-05T12:03:00Z"]
    (warning,) = [r.getMessage() for r in caplog.records if "missed" in r.getMessage()]
    assert warning.startswith("schedule every-minute: missed tick at 2026-12-05T12:03:00Z while fileproc was "
                              "down; running it now")
    assert "the earlier ones from 2026-12-05T12:01:00Z are not run" in warning
    # Running on: the next tick as usual, and nothing run twice.
    clock.set(T0 + timedelta(minutes=4))
    second.run_due()
    third.run_due()
    settle(second, third)
    assert [job.key[-9:] for job in runs(service, "every-minute")] == ["12:00:00Z", "12:03:00Z", "12:04:00Z"]


def test_a_new_schedule_does_not_run_a_tick_from_before_it_existed(deployed: Any) -> None:
    service = deployed([{"name": "daily", "function": "echo", "expression": "cron(0 0 * * ? *)"}])
    clock = Clock(T0)  # 12:00: today's midnight tick is before the schedule was first seen
    scheduler = deployed.scheduler(service, clock, "host-a")
    scheduler.run_due()
    settle(scheduler)
    assert runs(service, "daily") == []


def test_a_failing_handler_is_recorded_failed_and_the_next_tick_still_runs(deployed: Any,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    service = deployed([{"name": "flaky", "function": "odd_minutes", "expression": "rate(1 minute)"}])
    clock = Clock(T0 - timedelta(seconds=30))
    scheduler = deployed.scheduler(service, clock, "host-a").start()
    caplog.set_level(logging.WARNING, logger="fileproc.schedules.scheduler")
    for minute in range(3):  # 12:00 fails, 12:01 succeeds, 12:02 fails
        clock.set(T0 + timedelta(minutes=minute))
        wait_for(partial(finished, service, "flaky", minute + 1), timeout=30, interval=0.02)
    done = runs(service, "flaky")
    assert [job.status for job in done] == ["failed", "succeeded", "failed"]
    assert "RuntimeError: even minute: 2026-12-05T12:00:00Z" in (done[0].error or "")
    assert done[1].attempts[0].result == {"time": "2026-12-05T12:01:00Z"}
    settle(scheduler)
    assert [ticks.find(service.db, "flaky", T0 + timedelta(minutes=m)).ok  # type: ignore[union-attr]
            for m in range(3)] == [False, True, False]
    assert any("12:00:00Z: odd_minutes failed" in r.getMessage() for r in caplog.records)


def test_a_tick_whose_host_died_mid_run_is_taken_over_once_its_lease_ran_out(
        deployed: Any, caplog: pytest.LogCaptureFixture) -> None:
    service = deployed([{"name": "every-minute", "function": "echo", "expression": "rate(1 minute)"}])
    clock = Clock(T0 - timedelta(seconds=30))
    deployed.scheduler(service, clock, "host-a").run_due()  # first seen at 11:59:30
    # A host claimed 12:00 and died before its run ended; its lease (0 s) ran out.
    assert ticks.claim(service.db, "every-minute", T0, "dead-host:1", 0) is not None
    caplog.set_level(logging.WARNING, logger="fileproc.schedules.scheduler")
    clock.set(T0 + timedelta(seconds=30))
    scheduler = deployed.scheduler(deployed(), clock, "host-b")
    scheduler.run_due()  # starting: 12:00 is the latest tick, claimed and never finished
    settle(scheduler)
    (job,) = runs(service, "every-minute")
    assert job.status == "succeeded" and job.attempts[0].worker == "host-b"
    taken = ticks.find(service.db, "every-minute", T0)
    assert taken is not None and taken.runs == 2 and taken.worker == "host-b" and taken.ok
    assert any("tick at 2026-12-05T12:00:00Z was claimed by a host that stopped before its run ended; running it "
               "again now" in r.getMessage() for r in caplog.records)

    # A live claim is left alone while its lease lasts, and taken over once it ran out unfinished.
    one = T0 + timedelta(minutes=1)
    assert ticks.claim(service.db, "every-minute", one, "host-c:1", 1.0) is not None
    clock.set(one + timedelta(seconds=1))
    scheduler.run_due()
    settle(scheduler)
    assert len(runs(service, "every-minute")) == 1
    wait_for(lambda: (scheduler.run_due(), runs(service, "every-minute")[1:])[1], timeout=10, interval=0.1)
    settle(scheduler)
    assert [job.key[-9:] for job in runs(service, "every-minute")] == ["12:00:00Z", "12:01:00Z"]
    assert ticks.find(service.db, "every-minute", one).runs == 2  # type: ignore[union-attr]


def test_ticks_passed_while_the_scheduler_was_held_up_are_said_and_the_latest_runs(
        deployed: Any, caplog: pytest.LogCaptureFixture) -> None:
    service = deployed([{"name": "every-minute", "function": "echo", "expression": "rate(1 minute)"}])
    clock = Clock(T0 - timedelta(seconds=30))
    scheduler = deployed.scheduler(service, clock, "host-a")
    scheduler.run_due()
    caplog.set_level(logging.WARNING, logger="fileproc.schedules.scheduler")
    clock.set(T0 + timedelta(minutes=2, seconds=5))  # 12:00 and 12:01 passed while it was held up
    scheduler.run_due()
    settle(scheduler)
    assert [job.key for job in runs(service, "every-minute")] == ["2026-12-05T12:02:00Z"]
    assert any("ticks from 2026-12-05T12:00:00Z passed without a run" in r.getMessage() for r in caplog.records)


def test_list_shows_next_tick_and_last_run_and_run_runs_one_now(deployed: Any) -> None:
    service = deployed([{"name": "noon", "function": "echo", "expression": "cron(0 12 * * ? *)"},
                        {"name": "off", "function": "echo", "expression": "rate(1 hour)", "enabled": False}])
    config = deployed.config
    runner = CliRunner()
    listed = json.loads(runner.invoke(cli, ["--config", str(config), "schedules", "list", "--json"],
                                      catch_exceptions=False).output)
    noon, off = listed
    assert noon["name"] == "noon" and noon["function"] == "echo" and noon["expression"] == "cron(0 12 * * ? *)"
    assert noon["next"].endswith("T12:00:00Z") and noon["last_run"] is None and noon["enabled"]
    assert off["next"] is None and not off["enabled"]
    ran = runner.invoke(cli, ["--config", str(config), "schedules", "run", "noon"], catch_exceptions=False)
    assert ran.exit_code == 0, ran.output
    assert ran.output.startswith("ran noon: succeeded in ")
    result = json.loads(ran.output.splitlines()[1])
    assert result["event"]["detail-type"] == "Scheduled Event" and result["function"] == "echo"
    (job,) = runs(service, "noon")
    assert job.key.endswith("Z (run now)") and job.status == "succeeded"
    assert ticks.last_claimed(service.db, "noon") is None  # a run now takes no tick
    listed = json.loads(runner.invoke(cli, ["--config", str(config), "schedules", "list", "--json"]).output)
    assert listed[0]["last_run"]["job"] == job.id and listed[0]["last_run"]["status"] == "succeeded"
    text = runner.invoke(cli, ["--config", str(config), "schedules", "list"]).output
    assert f"noon  echo  cron(0 12 * * ? *)  next {noon['next']}  last run" in text and "off  echo" in text
    missing = runner.invoke(cli, ["--config", str(config), "schedules", "run", "nope"])
    assert missing.exit_code == 1 and "no schedule 'nope'" in str(missing.exception)
