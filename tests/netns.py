"""Simulated hosts for tests: network namespaces joined to this one by veth pairs.

A :class:`Lab` is one private /24 (``10.231.N.0/24``, N picked free). The
test's servers listen on the lab's *service address* (``10.231.N.1``, put on
this namespace's loopback) as well as on 127.0.0.1; each simulated host is a
network namespace with a veth pair to this namespace (a /30 of its own) and a
default route through it, so a process started there reaches the servers at
the service address and nothing else::

    with lab(hosts=2) as net, redis_server(also_listen=[net.service_address]) as url:
        a, b = net.hosts
        Process(config, ["worker"], log, prefix=a.prefix)   # `ip netns exec ...`
        a.cut()        # packets to and from host a vanish (a real partition)
        a.restore()

Cutting a host sets its veth's end in this namespace down: the host's side
loses its carrier and drops what it sends, and replies to it fall on a
blackhole route (they never leave the machine). Needs root and iproute2: a
test calls :func:`require_lab` first (skipped without, failed under CI).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

from tests.servers import unavailable

PREFIX = "10.231"
"""The private /16 the labs' /24s are taken from."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    if check and result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {result.stderr.strip()}")
    return result


def require_lab() -> None:
    """Skip the test unless network namespaces can be made here (fail it under CI)."""
    if os.geteuid() != 0:
        unavailable("simulated hosts need root (network namespaces)")
    if not shutil.which("ip"):
        unavailable("simulated hosts need iproute2's `ip` (apt-get install iproute2)")


@dataclass(frozen=True)
class Host:
    """One simulated host: a network namespace behind one veth pair."""

    name: str
    """The network namespace's name."""
    address: str
    """The host's own address (on its side of the pair)."""
    link: str
    """The pair's end in the test's namespace: the cable :meth:`cut` pulls."""
    inner: str
    """The pair's end inside the host."""

    @property
    def prefix(self) -> list[str]:
        """Run a command on this host: ``[*host.prefix, *argv]`` (it execs argv: the pid stays argv's)."""
        return ["ip", "netns", "exec", self.name]

    def cut(self) -> None:
        """Cut the host off: what it sends and what is sent to it vanishes, silently."""
        _ip("link", "set", self.link, "down")

    def restore(self, timeout: float = 10) -> None:
        """Reconnect the host; returns once its side has a carrier again."""
        _ip("link", "set", self.link, "up")
        carrier = f"/sys/class/net/{self.inner}/carrier"
        deadline = time.monotonic() + timeout
        while True:
            probe = subprocess.run([*self.prefix, "cat", carrier], capture_output=True, text=True, timeout=10,
                                   stdin=subprocess.DEVNULL, check=False)
            if probe.stdout.strip() == "1":
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"host {self.name}'s link did not come back within {timeout} s")
            time.sleep(0.05)


@dataclass
class Lab:
    """The simulated hosts of one test, and the address they reach the servers at."""

    service_address: str
    hosts: list[Host]


def _free_block() -> int:
    """A third octet N such that nothing on this machine uses 10.231.N.0/24 yet."""
    used_text = _ip("-o", "addr").stdout + _ip("route", "show", "table", "all").stdout
    used = {int(n) for n in re.findall(re.escape(PREFIX) + r"\.(\d+)\.", used_text)}
    start = os.getpid() % 250
    for offset in range(250):
        block = (start + offset) % 250 + 1
        if block not in used:
            return block
    raise RuntimeError(f"no free /24 left in {PREFIX}.0.0/16")


@contextlib.contextmanager
def lab(hosts: int = 2) -> Iterator[Lab]:
    """Make ``hosts`` simulated hosts for the block; everything is removed at exit.

    Stop the processes started on the hosts before the block ends: deleting a
    namespace does not stop what runs in it.
    """
    require_lab()
    block = _free_block()
    net = f"{PREFIX}.{block}"
    service = f"{net}.1"
    undo: list[list[str]] = []
    made: list[Host] = []
    try:
        _ip("addr", "add", f"{service}/32", "dev", "lo")
        undo.append(["addr", "del", f"{service}/32", "dev", "lo"])
        # While a host's link is down its /30 route is gone: replies to it must not
        # leave through the default route, so they fall here instead.
        _ip("route", "add", "blackhole", f"{net}.0/24")
        undo.append(["route", "del", "blackhole", f"{net}.0/24"])
        for index in range(hosts):
            base = 4 * (index + 1)
            name, link, inner = f"fp{block}h{index}", f"fp{block}h{index}r", f"fp{block}h{index}n"
            try:
                _ip("netns", "add", name)
            except RuntimeError as exc:  # root without CAP_NET_ADMIN or CAP_SYS_ADMIN (a container)
                unavailable(f"cannot make a network namespace here: {exc}")
            undo.append(["netns", "del", name])
            _ip("link", "add", link, "type", "veth", "peer", "name", inner)
            undo.append(["link", "del", link])
            _ip("link", "set", inner, "netns", name)
            _ip("addr", "add", f"{net}.{base + 1}/30", "dev", link)
            _ip("link", "set", link, "up")
            inside = ["-n", name]
            _ip(*inside, "addr", "add", f"{net}.{base + 2}/30", "dev", inner)
            _ip(*inside, "link", "set", inner, "up")
            _ip(*inside, "link", "set", "lo", "up")
            _ip(*inside, "route", "add", "default", "via", f"{net}.{base + 1}")
            host = Host(name, f"{net}.{base + 2}", link, inner)
            host.restore()  # waits for the carrier
            made.append(host)
        yield Lab(service, made)
    finally:
        for args in reversed(undo):
            _ip(*args, check=False)


__all__ = ["Host", "Lab", "lab", "require_lab"]
