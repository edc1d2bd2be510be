"""Lambda's names for things a handler sees: the region, and the AWS variables that point boto3 at the store.

Shared by every kind of function: a registered function's runner gets them
from :func:`store_variables` and :func:`key_variables`, a deployed one's
with the rest of its environment.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fileproc.config import Settings

DEFAULT_REGION = "us-east-1"


def aws_region(settings: Settings) -> str:
    """The region handlers see (``awsRegion``, ``AWS_REGION``): ``storage.region``, else us-east-1."""
    return settings.storage.region or DEFAULT_REGION


def store_variables(settings: Settings) -> dict[str, str]:
    """The standard AWS variables that point boto3 at the configured store (S3 backend only), without credentials."""
    region = aws_region(settings)
    found = {"AWS_REGION": region, "AWS_DEFAULT_REGION": region}
    if settings.storage.backend == "s3":
        url = f"{'https' if settings.storage.secure else 'http'}://{settings.storage.endpoint}"
        found |= {"AWS_ENDPOINT_URL_S3": url, "AWS_ENDPOINT_URL": url}
    return found


def key_variables(storage: dict[str, Any]) -> dict[str, str]:
    """The AWS credential variables of a runner's ``storage`` (none on local folders).

    A deployed function's are its own (:mod:`.credentials`); they come with
    each runner's setup, since temporary ones are renewed.
    """
    if storage.get("backend") != "s3":
        return {}
    found = {"AWS_ACCESS_KEY_ID": storage["access_key"], "AWS_SECRET_ACCESS_KEY": storage["secret_key"]}
    if storage.get("session_token"):
        found["AWS_SESSION_TOKEN"] = storage["session_token"]
    return found


__all__ = ["DEFAULT_REGION", "aws_region", "key_variables", "store_variables"]
