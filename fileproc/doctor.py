"""``fileproc doctor``: check that what the settings point at really works.

It only looks: nothing is created (no data dir, no ``state.db``, no bucket).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from fileproc.config import Settings
from fileproc.errors import FileprocError, network_reason


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    advisory: bool = False  # not ok is "off on this host" (shown as such), not a problem to fix


def _functions(settings: Settings) -> Check:
    # The registry alone, not a Service: building one would create the data dir. The deployed
    # functions are asked of the state database only where it exists already (doctor makes none).
    from fileproc.functions.registry import Registry

    deployed = _deployed(settings)
    try:
        registry = Registry.loaded(settings)
        registry.also_known(lambda: deployed)
        registry.check(settings.pipelines, deployed=lambda name: name.partition(":")[0] in deployed)
    except FileprocError as exc:
        return Check("functions", False, str(exc))
    specs = registry.specs()
    more = f"; {len(deployed)} deployed ({', '.join(sorted(deployed))})" if deployed else ""
    return Check("functions", True, f"{len(specs)} registered ({', '.join(sorted(specs))}){more}; "
                                    "every step's params valid")


def _deployed(settings: Settings) -> set[str]:
    """The deployed functions' names, from a state database that exists (none when there is none to ask)."""
    from fileproc.state import Database, sqlite_file
    from fileproc.state.deployments import list_versions

    path = sqlite_file(settings.database_url)
    if path is not None and not path.exists():
        return set()
    try:
        return {version.function for version in list_versions(Database(settings.database_url,
                                                                        timeout=settings.database.timeout))}
    except FileprocError:  # the database check below says what is wrong with it
        return set()


def _not_yet_made(path: Path) -> str | None:
    """Why ``path`` (missing) cannot be made, or None if its nearest existing folder is writable."""
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        return f"{path} does not exist and {parent} is not a writable folder"
    return None


def _failure(name: str, what: str, exc: BaseException) -> Check:
    """A failed check, in plain words: "timed out", "network unreachable", or the error's own message."""
    reason = network_reason(exc)
    return Check(name, False, f"{what}: {reason}" if reason else f"{what}: {exc}")


def _data_dir(settings: Settings) -> Check:
    """The data folder: where state, buckets, tokens and scratch files live; must be a writable folder."""
    path = settings.data_dir
    if not path.exists():
        problem = _not_yet_made(path)
        return Check("data folder", problem is None, problem or f"{path} (created on first start)")
    if not path.is_dir():
        return Check("data folder", False, f"{path} is not a folder")
    if not os.access(path, os.W_OK | os.X_OK):
        return Check("data folder", False, f"{path} is not writable by this user")
    free = shutil.disk_usage(path).free
    if free < 100 * 1024 * 1024:
        return Check("data folder", False, f"{path} has only {free >> 20} MiB free")
    return Check("data folder", True, f"{path.resolve()} is writable ({free >> 30} GiB free)")


def _storage(settings: Settings) -> Check:
    from fileproc.storage import open_storage

    if settings.storage.backend == "local" and not settings.buckets_dir.exists():
        problem = _not_yet_made(settings.buckets_dir)
        if problem:
            return Check("storage", False, problem)
        return Check("storage", True, f"local at {settings.buckets_dir} (created on first start)")
    where = settings.storage.endpoint if settings.storage.backend == "s3" else str(settings.buckets_dir)
    try:
        open_storage(settings).check()
    except FileprocError as exc:
        return _failure("storage", f"{settings.storage.backend} at {where}", exc)
    return Check("storage", True, f"{settings.storage.backend} at {where} is usable")


def _function_credentials(settings: Settings) -> Check:
    """Which store credentials deployed functions get (functions.credentials), and whether the store gives them."""
    from fileproc.serverless import credentials

    ok, detail = credentials.check(settings)
    return Check("function credentials", ok, detail)


def _database(settings: Settings) -> Check:
    from fileproc.state import Database, sqlite_file

    path = sqlite_file(settings.database_url)
    if path is not None and not path.exists():
        # Opening it would create it: doctor only looks.
        problem = _not_yet_made(path)
        if problem:
            return Check("database", False, problem)
        return Check("database", True, f"sqlite at {path} (created on first start)")
    try:
        Database(settings.database_url, timeout=settings.database.timeout).check()
    except FileprocError as exc:
        return _failure("database", "cannot use the state database", exc)
    kind = settings.database_url.split(":", 1)[0]
    return Check("database", True, f"{kind} answers and has fileproc's tables")


def _broker(settings: Settings) -> Check:
    from fileproc.runtime.app import celery_app, configure

    configure(settings)
    name = "embedded broker" if settings.embedded_broker else "broker"
    try:
        with celery_app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=5)
    except Exception as exc:
        hint = " (it runs only while `fileproc serve` does)" if settings.embedded_broker else ""
        reason = network_reason(exc) or type(exc).__name__
        return Check("broker", False, f"cannot reach the {name}{hint}: {reason}")
    return Check("broker", True, f"the {name} answers")


MEDIA_FUNCTIONS = ("transcode", "probe")
MEDIA_ENCODERS = ("libx264", "aac", "libvpx-vp9", "libopus", "libmp3lame")
"""What the transcode presets encode with."""


def _ffmpeg(settings: Settings) -> Check:
    """The ffmpeg and ffprobe the media functions will run, and whether they have the presets' encoders.

    A failure only where a pipeline uses transcode or probe; thumbnails need
    ffmpeg for video sources alone.
    """
    from workers import media

    needed = any(step.function in MEDIA_FUNCTIONS for p in settings.pipelines for step in p.steps)
    ffmpeg, ffprobe = media.find_ffmpeg(), media.find_ffprobe()
    if ffmpeg is None or ffprobe is None:
        missing = " and ".join(name for name, path in (("ffmpeg", ffmpeg), ("ffprobe", ffprobe)) if path is None)
        return Check("ffmpeg", not needed, f"{missing} {media.MISSING}"
                     + ("" if needed else "; only transcode, probe and video thumbnails need it"))
    found = media.encoders(ffmpeg)
    lacking = [name for name in MEDIA_ENCODERS if name not in found]
    detail = f"{ffmpeg} and {ffprobe}; encoders: {', '.join(n for n in MEDIA_ENCODERS if n in found) or 'none'}"
    if lacking:
        detail += f"; missing {', '.join(lacking)} (presets using them fail)"
    return Check("ffmpeg", not (needed and lacking), detail)


def _isolation(settings: Settings) -> Iterator[Check]:
    """Which protections of deployed functions hold on this host (kernel, user, broker, database)."""
    from fileproc.sandbox.isolation import protections

    for found in protections(settings.embedded_broker, settings.broker.url.get_secret_value(),
                             settings.database.url.get_secret_value()):
        yield Check(f"isolation: {found.name}", found.active, found.detail, advisory=True)


def run_checks(settings: Settings) -> Iterator[Check]:
    source = settings.config_file or "no config file (embedded defaults)"
    yield Check("config", True, f"{source}; {len(settings.pipelines)} pipeline(s)")
    yield _functions(settings)
    yield _data_dir(settings)
    yield _storage(settings)
    yield _function_credentials(settings)
    yield _database(settings)
    yield _broker(settings)
    yield _ffmpeg(settings)
    yield from _isolation(settings)
