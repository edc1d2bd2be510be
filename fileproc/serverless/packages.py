"""A deployed function's package: built from a file or folder, kept in storage, installed per host.

The package is a zip of the handler's file (or of a folder's files) stored
in the ``functions.bucket`` bucket as ``NAME/SHA256.zip``, so any worker on
any host can load it. Each host unpacks it under
``data_dir/functions/NAME/DIGEST/`` (``code/``, and ``deps/`` holding the
requirements installed with ``pip install --target``), once per version:
``DIGEST`` covers the package and its requirements, so a version is never
installed twice and two versions never share a folder. A file lock keeps
two worker processes of one host from installing the same one at once.

A zip is unpacked only if its sha256 is the one recorded with the version
at its deploy: a package changed in storage since (by anyone who can write
``functions.bucket``) is refused on every host, never run under the
function's name. Once unpacked, the folder is trusted: a deployed
function's runner cannot write ``data_dir`` (Landlock, see
:mod:`.landlock`), so it cannot change its own or another function's code
on this host.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from fileproc.errors import ConfigError, PermanentError
from fileproc.storage import Storage

SKIPPED = {"__pycache__", ".git", ".venv", "venv", ".pytest_cache", ".mypy_cache", ".ruff_cache"}
INSTALL_TIMEOUT = 600.0
"""Seconds ``pip install`` of a version's requirements may take."""

READY = ".ready"


def build(path: Path) -> bytes:
    """The zip of ``path``: a file at the zip's root, or a folder's files relative to it."""
    if not path.exists():
        raise ConfigError(f"{path}: no such file or folder")
    files = [path] if path.is_file() else sorted(
        p for p in path.rglob("*") if p.is_file() and not SKIPPED & set(p.relative_to(path).parts))
    if not files:
        raise ConfigError(f"{path}: nothing to deploy (no files)")
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for file in files:
            name = file.name if path.is_file() else file.relative_to(path).as_posix()
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))  # the same files give the same zip
            info.external_attr = (file.stat().st_mode & 0o777) << 16
            archive.writestr(info, file.read_bytes(), zipfile.ZIP_DEFLATED)
    return out.getvalue()


def store(storage: Storage, bucket: str, function: str, package: bytes) -> tuple[str, str]:
    """Put ``package`` in storage; its key and sha256."""
    digest = hashlib.sha256(package).hexdigest()
    storage.ensure_bucket(bucket)
    key = f"{function}/{digest}.zip"
    storage.put(bucket, key, package, content_type="application/zip")
    return key, digest


def folder_for(data_dir: Path, function: str, package_sha256: str, requirements: str) -> Path:
    """Where this host keeps a version: one folder per package and requirements."""
    digest = hashlib.sha256(f"{package_sha256}\n{requirements}".encode()).hexdigest()[:20]
    return data_dir / "functions" / function / digest


def install(storage: Storage, bucket: str, key: str, folder: Path, requirements: str, *, sha256: str) -> Path:
    """The version's folder on this host, unpacked and its requirements installed (done once).

    Raises PermanentError if the package is missing, is not the zip whose
    ``sha256`` was recorded at its deploy (nothing is unpacked then), or its
    requirements do not install (pip's last lines say why).
    """
    if (folder / READY).exists():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f"{folder.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (folder / READY).exists():  # another process of this host installed it meanwhile
            return folder
        partial = folder.with_name(f"{folder.name}.partial-{os.getpid()}")
        shutil.rmtree(partial, ignore_errors=True)
        try:
            _unpack(storage, bucket, key, partial / "code", sha256)
            (partial / "deps").mkdir()
            if requirements.strip():
                _pip_install(requirements, partial)
            shutil.rmtree(folder, ignore_errors=True)
            os.replace(partial, folder)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        (folder / READY).touch()
    return folder


def _unpack(storage: Storage, bucket: str, key: str, target: Path, sha256: str) -> None:
    from fileproc.errors import StorageError

    try:
        with storage.open(bucket, key) as stream:
            data = stream.read()
    except StorageError as exc:
        raise PermanentError(f"the function's package {bucket}/{key} cannot be read: {exc}") from exc
    found = hashlib.sha256(data).hexdigest()
    if found != sha256:
        raise PermanentError(f"the function's package {bucket}/{key} is not the one deployed: its sha256 is "
                             f"{found[:12]}..., {sha256[:12]}... was recorded at its deploy (it was changed in "
                             "storage since); not run: deploy the function again")
    target.mkdir(parents=True)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        for member in archive.infolist():
            destination = (target / member.filename).resolve()
            if not destination.is_relative_to(target.resolve()):
                raise PermanentError(f"the function's package holds a path outside it: {member.filename!r}")
        archive.extractall(target)
        for member in archive.infolist():
            mode = member.external_attr >> 16
            if mode:  # readable by the runner's own user (fileproc as root: not the package's owner)
                (target / member.filename).chmod(mode & 0o777 | (0o555 if member.is_dir() else 0o444))


def _pip_install(requirements: str, folder: Path) -> None:
    listed = folder / "requirements.txt"
    listed.write_text(requirements)
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
               "--no-warn-script-location", "--target", str(folder / "deps"), "-r", str(listed)]
    try:
        # From the package's folder: a requirement naming a path (./wheels/x.whl) is the package's own.
        done = subprocess.run(command, cwd=folder / "code", capture_output=True, text=True, timeout=INSTALL_TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        raise PermanentError(f"installing the requirements took more than {INSTALL_TIMEOUT:g} s") from exc
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-5:])
        raise PermanentError(f"the requirements did not install: {tail}")


__all__ = ["build", "folder_for", "install", "store"]
