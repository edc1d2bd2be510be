"""Lambda's execution environment, inside a warm runner of a deployed function version.

Built in the worker (:func:`.environment.environment`: what the runner's
environment holds; :meth:`LambdaHandler.spawn`: how its runner starts) and
applied in each new runner (a fresh interpreter, :mod:`.bootstrap`) by
:meth:`LoadedHandler.load`, before the handler's module is imported:

- the environment is Lambda's: its variables (``AWS_LAMBDA_*``,
  ``AWS_REGION``, ``LAMBDA_TASK_ROOT``, ``_HANDLER`` ...), the standard AWS
  variables that point boto3 at the configured S3-compatible store
  (``AWS_ENDPOINT_URL_S3``, the function's own scoped credentials:
  :mod:`.credentials`), the function's own ``--env``, and nothing of
  fileproc's settings or secrets (the runner never had them);
- a private writable folder as ``TMPDIR`` (and ``tempfile``'s folder), kept
  for the runner's life like Lambda's ``/tmp`` (:mod:`fileproc.sandbox`: a
  private mount view, Landlock, its limits); the package's folder is
  ``LAMBDA_TASK_ROOT`` and first on ``sys.path``, its requirements second;
- the root logger gets Lambda's handler (``[LEVEL]\\tTIME\\tREQUEST_ID\\tMSG``,
  :mod:`.logformat`); ``print`` and logging are captured per invocation
  (:mod:`.capture`) between Lambda's ``START`` and ``END`` lines;
- boto3's default session records every object the handler writes (so its
  outputs are recorded on the job) and marks them with the pipeline's
  provenance (so they never loop back into it): :mod:`.boto3_hook`.

A handler's return value must be JSON-serialisable (else
``Runtime.MarshalError``); an exception is recorded as Lambda's error object
(``errorMessage``, ``errorType``, ``requestId``, ``stackTrace``:
:mod:`.errorformat`), in plain words where fileproc knows better
(:func:`fileproc.sandbox.confine.plain_reason`).
"""

from __future__ import annotations

import faulthandler
import importlib
import json
import logging
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fileproc.errors import FileprocError
from fileproc.functions import log_stream_name
from fileproc.sandbox import isolation
from fileproc.sandbox.confine import confine, plain_reason, runtime_paths
from fileproc.sandbox.limits import limit_file_size
from fileproc.serverless.boto3_hook import hook_boto3_when_imported, start_invocation, written
from fileproc.serverless.capture import Captured, captured, captured_init
from fileproc.serverless.errorformat import InitError, error_object
from fileproc.serverless.logformat import lambda_logging

if TYPE_CHECKING:
    from fileproc.functions import Context
    from fileproc.runtime.pool import Spawn
    from fileproc.state.deployments import FunctionVersion
    from fileproc.storage import Storage

log = logging.getLogger(__name__)


class LambdaHandler:
    """A deployed version, as the worker knows it: what its runners are started with.

    Its runners are never forks of the worker: each is a fresh interpreter
    (:meth:`spawn`, :mod:`.bootstrap`) that loads the handler as Lambda's init
    phase does (:class:`LoadedHandler`) and holds nothing of the worker's.
    """

    def __init__(self, version: FunctionVersion, folder: Path, env: dict[str, str], tmp_root: Path,
                 package_bucket: str, shared: list[Path] | None = None, hidden: list[Path] | None = None) -> None:
        self.version = version
        self.package_bucket = package_bucket
        self.shared = shared or []  # besides its /tmp and scratch folder: the local storage's (no links made there)
        self.hidden = hidden or []  # what it may not even read: data_dir (but its own folders), the config file
        self.folder = folder
        self.env = env
        self.tmp_root = tmp_root
        self._spawns: dict[int, Spawn] = {}
        self._prepared = False
        self._checked = 0.0

    def prepare(self, storage: Storage) -> None:
        """In the worker, before a runner starts: the version's package and requirements on this host (once)."""
        if self._prepared:  # its folder looked for at most once a second (a stream's batches call this a lot)
            now = time.monotonic()
            if now - self._checked < 1.0:
                return
            if self.folder.is_dir():
                self._checked = now
                return
        from fileproc.serverless import packages

        packages.install(storage, self.package_bucket, self.version.package_key, self.folder,
                         self.version.requirements, sha256=self.version.package_sha256)
        self._prepared, self._checked = True, time.monotonic()

    def spawn(self, memory_mb: int, storage: dict[str, Any]) -> Spawn:
        """How a new runner of this version starts: a fresh interpreter, Lambda's environment, its setup.

        ``storage`` is what the runner's ``context.storage`` is opened from
        (:func:`fileproc.serverless.bootstrap.open_storage`): the store's
        folder, or the S3 endpoint and the function's own credentials
        (:mod:`.credentials`), which it also gets as ``AWS_*`` variables. New
        credentials make a new spawn, and so a new runner.
        """
        found = self._spawns.get(memory_mb)
        if found is not None and found.setup["storage"] == storage:  # (built once: asked on every step)
            return found
        import fileproc
        from fileproc.functions.aws import key_variables
        from fileproc.runtime.pool import Spawn

        version = self.version
        setup = {"function": version.function, "version": str(version.version), "handler": version.handler,
                 "memory_mb": memory_mb, "disk_mb": version.disk_mb, "folder": str(self.folder),
                 "tmp_root": str(self.tmp_root), "shared": [str(p) for p in self.shared],
                 "hidden": [str(p) for p in self.hidden], "storage": storage}
        # fileproc's own folder first (an editable install's is found by `site`, which the runner skips).
        path = (str(Path(fileproc.__file__).parent.parent), *(p for p in sys.path if p and os.path.isdir(p)))
        env = {**self.env, **key_variables(storage), **version.env}  # (its --env still wins, as before)
        spawn = Spawn("fileproc.serverless.bootstrap", setup, env, cwd=str(self.folder / "code"), path=path)
        self._spawns[memory_mb] = spawn
        return spawn

    def __call__(self, event: dict[str, Any], context: Any) -> Any:
        raise TypeError(f"{self.version.function} runs only in a runner of its own (LambdaHandler.spawn)")


class LoadedHandler:
    """A deployed version's handler, loaded in its runner (:meth:`load`: Lambda's init phase).

    ``setup`` is what :meth:`LambdaHandler.spawn` sends. An import that
    fails is reported on each invocation as Lambda reports it
    (``Runtime.ImportModuleError``).
    """

    def __init__(self, setup: dict[str, Any]) -> None:
        self.function: str = setup["function"]
        self.version: str = setup["version"]
        self.handler_name: str = setup["handler"]
        self.disk_mb: int = setup["disk_mb"]
        self.memory_mb: int = setup["memory_mb"]
        self.folder = Path(setup["folder"])
        self.tmp_root = Path(setup["tmp_root"])
        self.shared = [Path(p) for p in setup["shared"]]
        self.scratch = self.tmp_root / f"{os.getpid()}.tmp"  # its own: TMPDIR without a private /tmp, step folders
        self.hidden = [Path(p) for p in setup.get("hidden", [])]
        self._handler: Any = None
        self._init_error: tuple[str, str] | None = None
        self._init_output: Captured | None = None
        self.init_ms: float | None = None

    def init_output(self) -> str:
        """What the module printed or logged when it was imported (once: then it is "")."""
        output, self._init_output = self._init_output, None
        return output.text if output is not None else ""

    def load(self) -> None:
        """Lambda's environment, then the handler's module: once, before the runner's first step."""
        started = time.perf_counter()
        (self.folder / "aws-config").write_text("[default]\ns3 =\n    addressing_style = path\n")
        for folder in [*self.shared, self.scratch]:  # made now: the runner may not make them once confined
            folder.mkdir(parents=True, exist_ok=True)
        # What it reads of fileproc's (never the worker's whole sys.path, whose first entry is the
        # folder the worker started in: with `make serve`, the one holding data_dir).
        needed = [*runtime_paths(), self.folder]
        if isolation.private_view(self.disk_mb, self.memory_mb, [*needed, self.scratch, *self.shared],
                                  covered=self.hidden):
            tmp = Path("/tmp")
        else:  # no mount namespace here (not root, or a container without CAP_SYS_ADMIN): TMPDIR only
            tmp = self.scratch
        # Its environment is Lambda's already (the pool's first message): these two are its own.
        os.environ.update({"TMPDIR": str(tmp), "AWS_LAMBDA_LOG_STREAM_NAME": log_stream_name(self.version)})
        tempfile.tempdir = str(tmp)
        limit_file_size(self.disk_mb * 1024 * 1024)  # a file past it fails with EFBIG
        if isolation.switches_users():  # root: a user of its own, no privilege left
            isolation.become_runner_user(owned=[self.scratch])
        isolation.limit_processes()
        confine([tmp, self.scratch], self.shared, self.hidden, needed, shm=tmp == Path("/tmp"))
        code, deps = str(self.folder / "code"), str(self.folder / "deps")
        sys.path[:0] = [code, deps]
        importlib.invalidate_caches()
        lambda_logging()
        faulthandler.disable()  # a crash is reported by the worker (killed by SIGSEGV), not dumped on its stderr
        hook_boto3_when_imported()
        module_name, _, attribute = self.handler_name.rpartition(".")
        try:
            with captured_init() as self._init_output:  # what the module prints: in the first invocation's log
                module = importlib.import_module(module_name)
        except Exception as exc:  # the user's module failing at import: reported on each invocation
            self._init_error = ("Runtime.ImportModuleError", f"Unable to import module '{module_name}': {exc}")
            return
        handler = getattr(module, attribute, None)
        if not callable(handler):
            self._init_error = ("Runtime.HandlerNotFound", f"Handler '{attribute}' missing on module '{module_name}'")
            return
        self._handler = handler
        self.init_ms = (time.perf_counter() - started) * 1000

    def __call__(self, event: dict[str, Any], context: Any) -> Any:
        if self._handler is None and self._init_error is None:
            self.load()
        if self._init_error is not None:
            kind, message = self._init_error
            raise InitError(kind, message)
        return self._handler(event, context)


def invoke_lambda(handler: LoadedHandler, event: dict[str, Any], context: Context, storage: Storage,
                  provenance: dict[str, str], kind_of: Callable[[BaseException], str],
                  ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Call a deployed handler as Lambda does: its outcome, and the objects it wrote through boto3.

    Output is captured; the return value must be JSON (else
    ``Runtime.MarshalError``); an exception becomes Lambda's error object
    (logged too, as Lambda logs it), in plain words where fileproc knows
    better. ``kind_of`` classifies an exception for the worker.
    """
    outcome: dict[str, Any] = {"error": None, "result": None}
    start_invocation(provenance)
    with captured(context.aws_request_id, handler.version, handler.init_output()) as out:
        try:
            value = handler(event, context)
        except Exception as exc:
            shaped = error_object(exc, context.aws_request_id)
            print(json.dumps(shaped))
            outcome["result"] = shaped
            plain = plain_reason(exc, handler.disk_mb)
            outcome["error"] = {"kind": "permanent" if plain else kind_of(exc),
                                "type": shaped["errorType"], "message": plain or shaped["errorMessage"],
                                "traceback": "".join(traceback.format_exception(exc))[-8000:]}
        else:
            try:
                outcome["result"] = json.loads(json.dumps(value))
            except (TypeError, ValueError) as exc:
                message = f"Unable to marshal response: {exc}"
                outcome["result"] = {"errorMessage": message, "errorType": "Runtime.MarshalError",
                                     "requestId": context.aws_request_id, "stackTrace": []}
                outcome["error"] = {"kind": "permanent", "type": "Runtime.MarshalError", "message": message,
                                    "traceback": None}
    outcome["log"] = out.text
    found = []
    for bucket, key, etag in written():
        try:
            info = storage.head(bucket, key)
        except FileprocError:
            continue  # written and gone again: nothing to record
        found.append({"bucket": bucket, "key": key, "size": info.size, "etag": info.etag or etag,
                      "content_type": info.content_type})
    return outcome, found


__all__ = ["LambdaHandler", "LoadedHandler", "invoke_lambda"]
