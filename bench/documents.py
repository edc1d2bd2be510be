"""Documents and logs through fileproc, against the same work done plainly, in one run.

Four figures (the goals of issue 8 in brackets):

1. **docs/s indexed**: ``--docs`` text documents (``--words`` words each)
   renamed at once into the bucket folder of ``fileproc serve`` (embedded
   default: local folders, SQLite, the embedded broker, the host's indexer
   with its default settings), from the first upload until ``GET /search``
   finds them all; against **plain Whoosh** (the same schema, one writer,
   ``add_document`` for each text, one commit) on the same texts [ratio
   >= 0.8]. Also the **indexer alone**: the same documents applied to an
   empty index from the recorded outputs (``Indexer.catch_up``), against the
   same plain Whoosh run.
2. **search p95** over ``--search-docs`` documents (default 100k) built
   directly through the index interface (``WhooshIndex.update``, batches of
   5,000, so the merge policy leaves at most six segments; cached in the temp
   folder between runs): ``--queries`` queries of
   rare, common and two-word terms, some with a bucket filter, each asking
   for a page of 10 hits with highlighted snippets [<= 5 ms]. Also the CPU
   time of each query (``time.thread_time``): on a shared machine, what the
   search itself costs, without the time it waited for a core.
3. **log lines/s**: an nginx ``combined`` log of ``--log-mb`` MB (with a
   response time per line and a garbage line in a thousand) through the
   ``logs`` step, from the upload until the job finished; against a plain
   loop doing the same job the straightforward way (the same line regex with
   its groups on each line, the same summary in dicts and Counters) on the
   same file [ratio >= 0.8]; and, as first measured, against a loop that only
   matches the regex and extracts nothing.
4. **peak memory** of that step (the runner's high-water mark that the
   attempt records), for the log and for one an eighth of its size [flat,
   < 100 MB].

Run from the repository root::

    python -m bench.documents                          # 400 docs, 100k search, 200 MB log
    python -m bench.documents --docs 200 --search-docs 20000 --log-mb 50
    python -m bench.documents --log-mb 1024 --only logs
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import tomli_w

from bench.pipeline import _free_port, _healthy, _Process, _wait

ADMIN = "bench-admin-token"
MARK = "fileprocbench"  # in every document: how the bench counts what is searchable
CACHE = Path(tempfile.gettempdir()) / "fileproc-bench-documents"


# --- material -----------------------------------------------------------------------------


def vocabulary(size: int = 20_000, seed: int = 5) -> list[str]:
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = {"".join(rng.choice(letters) for _ in range(rng.randint(3, 10))) for _ in range(size * 2)}
    return sorted(words)[:size]


def texts(count: int, words: int, seed: int = 1) -> list[str]:
    """``count`` texts of about ``words`` words, drawn Zipf-like from one vocabulary (as prose is)."""
    vocab = vocabulary()
    weights = [1 / (rank + 1) for rank in range(len(vocab))]
    rng = random.Random(seed)
    out = []
    for n in range(count):
        body = rng.choices(vocab, weights, k=words)
        lines = [" ".join(body[i:i + 12]) + "." for i in range(0, len(body), 12)]
        out.append(f"Document {n} {MARK}\n" + "\n".join(lines) + "\n")
    return out


def access_log(megabytes: int) -> Path:
    """A ``combined`` log of about ``megabytes`` MB, made once and cached."""
    path = CACHE / f"access-{megabytes}mb.log"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = random.Random(9)
    paths = [f"/api/v1/items/{n}" for n in range(3000)] + [f"/static/{n}.js" for n in range(200)]
    weights = [1 / (rank + 1) for rank in range(len(paths))]
    agents = ['"Mozilla/5.0 (X11; Linux x86_64) Firefox/126.0"', '"curl/8.5.0"', '"python-httpx/0.27"']
    target = megabytes * 1024 * 1024
    partial = path.with_suffix(".partial")
    written, second = 0, 0
    with partial.open("w") as out:
        while written < target:
            block = []
            for n in range(5000):
                if n % 1000 == 999:
                    block.append("\x00garbage: upstream timed out while reading response header ¿¿\n")
                    continue
                second += rng.random() < 0.02
                hh, mm, ss = (second // 3600) % 24, (second // 60) % 60, second % 60
                day = 1 + (second // 86400) % 28
                status = rng.choices((200, 200, 200, 304, 404, 500, 502), k=1)[0]
                page = rng.choices(paths, weights, k=1)[0]
                block.append(f'10.{rng.randrange(4)}.{rng.randrange(256)}.{rng.randrange(256)} - - '
                             f'[{day:02d}/Mar/2026:{hh:02d}:{mm:02d}:{ss:02d} +0000] '
                             f'"{rng.choice(("GET", "GET", "GET", "POST"))} {page}?page={rng.randrange(9)} HTTP/1.1" '
                             f'{status} {rng.randrange(200, 90_000)} "-" {rng.choice(agents)} '
                             f'{rng.lognormvariate(-3, 1):.3f}\n')
            text = "".join(block)
            out.write(text)
            written += len(text.encode())
    os.replace(partial, path)
    return path


# --- plain ---------------------------------------------------------------------------------


def plain_whoosh(documents: list[str], folder: Path) -> float:
    """Seconds for Whoosh alone to index ``documents`` (our schema, one writer, one commit)."""
    from whoosh import index

    from fileproc.search.whoosh.schema import schema

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    started = time.perf_counter()
    ix = index.create_in(str(folder), schema())
    writer = ix.writer(limitmb=64)
    for n, text in enumerate(documents):
        writer.add_document(id=f"docs/doc-{n}.txt", bucket="docs", key=f"doc-{n}.txt", type="text",
                            content_type="text/plain", etag=str(n), size=len(text), title=text.split("\n", 1)[0],
                            name=f"doc {n} txt", content=text)
    writer.commit()
    return time.perf_counter() - started


def plain_regex(path: Path) -> tuple[int, float]:
    """Lines and seconds for a plain loop doing the ``logs`` step's job on ``path``, the straightforward way.

    The same line regex as the step (workers/logformats/parsers.py's, with its groups) on each line, and the
    same summary built with plain dicts and Counters: counts by status, method, path (no query string)
    and hour, bytes, errors, the top clients, p50/p95 of the response time (every value kept and
    sorted at the end), bad lines counted. Generous where it can be: the hour is the time stamp's
    first 14 characters (no date parsing; the bench's log is all UTC), and nothing is written out.
    """
    from collections import Counter

    from workers.logformats.parsers import _HTTP_ROW

    line_re = re.compile(rf'{_HTTP_ROW} "[^"\n]*" "[^"\n]*"(?: (?P<rt>\d+(?:\.\d+)?))?')
    status: Counter[str] = Counter()
    method: Counter[str] = Counter()
    paths: Counter[str] = Counter()
    hour: Counter[str] = Counter()
    clients: Counter[str] = Counter()
    response: list[float] = []
    lines = bad = size = errors = 0
    started = time.perf_counter()
    with path.open(encoding="utf-8", errors="replace") as handle:
        for line in handle:
            lines += 1
            m = line_re.match(line)
            if m is None:
                bad += 1
                continue
            client, stamp, verb, page, code, sent, seconds = m.groups()
            status[code] += 1
            method[verb] += 1
            paths[page] += 1
            hour[stamp[:14]] += 1
            clients[client] += 1
            if sent:
                size += int(sent)
            if code >= "500":
                errors += 1
            if seconds:
                response.append(float(seconds) * 1000)
    response.sort()
    summary = {"lines": lines, "bad_lines": bad, "bytes": size, "errors": errors, "status": dict(status),
               "method": dict(method.most_common(10)), "path": dict(paths.most_common(10)), "hour": dict(hour),
               "top_clients": dict(clients.most_common(10)),
               "response_ms": {"p50": response[len(response) // 2] if response else None,
                               "p95": response[int(len(response) * 0.95)] if response else None}}
    assert summary["lines"] == lines
    return lines, time.perf_counter() - started


def match_only(path: Path) -> tuple[int, float]:
    """Lines and seconds for a loop that only matches the line regex on each line (extracts nothing).

    The baseline of the first runs, kept to compare with: it does not do the same job as the step.
    """
    from workers.logformats.parsers import _HTTP

    started = time.perf_counter()
    lines = matched = 0
    with path.open(encoding="utf-8", errors="replace") as handle:
        for line in handle:
            lines += 1
            if _HTTP.match(line):
                matched += 1
    return lines, time.perf_counter() - started


# --- through fileproc ---------------------------------------------------------------------


class Serve:
    """``fileproc serve`` (embedded default) with an ``index`` and a ``logs`` pipeline."""

    def __init__(self, root: Path) -> None:
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        self.root, self.port = root, _free_port()
        self.data = root / "data"
        self.config = root / "fileproc.toml"
        self.config.write_text(tomli_w.dumps({
            "data_dir": str(self.data), "log_level": "WARNING",
            "api": {"host": "127.0.0.1", "port": self.port, "admin_token": ADMIN},
            "watcher": {"settle_seconds": 0},
            "pipelines": [
                {"name": "docs", "match": {"bucket": "docs"}, "steps": [{"function": "index"}],
                 "output": {"bucket": "text", "key": "{key}/{name}"}},
                {"name": "logs", "match": {"bucket": "logs"}, "steps": [{"function": "logs"}],
                 "output": {"bucket": "out", "key": "{key}/{name}"}},
            ],
        }))
        self.staging = self.data / "staging"  # same file system: a rename puts a file in place whole
        self.staging.mkdir(parents=True)
        self.process = _Process(self.config, ["serve", "--port", str(self.port)], root / "serve.log")
        self._client: httpx.Client | None = None
        _wait(lambda: _healthy(self.port) and (self.data / "buckets").is_dir(), 60, "fileproc serve",
              self.process, every=0.2)

    def bucket(self, name: str) -> Path:
        folder = self.data / "buckets" / name
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def searchable(self, count: int) -> bool:
        """Whether search finds ``count`` documents: a page of one hit, the ``count``-th.

        (The total of a page is exact only when fewer matched than the hits up to it, so ask for the hit.
        One hit: the probe, asked four times a second, should cost the service little.)
        """
        if self._client is None:
            self._client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}",
                                        headers={"Authorization": f"Bearer {ADMIN}"}, timeout=30)
        response = self._client.get("/search", params={"q": MARK, "per_page": 1, "page": count})
        return response.status_code == 200 and len(response.json()["hits"]) == 1

    def jobs(self) -> list[dict[str, Any]]:
        import subprocess

        out = subprocess.run([sys.executable, "-m", "fileproc", "--config", str(self.config), "jobs", "--json",
                              "--limit", "100000"], capture_output=True, text=True, check=True).stdout
        return list(json.loads(out))

    def stop(self) -> None:
        if self._client is not None:
            self._client.close()
        self.process.stop()


def through_index(serve: Serve, documents: list[str]) -> float:
    """Seconds from the first document renamed into the bucket until search finds them all."""
    bucket = serve.bucket("docs")
    for n, text in enumerate(documents):
        (serve.staging / f"doc-{n}.txt").write_text(text)
    time.sleep(1)  # the watcher idle, the indexer between passes: as a burst would find them
    started = time.time()
    for n in range(len(documents)):
        os.rename(serve.staging / f"doc-{n}.txt", bucket / f"doc-{n}.txt")
    _wait(lambda: serve.searchable(len(documents)), 600, f"{len(documents)} documents searchable",
          serve.process, every=0.25)
    return time.time() - started


def indexer_alone(serve: Serve) -> tuple[int, float]:
    """Documents and seconds for the indexer to apply every recorded document to an empty index."""
    from fileproc.app import build
    from fileproc.config import load_settings
    from fileproc.search.indexer import Indexer
    from fileproc.search.whoosh import WhooshIndex

    settings = load_settings(serve.config, env={})
    settings.search.dir = serve.root / "search-alone"
    service = build(settings)
    indexer = Indexer(service, WhooshIndex(settings.search_dir))
    indexer.acquire(wait=True)
    indexer.index.count()  # makes the empty index: not part of the time
    service.db.last_output_id()  # opens the database (imports SQLAlchemy): what the running indexer has done once
    started = time.perf_counter()
    applied = indexer.catch_up()
    seconds = time.perf_counter() - started
    count = indexer.index.count()
    indexer.release()
    assert count == applied, (count, applied)
    return count, seconds


def through_logs(serve: Serve, log: Path, key: str) -> dict[str, Any]:
    """The ``logs`` job of ``log``: seconds from upload to finished, and its attempt's records."""
    staged = serve.staging / key
    shutil.copyfile(log, staged)
    before = len(serve.jobs())
    started = time.time()
    os.rename(staged, serve.bucket("logs") / key)
    found = _wait(lambda: [j for j in serve.jobs() if j["key"] == key and j["status"] not in ("queued", "running")],
                  3600, f"the logs job of {key}", serve.process, every=0.2)
    job = found[0]
    assert job["status"] == "succeeded", job
    assert len(serve.jobs()) == before + 1
    finished = _when(job["finished_at"])
    attempt = job["attempts"][-1]
    return {"seconds": finished - started, "duration_ms": attempt["duration_ms"],
            "peak_kb": attempt["peak_memory_kb"], "result": attempt.get("result") or {}}


def _when(text: str) -> float:
    from datetime import UTC, datetime

    moment = datetime.fromisoformat(text)
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


# --- search at scale ----------------------------------------------------------------------


def search_index(count: int) -> Path:
    """A ``count``-document index built through WhooshIndex.update, cached between runs."""
    from fileproc.search import Document
    from fileproc.search.whoosh import WhooshIndex

    folder = CACHE / f"search3-{count}"  # 3: written by WriterCodec (2: the merge policy, at most MAX_SEGMENTS)
    if (folder / "done").exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    index = WhooshIndex(folder)
    started = time.perf_counter()
    batch = 5000
    for start in range(0, count, batch):
        bodies = texts(min(batch, count - start), 60, seed=start + 11)
        index.update(add=[Document(bucket=f"b{n % 4}", key=f"k/{n}.txt", text=body, etag=str(n), type="text",
                                   title=body.split("\n", 1)[0]) for n, body in enumerate(bodies, start)])
        print(f"  search index: {start + len(bodies)} documents, {time.perf_counter() - started:.0f} s",
              file=sys.stderr, flush=True)
    index.close()
    (folder / "done").write_text(str(count))
    return folder


def search_times(folder: Path, queries: int, cpu: list[float] | None = None,
                 warm: list[float] | None = None) -> tuple[list[float], dict[str, float]]:
    """Milliseconds per query (and, into ``cpu``, the CPU time of each: what neighbours on the machine do not add).

    As a running service searches: after the first search, the index reads
    ahead its frequent words (block headers, and the most frequent ones'
    blocks decoded, in a thread, as ``fileproc api`` does when it opens the
    index or a commit lands); the queries start once that is done, and its
    seconds go into ``warm``.
    """
    from fileproc.search.whoosh import WhooshIndex

    index = WhooshIndex(folder, read_ahead=True)
    vocab = vocabulary()
    rng = random.Random(3)
    kinds = {"rare": lambda: rng.choice(vocab[5000:]), "common": lambda: rng.choice(vocab[:50]),
             "two words": lambda: f"{rng.choice(vocab[:2000])} {rng.choice(vocab[:2000])}",
             "filtered": lambda: rng.choice(vocab[100:3000])}
    started = time.perf_counter()
    index.search("warm up")
    index.wait_warm(600)
    if warm is not None:
        warm.append(time.perf_counter() - started)
    times: list[float] = []
    by_kind: dict[str, list[float]] = {kind: [] for kind in kinds}
    for n in range(queries):
        kind = list(kinds)[n % len(kinds)]
        text = kinds[kind]()
        started, started_cpu = time.perf_counter(), time.thread_time()
        index.search(text, bucket="b1" if kind == "filtered" else None, per_page=10)
        took = (time.perf_counter() - started) * 1000
        if cpu is not None:
            cpu.append((time.thread_time() - started_cpu) * 1000)
        times.append(took)
        by_kind[kind].append(took)
    index.close()
    return times, {kind: _p95(values) for kind, values in by_kind.items()}


def _p95(values: list[float]) -> float:
    return sorted(values)[max(0, int(len(values) * 0.95) - 1)] if values else 0.0


# --- the run ------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=400, help="documents through the pipeline (default 400)")
    parser.add_argument("--words", type=int, default=1500, help="words per document (default 1500)")
    parser.add_argument("--search-docs", type=int, default=100_000, help="documents in the search index")
    parser.add_argument("--queries", type=int, default=400)
    parser.add_argument("--log-mb", type=int, default=200, help="size of the log (default 200; 1024 for 1 GB)")
    parser.add_argument("--only", default="index,search,logs", help="comma-separated: index, search, logs")
    args = parser.parse_args(argv)
    chosen = set(args.only.split(","))
    lines: list[str] = []
    with tempfile.TemporaryDirectory(prefix="fileproc-bench-docs-") as tmp:
        serve = Serve(Path(tmp) / "serve") if chosen & {"index", "logs"} else None
        try:
            if "index" in chosen and serve is not None:
                documents = texts(args.docs, args.words)
                plain_before = plain_whoosh(documents, Path(tmp) / "plain")
                seconds = through_index(serve, documents)
                plain_after = plain_whoosh(documents, Path(tmp) / "plain")
                plain = (plain_before + plain_after) / 2
                count, alone = indexer_alone(serve)
                rate, plain_rate = args.docs / seconds, args.docs / plain
                lines += [f"index: {args.docs} docs of {args.words} words: plain Whoosh {plain_rate:.1f} docs/s "
                          f"({plain_before:.2f} s, {plain_after:.2f} s); through the pipeline {rate:.1f} docs/s "
                          f"(upload -> searchable {seconds:.2f} s): ratio {rate / plain_rate:.2f} (goal >= 0.8)",
                          f"index: the indexer alone {count / alone:.1f} docs/s ({alone:.2f} s): ratio "
                          f"{count / alone / plain_rate:.2f}"]
                print(*lines[-2:], sep="\n", flush=True)
            if "logs" in chosen and serve is not None:
                log = access_log(args.log_mb)
                small = access_log(max(1, args.log_mb // 8))
                count, plain_before = plain_regex(log)
                big = through_logs(serve, log, "access.log")
                _, plain_after = plain_regex(log)
                _, matching = match_only(log)
                little = through_logs(serve, small, "small.log")
                plain = (plain_before + plain_after) / 2
                rate = count / big["seconds"]
                size = log.stat().st_size / 2**20
                lines += [f"logs: {size:.0f} MB, {count} lines: plain loop (regex with groups + the same summary) "
                          f"{count / plain:,.0f} lines/s ({plain_before:.1f} s, {plain_after:.1f} s); through the "
                          f"pipeline {rate:,.0f} lines/s (upload -> finished {big['seconds']:.1f} s, in the step "
                          f"{big['duration_ms'] / 1000:.1f} s): ratio {rate * plain / count:.2f} (goal >= 0.8); "
                          f"against a loop that only matches ({count / matching:,.0f} lines/s): "
                          f"{rate * matching / count:.2f}",
                          f"logs: peak memory of the step {big['peak_kb'] / 1024:.0f} MB for {size:.0f} MB, "
                          f"{little['peak_kb'] / 1024:.0f} MB for {small.stat().st_size / 2**20:.0f} MB "
                          f"(goal: flat, < 100 MB)"]
                print(*lines[-2:], sep="\n", flush=True)
        finally:
            if serve is not None:
                serve.stop()
        if "search" in chosen:
            folder = search_index(args.search_docs)
            cpu: list[float] = []
            warm: list[float] = []
            times, by_kind = search_times(folder, args.queries, cpu, warm)
            lines.append(f"search: {args.search_docs} docs, {args.queries} queries: p50 "
                         f"{statistics.median(times):.2f} ms, p95 {_p95(times):.2f} ms (goal <= 5 ms); p95 by kind: "
                         + ", ".join(f"{kind} {value:.2f}" for kind, value in by_kind.items())
                         + f"; CPU time per query p50 {statistics.median(cpu):.2f} ms, p95 {_p95(cpu):.2f} ms "
                         f"(load average {os.getloadavg()[0]:.1f}); frequent words read ahead in {warm[0]:.2f} s")
            print(lines[-1], flush=True)
    print("\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
