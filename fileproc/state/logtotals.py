"""Rolling totals of log streams: one row per log file the ``logs`` function summarised.

A ``logs`` step returns its file's totals under ``log_totals``; the step's
own second transaction (:func:`fileproc.state.steps.finish_step`) stores them
here (as :func:`row_of` gives them), replacing the row of an earlier version
of the same file, so a file processed again (overwritten, retried) is never
counted twice.
``fileproc logs-summary PREFIX`` adds up the rows of a stream.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from sqlalchemy import JSON, BigInteger, Index, Integer, String, Table, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from fileproc.state.models import Base, utcnow


class LogFileRow(Base):
    __tablename__ = "log_files"
    __table_args__ = (UniqueConstraint("bucket", "key", name="uq_log_file"), Index("ix_log_files_stream", "stream"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    stream: Mapped[str] = mapped_column(String(1024))
    bucket: Mapped[str] = mapped_column(String(255))
    key: Mapped[str] = mapped_column(String(1024))
    version: Mapped[str] = mapped_column(String(255), default="")
    lines: Mapped[int] = mapped_column(BigInteger, default=0)
    records: Mapped[int] = mapped_column(BigInteger, default=0)
    bad_lines: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    errors: Mapped[int] = mapped_column(BigInteger, default=0)
    status: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    response_hist: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    first: Mapped[str | None] = mapped_column(String(64), default=None)
    last: Mapped[str | None] = mapped_column(String(64), default=None)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


log_files = cast(Table, LogFileRow.__table__)
COLUMNS = ("stream", "bucket", "key", "version", "lines", "records", "bad_lines", "bytes", "errors", "status",
           "response_hist", "first", "last")


def row_of(totals: Any) -> dict[str, Any] | None:
    """The row for one file's totals (stored by the step's own transaction); None for malformed ones."""
    if not isinstance(totals, dict) or not isinstance(totals.get("bucket"), str) or not totals.get("key"):
        return None
    row = {name: totals.get(name) for name in COLUMNS}
    row["stream"] = str(row["stream"] or "")
    row["version"] = str(row["version"] or "")
    return row


def summarise(rows: list[LogFileRow]) -> dict[str, Any]:
    """The totals of many files: sums, merged status counts, and percentiles of the merged histograms."""
    status: dict[str, int] = {}
    buckets: dict[int, int] = {}
    out: dict[str, Any] = {"files": len(rows), "lines": 0, "records": 0, "bad_lines": 0, "bytes": 0, "errors": 0}
    firsts, lasts = [r.first for r in rows if r.first], [r.last for r in rows if r.last]
    for row in rows:
        for name in ("lines", "records", "bad_lines", "bytes", "errors"):
            out[name] += getattr(row, name) or 0
        for code, count in (row.status or {}).items():
            status[code] = status.get(code, 0) + count
        for index, count in (row.response_hist or {}).items():
            buckets[int(index)] = buckets.get(int(index), 0) + count
    out["error_rate"] = round(out["errors"] / out["records"], 6) if out["records"] else 0.0
    out["status"] = dict(sorted(status.items()))
    out["response_ms"] = {"p50": _percentile(buckets, 0.5), "p95": _percentile(buckets, 0.95),
                          "count": sum(buckets.values())}
    out["first"], out["last"] = (min(firsts) if firsts else None), (max(lasts) if lasts else None)
    return out


GROWTH = 1.04
"""Bucket ``i`` of a response-time histogram holds values in [GROWTH**i, GROWTH**(i+1)) ms
(``workers.logformats.Histogram``, whose buckets these are)."""


def _percentile(buckets: dict[int, int], fraction: float) -> float | None:
    total = sum(buckets.values())
    if not total:
        return None
    seen = 0
    for index in sorted(buckets):
        seen += buckets[index]
        if seen >= fraction * total:
            return 0.0 if index == -10_000 else round(GROWTH ** (index + 0.5), 2)
    return None


__all__ = ["COLUMNS", "LogFileRow", "log_files", "row_of", "summarise"]
