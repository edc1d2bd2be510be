"""A step chained behind another on its runner (a stream's next batch): run the moment that one succeeded, never
otherwise.

Real forked runners from this test process's pool; each step writes a file when it runs, so a step that must
not run is seen not to have.
"""

from __future__ import annotations

import gc
import time
import weakref
from pathlib import Path
from typing import Any

import pytest

from fileproc.runtime.pool import pool


def work(request: tuple[str, str, Any]) -> dict[str, Any]:
    """What a runner does with ``(what, marker file, value)``: a handler's outcome, as a kind's work returns it."""
    what, marker, value = request
    Path(marker).write_text(str(value))
    if what == "raise":
        raise ValueError(value)
    if what == "sleep":
        time.sleep(value)
    if what == "error":  # the handler raised, as a kind's work reports it
        return {"error": {"type": "ValueError", "message": value}, "result": None}
    if what == "items":  # Lambda's partial batch response
        return {"error": None, "result": {"batchItemFailures": [{"itemIdentifier": value}]}}
    return {"error": None, "result": value}


@pytest.fixture
def run(tmp_path: Path) -> Any:
    owner = object()
    made: list[Any] = []

    def start(what: str, name: str, value: Any = None, *, after: Any = None, timeout: float = 30.0,
              item_failures: bool = False) -> Any:
        running = pool().start(("chained", "1", 64), owner, work, (what, str(tmp_path / name), value),
                               timeout=timeout, memory_mb=64, after=after, item_failures=item_failures)
        made.append(running)
        return running

    yield start
    for running in made:
        running.result()
    pool().close(spares=False)


def test_a_step_chained_behind_a_success_runs_next_on_its_runner_each_with_its_own_reply(
        run: Any, tmp_path: Path) -> None:
    first = run("sleep", "a", 0.3)
    second = run("ok", "b", "two", after=first)
    third = run("ok", "c", "three", after=second)
    time.sleep(0.6)  # all three ran by now: their replies wait, back to back, on one socket
    ended = [first.result(), second.result(), third.result()]
    assert [r.ok for r in ended] == [True, True, True]
    assert [r.value["result"] for r in ended] == [0.3, "two", "three"]
    assert len({r.runner_pid for r in ended}) == 1
    assert [r.cold for r in ended] == [True, False, False]
    assert not any(r.not_run for r in ended)
    after = run("ok", "d", "four").result()  # the runner was given back once the chain ended
    assert after.runner_pid == ended[0].runner_pid and after.cold is False


@pytest.mark.parametrize("what", ["raise", "error"])
def test_behind_a_step_that_failed_a_chained_step_is_not_run(run: Any, tmp_path: Path, what: str) -> None:
    first = run(what, "a", "boom")
    second = run("ok", "b", "two", after=first)
    failed = first.result()
    assert not failed.ok or failed.value["error"]
    skipped = second.result()
    assert skipped.not_run and not skipped.ok and "the step before it failed" in (skipped.error or "")
    assert not (tmp_path / "b").exists()  # never started
    again = run("ok", "c", "three").result()  # the same warm runner goes on
    assert again.ok and again.runner_pid == failed.runner_pid


def test_batch_item_failures_stop_the_chain_only_when_they_count(run: Any, tmp_path: Path) -> None:
    first = run("items", "a", "7", item_failures=True)
    second = run("ok", "b", "two", after=first, item_failures=True)
    assert first.result().ok
    assert second.result().not_run and not (tmp_path / "b").exists()
    third = run("items", "c", "7")
    fourth = run("ok", "d", "four", after=third)  # (a mapping without report_batch_item_failures)
    assert third.result().ok and fourth.result().value["result"] == "four"


def test_behind_a_step_that_timed_out_a_chained_step_is_not_run(run: Any, tmp_path: Path) -> None:
    first = run("sleep", "a", 5, timeout=0.5)
    second = run("ok", "b", "two", after=first)
    assert first.result().timed_out
    skipped = second.result()
    assert skipped.not_run and "ended its runner" in (skipped.error or "")
    assert not (tmp_path / "b").exists()
    fresh = run("ok", "c", "three").result()
    assert fresh.ok and fresh.cold is True  # the timed-out runner was killed; this one is new


def test_only_one_step_is_chained_behind_another(run: Any) -> None:
    first = run("ok", "a", 1)
    run("ok", "b", 2, after=first)
    with pytest.raises(ValueError, match="only one"):
        run("ok", "c", 3, after=first)


def test_a_long_chain_keeps_no_step_that_ended(tmp_path: Path) -> None:
    owner, last, first = object(), None, None
    for n in range(20):  # as a busy stream's lane does: each step chained behind the one before it
        running = pool().start(("chained", "1", 64), owner, work, ("ok", str(tmp_path / "m"), n), timeout=30,
                               memory_mb=64, after=last)
        if last is not None:
            assert last.result().ok
        first = first or weakref.ref(running)
        last = running
    assert last is not None and last.result().value["result"] == 19
    gc.collect()
    assert first() is None  # (a chain of every step a runner ran would hold each one's result)
    pool().close(spares=False)
