"""A deployed function's runner: a fresh interpreter, exec'd by the worker (Lambda's ``bootstrap``).

Started by the worker's pool (:class:`fileproc.runtime.pool.Spawn`) as
``python -I -S -c BOOT fileproc.serverless.bootstrap FD PARENT PATH...``,
with an empty environment, /dev/null as stdin, a memory file of the
worker's as stdout and stderr (where invocations' output goes, so that the
worker keeps it if this runner dies mid-invocation), and no other
descriptor than its socket to the worker (``FD``). So it holds
nothing of the worker: no open file (the state database, its ``-shm``, a
broker or database connection), no object (settings, secrets, engines),
none of its variables. It imports what it needs, then waits for its first
message (the pool starts one ahead, so a cold start does not wait for
this): Lambda's environment, the version's code folder as its working
directory, and its setup (:meth:`.LambdaHandler.spawn`). It then loads the
handler (:class:`.LoadedHandler`: private /tmp, Landlock, the
module's import) and then runs invocations through the pool's own loop
(:func:`fileproc.runtime.runner_loop.serve`: memory limit, peak memory,
leftover processes, leaks), one per message, until the worker closes the
socket.

Each invocation is plain data the worker built (:func:`.stepping.invocation`);
the runner builds Lambda's context from it and sends back the step's outcome.

Keep this module's imports lean: the interpreter starts cold for each new
runner, and everything it imports is on the function's cold start (no
SQLAlchemy, no Celery, no pydantic; minio only when the handler first uses
``context.storage`` on an S3 store).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any, cast

from fileproc.errors import kind_of
from fileproc.events import ObjectEvent
from fileproc.functions import Context, InputObject, OutputWriter, step_outcome
from fileproc.functions.batches import lambda_event
from fileproc.processes import die_with_parent
from fileproc.runtime.runner_loop import Retire, serve, spawned_setup
from fileproc.serverless.capture import output_to_stdout
from fileproc.serverless.lambda_runtime import LoadedHandler, invoke_lambda
from fileproc.storage import Storage

NAME_SLOT = "\0name\0"
"""Where the output's name goes in an invocation's ``output_key`` (a key can hold no NUL)."""


def main() -> None:
    """The runner's life (argv: the module, its socket's descriptor, the worker's pid)."""
    fd, parent = int(sys.argv[2]), int(sys.argv[3])
    die_with_parent()
    if os.getppid() != parent:  # the worker died before the line above: nobody to serve
        os._exit(1)
    signal.pthread_sigmask(signal.SIG_SETMASK, ())  # a mask is inherited across exec: start clean
    _site_builtins()
    output_to_stdout()  # (the worker's memory file: it keeps what an invocation printed if this dies)
    sock = socket.socket(fileno=fd)
    setup = spawned_setup(sock)  # (started ahead: it waits here, the runtime imported, for a function)
    if setup is None:
        os._exit(0)
    handler = LoadedHandler(setup)
    storage = cast(Storage, LazyStorage(setup["storage"]))
    memory_mb = setup["memory_mb"]

    def work(call: dict[str, Any]) -> Any:
        outcome = run(handler, storage, call)
        if (outcome.get("error") or {}).get("kind") == "memory":  # the handler reported a MemoryError
            return Retire(outcome, f"ran out of memory (limit {memory_mb} MB)")
        return outcome

    try:
        serve(sock, work, handler.load, memory_mb)
    except BaseException:
        os._exit(1)
    os._exit(0)


def _site_builtins() -> None:
    # Started with -S (the worker gives its sys.path, already expanded): the builtins `site`
    # adds (exit, quit, help ...) are added here, for handlers that use them as on Lambda.
    import site

    site.setquit()
    site.setcopyright()
    site.sethelper()


def run(handler: LoadedHandler, storage: Storage, call: dict[str, Any]) -> dict[str, Any]:
    """One invocation: Lambda's context from the worker's plain data, the handler called, its outcome."""
    event = ObjectEvent.from_dict(call["event"])
    # Within the runner's own scratch folder (the only one of data_dir/scratch it may write), made
    # only if the step uses it (most never do), removed when it ends.
    scratch = handler.scratch / f"step-{call['request_id']}"
    provenance = call["provenance"]
    template = call["output_key"]
    writer = OutputWriter(storage, call["output_bucket"],
                          lambda name: re.sub(r"/{2,}", "/", template.replace(NAME_SLOT, name)).lstrip("/"),
                          provenance)
    reader = InputObject(storage, call["source"], scratch)
    context = Context(
        aws_request_id=call["request_id"], function_name=handler.function, memory_limit_in_mb=str(call["memory_mb"]),
        deadline=time.monotonic() + call["timeout"], params=call["params"], input=reader, output=writer,
        storage=storage, logger=logging.getLogger(f"fileproc.function.{handler.function}"), pipeline=call["pipeline"],
        event=event, scratch=scratch, function_version=handler.version, region=call["region"],
        qualifier=call["qualifier"],
    )
    try:
        given = lambda_event(call["payload"]) if call.get("payload") is not None else {"Records": [call["record"]]}
        ran, written = invoke_lambda(handler, given, context, storage, provenance, kind_of)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return step_outcome(ran, writer, reader, written)


class LazyStorage:
    """``context.storage`` of a runner: opened on first use (an S3 client costs a cold start ~50 ms)."""

    def __init__(self, config: dict[str, Any]) -> None:
        self._config = config
        self._opened: Storage | None = None

    def __getattr__(self, name: str) -> Any:  # only for what this class does not have itself
        if self._opened is None:
            self._opened = open_storage(self._config)
        return getattr(self._opened, name)


def open_storage(config: dict[str, Any]) -> Storage:
    """The store a runner's ``context`` uses: ``{"backend": "local", "buckets": ..., "tmp": ...}`` or S3's."""
    if config["backend"] == "s3":
        from fileproc.storage.s3 import S3Storage

        return S3Storage(endpoint=config["endpoint"], access_key=config["access_key"],
                         secret_key=config["secret_key"], session_token=config.get("session_token"),
                         secure=config["secure"], region=config["region"])
    from fileproc.storage.local import LocalStorage

    return LocalStorage(Path(config["buckets"]), tmp_dir=Path(config["tmp"]))


__all__ = ["LazyStorage", "main", "open_storage", "run"]
