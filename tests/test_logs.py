"""The `logs` function: formats, gzip, garbage lines, filters, summaries, and rolling totals in the state DB."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path
from typing import Any

import pytest

from fileproc import InvalidInput
from fileproc.storage.local import LocalStorage
from tests.helpers import invocation, read_object
from tests.procs import Process, fileproc, settled, wait_for, wait_healthy, write_config
from tests.servers import free_port
from workers import logs
from workers.logformats import FilterError, TopCounter, compile_filter


def combined_lines(count: int, seed: int = 1, garbage_every: int = 0) -> list[str]:
    rng = random.Random(seed)
    lines = []
    for n in range(count):
        if garbage_every and n % garbage_every == garbage_every - 1:
            lines.append(f"\x00garbage line {n} ¿¿ not a log")
            continue
        status = rng.choice([200, 200, 200, 304, 404, 500, 503])
        method = rng.choice(["GET", "GET", "POST"])
        hour = 10 + n * 2 // max(count, 1)
        lines.append(f'10.0.0.{n % 7} - - [12/Mar/2026:{hour:02d}:{n % 60:02d}:07 +0000] "{method} /api/items/{n % 5}'
                     f'?page=2 HTTP/1.1" {status} {100 + n % 900} "-" "curl/8.0" {(n % 100 + 1) / 1000:.3f}')
    return lines


def run(tmp_path: Path, key: str, data: bytes, params: dict[str, Any]) -> tuple[dict[str, Any], LocalStorage, Any]:
    storage = LocalStorage(tmp_path / "buckets")
    storage.ensure_bucket("logs")
    storage.put("logs", key, data)
    event, context = invocation(storage, "logs", key, tmp_path / "scratch", function_name="logs",
                                params=logs.LogsParams(**params).model_dump(mode="json"))
    return logs.handler(event, context), storage, context


def summary_of(storage: LocalStorage, key: str) -> dict[str, Any]:
    return json.loads(read_object(storage, "out", f"logs/{key}/summary.json"))


def test_a_large_gzip_access_log_with_garbage_lines(tmp_path: Path) -> None:
    lines = combined_lines(20_000, garbage_every=100)
    data = gzip.compress(("\n".join(lines) + "\n").encode())
    result, storage, _ = run(tmp_path, "nginx/access.log.gz", data, {"filter": 'status >= 500 and method == "POST"'})
    summary = summary_of(storage, "nginx/access.log.gz")
    assert summary["format"] == "combined" and result["format"] == "combined"
    assert summary["lines"] == 20_000 and summary["bad_lines"] == 200 and summary["records"] == 19_800
    assert len(summary["bad_line_samples"]) == 5 and "garbage line 99" in summary["bad_line_samples"][0]
    good = [line for line in lines if "garbage" not in line]
    assert sum(summary["status"].values()) == 19_800
    assert summary["status"]["500"] == sum(1 for line in good if '" 500 ' in line)
    assert set(summary["path"]) == {f"/api/items/{n}" for n in range(5)}  # the query string dropped
    assert summary["top_clients"]["10.0.0.0"] > 0 and len(summary["top_clients"]) == 7
    assert summary["bytes"] == sum(int(line.split('" ')[1].split()[1]) for line in good)
    errors = sum(1 for line in good if '" 500 ' in line or '" 503 ' in line)
    assert summary["error_rate"] == round(errors / 19_800, 6)
    assert 45 <= summary["response_ms"]["p50"] <= 55 and 90 <= summary["response_ms"]["p95"] <= 100
    assert list(summary["hour"]) == ["2026-03-12T10:00", "2026-03-12T11:00"]
    kept = read_object(storage, "out", "logs/nginx/access.log.gz/records.jsonl").decode().splitlines()
    assert len(kept) == summary["matched"] > 0
    assert all(json.loads(r)["status"] >= 500 and json.loads(r)["method"] == "POST" for r in kept)

    # Without a filter the summary is counted chunk by chunk, not line by line: the same figures.
    for name, text in (("combined", lines), ("common", [line.rsplit(' "-"', 1)[0] for line in lines])):
        data = gzip.compress(("\n\n".join(text) + "\n  \n").encode())  # blank lines are not lines
        by_chunk, _, _ = run(tmp_path / name, "nginx/access.log.gz", data, {"format": name})
        assert by_chunk["lines"] == 20_000 and by_chunk["bad_lines"] == 200
        chunked = summary_of(LocalStorage(tmp_path / name / "buckets"), "nginx/access.log.gz")
        by_line, _, _ = run(tmp_path / f"{name}-lines", "nginx/access.log.gz", data,
                            {"format": name, "filter": "x > 1"})  # with a filter: line by line
        per_line = summary_of(LocalStorage(tmp_path / f"{name}-lines" / "buckets"), "nginx/access.log.gz")
        assert {**chunked, "matched": 0} == {**per_line, "matched": 0}
        assert by_chunk["log_totals"] == by_line["log_totals"]


def test_top_lists_past_their_capacity_keep_the_heavy_keys_within_the_stated_error(tmp_path: Path) -> None:
    rng = random.Random(3)
    heavy = {f"/hot/{n}": 3_000 - n * 400 for n in range(5)}
    keys = [key for key, count in heavy.items() for _ in range(count)]
    keys += [f"/cold/{rng.randrange(200_000)}" for _ in range(60_000)]  # tens of thousands of distinct paths
    rng.shuffle(keys)
    counter = TopCounter(100)
    for key in keys:
        counter.add(key)
    assert len(counter.counts) <= 200 and counter.total == len(keys)
    assert 0 < counter.error <= len(keys) / 101
    top = counter.top(5)
    assert list(top) == list(heavy)  # every key seen more than total / (capacity + 1) times is kept, in order
    for key, true in heavy.items():
        assert true - counter.error <= top[key] <= true
    by_column = TopCounter(100)
    for start in range(0, len(keys), 5000):  # what the chunk-at-a-time path does
        by_column.update(keys[start:start + 5000])
    assert list(by_column.top(5)) == list(heavy) and by_column.error <= len(keys) / 101

    # Through the function: the summary says by how much a list past its capacity may over-count.
    lines = [f'10.0.0.1 - - [12/Mar/2026:10:00:00 +0000] "GET {key} HTTP/1.1" 200 5' for key in keys[:30_000]]
    run(tmp_path, "many/paths.log", "\n".join(lines).encode(), {})
    summary = json.loads(read_object(LocalStorage(tmp_path / "buckets"), "out", "logs/many/paths.log/summary.json"))
    assert summary["format"] == "common" and list(summary["path"])[:3] == list(heavy)[:3]
    assert 0 < summary["approximate"]["path"] <= 30 and "top_clients" not in summary["approximate"]


def test_common_json_lines_and_syslog_formats_are_detected(tmp_path: Path) -> None:
    common = '127.0.0.1 - frank [10/Oct/2000:13:55:36 -0700] "GET /apache_pb.gif HTTP/1.0" 200 2326\n' * 3
    result, storage, _ = run(tmp_path, "a/common.log", common.encode(), {})
    assert result["format"] == "common" and summary_of(storage, "a/common.log")["bytes"] == 3 * 2326

    jsonl = "\n".join(json.dumps({"ts": "2026-03-12T10:00:00Z", "level": lvl, "status": st, "duration_ms": ms,
                                  "path": "/x"}) for lvl, st, ms in [("info", 200, 10), ("error", 502, 900)])
    result, storage, _ = run(tmp_path, "a/app.jsonl", (jsonl + "\nnot json\n").encode(), {"filter": 'level == "error"',
                                                                                         "records_format": "csv"})
    summary = summary_of(storage, "a/app.jsonl")
    assert result["format"] == "json" and summary["bad_lines"] == 1 and summary["errors"] == 1
    csv_text = read_object(storage, "out", "logs/a/app.jsonl/records.csv").decode().splitlines()
    assert csv_text[0].startswith("time,client,method,path,status") and len(csv_text) == 2 and ",502," in csv_text[1]

    rfc3164 = "<34>Oct 11 22:14:15 mymachine su: 'su root' failed for lonvick on /dev/pts/8\n" \
              "<13>Oct 11 22:14:16 mymachine cron[42]: job done\n"
    result, storage, _ = run(tmp_path, "a/sys.log", rfc3164.encode(), {"filter": "severity <= 3"})
    assert result["format"] == "syslog3164" and summary_of(storage, "a/sys.log")["errors"] == 1
    rfc5424 = ('<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 '
               '[exampleSDID@32473 iut="3" eventSource="Application"] An application event log entry\n')
    result, storage, _ = run(tmp_path, "a/sys5424.log", rfc5424.encode(), {"format": "syslog5424"})
    assert result["format"] == "syslog5424"
    assert summary_of(storage, "a/sys5424.log")["level"] == {"notice": 1}


def test_unparseable_and_empty_logs_fail_with_the_reason(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="no line is in a known log format"):
        run(tmp_path, "x.log", b"hello\nworld\n", {})
    with pytest.raises(InvalidInput, match="the log is empty"):
        run(tmp_path, "empty.log", b"", {})


def test_the_filter_language_is_parsed_never_evaluated() -> None:
    keep = compile_filter('not (client == "10.0.0.1" or status < 400) and path ~ "^/api/"')
    assert keep({"client": "10.0.0.2", "status": 404, "path": "/api/x"})
    assert not keep({"client": "10.0.0.1", "status": 500, "path": "/api/x"})
    assert not keep({"client": "10.0.0.2", "status": 500, "path": "/web"})
    assert not compile_filter("status >= 500")({"path": "/api/x"})  # no status: the comparison does not match
    for bad in ("__import__('os').system('x')", "status >=", "status 500", "(status > 1"):
        with pytest.raises(FilterError):
            compile_filter(bad)


def test_filter_strings_match_non_ascii_text_and_keep_their_escapes() -> None:
    assert compile_filter('path == "/café"')({"path": "/café"})  # was read as UTF-8 bytes, one Latin-1 char each
    assert compile_filter("app == '日本'")({"app": "日本"})
    assert compile_filter(r'path == "/caf\u00e9" and message == "\N{BULLET} \x41"')({"path": "/café", "message": "• A"})
    assert compile_filter(r'message == "say \"hi\""')({"message": 'say "hi"'})
    assert compile_filter(r"path == 'C:\\dir\'s'")({"path": "C:\\dir's"})
    assert compile_filter(r'path ~ "^/café/\d+$"')({"path": "/café/12"})  # an unknown escape stays: \d is a digit
    assert not compile_filter(r'path ~ "^/café/\d+$"')({"path": "/café/x"})
    for bad in (r'path == "\x4"', r'path == "\N{NO SUCH NAME}"', r'path == "\U00110000"'):
        with pytest.raises(FilterError, match="escape"):
            compile_filter(bad)


def test_rolling_totals_across_the_files_of_a_prefix(tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path / "fileproc.toml", {
        "data_dir": str(tmp_path / "data"), "api": {"port": port},
        "pipelines": [{"name": "weblogs", "match": {"bucket": "logs", "prefix": "nginx/"},
                       "steps": [{"function": "logs", "params": {"filter": "status >= 500"}}],
                       "output": {"bucket": "reports", "key": "{key}/{name}"}}],
    })
    server = Process(config, ["serve"], tmp_path / "serve.log")
    folder = tmp_path / "data" / "buckets" / "logs" / "nginx"
    try:
        wait_healthy(port, server)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "day1.log").write_text("\n".join(combined_lines(300, seed=1)) + "\n")
        (folder / "day2.log.gz").write_bytes(gzip.compress(("\n".join(combined_lines(200, seed=2)) + "\n").encode()))
        wait_for(settled(config, 2), 60, "2 finished jobs", server)
        totals = json.loads(fileproc(config, "logs-summary", "logs/nginx/", "--json").stdout)
        assert totals["files"] == 2 and totals["records"] == 500
        # An overwritten file replaces its own totals: counted once.
        (folder / "day1.log").write_text("\n".join(combined_lines(100, seed=3)) + "\n")
        wait_for(settled(config, 3), 60, "3 finished jobs", server)
        totals = json.loads(fileproc(config, "logs-summary", "logs/nginx/", "--json").stdout)
        assert totals["files"] == 2 and totals["records"] == 300
        assert sum(totals["status"].values()) == 300 and totals["response_ms"]["count"] == 300
        assert "2 file(s), 300 records" in fileproc(config, "logs-summary", "logs/nginx/").stdout
    finally:
        assert server.stop() == 0, server.tail()
