"""Writing the index: a batch kept open on a Whoosh writer, the merge policy of a commit, a whole generation."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from whoosh import index, writing
from whoosh.reading import SegmentReader

from fileproc.search import Batch, Document, IndexCorrupt, SearchIndex
from fileproc.search.whoosh.codec import WriterCodec
from fileproc.search.whoosh.files import READ_ERRORS
from fileproc.search.whoosh.schema import fields

MAX_SEGMENTS = 6
"""Segments a commit leaves at most (see :func:`merge_few`)."""

BATCH_MB = 64
"""Memory a batch's writer uses for postings before it spills them to disk."""

REBUILD_MB = 128
"""The same for a rebuild's one writer."""


class WhooshBatch(Batch):
    """A Whoosh writer kept open: each document is analyzed when staged, all are written at the commit."""

    def __init__(self, index: SearchIndex, ix: Any) -> None:
        super().__init__(index)
        try:
            self.writer = ix.writer(limitmb=BATCH_MB, codec=WriterCodec())
        except READ_ERRORS as exc:
            raise IndexCorrupt(f"cannot write the search index: {exc!r}") from exc

    def _stage(self, add: list[Document], delete: list[str]) -> None:
        try:
            for doc_id in delete:
                self.writer.delete_by_term("id", doc_id)
            for document in add:
                self.writer.update_document(**fields(document, self.writer.schema))
        except READ_ERRORS as exc:
            raise IndexCorrupt(f"cannot write the search index: {exc!r}") from exc

    def commit(self) -> None:
        try:
            self.writer.commit(mergetype=merge_few)
        except READ_ERRORS as exc:
            raise IndexCorrupt(f"cannot commit to the search index: {exc!r}") from exc

    def cancel(self) -> None:
        with contextlib.suppress(*READ_ERRORS):
            self.writer.cancel()


def merge_few(writer: Any, segments: list[Any]) -> list[Any]:
    """The merge policy of a commit: Whoosh's own (tiny segments together), then, while more than
    :data:`MAX_SEGMENTS` would be left, the smallest ones into the segment being written.

    A search walks every segment, and Whoosh picks its slow matcher for an OR (a word looked for in
    title, name and content) on segments of 5,000 documents or fewer; Whoosh alone never merges
    segments of a few thousand. Merging the smallest first keeps each merge's cost in proportion to
    what it merges (a big segment is rewritten only when as much was added after it).
    """
    kept = writing.MERGE_SMALL(writer, segments)
    if len(kept) <= MAX_SEGMENTS:
        return list(kept)
    ordered = sorted(kept, key=lambda segment: segment.doc_count_all())
    cut = len(ordered) - MAX_SEGMENTS + 1
    for segment in ordered[:cut]:
        writer.add_reader(SegmentReader(writer.storage, writer.schema, segment))
    return ordered[cut:]


def write_all(generation: Path, documents: Iterable[Document]) -> int:
    """Write ``documents`` into the empty index of ``generation``, in one segment; how many."""
    ix = index.open_dir(str(generation))
    count = 0
    # One writer: Whoosh spills sorted runs to disk past limitmb and merges them at the
    # commit, so the new generation is one segment without writing everything twice.
    writer = ix.writer(limitmb=REBUILD_MB, codec=WriterCodec())
    try:
        for document in documents:
            writer.update_document(**fields(document, writer.schema))
            count += 1
    except BaseException:
        writer.cancel()
        raise
    writer.commit(optimize=True)
    return count


def unique(documents: Iterable[Document]) -> list[Document]:
    """The last of each id (what update() promised: a document added twice is replaced)."""
    return list({document.id: document for document in documents}.values())


__all__ = ["MAX_SEGMENTS", "WhooshBatch", "merge_few", "unique", "write_all"]
