"""The README's Lambda walkthrough, run as written (as sqlite-utils tests its docs), so it cannot break again.

Every ``sh`` block after a ``<!-- walkthrough -->`` marker, in order, in one
shell (``bash -e``: each line must succeed), in an empty folder, on the
embedded default: the blocks themselves scaffold and deploy the function,
write ``fileproc.toml``, start ``fileproc serve`` and stop it. Only the port
is changed (a free one for 8080) and ``fileproc`` and ``python`` are this
test's.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.procs import free_port
from tests.servers import require
from tests.test_first_use import stop_group

README = (Path(__file__).parent.parent / "README.md").read_text()
MARKER = "<!-- walkthrough -->"


def walkthrough_blocks() -> list[str]:
    """The ``sh`` blocks right after each marker, in the README's order."""
    blocks = []
    for part in README.split(MARKER)[1:]:
        found = re.match(r"\s*```sh\n(.*?)```", part, re.S)
        assert found is not None, f"a {MARKER} marker is not followed by a ```sh block"
        blocks.append(found.group(1))
    return blocks


def test_the_walkthrough_has_its_steps() -> None:
    script = "\n".join(walkthrough_blocks())
    for step in ("fileproc functions new resize", "fileproc functions deploy", "fileproc serve &",
                 "fileproc doctor", "fileproc put --wait", "fileproc invoke resize --event resize/event.json",
                 "fileproc functions update-config"):
        assert step in script, step


def test_the_readme_lambda_walkthrough_runs_as_written(tmp_path: Path) -> None:
    require("curl")  # skipped without it on a developer's machine, a failure under CI
    folder = tmp_path / "walk"
    folder.mkdir()
    port = free_port()
    script = "\n".join(walkthrough_blocks()).replace("8080", str(port))
    bin_dir = tmp_path / "bin"  # `fileproc` and `python` as a user's activated virtualenv has them
    bin_dir.mkdir()
    for name, command in (("fileproc", f"{sys.executable} -m fileproc"), ("python", sys.executable)):
        (bin_dir / name).write_text(f'#!/bin/sh\nexec {command} "$@"\n')
        (bin_dir / name).chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FILEPROC_")}
    env.update(PATH=f"{bin_dir}:{env.get('PATH', '/usr/bin:/bin')}", FILEPROC_API_PORT=str(port))
    log = tmp_path / "shell.log"
    with log.open("wb") as out:  # a file, not a pipe: serve, in the background, keeps it open
        shell = subprocess.Popen(["bash", "-e", "-c", script], cwd=folder, env=env, start_new_session=True,
                                 stdout=out, stderr=subprocess.STDOUT)
    try:
        shell.wait(timeout=300)
    finally:
        stop_group(shell.pid)
    output = log.read_text(errors="replace")
    assert shell.returncode == 0, output

    # What each step says it does, it did.
    assert "config: " in output and "fileproc.toml (1 pipeline(s))" in output, output
    assert re.search(r"\[ok \] functions: .*1 deployed \(resize\)", output), output
    assert re.search(r"job \d+: resize succeeded: uploads-resized/photos/my cat.jpg/my cat-128.jpg", output), output
    buckets = folder / "fileproc-data" / "buckets"
    assert (buckets / "uploads-resized" / "photos" / "my cat.jpg" / "my cat-128.jpg").stat().st_size > 0
    invoked = buckets / "fileproc-functions" / "invocations" / "resize" / "photos" / "my cat.jpg" / "my cat-128.jpg"
    assert invoked.stat().st_size > 0  # fileproc invoke wrote where no pipeline watches
    assert not (buckets / "uploads" / "invoke").exists()
    assert "from version 1: code unchanged" in output  # the redeploy kept the configuration, and said so
    assert "from version 2: env SIZE changed" in output
    assert re.search(r"deployed resize version 2 \(live\): lambda_function.lambda_handler, 256 MB, 30 s", output)
    assert "REPORT RequestId:" in output  # fileproc logs
    assert re.search(r"^my cat-128\.jpg$", output, re.M), output  # what `ls` printed
