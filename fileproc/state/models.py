"""The state database's tables: jobs, attempts, outputs (and the reconciler's drift).

Usage (duration, peak memory, bytes in/out, cold start) is recorded per
attempt; a job's usage is the sum of its attempts'.

A job row is also the outbox: ``sent_at`` says when its current step was last
handed to the broker (None: not yet), ``send_after`` when it may be (a retry's
backoff). Every fileproc process relays what is due (:mod:`fileproc.runtime.outbox`),
so a message lost anywhere is sent again from here.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(UTC)


class JobStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"  # superseded by a newer version, deleted, or written by its own pipeline


class AttemptStatus(enum.StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    SKIPPED = "skipped"
    LOST = "lost"  # its worker died or was cut off; another attempt took the step over
    LATE = "late"  # a lost attempt whose worker came back: its result was refused
    RETRIED = "retried"  # a failure counted before an admin's retry (no longer counts)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: DateTime(timezone=True), dict[str, Any]: JSON}


class JobRow(Base):
    """One pipeline run on one version of one object."""

    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("pipeline", "bucket", "key", "version", name="uq_job_version"),
        Index("ix_jobs_status", "status"),
        # /metrics counts jobs per status and pipeline, and the queues, from this index alone.
        Index("ix_jobs_status_pipeline", "status", "pipeline", "step_index", "created_at"),
        Index("ix_jobs_object", "bucket", "key"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    pipeline: Mapped[str] = mapped_column(String(255))
    bucket: Mapped[str] = mapped_column(String(255))
    key: Mapped[str] = mapped_column(String(1024))
    version: Mapped[str] = mapped_column(String(255))
    # The object's etag when notified: a listing (which carries no version id) finds its job by it.
    etag: Mapped[str | None] = mapped_column(String(255), default=None)
    event: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED)
    step_index: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    # The fence: the attempt that owns the running step, and until when (the database's clock).
    attempt_id: Mapped[int | None] = mapped_column(Integer, default=None)
    lease_until: Mapped[datetime | None] = mapped_column(default=None)
    # The outbox: when the current step was last sent to the broker, and when it may be.
    sent_at: Mapped[datetime | None] = mapped_column(default=None)
    send_after: Mapped[datetime | None] = mapped_column(default=None)
    sends: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
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
    status: Mapped[str] = mapped_column(String(32), default=AttemptStatus.RUNNING)
    worker: Mapped[str] = mapped_column(String(255), default="")
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
    duration_ms: Mapped[int | None] = mapped_column(Integer, default=None)
    peak_memory_kb: Mapped[int | None] = mapped_column(BigInteger, default=None)
    bytes_read: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_written: Mapped[int] = mapped_column(BigInteger, default=0)
    cold_start: Mapped[bool | None] = mapped_column(default=None)
    recycled: Mapped[str | None] = mapped_column(Text, default=None)  # why its runner was replaced after it
    error: Mapped[str | None] = mapped_column(Text, default=None)
    traceback: Mapped[str | None] = mapped_column(Text, default=None)
    result: Mapped[Any | None] = mapped_column(JSON, default=None)
    # A long step's latest {"percent", "speed", "at"}, while it runs (Context.report_progress).
    progress: Mapped[Any | None] = mapped_column(JSON, default=None)
    # Metering: the deployed version that ran, the memory it was given, the billed
    # duration (rounded up to 1 ms) and what it printed, with Lambda's START/END/REPORT lines.
    version: Mapped[str | None] = mapped_column(String(64), default=None)
    memory_mb: Mapped[int | None] = mapped_column(Integer, default=None)
    billed_ms: Mapped[int | None] = mapped_column(BigInteger, default=None)
    log: Mapped[str | None] = mapped_column(Text, default=None)

    job: Mapped[JobRow] = relationship(back_populates="attempts")


class OutputRow(Base):
    """An object a step wrote; recorded once per (job, step, bucket, key)."""

    __tablename__ = "outputs"
    __table_args__ = (
        UniqueConstraint("job_id", "step_index", "bucket", "key", name="uq_output"),
        Index("ix_outputs_object", "bucket", "key"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    step_index: Mapped[int] = mapped_column(Integer)
    bucket: Mapped[str] = mapped_column(String(255))
    key: Mapped[str] = mapped_column(String(1024))
    size: Mapped[int] = mapped_column(BigInteger)
    etag: Mapped[str] = mapped_column(String(255))
    content_type: Mapped[str] = mapped_column(String(255))
    # Set when fileproc removed the object (its source was deleted, or a newer version's run
    # no longer makes it; see Pipeline.on_delete): when, and by which job.
    removed_at: Mapped[datetime | None] = mapped_column(default=None)
    removed_by: Mapped[int | None] = mapped_column(Integer, default=None, index=True)

    job: Mapped[JobRow] = relationship(back_populates="outputs")


class DriftRow(Base):
    """One reconcile pass over one bucket: what the listing found that no job covered.

    ``new_objects`` + ``new_versions`` is the drift: objects whose notification
    never arrived (or arrived garbled); ``sample`` holds a few of their keys.
    """

    __tablename__ = "drift"
    __table_args__ = (Index("ix_drift_bucket", "bucket", "id"), Index("ix_drift_finished", "finished_at"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    bucket: Mapped[str] = mapped_column(String(255))
    prefixes: Mapped[list[str]] = mapped_column(JSON, default=list)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime] = mapped_column(default=utcnow)
    listed: Mapped[int] = mapped_column(Integer, default=0)
    matched: Mapped[int] = mapped_column(Integer, default=0)
    covered: Mapped[int] = mapped_column(Integer, default=0)
    new_objects: Mapped[int] = mapped_column(Integer, default=0)
    new_versions: Mapped[int] = mapped_column(Integer, default=0)
    own_outputs: Mapped[int] = mapped_column(Integer, default=0)
    recent: Mapped[int] = mapped_column(Integer, default=0)
    sample: Mapped[list[str]] = mapped_column(JSON, default=list)
    cpu_ms: Mapped[int] = mapped_column(Integer, default=0)
    duration_ms: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text, default=None)


class Seconds(TypeDecorator[float]):
    """A float read as the driver gives it: Prepared statements compile result conversions without the
    column's type code, which PostgreSQL's numeric types insist on (its drivers return floats anyway)."""

    impl = Float
    cache_ok = True

    def result_processor(self, dialect: Any, coltype: Any) -> None:
        return None


class FunctionVersionRow(Base):
    """One immutable version of a deployed user function (``fileproc functions deploy``).

    The package (a zip of the handler's file or folder) lives in storage under
    ``package_key``; each host unpacks it and installs ``requirements`` once
    per version (:mod:`fileproc.serverless.packages`).
    """

    __tablename__ = "function_versions"
    __table_args__ = (UniqueConstraint("function", "version", name="uq_function_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    function: Mapped[str] = mapped_column(String(64), index=True)
    version: Mapped[int] = mapped_column(Integer)
    handler: Mapped[str] = mapped_column(String(255))  # Lambda's notation: module.function
    timeout: Mapped[float] = mapped_column(Seconds, default=60.0)
    memory_mb: Mapped[int] = mapped_column(Integer, default=128)
    concurrency: Mapped[int | None] = mapped_column(Integer, default=None)
    provisioned: Mapped[int | None] = mapped_column(Integer, default=None)  # runners kept warm per worker
    disk_mb: Mapped[int] = mapped_column(Integer, default=512)  # largest file it may write (Lambda's /tmp: 512 MB)
    retries: Mapped[int] = mapped_column(Integer, default=2)
    backoff: Mapped[float] = mapped_column(Seconds, default=2.0)  # seconds before the first retry, doubling
    max_event_age: Mapped[float] = mapped_column(Seconds, default=21600.0)  # Lambda's default: 6 hours
    on_success: Mapped[str | None] = mapped_column(String(2048), default=None)  # destination webhooks
    on_failure: Mapped[str | None] = mapped_column(String(2048), default=None)
    env: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    package_key: Mapped[str] = mapped_column(String(1024))
    package_sha256: Mapped[str] = mapped_column(String(64))
    requirements: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class FunctionAliasRow(Base):
    """A name for one version of a deployed function: ``live`` is the one a bare name runs."""

    __tablename__ = "function_aliases"

    function: Mapped[str] = mapped_column(String(64), primary_key=True)
    alias: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class FunctionSlotRow(Base):
    """One unit of a deployed function's reserved concurrency, held by the attempt running in it.

    A function deployed with ``--concurrency K`` has K slots; a step takes a
    free one (or one whose holder's time ran out: its worker died) before it
    runs and gives it back after, so at most K of its steps run at once across
    every worker and host.
    """

    __tablename__ = "function_slots"

    function: Mapped[str] = mapped_column(String(64), primary_key=True)
    slot: Mapped[int] = mapped_column(Integer, primary_key=True)
    holder: Mapped[str | None] = mapped_column(String(64), default=None)
    until: Mapped[datetime | None] = mapped_column(default=None)


class RunnerCountRow(Base):
    """How many warm runners of a function one worker process holds, as it last said (for ``/metrics``).

    ``worker`` is the process (host and pid); ``state`` is ``provisioned``
    (kept warm on purpose) or ``warm`` (kept after a step, until idle). A
    process rewrites its rows every few seconds; rows older than that are a
    process that is gone.
    """

    __tablename__ = "runner_counts"

    worker: Mapped[str] = mapped_column(String(128), primary_key=True)
    function: Mapped[str] = mapped_column(String(64), primary_key=True)
    state: Mapped[str] = mapped_column(String(16), primary_key=True)
    count: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class DeadLetterRow(Base):
    """A deployed function's event that failed for good (retries exhausted, too old): replayable.

    ``record`` is Lambda's destination record (``requestContext``,
    ``requestPayload``, ``responseContext``, ``responsePayload``);
    ``fileproc retry --dead-letters`` runs the job again and sets ``replayed_at``.
    """

    __tablename__ = "dead_letters"
    __table_args__ = (Index("ix_dead_letters_function", "function", "replayed_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(Integer, index=True)
    function: Mapped[str] = mapped_column(String(64))
    version: Mapped[str | None] = mapped_column(String(64), default=None)
    request_id: Mapped[str] = mapped_column(String(64))
    condition: Mapped[str] = mapped_column(String(32))  # RetriesExhausted or EventAgeExceeded
    error: Mapped[str | None] = mapped_column(Text, default=None)
    record: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    replayed_at: Mapped[datetime | None] = mapped_column(default=None)


class FunctionTokenRow(Base):
    """A deployed function's own invoke token (its SHA-256): ``POST /functions/NAME/invoke`` without admin."""

    __tablename__ = "function_tokens"

    function: Mapped[str] = mapped_column(String(64), primary_key=True)
    token_sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class DeliveryRow(Base):
    """A deployed function's destination record owed to its ``--on-success`` / ``--on-failure`` URL: an outbox.

    Written in the step's finishing transaction (so it exists exactly when the
    step's end was committed); POSTed by the worker right after, and by every
    process's relay while due (``next_at``, moved forward by whoever claims it
    before posting). Delivered: ``delivered_at``; given up after the retry time:
    ``given_up_at``; either way ``next_at`` is cleared (see
    :mod:`fileproc.serverless.destinations`).
    """

    __tablename__ = "destination_deliveries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(Integer, index=True)
    function: Mapped[str] = mapped_column(String(64), index=True)
    version: Mapped[str | None] = mapped_column(String(64), default=None)
    request_id: Mapped[str] = mapped_column(String(64), index=True)
    condition: Mapped[str] = mapped_column(String(32))  # Success, RetriesExhausted or EventAgeExceeded
    url: Mapped[str] = mapped_column(String(2048))
    record: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_at: Mapped[datetime | None] = mapped_column(default=None, index=True)  # None: delivered or given up
    delivered_at: Mapped[datetime | None] = mapped_column(default=None)
    given_up_at: Mapped[datetime | None] = mapped_column(default=None)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
