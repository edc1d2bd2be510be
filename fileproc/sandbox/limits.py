"""Resource limits of a runner (``setrlimit``): its address space, the size of a file it writes.

The process cap of a runner's user is :func:`.isolation.limit_processes`.
"""

from __future__ import annotations

import resource


def limit_address_space(soft: int, hard: int) -> None:
    """Cap this process's address space (``RLIMIT_AS``, bytes): past ``soft``, an allocation fails (MemoryError).

    ``hard`` stops the process raising its own soft limit; it is never set
    above a hard limit the process was given already.
    """
    _, current = resource.getrlimit(resource.RLIMIT_AS)
    if current != resource.RLIM_INFINITY:
        hard = min(hard, current)
    resource.setrlimit(resource.RLIMIT_AS, (min(soft, hard), hard))


def limit_file_size(size: int) -> None:
    """Cap the size of any file this process writes (``RLIMIT_FSIZE``, bytes), for good.

    A write past it fails with EFBIG (Python ignores the SIGXFSZ the kernel sends).
    """
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))


__all__ = ["limit_address_space", "limit_file_size"]
