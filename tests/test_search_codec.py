"""The indexer's segment writer (fileproc.search.whoosh.codec): Whoosh's format, read by Whoosh's readers."""

from __future__ import annotations

import hashlib
import pickle
import random
import re
import zlib
from pathlib import Path
from typing import Any

from whoosh import index as whoosh_index
from whoosh import query
from whoosh.codec.whoosh3 import W3Codec

from fileproc.functions import analysis
from fileproc.search import Document
from fileproc.search.whoosh import WhooshIndex
from fileproc.search.whoosh.codec import COMPRESS_FROM, WriterCodec
from fileproc.search.whoosh.schema import fields, schema


def _documents(count: int) -> list[Document]:
    rng = random.Random(3)
    vocabulary = [f"{a}{b}{c}" for a in "bcdfg" for b in "aeiou" for c in "klmnprst"] + ["harbour", "lamp"]
    weights = [1 / (rank + 1) for rank in range(len(vocabulary))]
    documents = []
    for n in range(count):
        text = " ".join(rng.choices(vocabulary, weights, k=rng.randint(5, 400)))
        documents.append(Document(bucket="docs", key=f"d/{n}.txt", text=text, etag=str(n), type="text",
                                  title=f"Note {n}"))
    return documents


def _write(folder: Path, documents: list[Document], codec: Any, commits: int = 1) -> Any:
    folder.mkdir(parents=True)
    ix = whoosh_index.create_in(str(folder), schema())
    size = -(-len(documents) // commits)
    for start in range(0, len(documents), size):
        writer = ix.writer(codec=codec, compound=False) if codec else ix.writer(compound=False)
        for document in documents[start:start + size]:
            writer.update_document(**fields(document, writer.schema))
        writer.commit(merge=False)
    return whoosh_index.open_dir(str(folder))


def _files(folder: Path) -> dict[str, str]:
    """Each segment file's digest, by its name without the segment's random id."""
    return {re.sub(r"_[a-z0-9]{16}", "", path.name): hashlib.md5(path.read_bytes()).hexdigest()
            for path in folder.iterdir() if path.suffix != ".toc" and "LOCK" not in path.name}


def _postings(ix: Any) -> dict[tuple[int, str, bytes], list[tuple[Any, ...]]]:
    """Every posting of every segment, with what its block and its term record of it."""
    found = {}
    with ix.reader() as reader:
        for number, (leaf, _) in enumerate(reader.leaf_readers()):
            for fieldname, text in leaf.all_terms():
                info = leaf.term_info(fieldname, text)
                postings: list[tuple[Any, ...]] = [(info.weight(), info.doc_frequency(), info.min_length(),
                                                    info.max_length(), info.max_weight(), info.min_id(), info.max_id())]
                matcher = leaf.postings(fieldname, text)
                while matcher.is_active():
                    postings.append((matcher.id(), matcher.weight(), matcher.value(), matcher.block_min_length(),
                                     matcher.block_max_length(), matcher.block_max_weight()))
                    matcher.next()
                found[number, fieldname, text] = postings
    return found


def test_without_the_short_block_rule_the_files_are_whooshs_byte_for_byte(tmp_path: Path) -> None:
    documents = _documents(120)
    _write(tmp_path / "whoosh", documents, None)
    _write(tmp_path / "ours", documents, WriterCodec(compress_from=0))
    whoosh_files = _files(tmp_path / "whoosh")
    assert {".pst", ".trm"} <= {Path(name).suffix for name in whoosh_files}
    assert _files(tmp_path / "ours") == whoosh_files


def test_short_blocks_are_stored_plain_and_whooshs_readers_read_the_same_index(tmp_path: Path) -> None:
    documents = _documents(300)
    theirs = _write(tmp_path / "whoosh", documents, None, commits=3)
    ours = _write(tmp_path / "ours", documents, WriterCodec(), commits=3)
    # Every segment names Whoosh's codec, not ours: the index does not depend on this module.
    assert all(type(segment.codec()) is W3Codec for segment in ours._segments())
    assert b"fileproc.search.whoosh.codec" not in b"".join(p.read_bytes() for p in (tmp_path / "ours").glob("*.toc"))
    read, expected = _postings(ours), _postings(theirs)
    assert read.keys() == expected.keys()
    assert [term for term in expected if read[term] != expected[term]][:5] == []
    words = str((analysis.terms(documents[7].text) or {})["content"]).split()
    with theirs.searcher() as a, ours.searcher() as b:
        for q in [query.Term("content", "harbour"), query.Term("content", "bak"),
                  query.And([query.Term("content", "lamp"), query.Term("content", "gut")]),
                  query.Phrase("content", words[:3]), query.Term("title", "note")]:
            hits = [(h.docnum, h.score) for h in a.search(q, limit=None)]
            assert hits and hits == [(h.docnum, h.score) for h in b.search(q, limit=None)], q

    plain = compressed = 0
    with ours.reader() as reader:
        matchers = [leaf.postings(fieldname, text) for leaf, _ in reader.leaf_readers()
                    for fieldname, text in leaf.all_terms()]
        for matcher in matchers:
            while True:  # each block's header says whether it was compressed, and the length tells which
                data = matcher._postfile.get(matcher._dataoffset, matcher._nextoffset - matcher._dataoffset)
                if matcher._compression:
                    compressed += 1
                    assert len(pickle.dumps(pickle.loads(zlib.decompress(data)), 2)) >= COMPRESS_FROM
                else:
                    plain += 1
                    assert len(data) < COMPRESS_FROM
                if matcher._lastblock:
                    break
                matcher._next_block()
    assert plain > compressed > 0


def test_the_indexer_writes_with_it_and_search_finds_the_same(tmp_path: Path) -> None:
    documents = _documents(200)
    index = WhooshIndex(tmp_path / "search")
    for start in range(0, 200, 50):
        index.add(documents[start:start + 50])
    index.add([Document(**{**documents[0].__dict__, "text": "harbour pilots", "etag": "new"})])
    index.delete(["docs/d/1.txt"])
    ix = whoosh_index.open_dir(str(index.current))
    assert all(type(segment.codec()) is W3Codec for segment in ix._segments())
    assert index.count() == 199
    assert [h.key for h in index.search("pilots").hits] == ["d/0.txt"]
    expected = sum(1 for d in documents[2:] if "harbour" in d.text.split()) + 1
    assert index.search("harbour", per_page=500).total == expected
