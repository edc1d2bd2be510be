"""A deployed function that reports what it sees: its event, context, environment, version."""

import contextlib
import glob
import logging
import os
import subprocess
import tempfile

try:
    import greeting  # from its requirements (a wheel the test builds), when deployed with them
except ImportError:
    greeting = None

logger = logging.getLogger()
logger.setLevel(logging.INFO)

VERSION = "v-one"

print("probe imported")  # Lambda's init phase: in the first invocation's log, before its START line


def handler(event, context):
    mode = os.environ.get("MODE", "")
    if mode == "fail":
        raise ValueError("asked to fail")
    if mode == "unmarshalable":
        return {"when": object()}
    print("hello from", context.function_name)
    subprocess.run(["echo", "and from a child process"], check=True)
    logger.info("the key is %s", event["Records"][0]["s3"]["object"]["key"])
    if hasattr(context, "output"):  # fileproc's extra: written through the storage, recorded as an output
        context.output.put("seen.txt", b"seen", content_type="text/plain")
    scratch = tempfile.mkdtemp()
    with open(os.path.join(scratch, "x"), "w") as fh:
        fh.write("private")
    return {
        "code": VERSION,
        "greeting": greeting.hello() if greeting else None,
        "record": event["Records"][0],
        "context": {
            "arn": context.invoked_function_arn, "memory": context.memory_limit_in_mb,
            "version": context.function_version, "group": context.log_group_name,
            "stream": context.log_stream_name, "identity": context.identity.cognito_identity_id,
            "client_context": context.client_context, "remaining": context.get_remaining_time_in_millis(),
        },
        "env": {k: v for k, v in os.environ.items()},
        "tmp": scratch,
        "tmp_listing": sorted(os.listdir("/tmp")),
        "reachable": _what_the_worker_left(),
        "pid": os.getpid(),
    }


def _what_the_worker_left():
    """What of the worker a function could reach in its own process (it should reach none of it).

    Its open descriptors (and what each points at), the environment it was
    started with (/proc/self/environ: what an exec gave it, whatever
    os.environ says now), the modules loaded, and which of the worker's
    secrets (``SECRET_HASHES``: their SHA-256, so the function itself is not
    given them) any string in its memory's Python objects equals.
    """
    import gc
    import hashlib
    import sys

    descriptors = {}
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # (the listing's own descriptor, closed by now)
            descriptors[name] = os.readlink(f"/proc/self/fd/{name}")
    with open("/proc/self/environ", "rb") as started_with:
        initial = sorted(entry.split(b"=", 1)[0].decode() for entry in started_with.read().split(b"\0") if entry)

    wanted = set(filter(None, os.environ.get("SECRET_HASHES", "").split(",")))
    found = set()
    seen = set()

    def look(value):
        if isinstance(value, str) and value not in seen:
            seen.add(value)
            digest = hashlib.sha256(value.encode(errors="surrogatepass")).hexdigest()
            if digest in wanted:
                found.add(digest)

    for obj in gc.get_objects():
        if isinstance(obj, dict):
            for key, value in list(obj.items()):
                look(key)
                look(value)
        elif isinstance(obj, (list, tuple, set, frozenset)):
            for value in list(obj):
                look(value)
    for value in [*os.environ.values(), *sys.argv]:
        look(value)
    kinds = set()
    for obj in gc.get_objects():
        module = type(obj).__dict__.get("__module__")
        if isinstance(module, str) and module.startswith(("fileproc.config", "fileproc.service", "fileproc.state",
                                                          "sqlalchemy", "celery", "kombu", "pydantic")):
            kinds.add(f"{module}.{type(obj).__name__}")
    worker = {}  # its parent (the worker): /proc would show its environment, memory and open files
    paths = [f"/proc/{os.getppid()}/{what}" for what in ("environ", "mem", "fd/0")]
    tries = [found for pattern in filter(None, os.environ.get("READ_TRIES", "").split(","))
             for found in sorted(glob.glob(pattern))]  # files it should not read (but its own)
    for path in [*paths, *tries]:
        try:
            with open(path, "rb") as entry:
                entry.read(1)
            worker[path] = "read"
        except OSError as exc:
            worker[path] = type(exc).__name__
    return {"descriptors": descriptors, "initial_environment": initial, "secrets": sorted(found), "worker": worker,
            "modules": sorted(sys.modules), "objects": sorted(kinds)}
