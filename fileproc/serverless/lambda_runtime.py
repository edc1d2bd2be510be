"""Lambda's execution environment, inside a warm runner of a deployed function version.

Built in the worker (:func:`environment`: what the runner's environment
holds; :meth:`LambdaHandler.spawn`: how its runner starts) and applied in
each new runner (a fresh interpreter, :mod:`.bootstrap`) by
:meth:`LoadedHandler.load`, before the handler's module is imported:

- the environment is Lambda's: its variables (``AWS_LAMBDA_*``,
  ``AWS_REGION``, ``LAMBDA_TASK_ROOT``, ``_HANDLER`` ...), the standard AWS
  variables that point boto3 at the configured S3-compatible store
  (``AWS_ENDPOINT_URL_S3``, the function's own scoped credentials:
  :mod:`.credentials`), the function's own ``--env``, and nothing of
  fileproc's settings or secrets (the runner never had them);
- a private writable folder as ``TMPDIR`` (and ``tempfile``'s folder), kept
  for the runner's life like Lambda's ``/tmp``; the package's folder is
  ``LAMBDA_TASK_ROOT`` and first on ``sys.path``, its requirements second;
- the root logger gets Lambda's handler (``[LEVEL]\\tTIME\\tREQUEST_ID\\tMSG``);
  ``print`` and logging are captured per invocation (:func:`captured`) between
  Lambda's ``START`` and ``END`` lines;
- boto3's default session records every object the handler writes (so its
  outputs are recorded on the job) and marks them with the pipeline's
  provenance (so they never loop back into it).

A handler's return value must be JSON-serialisable (else
``Runtime.MarshalError``); an exception is recorded as Lambda's error object
(``errorMessage``, ``errorType``, ``requestId``, ``stackTrace``).
"""

from __future__ import annotations

import contextlib
import errno
import faulthandler
import importlib
import io
import json
import logging
import os
import resource
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fileproc.errors import FileprocError, PermanentError
from fileproc.functions import log_group_name, log_stream_name
from fileproc.functions.aws import key_variables, store_variables
from fileproc.runtime.pool import OUTPUT_LIMIT, read_output
from fileproc.sandbox import isolation
from fileproc.sandbox.landlock import restrict_writes  # imported here, not in each new runner

if TYPE_CHECKING:
    from fileproc.config import Settings
    from fileproc.functions import Context
    from fileproc.runtime.pool import Spawn
    from fileproc.state.deployments import FunctionVersion
    from fileproc.storage import Storage

log = logging.getLogger(__name__)

LOG_LIMIT = OUTPUT_LIMIT
"""Bytes of one invocation's output kept on its attempt (the rest is dropped, and says so)."""

def environment(settings: Settings, version: FunctionVersion, folder: Path) -> dict[str, str]:
    """The environment of a runner of ``version``; its credentials (:func:`key_variables`) are added per
    runner by :meth:`LambdaHandler.spawn`, TMPDIR and the log stream in the runner."""
    code = folder / "code"
    python = f"python{sys.version_info.major}.{sys.version_info.minor}"
    found = {
        "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin",
        "LANG": "en_US.UTF-8", "TZ": ":UTC",
        "LAMBDA_TASK_ROOT": str(code), "LAMBDA_RUNTIME_DIR": sys.prefix, "_HANDLER": version.handler,
        "AWS_EXECUTION_ENV": f"AWS_Lambda_{python}",
        "AWS_LAMBDA_FUNCTION_NAME": version.function,
        "AWS_LAMBDA_FUNCTION_VERSION": str(version.version),
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(version.memory_mb),
        "AWS_LAMBDA_LOG_GROUP_NAME": log_group_name(version.function),
        "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
        "PYTHONPATH": f"{code}:{folder / 'deps'}",
        # boto3 reads no ~/.aws of the host: path-style addressing (what S3-compatible stores
        # serve) from a file of the function's own, credentials from the variables only.
        "AWS_CONFIG_FILE": str(folder / "aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(folder / "aws-credentials"),
        **store_variables(settings),
    }
    return {**found, **version.env}


class LambdaHandler:
    """A deployed version, as the worker knows it: what its runners are started with.

    Its runners are never forks of the worker: each is a fresh interpreter
    (:meth:`spawn`, :mod:`.bootstrap`) that loads the handler as Lambda's init
    phase does (:class:`LoadedHandler`) and holds nothing of the worker's.
    """

    lambda_style = True

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

    def prepare(self, storage: Storage) -> None:
        """In the worker, before a runner starts: the version's package and requirements on this host."""
        from fileproc.serverless import packages

        packages.install(storage, self.package_bucket, self.version.package_key, self.folder,
                         self.version.requirements, sha256=self.version.package_sha256)

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
        limit = self.disk_mb * 1024 * 1024  # a file past it fails with EFBIG (Python ignores SIGXFSZ)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        if isolation.switches_users():  # root: a user of its own, no privilege left
            isolation.become_runner_user(owned=[self.scratch])
        isolation.limit_processes()
        _confine([tmp, self.scratch], self.shared, self.hidden, needed, shm=tmp == Path("/tmp"))
        code, deps = str(self.folder / "code"), str(self.folder / "deps")
        sys.path[:0] = [code, deps]
        importlib.invalidate_caches()
        _lambda_logging()
        faulthandler.disable()  # a crash is reported by the worker (killed by SIGSEGV), not dumped on its stderr
        _hook_boto3_when_imported()
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


class InitError(PermanentError):
    """The function's module did not import, or has no such handler: no retry will help."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


# --- logging and output, per invocation ----------------------------------------------------

_request_id = ""
_CUT = f"[fileproc: output past {LOG_LIMIT // 1024} KB dropped]\n"  # where a capture stopped keeping output


class Captured(io.TextIOBase):
    """What one invocation (or the module's import) printed or logged: at most :data:`LOG_LIMIT` bytes.

    Line-buffered, and written through to the runner's output file at each
    newline (or flush): a runner killed mid-invocation (at its timeout, by
    the OOM killer, a crash) has left there every line it printed, for the
    worker to read (:func:`unfinished_log`). (One write per line, not per
    piece ``print`` writes: a system call costs a few microseconds.) Without
    an output file (no memfd) it is kept here. Its text is there once
    :meth:`finish` has read it back.
    """

    def __init__(self, fd: int | None) -> None:
        self._fd = fd
        self._pending: list[str] = []  # the line being written
        self._parts: list[str] = []  # without an output file
        self._size = 0
        self._dropped = 0
        self._finished: str | None = None

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if self._finished is None:  # (else a thread the handler left printing: not this invocation's any more)
            self._pending.append(text)
            if "\n" in text or len(self._pending) > 64:
                self.flush()
        return len(text)

    def flush(self) -> None:
        pending, self._pending = self._pending, []
        if pending:
            self._keep("".join(pending))

    def _keep(self, text: str) -> None:
        data = text.encode(errors="backslashreplace")
        if self._size + len(data) > LOG_LIMIT - len(_CUT):
            if not self._dropped:  # where it was cut, in case the runner dies before it says how much (finish)
                self._put(_CUT, _CUT.encode())
            self._dropped += len(data)
        else:
            self._put(text, data)

    def _put(self, text: str, data: bytes) -> None:
        if self._fd is None:
            self._parts.append(text)
        else:
            try:
                os.write(self._fd, data)
            except OSError:  # (its disk limit, RLIMIT_FSIZE, counts the memory file too)
                self._dropped += len(data)
                return
        self._size += len(data)

    def finish(self, last: str = "") -> None:
        """The capture is over: its text is read back (and the output file emptied), then ``last`` added."""
        self.flush()
        if self._fd is None:
            kept, past = "".join(self._parts), 0
        else:
            kept, past = _take_output(self._fd)
        if self._dropped:
            kept = kept.replace(_CUT, "", 1)  # (how much is said below)
        if kept and not kept.endswith("\n") and last:  # (a line printed without its newline)
            kept += "\n"
        dropped = self._dropped + past
        self._finished = kept + (f"[fileproc: {dropped} more bytes of output dropped]\n" if dropped else "") + last

    @property
    def text(self) -> str:
        return self._finished or ""


@contextlib.contextmanager
def captured(request_id: str, version: str, before: str = "") -> Iterator[Captured]:
    """Capture ``print`` and logging of one invocation, between Lambda's START and END lines.

    ``before`` (what the module printed while it was imported) comes first.
    Everything goes to the runner's output file as it is written (Python's
    line by line), in order: what the handler writes in Python and, through
    fds 1 and 2 pointed there meanwhile, what its child processes or C code
    write. When the invocation ends it is read back (END added). If it
    raises past here, or the runner dies in it, it stays in the file, for
    the worker to read.
    """
    global _request_id
    out = Captured(_fresh_output())
    if before and not before.endswith("\n"):
        before += "\n"
    out.write(f"{before}START RequestId: {request_id} Version: {version}\n")
    saved = sys.stdout, sys.stderr
    sys.stdout = sys.stderr = out
    _request_id = request_id
    descriptors = _redirect_descriptors()
    try:
        yield out
    finally:
        out.flush()
        sys.stdout, sys.stderr = saved
        _request_id = ""
        _restore_descriptors(descriptors)
    out.finish(f"END RequestId: {request_id}\n")


@contextlib.contextmanager
def captured_init() -> Iterator[Captured]:
    """Capture what the handler's module prints or logs while it is imported (Lambda's init phase)."""
    out = Captured(_fresh_output())
    saved = sys.stdout, sys.stderr
    sys.stdout = sys.stderr = out
    descriptors = _redirect_descriptors()
    try:
        yield out
    finally:
        sys.stdout, sys.stderr = saved
        _restore_descriptors(descriptors)
        out.finish()  # (an import that failed too: its output goes with the error on each invocation)


_output_file: int | None = None  # where captures write (fd 1 and 2 point there meanwhile), one per runner


def output_to_stdout() -> None:
    """In a spawned runner: captures write to its stdout, a memory file its worker holds too.

    The worker (:mod:`fileproc.runtime.pool`) reads it if the runner dies
    mid-invocation, so what was printed before is kept. It is used through
    a descriptor of its own: a handler that points fd 1 elsewhere changes
    nothing here. Where stdout is not a file (the worker could make no
    memory file), the runner makes its own.
    """
    global _output_file
    import stat

    if stat.S_ISREG(os.fstat(1).st_mode):
        _output_file = os.dup(1)


def _fresh_output() -> int | None:
    """The output file, emptied for a new capture (None without memfd: Python-level output only)."""
    global _output_file
    try:
        if _output_file is None:
            _output_file = os.memfd_create("fileproc-invocation-output")
        os.ftruncate(_output_file, 0)
        os.lseek(_output_file, 0, os.SEEK_SET)
    except (OSError, AttributeError):
        return None
    return _output_file


def _take_output(fd: int) -> tuple[str, int]:
    """What the output file holds (at most :data:`LOG_LIMIT` bytes) and how many bytes more; then it is emptied."""
    found = read_output(fd)
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)  # the next capture writes from the start again
    return found


def _redirect_descriptors() -> tuple[int, int] | None:
    """Point fds 1 and 2 at the output file; what they were, to restore."""
    if _output_file is None:
        return None
    try:
        saved = os.dup(1), os.dup(2)
        os.dup2(_output_file, 1)
        os.dup2(_output_file, 2)
    except OSError:
        return None
    return saved


def _restore_descriptors(saved: tuple[int, int] | None) -> None:
    if saved is None:
        return
    os.dup2(saved[0], 1)
    os.dup2(saved[1], 2)
    os.close(saved[0])
    os.close(saved[1])


def unfinished_log(output: str, request_id: str, version: str, *, timeout: float | None = None,
                   error: str = "") -> str:
    """The log of an invocation its runner never finished: what it had written, why it ended, END.

    ``output`` is what the worker read from the runner's output file: the
    module's init output and START, then what was printed (START is added
    if the runner died before writing it). The reason is Lambda's line
    (``2026-12-05T10:00:00.000Z REQUEST_ID Task timed out after 3.00
    seconds``) for a ``timeout``, else ``error`` (fileproc's plain words)
    with the same time and request id.
    """
    if output and not output.endswith("\n"):
        output += "\n"
    if f"START RequestId: {request_id} " not in output:
        output += f"START RequestId: {request_id} Version: {version}\n"
    now = time.time()
    when = f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(now))}.{int(now % 1 * 1000):03d}Z"
    why = f"Task timed out after {timeout:.2f} seconds" if timeout is not None else error
    return f"{output}{when} {request_id} {why}\nEND RequestId: {request_id}\n"


class _LambdaLogHandler(logging.Handler):
    """Lambda's root handler: ``[LEVEL]\\tTIME\\tREQUEST_ID\\tMESSAGE`` to the invocation's output."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            when = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            message = self.format(record).replace("\n", "\r")  # one entry per line, as Lambda keeps it
            sys.stdout.write(f"[{record.levelname}]\t{when}.{int(record.msecs):03d}Z\t{_request_id}\t{message}\n")
        except Exception:
            self.handleError(record)


def _lambda_logging() -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):  # the worker's: a function's lines go to its own log
        root.removeHandler(handler)
    root.addHandler(_LambdaLogHandler())
    root.setLevel(logging.WARNING)  # Python's default, as on Lambda: a handler sets INFO itself


# --- boto3: outputs recorded, marked with the pipeline's provenance ------------------------

_written: list[tuple[str, str, str]] = []
_provenance: dict[str, str] = {}


def start_invocation(provenance: dict[str, str]) -> None:
    """Before each invocation: what boto3 writes from now on is this step's, with this provenance."""
    global _provenance
    _written.clear()
    _provenance = dict(provenance)


def written() -> list[tuple[str, str, str]]:
    """(bucket, key, etag) of each object the handler wrote through boto3 in this invocation."""
    return list(_written)


class _AfterImport:
    """A meta path finder that calls ``then(module)`` once ``name`` is imported (it loads nothing itself)."""

    def __init__(self, name: str, then: Callable[[Any], None]) -> None:
        self.name, self.then = name, then

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name != self.name:
            return None
        from importlib.machinery import PathFinder

        spec = PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        loader, then = spec.loader, self.then
        run = loader.exec_module

        def exec_module(module: Any) -> None:
            run(module)
            then(module)

        loader.exec_module = exec_module  # type: ignore[method-assign]
        sys.meta_path.remove(self)
        return spec


def _hook_boto3_when_imported() -> None:
    # boto3 is not imported by the runner (it costs a cold start ~100 ms): it is hooked when the
    # handler imports it, before the handler's module can make a client at its top.
    if "boto3" in sys.modules:
        _hook_boto3(sys.modules["boto3"])
    else:
        sys.meta_path.insert(0, _AfterImport("boto3", _hook_boto3))


def _hook_boto3(boto3: Any) -> None:
    # Only boto3's default session (what `boto3.client("s3")` uses) is hooked, when it is made.
    original = boto3.setup_default_session

    def setup_default_session(**kwargs: Any) -> None:
        original(**kwargs)
        events = boto3.DEFAULT_SESSION.events
        for operation in ("PutObject", "CreateMultipartUpload", "CopyObject"):
            events.register(f"before-parameter-build.s3.{operation}", _mark)
        for operation in ("PutObject", "CompleteMultipartUpload", "CopyObject"):
            events.register(f"after-call.s3.{operation}", _record)

    boto3.setup_default_session = setup_default_session
    boto3.DEFAULT_SESSION = None


def _mark(params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
    context["fileproc_target"] = (params.get("Bucket"), params.get("Key"))
    if _provenance:
        if params.get("MetadataDirective") == "COPY":  # a copy keeps its source's metadata: nothing to add
            return
        params["Metadata"] = {**_provenance, **(params.get("Metadata") or {})}


def _record(http_response: Any, parsed: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
    target = context.get("fileproc_target")
    status = getattr(http_response, "status_code", 0)
    if target and target[0] and target[1] and 200 <= status < 300:
        etag = parsed.get("ETag") or (parsed.get("CopyObjectResult") or {}).get("ETag") or ""
        _written.append((target[0], target[1], str(etag).strip('"')))


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


_writable: list[Path] = []  # where this runner may write, once confined (empty: not confined)
_shared: list[Path] = []  # of those, the storage's (no link made there)
_hidden: list[Path] = []  # what it may not read either


def runtime_paths() -> list[Path]:
    """What a runner reads to run at all: Python, its installed packages, fileproc's own package."""
    import fileproc

    packages = [Path(p) for p in sys.path if p and Path(p).name in ("site-packages", "dist-packages")]
    return [Path(sys.prefix), Path(sys.base_prefix), *packages, Path(fileproc.__file__).parent]


def _confine(folders: list[Path], shared: list[Path], hidden: list[Path], readable: list[Path], *,
             shm: bool) -> None:
    """Writes only beneath ``folders`` and ``shared`` (and /dev/null, its /proc entry) from now on.

    Links, devices, fifos and sockets can be made only beneath ``folders``
    (its own), never beneath ``shared`` (the storage's). /dev/shm is
    writable only when it is the runner's own (``shm``). Reads too are
    refused beneath ``hidden`` (but beneath the folders and ``readable``,
    of which none may lead to a hidden path: such an entry is dropped), and
    in other processes' /proc entries.
    """
    global _writable, _shared, _hidden
    sys.dont_write_bytecode = True  # its package is read-only to it: no __pycache__ beside the code
    allowed = [*folders, *([Path("/dev/shm")] if shm else []), Path(f"/proc/{os.getpid()}")]
    # Never hide "/" (a home folder may hold Python itself: ``readable`` keeps that readable).
    hidden = [path.resolve() for path in hidden if path.resolve() != Path("/")]
    # A rule opens everything beneath its path: one on the way to a hidden path would open it.
    readable = [path for path in readable
                if not any(secret.is_relative_to(path.resolve()) for secret in hidden)]
    if restrict_writes(allowed, [Path("/dev/null"), Path("/dev/zero"), Path("/dev/full")], storage=shared,
                       hidden=hidden, readable=readable):
        _writable = [folder.resolve() for folder in [*allowed, *shared]]  # as Landlock sees them (through links)
        _shared = [folder.resolve() for folder in shared]
        _hidden = hidden


def plain_reason(exc: BaseException, disk_mb: int) -> str | None:
    """What a handler's exception means in plain words, where fileproc knows better than its message."""
    if isinstance(exc, OSError) and _writable and exc.errno == errno.EACCES and exc.filename2:
        link = Path(os.fsdecode(exc.filename2)).absolute()  # symlink(), link(), rename(): where it would land
        if any(link.parent.resolve().is_relative_to(folder) for folder in _shared):
            return (f"refused making {link}: a function makes only folders and files in the storage's folders, "
                    f"no links ({exc.strerror})")
    if isinstance(exc, OSError) and _writable and exc.filename:
        target = Path(os.fsdecode(exc.filename)).absolute()
        where = target.parent.resolve() / target.name  # what Landlock checked (a host folder links from /tmp)
        mine = any(where.is_relative_to(folder) for folder in _writable)
        if exc.errno == errno.EACCES and not mine and any(where.is_relative_to(path) for path in _hidden):
            return (f"refused reading or writing {target}: fileproc's own files (its state, settings and other "
                    f"functions) are out of a function's reach ({exc.strerror})")
        if exc.errno == errno.EACCES and not mine:
            return (f"refused writing {target}: a function writes only to its /tmp and the folders fileproc "
                    f"gives it ({exc.strerror})")
    if isinstance(exc, OSError) and exc.errno == errno.EFBIG:
        return f"wrote a file past its disk limit of {disk_mb} MB ({exc.strerror})"
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return f"ran out of disk space: past its disk limit of {disk_mb} MB, or the disk is full ({exc.strerror})"
    return None


def error_object(exc: BaseException, request_id: str) -> dict[str, Any]:
    """Lambda's record of a handler's exception."""
    kind = exc.kind if isinstance(exc, InitError) else type(exc).__name__
    frames = traceback.extract_tb(exc.__traceback__)
    return {"errorMessage": str(exc) or kind, "errorType": kind, "requestId": request_id,
            "stackTrace": [line for line in traceback.format_list(frames)]}


__all__ = ["Captured", "InitError", "LambdaHandler", "LoadedHandler", "captured", "environment",
           "error_object", "invoke_lambda", "output_to_stdout", "start_invocation", "unfinished_log", "written"]
