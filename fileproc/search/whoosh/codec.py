"""How the indexer writes Whoosh segments: Whoosh's own format, written with less Python.

A commit is mostly Whoosh's postings writer, in Python, once per posting
and once per distinct word. :class:`WriterCodec` is Whoosh's ``W3Codec``
with three changes to that writing, none to what is written but the third:

- a posting is added without Whoosh's per-posting type assertions (the
  postings come from Whoosh's own pool, already checked when staged);
- the field lengths a block records are read once per field and commit,
  where Whoosh seeks and reads the column file once per posting;
- a block whose pickled postings are under :data:`COMPRESS_FROM` bytes is
  stored as it is. Whoosh meant to skip compressing blocks under 20 bytes
  but compresses every one (its check is overwritten on the next line).
  zlib gains little on a few dozen bytes, and most words are in few
  documents, so this is most of the blocks. Each block's header records
  whether it is compressed, and Whoosh's reader honours it.

Every segment records a plain ``W3Codec``, so the index is read by
Whoosh's own readers and names no class of this module (renaming it cannot
make an index unreadable). With :data:`COMPRESS_FROM` at 0 the files are
byte for byte Whoosh's (the tests check it).
"""

from __future__ import annotations

import zlib
from pickle import dumps
from typing import Any

from whoosh.codec.whoosh3 import (
    LENGTHS_COLUMN,
    WHOOSH3_HEADER_MAGIC,
    W3Codec,
    W3PerDocReader,
    W3PostingsWriter,
    W3Segment,
    _lenfield,
)
from whoosh.util.numeric import byte_to_length, length_to_byte

COMPRESS_FROM = 256
"""Pickled blocks this long or longer are compressed (about 5 % more index, a third less commit time)."""


class WriterCodec(W3Codec):  # type: ignore[misc]
    """Whoosh's ``W3Codec`` for writing (see the module docstring)."""

    def __init__(self, compress_from: int = COMPRESS_FROM) -> None:
        super().__init__()
        self.compress_from = compress_from

    def new_segment(self, storage: Any, indexname: str) -> Any:
        return W3Segment(W3Codec(self._blocklimit, self._compression, self._inlinelimit), indexname)

    def postings_writer(self, dbfile: Any, byteids: bool = False) -> Any:
        return _PostingsWriter(dbfile, blocklimit=self._blocklimit, byteids=byteids, compression=self._compression,
                               inlinelimit=self._inlinelimit, compress_from=self.compress_from)

    def per_document_reader(self, storage: Any, segment: Any) -> Any:
        return _LengthsRead(storage, segment)


class _PostingsWriter(W3PostingsWriter):  # type: ignore[misc]
    def __init__(self, postfile: Any, *, compress_from: int, **kwargs: Any) -> None:
        super().__init__(postfile, **kwargs)
        self._compress_from = compress_from

    def add_posting(self, id_: Any, weight: float, vbytes: bytes, length: int | None = None) -> None:
        """Whoosh's ``add_posting``, without its assertions."""
        if len(self._ids) >= self._blocklimit:
            self._write_block()
        self._ids.append(id_)
        self._weights.append(weight)
        if weight > self._maxweight:
            self._maxweight: float = weight
        if vbytes:
            self._values.append(vbytes)
        if length:
            shortest: int | None = self._minlength
            if shortest is None or length < shortest:
                self._minlength: int | None = length
            if length > self._maxlength:
                self._maxlength: int = length

    def _write_block(self, last: bool = False) -> None:
        """Whoosh's ``_write_block``, but a short block is not compressed."""
        if not self._blockcount:
            self._postfile.write(WHOOSH3_HEADER_MAGIC)
        self._terminfo.add_block(self)
        data = dumps((self._mini_ids(), self._mini_weights(), self._mini_values()), 2)
        compression = self._compression if len(data) >= self._compress_from else 0
        if compression:
            data = zlib.compress(data, compression)
        ids = self._ids
        info = dumps((len(ids), ids[-1], self._maxweight, compression, length_to_byte(self._minlength),
                      length_to_byte(self._maxlength)), 2)
        size = len(info) + len(data)
        self._postfile.write_int(-size if last else size)  # negative: the term's last block
        self._postfile.write(info)
        self._postfile.write(data)
        self._blockcount += 1
        self._new_block()


class _LengthsRead(W3PerDocReader):  # type: ignore[misc]
    """The new segment's per-document values, as the postings writer asks them: lengths read once per field."""

    def __init__(self, storage: Any, segment: Any) -> None:
        super().__init__(storage, segment)
        self._lengths: dict[str, list[int]] = {}

    def doc_field_length(self, docnum: int, fieldname: str, default: int = 0) -> int:
        table = self._lengths.get(fieldname)
        if table is None:
            column = self._cached_reader(_lenfield(fieldname), LENGTHS_COLUMN)
            table = [0] * self._doccount if column is None else [byte_to_length(b) if b else 0 for b in column]
            self._lengths[fieldname] = table
        return table[docnum] or default


__all__ = ["COMPRESS_FROM", "WriterCodec"]
