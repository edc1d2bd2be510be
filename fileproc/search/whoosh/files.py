"""The index's files: generations under ``search.dir``, and what Whoosh raises when they are broken.

Layout of ``search.dir``::

    current -> gen-000003     a symlink, swapped atomically by a rebuild
    gen-000003/               the Whoosh index (its TOC and segments)
    writer.lock               held by the one indexer of this host (see indexer.py)
    cursor.json               how far the indexer has followed the outputs

A rebuild writes a whole new generation beside the current one and then
points ``current`` at it, so searches never see a half-built index, and a
broken generation is simply replaced.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import shutil
import struct
from pathlib import Path

from whoosh import index

from fileproc.search.whoosh.schema import schema

READ_ERRORS = (index.IndexError, OSError, ValueError, EOFError, KeyError, IndexError, struct.error,
               pickle.UnpicklingError, TypeError, AttributeError)
"""What Whoosh raises on files that are missing, truncated or garbled (it has no single base class)."""


def current(directory: Path) -> Path:
    """The symlink to the generation searches read."""
    return directory / "current"


def exists(directory: Path) -> bool:
    """Whether an index is there (readable or not: opening it says that)."""
    return current(directory).is_dir() and any(current(directory).glob("*.toc"))


def new_generation(directory: Path) -> Path:
    """An empty index in the next ``gen-NNNNNN`` folder (not installed yet)."""
    directory.mkdir(parents=True, exist_ok=True)
    numbers = [int(p.name[4:]) for p in directory.glob("gen-*") if p.name[4:].isdigit()]
    path = directory / f"gen-{max(numbers, default=0) + 1:06d}"
    path.mkdir()
    index.create_in(str(path), schema())
    return path


def install(directory: Path, generation: Path) -> None:
    """Point ``current`` at ``generation`` (one rename: atomic) and drop older generations."""
    link = directory / f".current-{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        link.unlink()
    link.symlink_to(generation.name)
    os.replace(link, current(directory))
    for old in directory.glob("gen-*"):
        if old.name != generation.name:
            shutil.rmtree(old, ignore_errors=True)  # open searchers keep their files (unlinked) until closed


__all__ = ["READ_ERRORS", "current", "exists", "install", "new_generation"]
