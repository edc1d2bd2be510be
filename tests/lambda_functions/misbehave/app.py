"""A deployed function that misbehaves as its object's key says: crash, block, fork, fill, leak, slow."""

import os
import signal
import subprocess
import tempfile
import time
from urllib.parse import unquote_plus

kept = []


def handler(event, context):
    what = unquote_plus(event["Records"][0]["s3"]["object"]["key"]).split(".")[0]
    if what == "crash":
        os.kill(os.getpid(), signal.SIGSEGV)
    if what == "block":
        time.sleep(600)
    if what == "fork":
        child = subprocess.Popen(["sleep", "300"], start_new_session=True)
        return {"child": child.pid}
    if what == "fill":
        with open(os.path.join(tempfile.gettempdir(), "big"), "wb") as out:
            for _ in range(64):
                out.write(b"\0" * (1 << 20))
    if what.startswith("outside"):  # somewhere that is not its own (OUTSIDE, OUTSIDE2: folders of the test's)
        with open(os.path.join(os.environ[what.upper()], "written-by-a-function"), "w") as out:
            out.write("should not be here")
    if what == "leak":
        kept.append(bytearray(200 << 20))
    if what.startswith("slow"):  # says when it ran, for the reserved-concurrency test
        started = time.time()
        time.sleep(0.4)
        return {"ran": [started, time.time()]}
    return {"ok": what}
