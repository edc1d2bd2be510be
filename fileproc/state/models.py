"""The state database's tables: events, jobs, attempts, outputs.

Usage (duration, peak memory, bytes in/out) is recorded per attempt; a job's
usage is the sum of its attempts'.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import JSON, BigInteger, DateTime, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: DateTime(timezone=True), dict[str, Any]: JSON}


class EventRow(Base):
    """Every notification received, as recorded before it was answered."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    source: Mapped[str] = mapped_column(String(32))
    event_name: Mapped[str] = mapped_column(String(128))
    bucket: Mapped[str] = mapped_column(String(255))
    key: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any]]


class JobRow(Base):
    """One pipeline run on one version of one object."""

    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("pipeline", "bucket", "key", "version", name="uq_job_version"),
        Index("ix_jobs_status", "status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    pipeline: Mapped[str] = mapped_column(String(255))
    bucket: Mapped[str] = mapped_column(String(255))
    key: Mapped[str] = mapped_column(String(1024))
    version: Mapped[str] = mapped_column(String(255))
    event: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(String(16), default="queued")
    step_index: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    enqueued: Mapped[bool] = mapped_column(default=False)
    lease_until: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)

    attempts: Mapped[list[AttemptRow]] = relationship(back_populates="job", order_by="AttemptRow.id")
    outputs: Mapped[list[OutputRow]] = relationship(back_populates="job", order_by="OutputRow.id")


class AttemptRow(Base):
    """One try at one step, with what it cost."""

    __tablename__ = "attempts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    step_index: Mapped[int] = mapped_column(Integer)
    function: Mapped[str] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(32), default="running")
    worker: Mapped[str] = mapped_column(String(255), default="")
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
    duration_ms: Mapped[int | None] = mapped_column(Integer, default=None)
    peak_memory_kb: Mapped[int | None] = mapped_column(BigInteger, default=None)
    bytes_read: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_written: Mapped[int] = mapped_column(BigInteger, default=0)
    error: Mapped[str | None] = mapped_column(Text, default=None)

    job: Mapped[JobRow] = relationship(back_populates="attempts")


class OutputRow(Base):
    """An object a step wrote."""

    __tablename__ = "outputs"
    __table_args__ = (Index("ix_outputs_object", "bucket", "key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    step_index: Mapped[int] = mapped_column(Integer)
    bucket: Mapped[str] = mapped_column(String(255))
    key: Mapped[str] = mapped_column(String(1024))
    size: Mapped[int] = mapped_column(BigInteger)
    etag: Mapped[str] = mapped_column(String(255))
    content_type: Mapped[str] = mapped_column(String(255))

    job: Mapped[JobRow] = relationship(back_populates="outputs")
