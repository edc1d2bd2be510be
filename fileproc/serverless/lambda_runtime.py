"""Lambda's execution environment, inside a warm runner of a deployed function version.

Built in the worker (:func:`environment`: what the runner's environment
holds; :meth:`LambdaHandler.spawn`: how its runner starts) and applied in
each new runner (a fresh interpreter, :mod:`.bootstrap`) by
:meth:`LoadedHandler.load`, before the handler's module is imported:

- the environment is Lambda's: its variables (``AWS_LAMBDA_*``,
  ``AWS_REGION``, ``LAMBDA_TASK_ROOT``, ``_HANDLER`` ...), the standard AWS
  variables that point boto3 at the configured S3-compatible store
  (``AWS_ENDPOINT_URL_S3``, credentials), the function's own ``--env``, and
  nothing of fileproc's settings or secrets (the runner never had them);
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
import ctypes
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
from fileproc.serverless.landlock import restrict_writes  # imported here, not in each new runner

if TYPE_CHECKING:
    from fileproc.config import Settings
    from fileproc.functions import Context, InputObject, OutputWriter
    from fileproc.runtime.pool import Spawn
    from fileproc.state.deployments import FunctionVersion
    from fileproc.storage import Storage

log = logging.getLogger(__name__)

LOG_LIMIT = 256 * 1024
"""Characters of one invocation's output kept on its attempt (the rest is dropped, and says so)."""

DEFAULT_REGION = "us-east-1"


def aws_region(settings: Settings) -> str:
    """The region handlers see (``awsRegion``, ``AWS_REGION``): ``storage.region``, else us-east-1."""
    return settings.storage.region or DEFAULT_REGION


def store_variables(settings: Settings) -> dict[str, str]:
    """The standard AWS variables that point boto3 at the configured store (S3 backend only)."""
    region = aws_region(settings)
    found = {"AWS_REGION": region, "AWS_DEFAULT_REGION": region}
    if settings.storage.backend == "s3":
        url = f"{'https' if settings.storage.secure else 'http'}://{settings.storage.endpoint}"
        found |= {"AWS_ENDPOINT_URL_S3": url, "AWS_ENDPOINT_URL": url,
                  "AWS_ACCESS_KEY_ID": settings.storage.access_key.get_secret_value(),
                  "AWS_SECRET_ACCESS_KEY": settings.storage.secret_key.get_secret_value()}
    return found


def environment(settings: Settings, version: FunctionVersion, folder: Path) -> dict[str, str]:
    """The whole environment of a runner of ``version`` (TMPDIR and the log stream are added in the runner)."""
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
                 package_bucket: str, writable: list[Path] | None = None, hidden: list[Path] | None = None) -> None:
        self.version = version
        self.package_bucket = package_bucket
        self.writable = writable or []  # besides its /tmp: the step scratch folders, local storage's
        self.hidden = hidden or []  # what it may not even read: data_dir (but its own folders), the config file
        self.folder = folder
        self.env = env
        self.tmp_root = tmp_root
        self._spawns: dict[int, Spawn] = {}

    def prepare(self, storage: Storage) -> None:
        """In the worker, before a runner starts: the version's package and requirements on this host."""
        from fileproc.serverless import packages

        packages.install(storage, self.package_bucket, self.version.package_key, self.folder,
                         self.version.requirements)

    def spawn(self, memory_mb: int, storage: dict[str, Any]) -> Spawn:
        """How a new runner of this version starts: a fresh interpreter, Lambda's environment, its setup.

        ``storage`` is what the runner's ``context.storage`` is opened from
        (:func:`fileproc.serverless.bootstrap.open_storage`): the store's
        folder, or the S3 endpoint and the credentials the function gets
        as ``AWS_*`` anyway.
        """
        found = self._spawns.get(memory_mb)
        if found is not None and found.setup["storage"] == storage:  # (built once: asked on every step)
            return found
        import fileproc
        from fileproc.runtime.pool import Spawn

        version = self.version
        setup = {"function": version.function, "version": str(version.version), "handler": version.handler,
                 "memory_mb": memory_mb, "disk_mb": version.disk_mb, "folder": str(self.folder),
                 "tmp_root": str(self.tmp_root), "writable": [str(p) for p in self.writable],
                 "hidden": [str(p) for p in self.hidden], "storage": storage}
        # fileproc's own folder first (an editable install's is found by `site`, which the runner skips).
        path = (str(Path(fileproc.__file__).parent.parent), *(p for p in sys.path if p and os.path.isdir(p)))
        spawn = Spawn("fileproc.serverless.bootstrap", setup, self.env, cwd=str(self.folder / "code"), path=path)
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
        self.folder = Path(setup["folder"])
        self.tmp_root = Path(setup["tmp_root"])
        self.writable = [Path(p) for p in setup["writable"]]
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
        keep = [Path(sys.prefix), Path(sys.base_prefix), self.folder, self.tmp_root, Path.cwd(),
                *(Path(p) for p in sys.path if p)]
        for folder in self.writable:  # made now: the runner may not make them once confined
            folder.mkdir(parents=True, exist_ok=True)
        if private_tmp(self.disk_mb, keep):
            tmp = Path("/tmp")
        else:  # no mount namespace here (not root, or a container without CAP_SYS_ADMIN): TMPDIR only
            tmp = self.tmp_root / f"{os.getpid()}.tmp"
            tmp.mkdir(parents=True, exist_ok=True)
        # Its environment is Lambda's already (the pool's first message): these two are its own.
        os.environ.update({"TMPDIR": str(tmp), "AWS_LAMBDA_LOG_STREAM_NAME": log_stream_name(self.version)})
        tempfile.tempdir = str(tmp)
        limit = self.disk_mb * 1024 * 1024  # a file past it fails with EFBIG (Python ignores SIGXFSZ)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        _confine([tmp, *self.writable], self.hidden, [Path(sys.prefix), Path(sys.base_prefix), self.folder,
                                                      *(Path(p) for p in sys.path if p)])
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


_CLONE_NEWNS = 0x00020000
_MS_BIND, _MS_REC, _MS_PRIVATE = 4096, 16384, 1 << 18


HOST_ENTRIES = Path("/mnt")
"""Where a runner with a private /tmp sees the host /tmp's entries it needs (in its own mount namespace)."""


def private_tmp(size_mb: int, keep: list[Path]) -> bool:
    """Give this process a /tmp of its own: a tmpfs of ``size_mb`` in a mount namespace of its own.

    Like Lambda's /tmp: private to the execution environment, kept between
    its invocations, and as big as the function's disk limit (a handler that
    fills it gets ENOSPC; nobody else's /tmp fills). Entries of the host's
    /tmp that hold what this process needs (``keep``: its Python, the
    function's folder, data_dir) stay reachable at their paths: each is
    bound under :data:`HOST_ENTRIES` (a small tmpfs of this namespace) and
    linked from the private /tmp, so writing beneath them is not writing
    beneath /tmp (which matters to :func:`_confine`). False (nothing changed)
    where the OS does not allow it: not root, or no CAP_SYS_ADMIN.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    host_tmp = Path("/tmp").resolve()
    needed = sorted({p.resolve().relative_to(host_tmp).parts[0] for p in keep
                     if p.resolve().is_relative_to(host_tmp) and p.resolve() != host_tmp})
    if needed and not HOST_ENTRIES.is_dir():
        return False
    if libc.unshare(_CLONE_NEWNS) != 0:
        return False
    # Mounts made from now on stay in this namespace (the host never sees them).
    if libc.mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None) != 0:
        return False
    # Opened in the new namespace (a bind's source must be in it): reachable after /tmp is covered.
    original = os.open("/tmp", os.O_RDONLY | os.O_DIRECTORY)
    try:
        if needed and libc.mount(b"tmpfs", str(HOST_ENTRIES).encode(), b"tmpfs", 0, b"size=1m,mode=755") != 0:
            return False
        if libc.mount(b"tmpfs", b"/tmp", b"tmpfs", 0, f"size={size_mb}m,mode=1777".encode()) != 0:
            return False
        for name in needed:
            source, target = f"/proc/self/fd/{original}/{name}", HOST_ENTRIES / name
            if os.path.isdir(source):
                target.mkdir()
            else:
                target.touch()
            if libc.mount(source.encode(), str(target).encode(), None, _MS_BIND | _MS_REC, None) != 0:
                log.warning("private /tmp: %s could not be bound (errno %d)", name, ctypes.get_errno())
                continue
            os.symlink(target, host_tmp / name)
        return True
    finally:
        os.close(original)


class InitError(PermanentError):
    """The function's module did not import, or has no such handler: no retry will help."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


# --- logging and output, per invocation ----------------------------------------------------

_request_id = ""


class Captured(io.TextIOBase):
    """What one invocation printed or logged (at most :data:`LOG_LIMIT` characters)."""

    def __init__(self) -> None:
        self._parts: list[str] = []
        self._size = 0
        self._dropped = 0

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if self._size + len(text) > LOG_LIMIT:
            self._dropped += len(text)
        else:
            self._parts.append(text)
            self._size += len(text)
        return len(text)

    @property
    def text(self) -> str:
        dropped = f"[fileproc: {self._dropped} more characters of output dropped]\n" if self._dropped else ""
        return "".join(self._parts) + dropped


@contextlib.contextmanager
def captured(request_id: str, version: str) -> Iterator[Captured]:
    """Capture ``print`` and logging of one invocation, between Lambda's START and END lines.

    What the handler writes in Python is kept in order; what its child
    processes (or C code) write to the process's stdout and stderr goes to a
    memory file meanwhile and is added after it.
    """
    global _request_id
    out = Captured()
    out.write(f"START RequestId: {request_id} Version: {version}\n")
    saved = sys.stdout, sys.stderr
    sys.stdout = sys.stderr = out
    _request_id = request_id
    descriptors = _redirect_descriptors()
    try:
        yield out
    finally:
        sys.stdout, sys.stderr = saved
        _request_id = ""
        if descriptors is not None:
            out.write(_restore_descriptors(*descriptors))
        out.write(f"END RequestId: {request_id}\n")


@contextlib.contextmanager
def captured_init() -> Iterator[Captured]:
    """Capture what the handler's module prints or logs while it is imported (Lambda's init phase)."""
    out = Captured()
    saved = sys.stdout, sys.stderr
    sys.stdout = sys.stderr = out
    descriptors = _redirect_descriptors()
    try:
        yield out
    finally:
        sys.stdout, sys.stderr = saved
        if descriptors is not None:
            out.write(_restore_descriptors(*descriptors))


_output_file: int | None = None  # a memory file for fd 1 and 2 during invocations, one per runner


def _redirect_descriptors() -> tuple[int, int] | None:
    global _output_file
    try:
        if _output_file is None:
            _output_file = os.memfd_create("fileproc-invocation-output")
        saved = os.dup(1), os.dup(2)
        os.dup2(_output_file, 1)
        os.dup2(_output_file, 2)
    except (OSError, AttributeError):  # no memfd (not Linux): Python-level output only
        return None
    return saved


def _restore_descriptors(out_fd: int, err_fd: int) -> str:
    assert _output_file is not None
    os.dup2(out_fd, 1)
    os.dup2(err_fd, 2)
    os.close(out_fd)
    os.close(err_fd)
    size = os.fstat(_output_file).st_size
    data = os.pread(_output_file, min(size, LOG_LIMIT), 0)
    os.ftruncate(_output_file, 0)
    os.lseek(_output_file, 0, os.SEEK_SET)  # the next invocation writes from the start again
    return data.decode(errors="replace") + (f"[fileproc: {size - LOG_LIMIT} more bytes of output dropped]\n"
                                            if size > LOG_LIMIT else "")


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
    with captured(context.aws_request_id, handler.version) as out:
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
    outcome["log"] = handler.init_output() + out.text
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
_hidden: list[Path] = []  # what it may not read either


def _confine(folders: list[Path], hidden: list[Path], readable: list[Path]) -> None:
    """Writes only beneath ``folders`` (and /dev/null, /dev/shm, this process's /proc entry) from now on.

    Reads too are refused beneath ``hidden`` (but beneath ``folders`` and
    ``readable``), and in other processes' /proc entries.
    """
    global _writable, _hidden
    sys.dont_write_bytecode = True  # its package is read-only to it: no __pycache__ beside the code
    allowed = [*folders, Path("/dev/shm"), Path(f"/proc/{os.getpid()}")]
    # Never hide "/" (a home folder may hold Python itself: ``readable`` keeps that readable).
    hidden = [path.resolve() for path in hidden if path.resolve() != Path("/")]
    if restrict_writes(allowed, [Path("/dev/null"), Path("/dev/zero"), Path("/dev/full")], hidden=hidden,
                       readable=readable):
        _writable = [folder.resolve() for folder in allowed]  # as Landlock sees them (through links)
        _hidden = hidden


def plain_reason(exc: BaseException, disk_mb: int) -> str | None:
    """What a handler's exception means in plain words, where fileproc knows better than its message."""
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


def step_outcome(outcome: dict[str, Any], writer: OutputWriter, reader: InputObject,
                 extra: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """What a step sends back to the worker: its outcome, with its outputs and bytes in and out."""
    outcome["outputs"] = [
        {"bucket": o.bucket, "key": o.key, "size": o.size, "etag": o.etag, "content_type": o.content_type}
        for o in writer.written
    ] + (extra or [])
    outcome["bytes_read"] = reader.bytes_read
    outcome["bytes_written"] = sum(o["size"] for o in outcome["outputs"])
    return outcome


def error_object(exc: BaseException, request_id: str) -> dict[str, Any]:
    """Lambda's record of a handler's exception."""
    kind = exc.kind if isinstance(exc, InitError) else type(exc).__name__
    frames = traceback.extract_tb(exc.__traceback__)
    return {"errorMessage": str(exc) or kind, "errorType": kind, "requestId": request_id,
            "stackTrace": [line for line in traceback.format_list(frames)]}


__all__ = ["Captured", "InitError", "LambdaHandler", "LoadedHandler", "aws_region", "captured", "environment",
           "error_object", "invoke_lambda", "start_invocation", "step_outcome", "store_variables", "written"]
