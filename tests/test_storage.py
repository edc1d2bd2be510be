"""The storage contract: one suite that every backend must pass.

``storage`` runs each test against LocalStorage (folders in a temp dir) and
S3Storage (a real versitygw on loopback). Backend-specific behaviour is at
the end of the file.
"""

from __future__ import annotations

import hashlib
import io
import os
import socket
import threading
import time
import tracemalloc
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fileproc.errors import BucketNotFound, ObjectNotFound, StorageError, StorageUnavailable
from fileproc.storage import Storage
from fileproc.storage.local import LocalStorage
from fileproc.storage.s3 import S3Storage
from tests.servers import Versitygw, free_port, versitygw_server

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def gateway() -> Iterator[Versitygw]:
    with versitygw_server() as gw:
        yield gw


def s3_storage(gw: Versitygw) -> S3Storage:
    return S3Storage(endpoint=gw.endpoint, access_key=gw.access_key, secret_key=gw.secret_key, secure=False)


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "local":
        return LocalStorage(tmp_path / "buckets", tmp_dir=tmp_path / "tmp")
    return s3_storage(request.getfixturevalue("gateway"))


@pytest.fixture
def bucket(storage: Storage) -> str:
    """A fresh, empty bucket (S3 bucket names: 3-63 lower-case letters, digits, '-')."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    storage.ensure_bucket(name)
    return name


def md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def read(storage: Storage, bucket: str, key: str) -> bytes:
    with storage.open(bucket, key) as stream:
        return stream.read()


# --- the contract -----------------------------------------------------------------------


def test_round_trip(storage: Storage, bucket: str, tmp_path: Path) -> None:
    written = storage.put(bucket, "docs/report.txt", b"quarterly numbers\n")

    assert written.size == 18
    assert storage.head(bucket, "docs/report.txt").etag == written.etag
    assert read(storage, bucket, "docs/report.txt") == b"quarterly numbers\n"
    downloaded = storage.download(bucket, "docs/report.txt", tmp_path / "copy.txt")
    assert (tmp_path / "copy.txt").read_bytes() == b"quarterly numbers\n"
    assert (downloaded.size, downloaded.etag) == (18, written.etag)
    assert [o.key for o in storage.list(bucket)] == ["docs/report.txt"]

    storage.delete(bucket, "docs/report.txt")

    assert list(storage.list(bucket)) == []
    with pytest.raises(ObjectNotFound):
        storage.head(bucket, "docs/report.txt")


def test_etag_of_a_single_part_object_is_its_md5(storage: Storage, bucket: str) -> None:
    data = os.urandom(100_000)
    assert storage.put(bucket, "blob", data).etag == md5(data)
    assert storage.head(bucket, "blob").etag == md5(data)
    assert [o.etag for o in storage.list(bucket)] == [md5(data)]


def test_content_type_and_metadata_round_trip(storage: Storage, bucket: str) -> None:
    storage.put(bucket, "pic", b"\x89PNG", content_type="image/png",
                metadata={"Camera": "X100", "cache-control": "not-a-header-here"})

    info = storage.head(bucket, "pic")

    assert info.content_type == "image/png"
    assert info.metadata == {"camera": "X100", "cache-control": "not-a-header-here"}


def test_content_type_is_guessed_from_the_key_when_not_given(storage: Storage, bucket: str) -> None:
    storage.put(bucket, "photos/cat.jpg", b"jpeg")
    storage.put(bucket, "no-extension", b"?")

    assert storage.head(bucket, "photos/cat.jpg").content_type == "image/jpeg"
    assert storage.head(bucket, "no-extension").content_type == "application/octet-stream"


def test_put_replaces_the_object_and_its_metadata(storage: Storage, bucket: str) -> None:
    storage.put(bucket, "k", b"old", metadata={"v": "1"})
    storage.put(bucket, "k", b"newer", metadata={"v": "2"})

    info = storage.head(bucket, "k")
    assert (info.size, info.etag, info.metadata) == (5, md5(b"newer"), {"v": "2"})
    assert read(storage, bucket, "k") == b"newer"


@pytest.mark.parametrize("key", [
    "with space.txt",
    "a+b=c&d.txt",
    "100% done.txt",
    "%20already-escaped%2F.txt",
    "ünïcødé/日本語 ファイル.txt",
    "deep/a/b/c/d/e/f/g/h/leaf.bin",
    "semi;colon,comma'quote(paren)[bracket]{brace}~tilde!bang$dollar@at.txt",
])
def test_awkward_keys_round_trip(storage: Storage, bucket: str, key: str) -> None:
    storage.put(bucket, key, key.encode())

    assert storage.head(bucket, key).size == len(key.encode())
    assert read(storage, bucket, key) == key.encode()
    assert [o.key for o in storage.list(bucket)] == [key]
    storage.delete(bucket, key)
    assert list(storage.list(bucket)) == []


def test_list_is_recursive_in_key_order_and_filters_by_prefix(storage: Storage, bucket: str) -> None:
    # "a-c" < "a/b" in byte order ("-" is 0x2d, "/" is 0x2f): a naive folder walk gets this wrong.
    keys = ["b", "a/c/d", "ab", "a/b", "a-c", "a/c/e/f"]
    for key in keys:
        storage.put(bucket, key, key.encode())

    def listed(prefix: str = "") -> list[str]:
        return [o.key for o in storage.list(bucket, prefix)]

    assert listed() == sorted(keys)
    assert listed("a/") == ["a/b", "a/c/d", "a/c/e/f"]
    assert listed("a") == ["a-c", "a/b", "a/c/d", "a/c/e/f", "ab"]
    assert listed("a/c/") == ["a/c/d", "a/c/e/f"]
    assert listed("a/c/e") == ["a/c/e/f"]
    assert listed("zzz") == []
    assert {o.key: o.size for o in storage.list(bucket, "a/c/")} == {"a/c/d": 5, "a/c/e/f": 7}


def test_put_from_a_path(storage: Storage, bucket: str, tmp_path: Path) -> None:
    source = tmp_path / "upload.csv"
    source.write_bytes(b"a,b\n1,2\n")

    info = storage.put(bucket, "tables/upload.csv", source)

    assert (info.size, info.etag) == (8, md5(b"a,b\n1,2\n"))
    assert storage.head(bucket, "tables/upload.csv").content_type == "text/csv"


def test_put_from_a_stream(storage: Storage, bucket: str) -> None:
    info = storage.put(bucket, "s", io.BytesIO(b"streamed"), content_type="text/plain")

    assert (info.size, info.etag, info.content_type) == (8, md5(b"streamed"), "text/plain")
    assert read(storage, bucket, "s") == b"streamed"


def test_a_failing_source_stream_leaves_no_object(storage: Storage, bucket: str) -> None:
    class Broken(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def readinto(self, buffer: Any) -> int:
            raise OSError("disk on fire")

    with pytest.raises(OSError, match="disk on fire"):
        storage.put(bucket, "half", io.BufferedReader(Broken()))

    assert list(storage.list(bucket)) == []


def test_open_can_be_closed_before_the_end(storage: Storage, bucket: str) -> None:
    storage.put(bucket, "big", os.urandom(3 * MiB))
    for _ in range(15):  # more than the connection pool holds, if closing leaked connections
        with storage.open(bucket, "big") as stream:
            assert len(stream.read(1000)) == 1000
    assert storage.head(bucket, "big").size == 3 * MiB


def test_missing_object(storage: Storage, bucket: str, tmp_path: Path) -> None:
    with pytest.raises(ObjectNotFound):
        storage.head(bucket, "nope")
    with pytest.raises(ObjectNotFound):
        storage.open(bucket, "nope")
    with pytest.raises(ObjectNotFound):
        storage.download(bucket, "nope", tmp_path / "nope")
    storage.delete(bucket, "nope")  # deleting what is not there is not an error


def test_missing_bucket(storage: Storage) -> None:
    with pytest.raises(BucketNotFound):
        storage.head("no-such-bucket", "k")
    with pytest.raises(BucketNotFound):
        storage.open("no-such-bucket", "k")
    with pytest.raises(BucketNotFound):
        storage.put("no-such-bucket", "k", b"x")
    with pytest.raises(BucketNotFound):
        list(storage.list("no-such-bucket"))


def test_ensure_bucket_is_idempotent(storage: Storage, bucket: str) -> None:
    storage.put(bucket, "keep", b"me")
    storage.ensure_bucket(bucket)
    assert [o.key for o in storage.list(bucket)] == ["keep"]


def test_check_passes_on_a_working_store(storage: Storage) -> None:
    storage.check()


class GeneratedStream(io.RawIOBase):
    """``size`` bytes made up on the fly (length unknown to the reader); remembers their md5."""

    def __init__(self, size: int) -> None:
        self.remaining = size
        self.block = os.urandom(MiB)
        self.blocks = 0
        self.digest = hashlib.md5(usedforsecurity=False)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.remaining <= 0:
            return 0
        # Each block differs from the last, so a part sent twice or skipped changes the md5.
        shift = self.blocks % len(self.block)
        chunk = (self.block[shift:] + self.block[:shift])[: min(len(buffer), self.remaining, 64 * 1024)]
        self.blocks += 1
        self.remaining -= len(chunk)
        self.digest.update(chunk)
        buffer[: len(chunk)] = chunk
        return len(chunk)


def test_large_stream_of_unknown_length_is_not_held_in_memory(storage: Storage, bucket: str) -> None:
    size = 80 * MiB
    source = GeneratedStream(size)
    tracemalloc.start()
    try:
        info = storage.put(bucket, "video.bin", io.BufferedReader(source))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    # S3 holds a few 16 MiB multipart parts at once; never the whole object.
    assert peak < 64 * MiB
    assert info.size == size
    readback = hashlib.md5(usedforsecurity=False)
    with storage.open(bucket, "video.bin") as stream:
        while chunk := stream.read(MiB):
            readback.update(chunk)
    assert readback.hexdigest() == source.digest.hexdigest()
    assert storage.head(bucket, "video.bin").size == size


# --- an unreachable store ----------------------------------------------------------------


def test_s3_unreachable_endpoint_fails_fast_without_secrets() -> None:
    secret = "very-secret-key-" + uuid.uuid4().hex
    dead = S3Storage(endpoint=f"127.0.0.1:{free_port()}", access_key="fileproc", secret_key=secret, secure=False)

    for attempt in (dead.check, lambda: dead.head("bucket", "key"), lambda: dead.put("bucket", "key", b"x")):
        started = time.monotonic()
        with pytest.raises(StorageUnavailable) as caught:
            attempt()
        assert time.monotonic() - started < 5
        assert "connection refused" in str(caught.value)
        assert secret not in str(caught.value)


def test_s3_endpoint_that_never_answers_times_out() -> None:
    with socket.socket() as silent:  # accepts connections (the kernel does), never replies
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        endpoint = f"127.0.0.1:{silent.getsockname()[1]}"
        hung = S3Storage(endpoint=endpoint, access_key="ak", secret_key="sk", secure=False, read_timeout=0.5)

        started = time.monotonic()
        with pytest.raises(StorageUnavailable, match="timed out"):
            hung.head("bucket", "key")
        assert time.monotonic() - started < 3  # two tries of 0.5 s, not RETRIES + 1


def test_s3_wrong_secret_is_reported_in_plain_words(gateway: Versitygw) -> None:
    wrong = "wrong-secret-" + uuid.uuid4().hex
    storage = S3Storage(endpoint=gateway.endpoint, access_key=gateway.access_key, secret_key=wrong, secure=False)

    with pytest.raises(StorageUnavailable, match="refused the credentials") as caught:
        storage.check()
    assert wrong not in str(caught.value)


def test_local_root_that_cannot_be_a_folder_is_unavailable(tmp_path: Path) -> None:
    (tmp_path / "buckets").write_text("a file where the buckets folder should be")

    with pytest.raises(StorageUnavailable, match="not writable"):
        LocalStorage(tmp_path / "buckets", tmp_dir=tmp_path / "tmp").check()


# --- LocalStorage only -------------------------------------------------------------------


@pytest.fixture
def local(tmp_path: Path) -> LocalStorage:
    storage = LocalStorage(tmp_path / "buckets", tmp_dir=tmp_path / "tmp")
    storage.ensure_bucket("inbox")
    return storage


@pytest.mark.parametrize("key", ["../escape", "a/../../escape", "a/..", "/etc/passwd", "nul\0byte", "a//b", "./a", ""])
def test_local_refuses_keys_that_leave_the_bucket(local: LocalStorage, key: str) -> None:
    with pytest.raises(StorageError, match="invalid object key"):
        local.put("inbox", key, b"x")
    with pytest.raises(StorageError, match="invalid object key"):
        local.head("inbox", key)
    assert not (local.root.parent / "escape").exists()


@pytest.mark.parametrize("bucket", ["..", ".", "a/b", ""])
def test_local_refuses_bucket_names_that_are_not_one_folder(local: LocalStorage, bucket: str) -> None:
    with pytest.raises(StorageError, match="invalid bucket name"):
        local.put(bucket, "k", b"x")


def test_local_object_is_invisible_until_completely_written(local: LocalStorage) -> None:
    target = local.root / "inbox" / "clip.mp4"
    seen_while_writing: list[Any] = []

    class Watching(io.RawIOBase):
        """Looks at the bucket while put() is halfway through reading it."""

        sent = 0

        def readable(self) -> bool:
            return True

        def readinto(self, buffer: Any) -> int:
            if self.sent >= 2 * MiB and not seen_while_writing:
                seen_while_writing.extend([target.exists(), list(local.list("inbox")), os.listdir(local.tmp_dir)])
            if self.sent >= 4 * MiB:
                return 0
            n = min(len(buffer), MiB)
            buffer[:n] = b"v" * n
            self.sent += n
            return n

    local.put("inbox", "clip.mp4", io.BufferedReader(Watching()))

    exists, listed, temp_files = seen_while_writing
    assert (exists, listed, len(temp_files)) == (False, [], 1)
    assert target.stat().st_size == 4 * MiB
    assert os.listdir(local.tmp_dir) == []


def test_local_failed_write_leaves_no_temp_file(local: LocalStorage) -> None:
    def broken() -> Iterator[bytes]:
        yield b"some"
        raise OSError("source vanished")

    class FromGenerator(io.RawIOBase):
        chunks = broken()

        def readable(self) -> bool:
            return True

        def readinto(self, buffer: Any) -> int:
            chunk = next(self.chunks, b"")
            buffer[: len(chunk)] = chunk
            return len(chunk)

    with pytest.raises(OSError, match="source vanished"):
        local.put("inbox", "k", io.BufferedReader(FromGenerator()))
    assert os.listdir(local.tmp_dir) == []
    assert not (local.root / "inbox" / "k").exists()


def test_local_file_dropped_by_hand_gets_an_etag_that_follows_changes(local: LocalStorage) -> None:
    dropped = local.root / "inbox" / "scans" / "page 1.pdf"
    dropped.parent.mkdir()
    dropped.write_bytes(b"%PDF-1.7 first")

    first = local.head("inbox", "scans/page 1.pdf")
    assert (first.etag, first.content_type, first.metadata) == (md5(b"%PDF-1.7 first"), "application/pdf", {})

    dropped.write_bytes(b"%PDF-1.7 second version")
    assert local.head("inbox", "scans/page 1.pdf").etag == md5(b"%PDF-1.7 second version")


def test_local_file_rewritten_by_hand_loses_stale_metadata(local: LocalStorage) -> None:
    local.put("inbox", "notes.txt", b"v1", content_type="text/markdown", metadata={"author": "ann"})
    (local.root / "inbox" / "notes.txt").write_bytes(b"v2 by hand")

    info = local.head("inbox", "notes.txt")
    assert (info.etag, info.content_type, info.metadata) == (md5(b"v2 by hand"), "text/plain", {})


def test_local_delete_removes_emptied_folders_but_not_the_bucket(local: LocalStorage) -> None:
    local.put("inbox", "a/b/c/leaf", b"1")
    local.put("inbox", "a/other", b"2")

    local.delete("inbox", "a/b/c/leaf")
    assert not (local.root / "inbox" / "a" / "b").exists()
    assert (local.root / "inbox" / "a" / "other").exists()

    local.delete("inbox", "a/other")
    assert os.listdir(local.root / "inbox") == []


def test_local_files_and_folders_cannot_share_a_name(local: LocalStorage) -> None:
    local.put("inbox", "a", b"file")
    with pytest.raises(StorageError, match="share a name"):
        local.put("inbox", "a/b", b"under a file")
    assert os.listdir(local.tmp_dir) == []


def test_local_concurrent_writers_of_one_key_never_mix(local: LocalStorage) -> None:
    payloads = [bytes([65 + i]) * (256 * 1024) for i in range(8)]
    threads = [threading.Thread(target=local.put, args=("inbox", "same", p)) for p in payloads]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert read(local, "inbox", "same") in payloads
    assert local.head("inbox", "same").etag == md5(read(local, "inbox", "same"))
