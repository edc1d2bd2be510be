"""A deployed function's store credentials: its own, scoped like a Lambda execution role.

A deployed function's runner never holds fileproc's store keys. What it
gets, as ``AWS_*`` variables and for ``context.storage``, depends on
``functions.credentials`` (S3 backend only: on local folders a function
holds no credentials, and Landlock is its guard):

- ``assume-role`` (the default): temporary credentials from the store's STS
  (``AssumeRole``, signed with fileproc's keys, at ``functions.sts_endpoint``
  or the store's own endpoint) with an inline session policy built from the
  function's :class:`Scope`: they can never do more than that policy nor
  more than fileproc's own keys. MinIO and Ceph RGW answer it on their S3
  endpoint, AWS at ``sts.amazonaws.com`` (with ``functions.role_arn``).
- ``keys``: ``functions.access_key`` and ``functions.secret_key``, an
  account the operator made on the store and scoped there (for stores
  without STS, such as versitygw).
- ``shared``: fileproc's own keys (every bucket fileproc reaches, other
  functions' packages included); only by explicit choice, with a warning.

Temporary credentials are cached per process, per function and scope, and
renewed when they would expire before a step could end: :func:`grant` is
asked for credentials valid at least ``valid_for`` seconds (the step's
timeout and a margin). New credentials make a new runner
(:meth:`.LambdaHandler.spawn`), so no runner ever holds expired ones.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import re
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from xml.etree import ElementTree

import urllib3

from fileproc.errors import PermanentError, StorageUnavailable, network_reason

if TYPE_CHECKING:
    from fileproc.config import Settings
    from fileproc.rules import Pipeline

log = logging.getLogger(__name__)

MARGIN_SECONDS = 60.0
"""Credentials a step starts with stay valid this long past its timeout."""

DURATION_SECONDS = 3600
"""What AssumeRole asks for (more for a step whose timeout needs it): AWS's default role session,
and minio-py's least (it asks an hour for anything shorter). MinIO takes 900 s to 365 days."""

MAX_DURATION_SECONDS = 43200
"""AWS's longest role session (the role's own maximum may be lower; the store then says so)."""

READ = ("s3:GetObject",)
WRITE = ("s3:PutObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts", "s3:GetObject")
"""Where its outputs go: written, and read back (its runner records what boto3 wrote with a HEAD)."""
NO_STS = frozenset({"MethodNotAllowed", "NotImplemented", "InvalidAction", "NoSuchBucket", "NoSuchKey"})
"""What a store without STS answers an AssumeRole (versitygw: 405 MethodNotAllowed)."""


@dataclass(frozen=True)
class Grant:
    """Store credentials a function's runner gets (``expires``: None for keys that do not expire)."""

    access_key: str
    secret_key: str
    session_token: str | None = None
    expires: datetime | None = None


@dataclass(frozen=True)
class Scope:
    """What a function may reach: ``(bucket pattern, key prefix)`` pairs it may read and write.

    ``guarded`` (``functions.bucket``) is refused outright, even where a
    bucket glob covers it, unless a grant names it (a direct invocation's
    outputs folder, ``invocations/NAME/``).
    """

    reads: tuple[tuple[str, str], ...]
    writes: tuple[tuple[str, str], ...]
    guarded: str

    def policy(self) -> str:
        """The IAM policy of this scope, compact (STS takes at most 2048 characters of it)."""
        def objects(grants: tuple[tuple[str, str], ...]) -> list[str]:
            return sorted({f"arn:aws:s3:::{_arn_pattern(bucket)}/{prefix}*" for bucket, prefix in grants})

        def buckets(grants: tuple[tuple[str, str], ...]) -> list[str]:
            return sorted({f"arn:aws:s3:::{_arn_pattern(bucket)}" for bucket, _ in grants})

        statements: list[dict[str, Any]] = []
        if self.reads:
            statements.append({"Effect": "Allow", "Action": list(READ), "Resource": objects(self.reads)})
            listing: dict[str, Any] = {"Effect": "Allow", "Action": ["s3:ListBucket"], "Resource": buckets(self.reads)}
            prefixes = {prefix for _, prefix in self.reads}
            if "" not in prefixes:
                listing["Condition"] = {"StringLike": {"s3:prefix": sorted(f"{p}*" for p in prefixes)}}
            statements.append(listing)
        if self.writes:
            statements.append({"Effect": "Allow", "Action": list(WRITE), "Resource": objects(self.writes)})
        if self.reads or self.writes:  # minio's client asks a bucket's region before its first request to it
            statements.append({"Effect": "Allow", "Action": ["s3:GetBucketLocation"],
                               "Resource": buckets(self.reads + self.writes)})
        granted = {bucket for bucket, _ in self.reads + self.writes}
        covered = any(fnmatch.fnmatchcase(self.guarded, bucket) for bucket in granted if bucket != self.guarded)
        if self.guarded not in granted or covered:  # (a glob covering it wins over a direct invocation's folder)
            statements.append({"Effect": "Deny", "Action": ["s3:*"],
                               "Resource": [f"arn:aws:s3:::{self.guarded}", f"arn:aws:s3:::{self.guarded}/*"]})
        return json.dumps({"Version": "2012-10-17", "Statement": statements}, separators=(",", ":"))


def _arn_pattern(bucket: str) -> str:
    # A bucket glob's `[abc]` has no IAM form: `*` (wider, never narrower).
    return re.sub(r"\[[^\]]*\]", "*", bucket)


def _fixed_start(template: str, pipeline: str) -> str:
    """What every key an output key template renders starts with (``thumbnails/{key}/{name}`` -> ``thumbnails/``)."""
    start = template.replace("{pipeline}", pipeline).split("{", 1)[0]
    return re.sub(r"/{2,}", "/", start).lstrip("/")


def scope_for(settings: Settings, pipelines: list[Pipeline], function: str, *,
              invoked_bucket: str | None = None, outputs: bool = False) -> Scope:
    """The scope of ``function``: what the pipelines naming it read and write (its execution role).

    For a direct invocation (``invoked_bucket``: the bucket of the object it
    was given) also that bucket, read, and its outputs folder
    ``functions.bucket/invocations/NAME/``, written; for an invocation on
    an event (a stream's batch, a schedule's tick, a URL's request:
    ``outputs``) that folder, written.
    """
    from fileproc.serverless.names import split

    guarded = settings.functions.bucket
    reads: set[tuple[str, str]] = set()
    writes: set[tuple[str, str]] = set()
    for pipeline in pipelines:
        if not any(step.handler is None and split(step.function)[0] == function for step in pipeline.steps):
            continue
        reads.add((pipeline.match.bucket, pipeline.match.prefix))
        writes.add((pipeline.output.bucket.replace("{bucket}", pipeline.match.bucket),
                    _fixed_start(pipeline.output.key, pipeline.name)))
    folder = f"invocations/{function}/"
    if invoked_bucket is not None:
        reads.add((invoked_bucket, folder if invoked_bucket == guarded else ""))
    if invoked_bucket is not None or outputs:
        writes.add((guarded, folder))
    # A grant in functions.bucket is its invocations folder, never more (a pipeline naming it reads packages).
    reads = {(b, p) for b, p in reads if b != guarded or p.startswith(f"invocations/{function}/")}
    writes = {(b, p) for b, p in writes if b != guarded or p.startswith(f"invocations/{function}/")}
    return Scope(tuple(sorted(reads)), tuple(sorted(writes)), guarded)


# --- issuing ------------------------------------------------------------------------------

_issued: dict[tuple[str, ...], Grant] = {}
_lock = threading.Lock()
_warned: set[str] = set()


def mode(settings: Settings) -> str:
    """How functions get credentials here: ``none`` (local folders), or ``functions.credentials``."""
    return "none" if settings.storage.backend != "s3" else settings.functions.credentials


def sts_url(settings: Settings) -> str:
    """Where AssumeRole goes: ``functions.sts_endpoint``, else the store's endpoint."""
    storage = settings.storage
    return settings.functions.sts_endpoint or f"{'https' if storage.secure else 'http'}://{storage.endpoint}"


def grant(settings: Settings, function: str, scope: Scope, valid_for: float) -> Grant:
    """``function``'s credentials for ``scope``, valid at least ``valid_for`` more seconds (S3 backend).

    PermanentError if the store refuses AssumeRole (or has no STS),
    StorageUnavailable if it cannot be reached.
    """
    chosen = settings.functions.credentials
    if chosen == "shared":
        if settings.storage.endpoint not in _warned:
            _warned.add(settings.storage.endpoint)
            log.warning("functions.credentials = shared: deployed functions get fileproc's own store keys and "
                        "reach every bucket fileproc can, functions.bucket (other functions' code) included")
        return Grant(settings.storage.access_key.get_secret_value(), settings.storage.secret_key.get_secret_value())
    if chosen == "keys":
        return Grant(settings.functions.access_key.get_secret_value(),
                     settings.functions.secret_key.get_secret_value())
    policy = scope.policy()
    key = (sts_url(settings), settings.storage.access_key.get_secret_value(), settings.functions.role_arn,
           function, policy)
    now = datetime.now(UTC)
    with _lock:
        found = _issued.get(key)
    if found is not None and found.expires is not None and found.expires - now > timedelta(seconds=valid_for):
        return found
    duration = min(MAX_DURATION_SECONDS, max(DURATION_SECONDS, int(2 * valid_for)))
    issued = assume_role(settings, function, policy, duration)
    with _lock:
        _issued[key] = issued
    return issued


def assume_role(settings: Settings, function: str, policy: str, duration: int) -> Grant:
    """Temporary credentials from the store's STS, limited to ``policy``."""
    from minio.credentials.providers import AssumeRoleProvider

    from fileproc.functions.aws import aws_region

    url = sts_url(settings)
    http = _Answers(timeout=urllib3.Timeout(connect=2.0, read=10.0),
                    retries=urllib3.Retry(total=2, backoff_factor=0.2, status_forcelist=(500, 502, 503, 504),
                                          raise_on_status=False))
    provider = AssumeRoleProvider(
        sts_endpoint=url, access_key=settings.storage.access_key.get_secret_value(),
        secret_key=settings.storage.secret_key.get_secret_value(), duration_seconds=duration, policy=policy,
        region=aws_region(settings), role_arn=settings.functions.role_arn or None,
        role_session_name=f"fileproc-{function}"[:64], http_client=http)
    try:
        issued = provider.retrieve()
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        reason = network_reason(exc) or "it does not answer"
        raise StorageUnavailable(f"cannot reach the store's STS at {url}: {reason}") from exc
    except (ValueError, ElementTree.ParseError) as exc:  # minio-py: any answer but 200, or not STS's XML
        raise _refused(url, http.last) from exc
    expires = issued.expiration.replace(tzinfo=UTC) if issued.expiration else None
    return Grant(issued.access_key, issued.secret_key, issued.session_token, expires)


def _refused(url: str, answer: Any) -> Exception:
    """The store's answer to AssumeRole, in plain words (its own code and message)."""
    status = getattr(answer, "status", 0)
    code = message = ""
    try:
        root = ElementTree.fromstring(getattr(answer, "data", b"") or b"")
        code = next((e.text or "" for e in root.iter() if e.tag.rpartition("}")[2] == "Code"), "")
        message = next((e.text or "" for e in root.iter() if e.tag.rpartition("}")[2] == "Message"), "")
    except ElementTree.ParseError:
        pass
    said = f"{code}: {message}" if code else f"HTTP {status}"
    if status >= 500:
        return StorageUnavailable(f"the store's STS at {url} failed AssumeRole: {said}")
    if code in NO_STS or status in (404, 405, 501):
        return PermanentError(
            f"the store at {url} has no STS (AssumeRole answered {said}): give deployed functions keys of their "
            "own (functions.credentials = \"keys\", functions.access_key and secret_key) or, knowingly, "
            "fileproc's (functions.credentials = \"shared\")")
    return PermanentError(f"the store's STS at {url} refused AssumeRole for the function's credentials: {said}")


class _Answers(urllib3.PoolManager):
    """An HTTP client for AssumeRoleProvider that keeps the last answer (minio-py reports only its status)."""

    last: urllib3.BaseHTTPResponse | None = None

    def urlopen(self, method: str, url: str, redirect: bool = True,  # type: ignore[override]  # (as PoolManager's)
                **kwargs: Any) -> urllib3.BaseHTTPResponse:
        self.last = super().urlopen(method, url, redirect=redirect, **kwargs)
        return self.last


def check(settings: Settings) -> tuple[bool, str]:
    """Whether the store gives functions the credentials ``functions.credentials`` says, in plain words."""
    from fileproc.errors import FileprocError

    chosen = mode(settings)
    bucket = settings.functions.bucket
    if chosen == "none":
        return True, ("local folders: deployed functions hold no store credentials; they reach the storage's "
                      "folders as files (Landlock confines their writes to those), and a package changed there is "
                      "refused at install")
    if chosen == "shared":
        return True, (f"shared: deployed functions get fileproc's own keys and reach every bucket it can, {bucket} "
                      "(other functions' code) included; set functions.credentials = \"assume-role\" or \"keys\"")
    if chosen == "keys":
        return _check_keys(settings)
    nothing = Scope((), (), bucket)
    try:
        assume_role(settings, "doctor", nothing.policy(), DURATION_SECONDS)
    except FileprocError as exc:
        return False, f"assume-role: {exc}"
    return True, f"assume-role: the store's STS at {sts_url(settings)} issues each function credentials of its own"


def _check_keys(settings: Settings) -> tuple[bool, str]:
    from fileproc.errors import BucketNotFound, FileprocError
    from fileproc.storage.s3 import S3Storage

    storage = settings.storage
    own = S3Storage(endpoint=storage.endpoint, access_key=settings.functions.access_key.get_secret_value(),
                    secret_key=settings.functions.secret_key.get_secret_value(), secure=storage.secure,
                    region=storage.region or None)
    bucket = settings.functions.bucket
    try:
        own.check()
        next(iter(own.list(bucket)), None)
    except BucketNotFound:
        return True, f"keys: the store accepts functions.access_key ({bucket} does not exist yet: deploy to check more)"
    except FileprocError as exc:
        if getattr(exc.__cause__, "code", None) == "AccessDenied":
            return True, f"keys: the store accepts functions.access_key and refuses it {bucket}"
        return False, f"keys: {exc}"
    return False, (f"keys: functions.access_key can list {bucket} (other functions' code): limit its account on the "
                   "store to the pipelines' buckets")


__all__ = ["Grant", "Scope", "assume_role", "check", "grant", "mode", "scope_for", "sts_url"]
