"""A deployed function that reports what it sees: its event, context, environment, version."""

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
    }


def _what_the_worker_left():
    """What of the worker a function could reach in its own memory (it should reach none of it)."""
    import gc
    import sys

    engines = [str(o.url) for o in gc.get_objects() if type(o).__name__ == "Engine"]
    celery = sys.modules.get("fileproc.runtime.app")
    broker = celery.celery_app.conf.broker_url if celery else None
    return {"engines": engines, "broker": broker}
