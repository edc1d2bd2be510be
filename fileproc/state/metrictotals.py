"""Running totals behind ``GET /metrics``, so a scrape never reads the whole history.

:mod:`fileproc.metrics` rolls the attempts and jobs that settled since the
last scrape (of any API process) into these rows, and moves a mark past them:

- ``metric_totals``: one row per series value (``kind``, its label values
  joined by ``SEP``): attempts per function and status, cold and warm starts,
  histogram buckets and sums, jobs created per pipeline;
- ``metric_marks``: per source table (``attempts``, ``jobs``), the id up to
  which every row is in the totals, and (attempts) the ids at or below it that
  were still running then, counted when they end.

Both are small (a few hundred rows), and only the scrape writes them, under a
lock on the mark rows (SQLite: its write lock), so processes scraping at once
never count a row twice.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Float, String
from sqlalchemy.orm import Mapped, mapped_column

from fileproc.state.models import Base, utcnow

SEP = "\x1f"
"""Between label values in ``MetricTotalRow.labels`` (never in a function, pipeline or status name)."""


class MetricTotalRow(Base):
    __tablename__ = "metric_totals"

    kind: Mapped[str] = mapped_column(String(64), primary_key=True)
    labels: Mapped[str] = mapped_column(String(512), primary_key=True)
    value: Mapped[float] = mapped_column(Float, default=0.0)


class MetricMarkRow(Base):
    __tablename__ = "metric_marks"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    after: Mapped[int] = mapped_column(BigInteger, default=0)
    pending: Mapped[list[Any]] = mapped_column(JSON, default=list)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


__all__ = ["SEP", "MetricMarkRow", "MetricTotalRow"]
