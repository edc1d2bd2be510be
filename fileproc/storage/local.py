"""Buckets as folders: the embedded default backend.

Bucket ``B``'s object ``K`` is the file ``root/B/K``, so people can drop files
in by hand and read results with any tool. Keys map to paths one to one:
``photos/2024/cat.jpg`` is ``root/B/photos/2024/cat.jpg`` (the shared key
rules of :mod:`fileproc.storage` keep every key inside its bucket).

Writes never show a partial file: ``put`` streams into a temporary file in
``tmp_dir`` (outside the buckets, on the same filesystem), fsyncs it and
renames it onto the key, so a folder watcher only ever sees complete files
appear.

What S3 keeps beside an object (content type, user metadata, etag) lives in
one user extended attribute, ``user.fileproc.meta``, as JSON, together with
the size and mtime the file had when ``put`` wrote it. The etag is never
computed by reading a file afterwards, so ``head`` and ``list`` only stat
(and read that attribute), and always agree:

- the attribute's size and mtime match the file: the etag is the md5 that
  ``put`` computed while writing, and content type and metadata are the
  stored ones;
- otherwise (a file dropped in by hand, or changed since ``put``): the etag is
  a signature of (size, mtime_ns, inode), ``"s"`` and 31 hex digits, which
  changes whenever the file is rewritten; the content type is guessed from the
  key and there is no metadata.

Folders keep no versions: every object's ``version_id`` is ``None``, and a
read naming a version raises ObjectNotFound.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import hashlib
import json
import os
import stat
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from fileproc.errors import BucketNotFound, ObjectNotFound, StorageError, StorageUnavailable
from fileproc.storage import ObjectInfo, PutSource, Storage, guess_content_type

META_XATTR = "user.fileproc.meta"
"""The extended attribute holding an object's content type, metadata and etag."""

CHUNK = 1024 * 1024
"""Bytes read or written per step when streaming."""


class LocalStorage(Storage):
    """Buckets are the directories under ``root``; objects are the files below them.

    >>> storage = LocalStorage(Path("data/buckets"))   # temp files in data/tmp
    >>> storage.ensure_bucket("uploads")
    >>> storage.put("uploads", "a/b.txt", b"hi", content_type="text/plain").etag
    '49f68a5c8493ec2c0bf489821c21fc3b'
    """

    name = "local"

    def __init__(self, root: Path, tmp_dir: Path | None = None) -> None:
        self.root = Path(root)
        self.tmp_dir = Path(tmp_dir) if tmp_dir is not None else self.root.parent / "tmp"

    # --- reading -------------------------------------------------------------------------

    def _do_head(self, bucket: str, key: str, version_id: str | None) -> ObjectInfo:
        """Stats the file (and reads its attribute); never opens it."""
        self._refuse_versions(bucket, key, version_id)
        path = self.root / bucket / key
        try:
            st = os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            raise self._not_found(bucket, key) from None
        except OSError as exc:
            raise StorageError(f"cannot read {key!r} in bucket {bucket!r}: {exc.strerror or exc}") from exc
        if not stat.S_ISREG(st.st_mode):
            raise ObjectNotFound(f"no object {key!r} in bucket {bucket!r} (not a regular file)")
        # A folder on the way that is a link: no object either (as _open_object would find).
        folder = self.root
        for part in [bucket, *key.split("/")[:-1]]:
            folder = folder / part
            if os.path.islink(folder):
                raise ObjectNotFound(f"no object {key!r} in bucket {bucket!r} (a symbolic link on its way)")
        return _info(bucket, key, st, _read_meta(path))

    def _do_read(self, bucket: str, key: str, version_id: str | None) -> tuple[ObjectInfo, IO[bytes]]:
        self._refuse_versions(bucket, key, version_id)
        file = self._open_object(bucket, key)
        # From the open file: the info describes exactly the bytes it reads.
        fd = file.fileno()
        return _info(bucket, key, os.fstat(fd), _read_meta(fd)), file

    def _do_list(self, bucket: str, prefix: str, *, possible: bool) -> Iterator[ObjectInfo]:
        """Stats each file (and reads its attribute); never opens one."""
        bucket_dir = self._require_bucket(bucket)
        if not possible:
            return
        folder, _, name_start = prefix.rpartition("/")
        start = bucket_dir / folder if folder else bucket_dir
        for key, path in _walk_keys(start, folder + "/" if folder else "", name_start):
            try:
                st = os.lstat(path)
            except OSError:
                continue  # deleted while we listed: S3 would not list it either
            if stat.S_ISREG(st.st_mode):
                full = _info(bucket, key, st, _read_meta(path))
                yield ObjectInfo(bucket, key, full.size, full.etag, last_modified=full.last_modified)

    # --- writing -------------------------------------------------------------------------

    def _do_put(self, bucket: str, key: str, source: PutSource, content_type: str,
                metadata: dict[str, str]) -> ObjectInfo:
        target = self.root / bucket / key
        # Checked before reading the source, so a typo fails fast, not after a 4 GiB upload.
        self._require_bucket(bucket)
        meta: dict[str, Any] = {"content_type": content_type, "metadata": metadata}
        try:
            self.tmp_dir.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(dir=self.tmp_dir, prefix="put-", suffix=".part")
        except OSError as exc:
            raise StorageError(f"cannot create a temporary file in {self.tmp_dir}: {exc.strerror or exc}") from exc
        try:
            with os.fdopen(fd, "wb") as out:
                meta["etag"] = _copy_hashing(source, out)
                out.flush()
                os.fsync(out.fileno())
                # mkstemp makes 0600 files; objects should be readable like any dropped file.
                os.fchmod(out.fileno(), 0o644)
                st = os.fstat(out.fileno())
                # Size and mtime say which bytes the etag describes; a rename keeps both.
                _write_meta(out.fileno(), {**meta, "size": st.st_size, "mtime_ns": st.st_mtime_ns})
            self._move_into_place(Path(tmp_name), target, bucket, key)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp_name)
            raise
        return ObjectInfo(
            bucket=bucket,
            key=key,
            size=st.st_size,
            etag=meta["etag"],
            content_type=content_type,
            last_modified=_mtime(st),
            metadata=dict(metadata),
        )

    def _do_delete(self, bucket: str, key: str) -> None:
        bucket_dir = self.root / bucket
        path = bucket_dir / key
        try:
            path.unlink()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            # Not an object (missing, or a folder of other objects): nothing to delete.
            if not bucket_dir.is_dir():
                raise BucketNotFound(f"bucket {bucket!r} does not exist") from None
            return
        except OSError as exc:
            raise StorageError(f"cannot delete {key!r} from bucket {bucket!r}: {exc.strerror or exc}") from exc
        # S3 has no folders: drop the ones this object was the last file in.
        folder = path.parent
        while folder != bucket_dir:
            try:
                folder.rmdir()
            except OSError:
                break  # not empty (or already gone): stop climbing
            folder = folder.parent

    def _do_ensure_bucket(self, bucket: str) -> None:
        try:
            # As writable to the runners' group as the buckets' folder: a bucket made after
            # prepare_data_dir (a pipeline's output bucket, say) must take deployed functions' outputs.
            _make_folders(self.root / bucket)
        except OSError as exc:
            raise StorageError(f"cannot create bucket {bucket!r} under {self.root}: {exc.strerror or exc}") from exc

    def _do_list_buckets(self) -> list[str]:
        try:
            # (A name with a dot first is no bucket's: the runners' temporary folder, say.)
            return [entry.name for entry in os.scandir(self.root)
                    if entry.is_dir(follow_symlinks=False) and not entry.name.startswith(".")]
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise StorageError(f"cannot list the buckets under {self.root}: {exc.strerror or exc}") from exc

    def check(self) -> None:
        """Create ``root`` and ``tmp_dir`` if needed; verify both are usable together.

        Writes a probe file in ``tmp_dir`` (with the metadata attribute, which
        needs a filesystem with user xattrs) and checks it shares a filesystem
        with ``root``, which the atomic rename of ``put`` needs.
        """
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self.tmp_dir.mkdir(parents=True, exist_ok=True)
            if not os.access(self.root, os.W_OK | os.X_OK):
                raise PermissionError(errno.EACCES, "permission denied")
            with tempfile.TemporaryFile(dir=self.tmp_dir, prefix="check-") as probe:
                probe.write(b"fileproc")
                os.fsync(probe.fileno())
                _write_meta(probe.fileno(), {"probe": True})
        except StorageError as exc:
            raise StorageUnavailable(str(exc)) from exc
        except OSError as exc:
            raise StorageUnavailable(f"local storage at {self.root} is not writable: {exc.strerror or exc}") from exc
        if os.stat(self.root).st_dev != os.stat(self.tmp_dir).st_dev:
            raise StorageUnavailable(
                f"tmp_dir {self.tmp_dir} is not on the same filesystem as {self.root}; "
                "atomic writes need both on one filesystem"
            )

    # --- helpers -------------------------------------------------------------------------

    def _open_object(self, bucket: str, key: str) -> IO[bytes]:
        try:
            fd = _open_beneath(self.root, [bucket, *key.split("/")])
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise self._not_found(bucket, key) from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # a link: never followed (it could lead anywhere)
                raise ObjectNotFound(f"no object {key!r} in bucket {bucket!r} (a symbolic link)") from None
            raise StorageError(f"cannot open {key!r} in bucket {bucket!r}: {exc.strerror or exc}") from exc
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise ObjectNotFound(f"no object {key!r} in bucket {bucket!r} (not a regular file)")
        return os.fdopen(fd, "rb")

    def _not_found(self, bucket: str, key: str) -> StorageError:
        if not (self.root / bucket).is_dir():
            return BucketNotFound(f"bucket {bucket!r} does not exist")
        return ObjectNotFound(f"no object {key!r} in bucket {bucket!r}")

    def _refuse_versions(self, bucket: str, key: str, version_id: str | None) -> None:
        """Folders keep one version, whose id is None: any other is not found."""
        if version_id is not None:
            self._require_bucket(bucket)
            raise ObjectNotFound(f"no version {version_id!r} of {key!r} in bucket {bucket!r} "
                                 "(local storage keeps no versions)")

    def _require_bucket(self, bucket: str) -> Path:
        bucket_dir = self.root / bucket
        if not bucket_dir.is_dir():
            raise BucketNotFound(f"bucket {bucket!r} does not exist")
        return bucket_dir

    def _move_into_place(self, tmp: Path, target: Path, bucket: str, key: str) -> None:
        """Rename the finished temp file onto the key, creating its folders."""
        # A concurrent delete() may remove a folder we just created; try again then.
        for _ in range(3):
            try:
                # Never mkdir the bucket itself: a bucket deleted meanwhile stays deleted.
                self._require_bucket(bucket)
                _make_folders(target.parent)
                os.replace(tmp, target)
                break
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise StorageError(_put_error(bucket, key, exc)) from exc
        else:
            raise StorageError(f"cannot write {key!r} in bucket {bucket!r}: its folder keeps disappearing")
        _fsync_dir(target.parent)


# --- metadata ----------------------------------------------------------------------------


def _info(bucket: str, key: str, st: os.stat_result, meta: dict[str, Any]) -> ObjectInfo:
    """The object's info from its stat and attribute, by the etag rule of the module docstring."""
    if meta.get("size") == st.st_size and meta.get("mtime_ns") == st.st_mtime_ns and isinstance(meta.get("etag"), str):
        etag = meta["etag"]
        content_type = str(meta.get("content_type") or guess_content_type(key))
        metadata = {str(k): str(v) for k, v in dict(meta.get("metadata") or {}).items()}
    else:
        # Dropped in or rewritten by hand: what put() stored no longer describes these bytes.
        etag, content_type, metadata = signature_etag(st), guess_content_type(key), {}
    return ObjectInfo(
        bucket=bucket,
        key=key,
        size=st.st_size,
        etag=etag,
        content_type=content_type,
        last_modified=_mtime(st),
        metadata=metadata,
    )


def signature_etag(st: os.stat_result) -> str:
    """The etag of a file fileproc did not write: changes whenever the file is rewritten.

    32 characters like an md5, starting with ``s`` (which no md5 hex digest does).
    """
    signature = f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}".encode()
    return "s" + hashlib.sha1(signature, usedforsecurity=False).hexdigest()[:31]


def _read_meta(file: int | str | Path) -> dict[str, Any]:
    try:
        value = json.loads(os.getxattr(file, META_XATTR))
    except (OSError, ValueError):
        return {}  # no attribute (a dropped file), or not ours to trust
    return value if isinstance(value, dict) else {}


def _write_meta(fd: int, meta: dict[str, Any]) -> None:
    try:
        os.setxattr(fd, META_XATTR, json.dumps(meta, separators=(",", ":")).encode())
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            raise StorageError(
                "the filesystem does not support user extended attributes, which local storage "
                "needs for object metadata (use ext4, xfs or btrfs)"
            ) from exc
        if exc.errno in (errno.E2BIG, errno.ENOSPC, errno.ERANGE):
            raise StorageError(f"object metadata too large for an extended attribute: {exc.strerror}") from exc
        raise


# --- files -------------------------------------------------------------------------------


def _walk_keys(folder: Path, key_prefix: str, name_start: str) -> Iterator[tuple[str, str]]:
    """(key, path) of the files below ``folder`` whose name starts with ``name_start``, in key order.

    Sorting a folder's entries with "/" appended to sub-folder names yields
    whole keys in byte order: "a-c" (0x2d) sorts before "a/b" (0x2f).
    """
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return
    sortable: list[tuple[str, os.DirEntry[str], bool]] = []
    for entry in entries:
        if not entry.name.startswith(name_start):
            continue
        # No link is an object, nor a folder of objects: it could loop or lead out of the bucket.
        is_dir = entry.is_dir(follow_symlinks=False)
        if is_dir or entry.is_file(follow_symlinks=False):
            sortable.append((entry.name + "/" if is_dir else entry.name, entry, is_dir))
    for _, entry, is_dir in sorted(sortable, key=lambda item: item[0]):
        if is_dir:
            yield from _walk_keys(Path(entry.path), key_prefix + entry.name + "/", "")
        else:
            yield key_prefix + entry.name, entry.path


def _make_folders(folder: Path) -> None:
    """Make ``folder`` and its missing parents, each as writable to the group as the nearest existing one.

    So where fileproc runs as root and the buckets' folder belongs to the
    runners' group (:func:`fileproc.sandbox.isolation.prepare_data_dir`),
    a folder the worker makes stays writable to the deployed functions.
    """
    if folder.is_dir():
        return
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    group_writable = os.stat(folder).st_mode & stat.S_IWGRP
    for path in reversed(missing):
        try:
            os.mkdir(path)
        except FileExistsError:
            continue  # made meanwhile by another writer: theirs to set
        if group_writable:
            os.chmod(path, stat.S_IMODE(os.stat(path).st_mode) | stat.S_IRWXG | stat.S_ISGID)


def _open_beneath(root: Path, parts: list[str]) -> int:
    """A descriptor of ``root/parts...`` read-only, opened one name at a time, following no link.

    ELOOP where any part is a symbolic link: a link planted in a bucket
    (by hand, or by a function that may write there) never leads a reader
    to a file outside it.
    """
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in parts[:-1]:
            if part in ("", ".", ".."):
                raise FileNotFoundError(errno.ENOENT, "no such object", part)
            inner = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd = inner
        return os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
    finally:
        os.close(fd)


def _copy_hashing(source: PutSource, out: IO[bytes]) -> str:
    """Write ``source`` to ``out``; return the md5 hex of what was written."""
    digest = hashlib.md5(usedforsecurity=False)
    if isinstance(source, bytes | bytearray | memoryview):
        digest.update(source)
        out.write(source)
        return digest.hexdigest()
    if isinstance(source, Path):
        try:
            stream: IO[bytes] = builtins.open(source, "rb")  # noqa: SIM115 (closed just below)
        except OSError as exc:
            raise StorageError(f"cannot read {source}: {exc.strerror or exc}") from exc
        with stream:
            return _copy_stream(stream, out, digest)
    return _copy_stream(source, out, digest)


def _copy_stream(stream: IO[bytes], out: IO[bytes], digest: Any) -> str:
    while chunk := stream.read(CHUNK):
        digest.update(chunk)
        out.write(chunk)
    return str(digest.hexdigest())


def _put_error(bucket: str, key: str, exc: OSError) -> str:
    if exc.errno == errno.EXDEV:
        return "tmp_dir is not on the same filesystem as the buckets; atomic writes need both on one filesystem"
    if isinstance(exc, IsADirectoryError | NotADirectoryError | FileExistsError):
        # Files and folders share one namespace: "a" and "a/b" cannot both be objects.
        return f"cannot write {key!r} in bucket {bucket!r}: a folder and a file would share a name"
    return f"cannot write {key!r} in bucket {bucket!r}: {exc.strerror or exc}"


def _fsync_dir(folder: Path) -> None:
    """Make a rename into ``folder`` survive a power cut."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _mtime(st: os.stat_result) -> datetime:
    return datetime.fromtimestamp(st.st_mtime_ns / 1e9, tz=UTC)
