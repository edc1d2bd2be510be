"""Whoosh's posting lists read a block at a time, with numpy, and what is kept of them between queries.

A term's postings are stored in blocks of up to 128 (document numbers as
deltas, weights, positions), each a pickle, most of them compressed, each
after a header of its own (how many postings, the last document, the best
weight, the shortest field length). :class:`Headers` reads a term's headers
once (from them, :mod:`~fileproc.search.whoosh.topk` bounds every block's
best score) and decodes a block's document numbers and weights straight from
its pickle's bytes, without unpickling its positions. :class:`Cache` keeps
the headers, the field lengths, and (read ahead for a process serving
searches) the most frequent words' blocks decoded, each bounded.
"""

from __future__ import annotations

import io
import pickle
import struct
import threading
import zlib
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
from whoosh.reading import TermNotFound
from whoosh.util.numeric import _length_byte_cache

HEADER_BLOCKS = 500_000
"""Block headers kept across queries (49 bytes each: 25 MB at most), least recently used dropped."""

DECODED_POSTINGS = 4_000_000
"""Postings of frequent words kept decoded by the read-ahead (8 bytes each, and about 230 bytes of numpy per
block: about 45 MB at most; 3.5 million in the bench's 100k-document index, 46 MB more resident with the headers)."""

WARM_SEGMENT_DOCS = 5_000
"""Segments this big are read ahead (:meth:`Cache.warm`). A smaller one, like the few hundred documents a
commit adds under a burst, has a few blocks per word: read when asked, and not worth taking a core from the burst."""

WARM_POSTINGS = 128
"""Words in this many documents of a segment (a full block) are read ahead (:meth:`Cache.warm`): in the
bench's 100k-document index, 4,515 words and 29,970 blocks, read and decoded in 2.6-2.7 s."""

_LENGTHS = np.frombuffer(_length_byte_cache.tobytes(), dtype=np.int32).astype(np.float64)
"""Whoosh's field-length byte -> length table (what ``byte_to_length`` reads)."""

_SCORED_LENGTHS = _LENGTHS.copy()
_SCORED_LENGTHS[0] = 1.0  # the scorer's default for a document without the field

_MAGIC = b"W3Bl"
_INFO_BYTES = 64  # a block's info tuple pickled: 40 bytes at most
_INT = struct.Struct("!i")


class Unsupported(Exception):
    """The query or the index is not one this module scores: Whoosh's own search runs instead."""


class Headers:
    """One term's posting blocks in one segment: where each is and what is the best it can score."""

    __slots__ = ("compressed", "count", "data_end", "data_start", "decoded", "docs", "inlined", "max_id",
                 "max_weight", "min_length")

    def __init__(self, postfile: Any, terminfo: Any) -> None:
        self.inlined: tuple[np.ndarray, np.ndarray] | None = None
        self.decoded: list[tuple[np.ndarray, np.ndarray]] | None = None  # every block, kept (Cache.warm)
        if terminfo.is_inlined():
            ids, weights, _ = terminfo.inlined_postings()
            self.inlined = (np.asarray(ids, dtype=np.int64), np.asarray(weights, dtype=np.float64))
            self._arrays([len(ids)], [ids[-1] if ids else -1], [terminfo.max_weight()],
                         [_byte(terminfo.min_length())], [0], [0], [0])
            return
        offset, length = terminfo.extent()
        if isinstance(length, tuple):  # W3TermInfo.from_bytes keeps struct.unpack's tuple
            length = length[0]
        raw = postfile.get(offset, length)
        if raw[:4] != _MAGIC:
            raise Unsupported("unknown posting block format")
        counts, max_ids, max_weights, min_bytes, starts, ends, compressed = [], [], [], [], [], [], []
        at, end, last = 4, len(raw), False
        loads, dumps, unpack = pickle.loads, pickle.dumps, _INT.unpack_from
        while not last and at < end:
            size = unpack(raw, at)[0]
            last = size < 0
            block_end = at + 4 + abs(size)
            # The block's info tuple (a pickle: what follows it is ignored), then its data (see
            # whoosh.codec.whoosh3.W3LeafMatcher._goto). Where the data starts: the info pickled again
            # (Whoosh wrote it with the same protocol), checked against the file.
            info = loads(raw[at + 4:at + 4 + _INFO_BYTES])
            packed = dumps(info, 2)
            if raw[at + 4:at + 4 + len(packed)] != packed:
                stream = io.BytesIO(raw)
                stream.seek(at + 4)
                info = pickle.load(stream)
                data_at = stream.tell()
            else:
                data_at = at + 4 + len(packed)
            count, max_id, max_weight, compression, min_byte, _max_byte = info
            counts.append(count)
            max_ids.append(max_id)
            max_weights.append(max_weight)
            min_bytes.append(min_byte)
            starts.append(offset + data_at)
            ends.append(offset + block_end)
            compressed.append(compression)
            at = block_end
        self._arrays(counts, max_ids, max_weights, min_bytes, starts, ends, compressed)

    def _arrays(self, counts: list[int], max_ids: list[int], max_weights: list[float], min_bytes: list[int],
                starts: list[int], ends: list[int], compressed: list[int]) -> None:
        self.count = np.asarray(counts, dtype=np.int64)
        self.docs = int(self.count.sum())
        self.max_id = np.asarray(max_ids, dtype=np.int64)
        self.max_weight = np.asarray(max_weights, dtype=np.float64)
        self.min_length = _LENGTHS[np.asarray(min_bytes, dtype=np.int64)]
        self.data_start = np.asarray(starts, dtype=np.int64)
        self.data_end = np.asarray(ends, dtype=np.int64)
        self.compressed = np.asarray(compressed, dtype=np.uint8)

    def __len__(self) -> int:
        return len(self.count)

    def first_ids(self) -> np.ndarray:
        """A lower bound of each block's first document number (the previous block's last, plus one)."""
        return np.concatenate(([0], self.max_id[:-1] + 1))

    def decode(self, postfile: Any, block: int) -> tuple[np.ndarray, np.ndarray]:
        """Document numbers (in the segment) and weights of one block."""
        if self.inlined is not None:
            return self.inlined
        if self.decoded is not None:
            ids, weights = self.decoded[block]
            return ids.astype(np.int64), weights.astype(np.float64)
        return self.read(postfile, block)

    def read(self, postfile: Any, block: int) -> tuple[np.ndarray, np.ndarray]:
        """One block as the file has it."""
        start = int(self.data_start[block])
        data = postfile.get(start, int(self.data_end[block]) - start)
        deltas, weights = _ids_and_weights(data, bool(self.compressed[block]), int(self.count[block]))
        ids = deltas if isinstance(deltas, np.ndarray) else np.cumsum(np.asarray(deltas, dtype=np.int64))
        count = len(ids)
        if isinstance(weights, np.ndarray):
            w = weights
        elif weights is None:
            w = np.ones(count, dtype=np.float64)
        elif isinstance(weights, float | int):
            w = np.full(count, float(weights), dtype=np.float64)
        else:
            w = np.asarray(weights, dtype=np.float64)  # floats read from Whoosh's array "f": exact
        return ids, w


_VALUES = b"c_codecs\nencode\n"
"""Where a block's third part starts: its values (positions) are bytes, which pickle protocol 2 writes
as calls of ``_codecs.encode``, each unpickled by a Python call (most of a block's decoding time)."""

_HEAD_BYTES = 64 + 128 * 14
"""Enough of a decompressed block for its ids and weights (5 + 9 bytes a posting at most, 128 postings)."""


def _ids_and_weights(data: bytes, compressed: bool, count: int) -> tuple[Any, Any]:
    """A block's document number deltas and weights, without unpickling its values.

    The block is the pickle of ``(ids, weights, values)``. When the values
    are bytes, the pickle is cut where they start and closed as a pair
    (``TUPLE2``, ``STOP``); only the start of a compressed block is
    decompressed for that. Anything unexpected: the whole block, as Whoosh reads it.
    """
    stream = zlib.decompressobj() if compressed else None
    head = stream.decompress(data, _HEAD_BYTES) if stream is not None else data
    fast = _read_pickled(head, count)
    if fast is not None:
        return fast
    at = head.find(_VALUES)
    if at > 0:
        start = at - 1 if head[at - 1] == 0x28 else at  # MARK before the values' tuple (4 or more values)
        try:
            ids, weights = pickle.loads(head[:start] + b"\x86.")
        except Exception:  # whatever a cut in the wrong place raises: read it all
            ids = None
        if ids is not None and len(ids) == count and (weights is None or isinstance(weights, float | int)
                                                        or len(weights) == count):
            return ids, weights
    if stream is not None:
        head += stream.decompress(stream.unconsumed_tail) + stream.flush()
    ids, weights, _values = pickle.loads(head)
    return ids, weights


_K, _M, _J, _G, _N, _MARK, _TUPLE, _PUT, _LONG_PUT = b"KMJGN(tqr"
_CELL = np.dtype([("op", "u1"), ("weight", ">f8")])  # a weight in a pickled tuple: G and a big-endian double


def _read_pickled(head: bytes, count: int) -> tuple[np.ndarray, np.ndarray | None] | None:
    """The ids and weights of a block read straight from its pickle's bytes (numpy, no unpickling).

    The common layout: protocol 2, the ids tuple (the first id, then deltas
    under 256: ``K`` and one byte each), then the weights (``None``, one
    float, or a tuple of ``G`` and 8 bytes each). Anything else: None. The
    layout is checked on the bytes (a strided slice), and each part is
    read with one numpy call: a block costs a few numpy calls, not a dozen.
    """
    if count < 4 or len(head) < 8 or head[0] != 0x80 or head[2] != _MARK:
        return None
    at = 3
    op = head[at]
    if op == _K:
        first, at = head[at + 1], at + 2
    elif op == _M:
        first, at = int.from_bytes(head[at + 1:at + 3], "little"), at + 3
    elif op == _J:
        first, at = int.from_bytes(head[at + 1:at + 5], "little", signed=True), at + 5
    else:
        return None
    end = at + 2 * (count - 1)
    if end + 2 > len(head):
        return None
    pairs = head[at:end]
    if pairs[0::2] != b"K" * (count - 1) or head[end] != _TUPLE:
        return None
    at = end + 1
    if head[at] == _PUT:
        at += 2
    elif head[at] == _LONG_PUT:
        at += 5
    else:
        return None
    ids = np.empty(count, dtype=np.int64)
    ids[0] = 0
    np.cumsum(np.frombuffer(pairs[1::2], dtype=np.uint8), dtype=np.int64, out=ids[1:])
    ids += first
    op = head[at] if at < len(head) else -1
    if op == _N:
        return ids, None
    if op == _G and at + 9 <= len(head):
        return ids, np.full(count, struct.unpack_from(">d", head, at + 1)[0])
    if op != _MARK or at + 2 + 9 * count > len(head):
        return None
    cells = head[at + 1:at + 1 + 9 * count]
    if cells[0::9] != b"G" * count or head[at + 1 + 9 * count] != _TUPLE:
        return None
    return ids, np.frombuffer(cells, dtype=_CELL)["weight"].astype(np.float64)


def _byte(length: int | None) -> int:
    from whoosh.util.numeric import length_to_byte

    return length_to_byte(length)


class Cache:
    """What is kept between queries, per segment: block headers (bounded, LRU; the read-ahead also keeps the
    most frequent words' blocks decoded, bounded too) and field lengths.

    Segments never change once written (deletions are kept beside them), so
    what is read from one stays right for as long as the segment exists; the
    keys carry the segment's id.
    """

    def __init__(self, max_blocks: int = HEADER_BLOCKS, max_decoded: int = DECODED_POSTINGS) -> None:
        self.max_blocks, self.max_decoded = max_blocks, max_decoded
        self._headers: OrderedDict[tuple[str, str, bytes], Headers | None] = OrderedDict()
        self._blocks = 0
        self._decoded = 0  # postings kept decoded (Cache.warm)
        self._lengths: dict[tuple[str, str], np.ndarray] = {}
        self._lock = threading.Lock()

    def headers(self, reader: Any, fieldname: str, tbytes: bytes) -> Headers | None:
        key = (reader.segment().segment_id(), fieldname, tbytes)
        with self._lock:
            found = self._headers.get(key, False)
            if found is not False:
                self._headers.move_to_end(key)
                return found  # type: ignore[return-value]
        terms = reader._terms  # the segment's W3TermsReader
        try:
            terminfo = terms.term_info(fieldname, tbytes)
        except (KeyError, TermNotFound):
            headers = None
        else:
            headers = Headers(terms._postfile, terminfo)
        self._keep(key, headers)
        return headers

    def _keep(self, key: tuple[str, str, bytes], headers: Headers | None) -> None:
        with self._lock:
            self._headers[key] = headers
            self._blocks += len(headers) if headers is not None else 1
            while self._blocks > self.max_blocks and len(self._headers) > 1:
                _, old = self._headers.popitem(last=False)
                self._drop(old)

    def _drop(self, old: Headers | None) -> None:
        """Account for headers no longer kept. Under ``self._lock``."""
        self._blocks -= len(old) if old is not None else 1
        if old is not None and old.decoded is not None:
            self._decoded -= old.docs

    def warm(self, reader: Any, fieldnames: Iterable[str]) -> Iterator[None]:
        """Read ahead the words in :data:`WARM_POSTINGS` or more documents of one segment, most frequent first.

        The first search for a common word reads all its block headers
        (hundreds of blocks: a few ms), and a search for two common words
        decodes nearly all their blocks (about 25 us each). This reads the
        headers before anybody asks, for a new segment, until the cache is
        half full, and keeps the blocks of the most frequent words decoded
        (32-bit: Whoosh's ids and float32 weights are exact in them), up to
        :data:`DECODED_POSTINGS` in all. A generator, a step per word or
        block: the caller runs each step while no search uses the reader
        (Whoosh's files are not safe for two threads at once).
        """
        segment, terms = reader.segment().segment_id(), reader._terms
        frequent = []
        for fieldname in fieldnames:
            try:
                found = terms.items_from(fieldname, b"")
            except KeyError:  # no such field in this segment
                continue
            for (name, tbytes), terminfo in found:
                if name != fieldname:
                    break  # the next field's words
                yield
                if terminfo.doc_frequency() >= WARM_POSTINGS:
                    frequent.append((terminfo.doc_frequency(), fieldname, tbytes, terminfo))
        frequent.sort(key=lambda word: -word[0])  # what the budgets keep is what costs most to read
        for _, fieldname, tbytes, terminfo in frequent:
            key = (segment, fieldname, tbytes)
            with self._lock:
                if self._blocks >= self.max_blocks // 2:
                    return
                headers = self._headers.get(key)
            if headers is None:
                headers = Headers(terms._postfile, terminfo)
                self._keep(key, headers)
            yield
            with self._lock:
                room = headers.decoded is None and headers.inlined is None and \
                    self._decoded + headers.docs <= self.max_decoded
            if not room:
                continue
            blocks = []
            for block in range(len(headers)):
                ids, weights = headers.read(terms._postfile, block)
                blocks.append((ids.astype(np.int32), weights.astype(np.float32)))
                yield
            with self._lock:
                if self._headers.get(key) is headers and self._decoded + headers.docs <= self.max_decoded:
                    headers.decoded = blocks
                    self._decoded += headers.docs

    def lengths(self, reader: Any, fieldname: str, ids: np.ndarray) -> np.ndarray:
        """The length of ``fieldname`` in documents ``ids`` of the segment, as Whoosh's scorer reads it.

        Kept as Whoosh stores it, a byte per document (100 kB per 100k documents and field).
        """
        return _SCORED_LENGTHS[self._length_bytes(reader, fieldname)[ids]]

    def _length_bytes(self, reader: Any, fieldname: str) -> np.ndarray:
        key = (reader.segment().segment_id(), fieldname)
        found = self._lengths.get(key)
        if found is not None:
            return found
        doccount = reader.doc_count_all()
        column = reader._perdoc._cached_reader(f"_{fieldname}_len", _lengths_column())
        raw = np.zeros(doccount, dtype=np.uint8)
        if column is not None:
            count = min(column._count, doccount)
            raw[:count] = np.frombuffer(column._dbfile.get(column._basepos, count), dtype=np.uint8)
        with self._lock:
            self._lengths[key] = raw
        return raw

    def forget(self, keep: set[str]) -> None:
        """Drop what belongs to segments not in ``keep`` (merged away)."""
        with self._lock:
            for key in [k for k in self._headers if k[0] not in keep]:
                self._drop(self._headers.pop(key))
            for segment_field in [k for k in self._lengths if k[0] not in keep]:
                del self._lengths[segment_field]


def _lengths_column() -> Any:
    from whoosh.codec.whoosh3 import LENGTHS_COLUMN

    return LENGTHS_COLUMN


__all__ = ["DECODED_POSTINGS", "HEADER_BLOCKS", "WARM_POSTINGS", "WARM_SEGMENT_DOCS", "Cache", "Headers", "Unsupported"]
