"""The sandbox's primitives and the runner's wire, each on its own (no pool, no function, no service).

A limit or a subreaper is a process's for good: each is tried in a fresh
Python of its own. The whole of a runner is test_warm_runners.py's and
test_lambda_limits.py's.
"""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import fileproc
from fileproc.runtime import wire
from fileproc.sandbox import procfs
from fileproc.sandbox.confine import plain_reason, runtime_paths
from fileproc.serverless.logformat import unfinished_log


def python(script: str, cwd: Path | None = None) -> str:
    """What ``script`` prints, run in a Python of its own (which must succeed)."""
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True,
                          timeout=60, cwd=cwd)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_an_allocation_past_the_address_space_limit_fails_with_memory_error() -> None:
    out = python("""
        from fileproc.sandbox import procfs
        from fileproc.sandbox.limits import limit_address_space
        held = procfs.memory()["VmSize"] * 1024
        limit_address_space(held + (64 << 20), held + (128 << 20))
        small = bytearray(16 << 20)
        try:
            bytearray(256 << 20)
        except MemoryError:
            print("refused")
    """)
    assert out == "refused\n"


def test_a_file_past_the_size_limit_fails_with_efbig_in_plain_words(tmp_path: Path) -> None:
    out = python(f"""
        from fileproc.sandbox.confine import plain_reason
        from fileproc.sandbox.limits import limit_file_size
        limit_file_size(1 << 20)
        try:
            with open({str(tmp_path / "big")!r}, "wb") as f:
                f.write(bytes(2 << 20))
        except OSError as exc:
            print(plain_reason(exc, disk_mb=1))
    """)
    assert out.startswith("wrote a file past its disk limit of 1 MB"), out
    assert (tmp_path / "big").stat().st_size <= 1 << 20


def test_the_subreaper_kills_what_a_step_left_running_even_daemonised(tmp_path: Path) -> None:
    out = python("""
        import os, subprocess, time
        from fileproc.sandbox.reaper import become_subreaper, reap_descendants
        print(reap_descendants())  # nothing started: nothing to kill
        become_subreaper()
        # a daemonised helper: its parent (sh) exits at once, so it is nobody's child but ours
        subprocess.run(["sh", "-c", "sleep 60 & echo $!"], check=True, stdout=open("pid", "w"))
        helper = int(open("pid").read())
        os.kill(helper, 0)  # alive
        print(reap_descendants())
        try:
            os.kill(helper, 0)
        except ProcessLookupError:
            print("gone")
    """, cwd=tmp_path)
    assert out.split() == ["0", "1", "gone"]


def test_memory_readings_see_this_process_and_its_peak() -> None:
    now = procfs.memory()
    assert now["VmRSS"] > 0 and now["VmSize"] >= now["VmRSS"]
    procfs.reset_peak()
    before = procfs.children_peak()
    block = bytearray(64 << 20)  # touched: resident
    del block
    after = procfs.memory()
    assert procfs.peak(after, before) >= now["VmRSS"] + 60 * 1024
    with subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE) as other:
        assert procfs.high_water_mark(other.pid) > 0
        other.communicate(b"")
    assert procfs.high_water_mark(2**22 + 1) == 0  # no such process


def test_a_runner_reads_python_its_packages_and_fileproc_itself() -> None:
    paths = runtime_paths()
    assert Path(fileproc.__file__).parent in paths
    assert Path(sys.prefix) in paths


def test_plain_reason_leaves_an_error_it_knows_nothing_about_alone() -> None:
    assert plain_reason(ValueError("no"), disk_mb=512) is None
    full = OSError(errno.ENOSPC, "No space left on device", "/tmp/x")
    assert plain_reason(full, disk_mb=512) == ("ran out of disk space: past its disk limit of 512 MB, "
                                               "or the disk is full (No space left on device)")


def test_a_message_crosses_whole_and_a_reply_waits_for_its_deadline_or_cancel() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        big = bytes(3 << 20)
        sender = threading.Thread(target=wire.send, args=(ours, big))
        sender.start()
        assert wire.read_message(theirs) == big
        sender.join()
        wire.send(theirs, b"reply")
        assert wire.receive(ours, time.monotonic() + 5, None) == b"reply"
        assert wire.receive(ours, time.monotonic() + 0.05, None) is wire.TIMED_OUT
        cancel = threading.Event()
        cancel.set()
        assert wire.receive(ours, time.monotonic() + 5, cancel) is wire.CANCELLED
        theirs.close()
        assert wire.receive(ours, time.monotonic() + 5, None) is None  # the runner died
        assert wire.read_message(ours) is None


def test_a_runners_output_file_is_read_up_to_its_limit() -> None:
    fd = wire.output_file()
    assert fd is not None
    os.write(fd, b"x" * (wire.OUTPUT_LIMIT + 10))
    text, past = wire.read_output(fd)
    assert (len(text), past) == (wire.OUTPUT_LIMIT, 10)
    assert wire.read_output_text(fd).endswith("[fileproc: 10 more bytes of output dropped]\n")
    os.close(fd)


def test_the_log_of_an_unfinished_invocation_says_why_and_ends() -> None:
    log = unfinished_log("hello", "r1", "3", timeout=2)
    lines = log.splitlines()
    assert lines[:2] == ["hello", "START RequestId: r1 Version: 3"]
    assert lines[2].endswith(" r1 Task timed out after 2.00 seconds")
    assert lines[3:] == ["END RequestId: r1"]
    started = "START RequestId: r1 Version: 3\nworking\n"
    assert unfinished_log(started, "r1", "3", error="killed").startswith(started)
    assert unfinished_log(started, "r1", "3", error="killed").count("START") == 1
