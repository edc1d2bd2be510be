"""A deployed function's runner that dies mid-invocation keeps the invocation's log.

Lambda keeps what a timed-out invocation printed, then says ``Task timed
out after N seconds``; so does fileproc, and for a runner that crashed or
was killed (as the OOM killer kills) too: what the handler printed, logged
and had its child processes write is in the attempt's log, in order,
between START and END, and `fileproc logs` shows it.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fileproc.service import Service
from tests.test_lambda import deploy, fileproc, make_config, run, service_for, upload

HANDLER = '''
import logging, os, signal, subprocess, sys, time
from urllib.parse import unquote_plus

print("imported")
if os.environ.get("HANG_AT_IMPORT"):
    time.sleep(600)


def handler(event, context):
    what = unquote_plus(event["Records"][0]["s3"]["object"]["key"]).split(".")[0]
    print("first line")
    logging.getLogger().warning("a warning")
    subprocess.run(["echo", "from a child process"], check=True)
    print("last line before", what)
    if what == "block":
        time.sleep(600)
    while what == "flood":  # past the log's limit, until its timeout
        print("x" * 999)
    if what == "abort":
        os.abort()
    if what == "killed":  # as the OOM killer kills
        os.kill(os.getpid(), signal.SIGKILL)
    if what == "exit":
        sys.exit(3)
    return {"ok": what}
'''


@pytest.fixture
def dying(tmp_path: Path) -> tuple[Path, Service]:
    code = tmp_path / "dying.py"
    code.write_text(HANDLER)
    config = make_config(tmp_path, [{"function": "dying"}])
    deploy(config, code, "dying", "dying.handler", "--timeout", "2", "--retries", "0")
    return config, service_for(config)


def printed_then(request_id: str, what: str, why: str) -> str:
    """The log of a cold invocation of HANDLER that printed everything, then ended for ``why``."""
    rid = re.escape(request_id)
    return (f"imported\nSTART RequestId: {rid} Version: 1\nfirst line\n"
            rf"\[WARNING\]\t\S+Z\t{rid}\ta warning\nfrom a child process\nlast line before {what}\n"
            rf"\d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{{3}}Z {rid} {re.escape(why)}\n"
            f"END RequestId: {rid}\nREPORT RequestId: {rid}\tDuration: [^\n]*\n")


def test_a_timed_out_invocation_keeps_what_it_printed_and_says_it_timed_out(dying: tuple[Path, Service]) -> None:
    config, service = dying
    blocked = run(service, upload(service, "block.txt"))
    attempt = blocked.attempts[0]
    assert attempt.status == "timed_out" and "timed out after 2 s" in (blocked.error or "")
    request_id = f"{blocked.id}-0-{attempt.id}"
    assert re.fullmatch(printed_then(request_id, "block", "Task timed out after 2.00 seconds"), attempt.log or ""), \
        attempt.log
    assert fileproc(config, "logs", "dying", "--request", request_id) == attempt.log


def test_a_timed_out_invocation_that_printed_past_the_limit_keeps_the_first_256_kb_and_says_so(
        dying: tuple[Path, Service]) -> None:
    _, service = dying
    flooded = run(service, upload(service, "flood.txt"))
    attempt = flooded.attempts[0]
    assert attempt.status == "timed_out"
    log, request_id = attempt.log or "", f"{flooded.id}-0-{attempt.id}"
    printed, cut, end = log.partition("x" * 999 + "\n[fileproc: output past 256 KB dropped]\n")
    assert cut and len(printed + cut) <= 256 * 1024 and printed.startswith("imported\nSTART RequestId: ")
    assert re.fullmatch(rf"\S+Z {request_id} Task timed out after 2.00 seconds\nEND RequestId: {request_id}\n"
                        rf"REPORT RequestId: {request_id}\t[^\n]*\n", end), end


@pytest.mark.parametrize(("what", "why"), [
    ("abort", "StepCrashed: the step's process died (killed by SIGABRT)"),
    ("killed", "StepCrashed: the step's process died (killed by SIGKILL)"),
    ("exit", "SystemExit: 3"),
])
def test_a_runner_that_dies_mid_invocation_keeps_what_it_printed(dying: tuple[Path, Service], what: str,
                                                                 why: str) -> None:
    config, service = dying
    died = run(service, upload(service, f"{what}.txt"))
    attempt = died.attempts[0]
    assert died.status == "failed"
    request_id = f"{died.id}-0-{attempt.id}"
    assert re.fullmatch(printed_then(request_id, what, why), attempt.log or ""), attempt.log
    assert fileproc(config, "logs", "dying", "--request", request_id) == attempt.log


def test_a_module_that_hangs_at_import_keeps_what_it_printed(tmp_path: Path) -> None:
    code = tmp_path / "dying.py"
    code.write_text(HANDLER)
    config = make_config(tmp_path, [{"function": "dying"}])
    deploy(config, code, "dying", "dying.handler", "--timeout", "2", "--retries", "0", "--env", "HANG_AT_IMPORT=1")
    service = service_for(config)
    hung = run(service, upload(service, "a.txt"))
    attempt = hung.attempts[0]
    assert attempt.status == "timed_out"
    rid = re.escape(f"{hung.id}-0-{attempt.id}")
    # START comes from the worker: the runner never got that far.
    assert re.fullmatch(f"imported\nSTART RequestId: {rid} Version: 1\n\\S+Z {rid} Task timed out after 2.00 seconds\n"
                        f"END RequestId: {rid}\nREPORT RequestId: {rid}\t[^\n]*\n", attempt.log or ""), attempt.log
