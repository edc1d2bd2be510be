"""Search's own top-hits path (fileproc/search/whoosh/topk.py and postings.py): the same hits, scores and order as
Whoosh's search."""

from __future__ import annotations

import pickle
import random
import zlib
from pathlib import Path

import numpy as np
import pytest
from whoosh import qparser, query

from fileproc.search import Document
from fileproc.search.whoosh import WhooshIndex, postings, topk
from fileproc.search.whoosh.queries import Present, prune, words_query
from fileproc.search.whoosh.schema import schema

WORDS = [f"w{chr(97 + a)}{chr(97 + b)}" for a in range(26) for b in range(8)]  # 208 words, none a stop word


def _corpus(seed: int, count: int, start: int = 0) -> list[Document]:
    """Zipf-like texts: a few words in most documents (lists of several posting blocks), many rare ones."""
    rng = random.Random(seed)
    weights = [1 / (rank + 1) for rank in range(len(WORDS))]
    documents = []
    for n in range(start, start + count):
        words = rng.choices(WORDS, weights, k=rng.randint(5, 60))
        documents.append(Document(bucket=f"b{n % 3}", key=f"k/{n}.txt", text=" ".join(words), etag=str(n),
                                  type="text" if n % 2 else "markdown", title=f"doc {n}"))
    return documents


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> WhooshIndex:
    """Three commits (three segments), some documents overwritten and some deleted (deletions in old segments)."""
    found = WhooshIndex(tmp_path_factory.mktemp("topk") / "search")
    found.add(_corpus(1, 700))
    found.add(_corpus(2, 500, start=700))
    found.update(add=_corpus(3, 60, start=100), delete=[f"b{n % 3}/k/{n}.txt" for n in range(300, 340)])
    return found


def _whoosh_top(searcher, q, limit: int, allowed: set[int] | None) -> list[tuple[float, int]]:
    results = searcher.search(q, limit=limit, filter=allowed)
    return [(results.score(n), results.docnum(n)) for n in range(results.scored_length())]


def _queries(searcher) -> list[query.Query]:
    rng = random.Random(5)
    texts = WORDS[:6] + rng.sample(WORDS, 12) + ["wzz"]  # common, rare, absent
    texts += [f"{rng.choice(WORDS[:40])} {rng.choice(WORDS)}" for _ in range(14)]
    texts += [f"{WORDS[0]} {WORDS[1]}", f"{WORDS[0]} {WORDS[1]} {WORDS[2]}"]
    present = Present(searcher.reader())
    return [prune(words_query(searcher.schema, text), present) for text in texts]


def test_plain_word_queries_give_whooshs_hits_scores_and_order(index: WhooshIndex) -> None:
    index.search("warm")
    searcher = index._current_searcher()
    assert len(searcher.reader().leaf_readers()) == 3 and searcher.reader().has_deletions()
    compared = 0
    for q in _queries(searcher):
        for limit in (1, 10, 35):
            for bucket, kind in ((None, None), ("b1", None), (None, "markdown"), ("b2", "text")):
                wanted = index._current().filter(bucket, kind)
                expected = _whoosh_top(searcher, q, limit, wanted)
                got = topk.top_hits(index._postings, searcher, q, limit, index._current().mask(bucket, kind))
                assert got == expected, (q, limit, bucket, kind)
                compared += bool(expected)
    assert compared > 300  # most of them found something


def test_search_pages_are_whooshs_ranking(index: WhooshIndex) -> None:
    searcher = index._current_searcher()
    for text in (WORDS[0], WORDS[7], f"{WORDS[1]} {WORDS[4]}"):
        q = prune(words_query(searcher.schema, text), Present(searcher.reader()))
        expected = _whoosh_top(searcher, q, 30, None)
        shown = [hit for page in (1, 2, 3) for hit in index.search(text, per_page=10, page=page).hits]
        assert [(h.bucket + "/" + h.key, h.score) for h in shown] == [
            (searcher.stored_fields(docnum)["id"], round(score, 4)) for score, docnum in expected]
        assert all("<mark>" in hit.snippet for hit in shown)


def test_other_queries_are_left_to_whoosh(index: WhooshIndex) -> None:
    searcher = index._current_searcher()
    parser = qparser.MultifieldParser(["title", "name", "content"], searcher.schema)
    q = prune(parser.parse(f"title:doc AND {WORDS[2]}"), Present(searcher.reader()))  # words of two fields
    assert topk.top_hits(index._postings, searcher, q, 10, None) == _whoosh_top(searcher, q, 10, None)
    for text in (f"{WORDS[0]} OR {WORDS[5]}", f'"{WORDS[0]} {WORDS[1]}"', "wa*", f"{WORDS[0]} NOT {WORDS[1]}",
                 f"{WORDS[0]}^2 {WORDS[1]}"):
        q = prune(parser.parse(text), Present(searcher.reader()))
        with pytest.raises(topk.Unsupported):
            topk.top_hits(index._postings, searcher, q, 10, None)
        page = index.search(text, per_page=10)
        assert [h.key for h in page.hits] == [searcher.stored_fields(d)["key"] for _, d in
                                              _whoosh_top(searcher, q, 10, None)]
        assert page.hits  # each of them matches something here


def test_words_only_queries_are_what_the_parser_makes_of_them() -> None:
    fields = schema()
    parser = qparser.MultifieldParser(["title", "name", "content"], fields)
    words = ["boats", "The", "and", "Running", "q3", "x", "été", "NASA", "foo_bar", "1234", "a", "it", "Not"]
    rng = random.Random(2)
    built = 0
    for _ in range(400):
        text = " ".join(rng.choice(words) for _ in range(rng.randint(1, 4)))
        made = words_query(fields, text)
        assert made is None or made == parser.parse(text), text
        built += made is not None
    assert built > 300
    for text in ("boats OR ferries", "title:boats", '"boat trip"', "boat*", "boats AND", "x-y", ""):
        assert words_query(fields, text) is None  # anything but words: the parser's job


def test_an_empty_index_and_an_absent_word_find_nothing(tmp_path: Path) -> None:
    empty = WhooshIndex(tmp_path / "empty")
    assert empty.search("anything").hits == [] and empty.count() == 0
    empty.add([Document(bucket="d", key="a.txt", text="ferry timetable", etag="1")])
    assert [h.key for h in empty.search("ferries").hits] == ["a.txt"]
    assert empty.search("ferry nothere").total == 0 and empty.search("nothere").total == 0


def test_posting_blocks_are_read_as_whoosh_reads_them(index: WhooshIndex) -> None:
    """Every block of every word: the fast read of the pickle, the fallback, and Whoosh's own unpickling agree."""
    searcher = index._current_searcher()
    fast = 0
    for reader, _ in searcher.reader().leaf_readers():
        postfile = reader._terms._postfile
        for fieldname in ("content", "title", "name"):
            for tbytes in reader.lexicon(fieldname):
                headers = index._postings.headers(reader, fieldname, tbytes)
                for block in range(len(headers)):
                    data = postfile.get(headers.data_start[block], headers.data_end[block] - headers.data_start[block])
                    raw = zlib.decompress(data) if headers.compressed[block] else data
                    deltas, weights, _ = pickle.loads(raw)
                    ids, got_weights = headers.decode(postfile, block)
                    assert list(ids) == list(np.cumsum(deltas))
                    expected = ([1.0] * len(deltas) if weights is None else
                                [weights] * len(deltas) if isinstance(weights, float) else list(weights))
                    assert list(got_weights) == expected
                    fast += postings._read_pickled(raw, int(headers.count[block])) is not None
                    assert headers.max_id[block] == ids[-1] and headers.count[block] == len(ids)
    assert fast > 20  # the numpy read served most blocks of several postings


def test_equal_scores_rank_by_document_order_as_in_whoosh(tmp_path: Path) -> None:
    """Blocks are visited best bound first, yet a tie still goes to the earlier document."""
    ties = WhooshIndex(tmp_path / "ties")
    texts = ["alpha beta"] * 300 + ["alpha gamma"] * 300
    texts[450] = "alpha alpha"  # the one better hit, in a late block: its block is visited first
    ties.add([Document(bucket="d", key=f"{n:03d}.txt", text=text, etag="1") for n, text in enumerate(texts)])
    assert [h.key for h in ties.search("alpha", per_page=10).hits] == ["450.txt"] + [f"{n:03d}.txt" for n in range(9)]
    searcher = ties._current_searcher()
    q = query.Term("content", "alpha")
    assert topk.top_hits(ties._postings, searcher, q, 25, None) == _whoosh_top(searcher, q, 25, None)
    # Both words. The block holding the one better hit (250) is visited first and fills the page from
    # its own documents (128-136); the first block's documents then have a best possible total that only
    # equals the last hit's score, and still enter, as they come before it.
    both = WhooshIndex(tmp_path / "both")
    texts = ["alpha gamma"] * 300 + ["alpha beta"] * 300
    texts[250] = "gamma gamma alpha"
    both.add([Document(bucket="d", key=f"{n:03d}.txt", text=text, etag="1") for n, text in enumerate(texts)])
    searcher = both._current_searcher()
    q = query.And([query.Term("content", "alpha"), query.Term("content", "gamma")])
    expected = _whoosh_top(searcher, q, 10, None)
    assert [docnum for _, docnum in expected] == [250, *range(9)]
    assert topk.top_hits(both._postings, searcher, q, 10, None) == expected


def test_the_block_headers_of_frequent_words_are_read_ahead_by_searching_processes_only(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(postings, "WARM_SEGMENT_DOCS", 250)  # the 700 and 300 documents below, not the later 200
    folder = tmp_path / "search"
    writer = WhooshIndex(folder)
    writer.add(_corpus(1, 700))
    writer.add(_corpus(2, 300, start=700))
    writer.search(WORDS[0])
    assert writer._read_ahead is None  # the indexer, fileproc search: they do not read ahead
    segments = writer._current_searcher().reader().leaf_readers()
    assert len(segments) == 2

    index = WhooshIndex(folder, read_ahead=True)  # as the API opens it
    searcher = index._current_searcher()
    frequent, rare, ahead, unsearched = WORDS[0], WORDS[-1], WORDS[1], WORDS[-2]
    for word in (frequent, rare, ahead, unsearched):  # what each segment holds of them: hundreds of documents, or few
        counts = [reader.doc_frequency("content", word) for reader, _ in searcher.reader().leaf_readers()]
        if word in (frequent, ahead):
            assert min(counts) >= postings.WARM_POSTINGS
        else:
            assert max(counts) < postings.WARM_POSTINGS
    texts = (frequent, rare, f"{frequent} {rare}")
    expected = {text: [(h.key, h.score) for h in writer.search(text).hits] for text in texts}

    # Searches while the headers are being read ahead find what they find without it.
    found = {text: [(h.key, h.score) for h in index.search(text).hits] for text in expected}
    assert found == expected
    assert index.wait_warm(30)
    ids = {reader.segment().segment_id() for reader, _ in index._current_searcher().reader().leaf_readers()}
    kept = {(segment, word) for segment, _, word in index._postings._headers}
    assert {(segment, ahead.encode()) for segment in ids} <= kept  # never searched: read ahead
    assert not any(word == unsearched.encode() for _, word in kept)
    for reader, _ in index._current_searcher().reader().leaf_readers():  # its blocks kept decoded, as the file has them
        headers = index._postings._headers[(reader.segment().segment_id(), "content", ahead.encode())]
        assert headers is not None and headers.decoded is not None
        for block in range(len(headers)):
            kept_ids, kept_weights = headers.decode(reader._terms._postfile, block)
            read_ids, read_weights = headers.read(reader._terms._postfile, block)
            assert kept_ids.dtype == read_ids.dtype and kept_weights.dtype == read_weights.dtype
            assert (kept_ids == read_ids).all() and (kept_weights == read_weights).all()

    writer.add(_corpus(3, 300, start=1000))  # a commit lands: its segment is read ahead once a search sees it
    writer.add(_corpus(4, 200, start=1300))  # one too small to be worth it is not
    index.search(rare)
    assert index.wait_warm(30)
    sizes = {reader.segment().segment_id(): reader.doc_count_all()
             for reader, _ in index._current_searcher().reader().leaf_readers()}
    kept = {(segment, word) for segment, _, word in index._postings._headers}
    assert sorted(sizes.values()) == [200, 300, 300, 700]
    assert {segment for segment, size in sizes.items() if (segment, ahead.encode()) in kept} == {
        segment for segment, size in sizes.items() if size >= 250}


def test_the_read_ahead_keeps_the_most_frequent_words_decoded_within_its_budget(index: WhooshIndex) -> None:
    reader = index._current_searcher().reader().leaf_readers()[0][0]
    counts = {word: reader.doc_frequency("content", word) for word in WORDS[:3]}
    assert counts[WORDS[0]] > counts[WORDS[1]] > counts[WORDS[2]] >= postings.WARM_POSTINGS
    cache = postings.Cache(max_decoded=counts[WORDS[0]] + counts[WORDS[2]])  # room for the first, not the second
    for _ in cache.warm(reader, ["content"]):
        pass
    segment = reader.segment().segment_id()
    decoded = {word: cache._headers[(segment, "content", word.encode())].decoded is not None for word in WORDS[:3]}
    assert decoded == {WORDS[0]: True, WORDS[1]: False, WORDS[2]: True}  # most frequent first, then what still fits
    assert cache._decoded == counts[WORDS[0]] + counts[WORDS[2]]
    cache.forget(set())  # the segment merged away: nothing of it is kept or counted
    assert cache._decoded == 0 and cache._blocks == 0
