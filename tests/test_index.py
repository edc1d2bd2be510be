"""The `index` function and search: real documents made here, through the real pipeline."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import docx
import pytest
from fpdf import FPDF

from fileproc import InvalidInput
from fileproc.search import DOCUMENT_CONTENT_TYPE, Document, parse_document
from fileproc.search.whoosh import WhooshIndex
from fileproc.storage.local import LocalStorage
from tests.helpers import image_bytes, invocation, read_object
from tests.procs import Process, fileproc, jobs, settled, wait_for, wait_healthy, write_config
from tests.servers import free_port
from workers import index as index_function


def pdf_bytes(*lines: str, title: str = "") -> bytes:
    pdf = FPDF()
    pdf.add_page()
    pdf.set_font("Helvetica", size=12)
    if title:
        pdf.set_title(title)
    for line in lines:
        pdf.cell(0, 10, line, new_x="LMARGIN", new_y="NEXT")
    return bytes(pdf.output())


def docx_bytes(*paragraphs: str, table: list[list[str]] | None = None) -> bytes:
    document = docx.Document()
    for text in paragraphs:
        document.add_paragraph(text)
    if table:
        grid = document.add_table(rows=len(table), cols=len(table[0]))
        for r, row in enumerate(table):
            for c, cell in enumerate(row):
                grid.cell(r, c).text = cell
    buffer = io.BytesIO()
    document.save(buffer)
    return buffer.getvalue()


HTML = b"""<!doctype html><html><head><title>Harbour  news</title>
<style>body { color: red } .secretstyle {}</style>
<script>var trackingpixel = "do not index me";</script></head>
<body><h1>Lighthouse repairs</h1><p>The lighthouse keepers repaired the lamps &amp; lenses.</p>
<noscript>enablejavascript</noscript><script type="module">moduletracker()</script></body></html>"""


def run_index(tmp_path: Path, key: str, data: bytes, content_type: str | None = None) -> tuple[dict[str, Any], dict]:
    storage = LocalStorage(tmp_path / "buckets")
    storage.ensure_bucket("docs")
    storage.put("docs", key, data, content_type=content_type)
    event, context = invocation(storage, "docs", key, tmp_path / "scratch", function_name="index",
                                params={"max_chars": 1_000_000, "max_bytes": 10_000_000})
    result = index_function.handler(event, context)
    [written] = context.output.written
    assert written.content_type == DOCUMENT_CONTENT_TYPE
    return result, json.loads(read_object(storage, written.bucket, written.key))


def test_pdf_docx_html_csv_json_markdown_give_their_text(tmp_path: Path) -> None:
    _, pdf = run_index(tmp_path, "reports/q3.pdf", pdf_bytes("Quarterly budget overview", "Revenue grew",
                                                              title="Q3 Report"))
    assert pdf["type"] == "pdf" and pdf["title"] == "Q3 Report"
    assert "Quarterly budget overview" in pdf["text"] and "Revenue grew" in pdf["text"]
    assert pdf["bucket"] == "docs" and pdf["key"] == "reports/q3.pdf" and pdf["etag"] and pdf["size"] > 0

    _, word = run_index(tmp_path, "minutes.docx", docx_bytes("Board minutes", "The harbour was dredged.",
                                                             table=[["item", "cost"], ["dredging", "4000"]]))
    assert word["type"] == "docx" and "harbour was dredged" in word["text"] and "dredging 4000" in word["text"]

    _, page = run_index(tmp_path, "news.html", HTML)
    assert page["type"] == "html" and page["title"] == "Harbour news"
    assert "lighthouse keepers repaired the lamps & lenses" in page["text"]
    for hidden in ("trackingpixel", "secretstyle", "moduletracker", "enablejavascript"):
        assert hidden not in page["text"]

    _, table = run_index(tmp_path, "ships.csv", b"name,port\nAurora,Bergen\nBoreas,Tromso\n")
    assert table["type"] == "csv" and "Boreas Tromso" in table["text"] and table["title"] == "name port"

    _, data = run_index(tmp_path, "cargo.json", json.dumps({"title": "Manifest", "items": [{"what": "salmon"}]})
                        .encode())
    assert data["type"] == "json" and data["title"] == "Manifest" and "salmon" in data["text"]

    _, notes = run_index(tmp_path, "notes.md", "# Tides\n\nSpring tides are higher. ünïcödé\n".encode())
    assert notes["type"] == "markdown" and notes["title"] == "Tides" and "ünïcödé" in notes["text"]


def test_a_png_named_pdf_and_a_broken_docx_fail_with_the_reason(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="bytes are not one"):
        run_index(tmp_path, "fake.pdf", image_bytes(20, 20, fmt="PNG"))
    with pytest.raises(InvalidInput, match="not a readable DOCX"):
        run_index(tmp_path, "broken.docx", docx_bytes("hello")[:300])
    with pytest.raises(InvalidInput, match="binary"):
        run_index(tmp_path, "photo.txt", image_bytes(20, 20, fmt="PNG"))


def test_an_empty_file_is_an_empty_document_and_long_text_is_cut(tmp_path: Path) -> None:
    result, empty = run_index(tmp_path, "empty.txt", b"")
    assert empty["text"] == "" and empty["type"] == "text" and not result["truncated"]
    storage = LocalStorage(tmp_path / "buckets")
    storage.put("docs", "long.txt", b"word " * 10_000)
    event, context = invocation(storage, "docs", "long.txt", tmp_path / "s2", function_name="index",
                                params={"max_chars": 1000})
    assert index_function.handler(event, context)["truncated"] is True
    [written] = context.output.written
    assert len(json.loads(read_object(storage, written.bucket, written.key))["text"]) == 1000


def _doc(key: str, text: str, etag: str = "e1", bucket: str = "docs", terms: Any = None) -> Document:
    return Document(bucket=bucket, key=key, text=text, etag=etag, type="text", terms=terms)


def test_whoosh_index_stems_filters_pages_and_never_duplicates(tmp_path: Path) -> None:
    index = WhooshIndex(tmp_path / "search")
    index.add([_doc(f"n{i}.txt", f"note {i} about fishing boats") for i in range(25)])
    index.add([_doc("other.txt", "the fisherman fished", bucket="archive")])
    index.add([_doc("n3.txt", "rewritten: now about lighthouses", etag="e2")])  # an overwrite
    assert index.count() == 26
    page = index.search("boat", per_page=10)  # stemmed: "boats" found by "boat"
    assert len(page.hits) == 10 and page.total >= 24 and not page.exact  # more than a page: an estimate
    last = index.search("boat", per_page=10, page=3)
    assert len(last.hits) == 4 and last.total == 24 and last.exact  # the page that holds the last hit: exact
    assert not {h.key for h in page.hits} & {h.key for h in last.hits}
    assert [h.key for h in index.search("lighthouse").hits] == ["n3.txt"]
    assert "<mark>lighthouses</mark>" in index.search("lighthouse").hits[0].snippet
    assert [h.bucket for h in index.search("fish", bucket="archive").hits] == ["archive"]
    index.delete(["docs/n3.txt"])
    assert index.search("lighthouse").total == 0 and index.count() == 25


def _serve_config(tmp_path: Path, port: int, search: dict[str, Any] | None = None) -> Path:
    return write_config(tmp_path / "fileproc.toml", {
        "data_dir": str(tmp_path / "data"),
        "api": {"port": port},
        "worker": {"concurrency": 2},
        # small batches by default: many commits while documents pour in
        "search": search or {"interval": 0.2, "batch": 7},
        "pipelines": [{"name": "docs",
                       "match": {"bucket": "docs", "events": ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"]},
                       "steps": [{"function": "index"}],
                       "output": {"bucket": "text", "key": "{key}/{name}"}}],
    })


def _search(config: Path, query: str, *args: str) -> list[dict[str, Any]]:
    return json.loads(fileproc(config, "search", query, "--json", "--limit", "100", *args).stdout)


def _search_count(config: Path, query: str, count: int) -> list[dict[str, Any]] | None:
    hits = _search(config, query)
    return hits if len(hits) == count else None


def test_many_documents_at_once_are_all_searchable_overwrite_and_delete(tmp_path: Path) -> None:
    port = free_port()
    config = _serve_config(tmp_path, port)
    docs = tmp_path / "data" / "buckets" / "docs"
    server = Process(config, ["serve"], tmp_path / "serve.log")
    try:
        wait_healthy(port, server)
        wait_for(docs.is_dir, 10, "the docs bucket folder", server)
        staging = tmp_path / "staging"
        staging.mkdir()
        for n in range(30):
            (staging / f"note-{n:02d}.txt").write_text(f"Harbour log {n}: the ferry sailed at dawn.\n")
        for n in range(5):
            (staging / f"memo-{n}.docx").write_bytes(docx_bytes(f"Memo {n}", "The ferry timetable changes."))
        for n in range(5):
            (staging / f"report-{n}.pdf").write_bytes(pdf_bytes(f"Report {n}", "Ferry passengers counted."))
        (staging / "page.html").write_bytes(HTML)
        (staging / "fake.pdf").write_bytes(image_bytes(20, 20, fmt="PNG"))
        for item in staging.iterdir():  # all at once: renamed into the bucket folder
            item.rename(docs / item.name)

        found = wait_for(settled(config, 42), 120, "42 finished jobs", server)
        failed = [j for j in found if j["status"] != "succeeded"]
        assert [j["key"] for j in failed] == ["fake.pdf"], failed
        assert "bytes are not one" in failed[0]["error"]
        hits = wait_for(lambda: _search_count(config, "ferry", 40), 30, "40 ferry documents searchable", server)
        assert len({(h["bucket"], h["key"]) for h in hits}) == 40
        assert {h["type"] for h in hits} == {"text", "docx", "pdf"}
        assert all("<mark>" in h["snippet"].lower() for h in hits)
        assert [h["key"] for h in _search(config, "lighthouse")] == ["page.html"]
        assert _search(config, "ferry", "--type", "pdf").__len__() == 5

        # Overwritten: indexed again, once.
        (docs / "note-07.txt").write_text("Harbour log 7: the ferry was replaced by a hovercraft.\n")
        wait_for(lambda: _search(config, "hovercraft"), 60, "the overwrite indexed", server)
        assert len(_search(config, "ferry")) == 40
        # Deleted: gone from the index.
        (docs / "note-08.txt").unlink()
        wait_for(lambda: len(_search(config, "ferry")) == 39, 60, "the deletion applied", server)
        # Uploaded again with the very same bytes (same etag): a new job, searchable again.
        (docs / "note-08.txt").write_text("Harbour log 8: the ferry sailed at dawn.\n")
        wait_for(lambda: len(_search(config, "ferry")) == 40, 60, "the re-upload indexed", server)
        assert [j["status"] for j in jobs(config) if j["key"] == "note-08.txt"] == ["succeeded"] * 3
        api = fileproc(config, "search", "timetable", "--json").stdout
        assert len(json.loads(api)) == 5
    finally:
        assert server.stop() == 0, server.tail()

    # With nothing running: a corrupt index, then a missing one, is rebuilt from the documents in storage.
    current = (tmp_path / "data" / "search" / "current").resolve()
    for segment in current.iterdir():
        segment.write_bytes(b"garbage")
    assert len(_search(config, "ferry")) == 40
    shutil.rmtree(tmp_path / "data" / "search")
    assert len(_search(config, "ferry")) == 40
    check = json.loads(fileproc(config, "reindex", "--check", "--json").stdout)
    assert check["agrees"] and check["indexed"] == 41  # 40 ferry notes and the html page
    assert "rebuilt the index: 41" in fileproc(config, "reindex").stdout


def test_document_format_of_the_function_is_what_search_reads() -> None:
    assert index_function.DOCUMENT_CONTENT_TYPE == DOCUMENT_CONTENT_TYPE
    parsed = parse_document(json.dumps({"fileproc_document": 1, "bucket": "b", "key": "k", "text": "t"}).encode())
    assert isinstance(parsed, Document) and parsed.id == "b/k"
    assert parse_document(b"not json") is None


def test_commits_keep_few_segments_and_snippets_show_the_match_in_context(tmp_path: Path) -> None:
    from whoosh import index as whoosh_index

    from fileproc.search.whoosh.writing import MAX_SEGMENTS

    index = WhooshIndex(tmp_path / "search")
    filler = " ".join(f"word{n}" for n in range(200))  # 1,500 characters before the match
    for batch in range(12):  # twelve commits of fifty documents: Whoosh alone would keep twelve segments
        index.add([_doc(f"b{batch}/{n}.txt", f"{filler} the <b>harbour</b> pilots {batch} {n}") for n in range(50)])
    segments = whoosh_index.open_dir(str(index.current))._segments()
    assert len(segments) <= MAX_SEGMENTS
    assert index.count() == 600
    hit = index.search("pilot").hits[0]
    assert "<mark>pilots</mark>" in hit.snippet and "&lt;b&gt;harbour&lt;/b&gt;" in hit.snippet
    assert not hit.snippet.startswith("word0 ")  # the fragment around the match, not the start of the text


def test_an_index_names_its_field_class_where_indexes_always_named_it(tmp_path: Path) -> None:
    """Whoosh pickles the schema into the index: the class of the content field is on disk by name."""
    index = WhooshIndex(tmp_path / "search")
    index.add([Document(bucket="d", key="a.txt", text="harbour pilots", etag="1")])
    toc = b"".join(path.read_bytes() for path in index.current.glob("*.toc"))
    assert b"cfileproc.search.whoosh\nAnalyzedText\n" in toc  # as every index written so far names it
    # Whoosh alone opens it, in a process that imported nothing of fileproc: the name resolves by itself.
    script = "import sys; from whoosh import index; print(index.open_dir(sys.argv[1]).doc_count())"
    opened = subprocess.run([sys.executable, "-c", script, str(index.current)], capture_output=True, text=True,
                            check=True)
    assert opened.stdout.split() == ["1"]


def test_the_steps_words_are_indexed_as_whoosh_would_index_the_text(tmp_path: Path) -> None:
    text = ("The harbour lighthouse keepers repaired the lamps. Lighthouses need keepers; "
            "the keepers' lamps burned all night over the harbour walls. ") * 20
    _, written = run_index(tmp_path, "notes/harbour.txt", text.encode())
    assert written["terms"]["content"].startswith("harbour lighthous keeper repair lamp")
    by_step, by_text = WhooshIndex(tmp_path / "steps"), WhooshIndex(tmp_path / "text")
    document = parse_document(json.dumps(written).encode())
    assert isinstance(document, Document) and document.terms is not None
    others = [_doc(f"n{i}.txt", f"keepers of note {i} and a lamp") for i in range(5)]
    by_step.add([document, *others])
    by_text.add([Document(**{**document.__dict__, "terms": None}), *others])
    for query in ["lighthouse", "keepers", '"harbour walls"', '"walls harbour"', "lamp night", "harbor"]:
        found = [(h.key, h.score, h.snippet) for h in by_step.search(query).hits]
        assert found == [(h.key, h.score, h.snippet) for h in by_text.search(query).hits], query
    assert [h.key for h in by_step.search('"harbour walls"').hits] == ["notes/harbour.txt"]  # positions kept


def test_words_of_another_analyzer_or_garbled_are_not_used_and_old_indexes_analyze_the_text(tmp_path: Path) -> None:
    from whoosh import index as whoosh_index
    from whoosh.fields import TEXT

    from fileproc.functions import analysis
    from fileproc.search.whoosh.schema import schema

    def with_terms(key: str, terms: Any) -> Document:
        return _doc(key, "plain words about a lighthouse", terms=terms)

    index = WhooshIndex(tmp_path / "search")
    index.add([
        with_terms("ours.txt", {**analysis.terms("plain words"), "content": "plain word submarin"}),
        with_terms("foreign.txt", {"analyzer": "lucene-9/english", "start": 0, "content": "submarin"}),
        with_terms("gap.txt", {"analyzer": analysis.ANALYZER, "start": 0, "content": "submarin  word"}),
        with_terms("negative.txt", {"analyzer": analysis.ANALYZER, "start": -1, "content": "submarin"}),
        with_terms("number.txt", {"analyzer": analysis.ANALYZER, "start": 0, "content": 7}),
    ])
    # Only words of this analyzer are taken instead of analyzing the text: there, what the step said counts.
    assert [h.key for h in index.search("submarine").hits] == ["ours.txt"]
    assert sorted(h.key for h in index.search("lighthouse").hits) == [
        "foreign.txt", "gap.txt", "negative.txt", "number.txt"]

    old = tmp_path / "old"  # an index made before the step analyzed: its content field is Whoosh's TEXT
    (old / "gen-000001").mkdir(parents=True)
    made = schema()
    made.remove("content")
    made.add("content", TEXT(analyzer=analysis.content_analyzer(), stored=True))
    whoosh_index.create_in(str(old / "gen-000001"), made)
    (old / "current").symlink_to("gen-000001")
    index = WhooshIndex(old)
    index.add([with_terms("ours.txt", {**analysis.terms("x"), "content": "submarin"})])
    assert index.search("submarine").total == 0 and [h.key for h in index.search("lighthouse").hits] == ["ours.txt"]


def test_the_steps_words_are_the_whoosh_analyzers_words() -> None:
    from fileproc.functions import analysis

    def whoosh_words(text: str) -> dict[str, list[int]]:
        where: dict[str, list[int]] = {}
        for token in analysis.content_analyzer()(text, positions=True, mode="index"):
            where.setdefault(token.text, []).append(token.pos)
        return where

    texts = [
        "", "a an the of", "The quick brown foxes jumped over the lazy dogs",
        "x y z: I am at it. Be on to it!", "e.g. 3.14 v1.2.3 foo*bar *star* snake_case CamelCase",
        "İstanbul ΟΔΟΣ ΚΑΙ Straße ÆSIR naïve café ﬁne", "keepers' lamps don't won't O'Neill",
        "running runs ran runner relational conditional rationalisation", "\t\n  spaced\n\nout  ",
        " ".join(f"w{n} the of" for n in range(3000)),
    ]
    for text in texts:
        found = analysis.terms(text)
        assert found is not None and analysis.positions(found) == whoosh_words(text), text
    assert analysis.terms("The quick brown foxes") == {"analyzer": analysis.ANALYZER, "start": 1,
                                                       "content": "quick brown fox"}


def test_an_idle_indexer_picks_up_a_new_document_at_once_not_at_its_next_pass(tmp_path: Path) -> None:
    port = free_port()
    config = _serve_config(tmp_path, port, {"interval": 60})  # a pass a minute; a quick look at the newest output
    docs = tmp_path / "data" / "buckets" / "docs"
    server = Process(config, ["serve"], tmp_path / "serve.log")
    try:
        wait_healthy(port, server)
        wait_for(docs.is_dir, 10, "the docs bucket folder", server)
        (docs / "first.txt").write_text("The harbour pilot boarded at dawn.\n")
        wait_for(lambda: _search(config, "pilot"), 30, "the first document searchable", server)
        (docs / "second.txt").write_text("The lighthouse keeper trimmed the lamp.\n")
        wait_for(lambda: _search(config, "lighthouse"), 20, "the second searchable well before the next pass",
                 server)
    finally:
        assert server.stop() == 0, server.tail()
