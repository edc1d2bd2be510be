"""The storage contract: one suite that every backend must pass.

``storage`` runs each test against LocalStorage (folders in a temp dir),
MemoryStorage and S3Storage (a real versitygw on loopback); ``versioned``
runs the version tests against a versioned MemoryStorage and a versioned
versitygw bucket. Backend-specific behaviour is at the end of the file.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import socket
import stat
import sys
import threading
import time
import tracemalloc
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from minio import Minio
from minio.commonconfig import ENABLED
from minio.versioningconfig import VersioningConfig

from fileproc.errors import BucketNotFound, ObjectNotFound, StorageError, StorageUnavailable
from fileproc.storage import DEFAULT_CONTENT_TYPE, InvalidMetadata, InvalidName, Storage
from fileproc.storage.local import LocalStorage, signature_etag
from fileproc.storage.memory import MemoryStorage
from fileproc.storage.s3 import S3Storage
from tests.servers import Versitygw, free_port, versitygw_server

MiB = 1024 * 1024
BACKENDS = ["local", "memory", "s3"]


@pytest.fixture(scope="module")
def gateway() -> Iterator[Versitygw]:
    with versitygw_server(versioning=True) as gw:
        yield gw


def s3_storage(gw: Versitygw) -> S3Storage:
    return S3Storage(endpoint=gw.endpoint, access_key=gw.access_key, secret_key=gw.secret_key, secure=False)


def make_storage(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if kind == "local":
        return LocalStorage(tmp_path / "buckets", tmp_dir=tmp_path / "tmp")
    if kind == "memory":
        return MemoryStorage()
    return s3_storage(request.getfixturevalue("gateway"))


@pytest.fixture(params=BACKENDS)
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    return make_storage(request.param, request, tmp_path)


def new_bucket(storage: Storage) -> str:
    """A fresh, empty bucket (S3 bucket names: 3-63 lower-case letters, digits, '-')."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    storage.ensure_bucket(name)
    return name


@pytest.fixture
def bucket(storage: Storage) -> str:
    return new_bucket(storage)


@pytest.fixture(params=["memory", "s3"])
def versioned(request: pytest.FixtureRequest) -> tuple[Storage, str]:
    """A storage and a fresh bucket of it that keeps versions."""
    if request.param == "memory":
        memory = MemoryStorage(versioned=True)
        return memory, new_bucket(memory)
    gw: Versitygw = request.getfixturevalue("gateway")
    s3 = s3_storage(gw)
    name = new_bucket(s3)
    # Storage has no call to switch versioning on (buckets are set up by their owner): ask S3 directly.
    Minio(gw.endpoint, gw.access_key, gw.secret_key, secure=False).set_bucket_versioning(
        name, VersioningConfig(ENABLED))
    return s3, name


def md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def read(storage: Storage, bucket: str, key: str, version_id: str | None = None) -> bytes:
    with storage.open(bucket, key, version_id=version_id) as stream:
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


def test_list_buckets_names_every_bucket(storage: Storage, bucket: str) -> None:
    other = new_bucket(storage)

    names = storage.list_buckets()

    assert {bucket, other} <= set(names)
    assert names == sorted(names)


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


@pytest.fixture(params=[b for b in BACKENDS if b != "memory"])  # memory holds objects in memory by design
def streaming_storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    return make_storage(request.param, request, tmp_path)


def test_large_stream_of_unknown_length_is_not_held_in_memory(streaming_storage: Storage) -> None:
    storage = streaming_storage
    bucket = new_bucket(storage)
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


# --- the shared rules: names, metadata, content type ------------------------------------


@pytest.mark.parametrize("metadata", [
    {"caption": "café au lait"},         # non-ASCII value
    {"légende": "plain"},                # non-ASCII name
    {"two words": "x"},                  # not a header name
    {"note": "line one\nline two"},      # would split the header
    {"Camera": "a", "camera": "b"},      # the same name once lower-cased
    {"big": "x" * 3000},                 # more than S3's 2 KiB of metadata
])
def test_metadata_s3_cannot_carry_is_refused_on_every_backend(storage: Storage, bucket: str,
                                                              metadata: dict[str, str]) -> None:
    with pytest.raises(InvalidMetadata, match="metadata") as caught:
        storage.put(bucket, "k", b"x", metadata=metadata)

    assert isinstance(caught.value, StorageError)
    assert list(storage.list(bucket)) == []


def test_metadata_is_normalised_the_same_way_everywhere(storage: Storage, bucket: str) -> None:
    written = storage.put(bucket, "k", b"x", metadata={"Camera": "X100", "ISO": 200, "note": "  padded  "})

    expected = {"camera": "X100", "iso": "200", "note": "padded"}
    assert written.metadata == expected
    assert storage.head(bucket, "k").metadata == expected


def test_content_type_must_be_plain_ascii(storage: Storage, bucket: str) -> None:
    with pytest.raises(InvalidMetadata, match="content type"):
        storage.put(bucket, "k", b"x", content_type="text/plain; name=\"ü\"")
    assert storage.put(bucket, "k", b"x", content_type="  text/plain  ").content_type == "text/plain"


@pytest.mark.parametrize("name", ["UPPER", "ab", "under_score", "-dash-first", "a..b", "192.168.1.1", "x" * 64])
def test_bucket_names_s3_refuses_are_refused_on_every_backend(storage: Storage, name: str) -> None:
    for attempt in (lambda: storage.ensure_bucket(name), lambda: storage.put(name, "k", b"x"),
                    lambda: storage.head(name, "k"), lambda: storage.list(name)):
        with pytest.raises(InvalidName, match="invalid bucket name"):
            attempt()


@pytest.mark.parametrize("key", ["../escape", "a/../b", "/abs", "a//b", "./a", "a/", "", "nul\0byte", "é" * 513])
def test_keys_a_folder_cannot_hold_are_refused_on_every_backend(storage: Storage, bucket: str, key: str) -> None:
    for attempt in (lambda: storage.put(bucket, key, b"x"), lambda: storage.head(bucket, key),
                    lambda: storage.open(bucket, key), lambda: storage.delete(bucket, key)):
        with pytest.raises(InvalidName, match="invalid object key"):
            attempt()
    assert list(storage.list(bucket)) == []


def test_a_prefix_no_key_can_start_with_lists_nothing(storage: Storage, bucket: str) -> None:
    storage.put(bucket, "a/b", b"1")

    for prefix in ("/a", "a//", "../a", "./a", "a/../a"):
        assert list(storage.list(bucket, prefix)) == [], prefix
    with pytest.raises(InvalidName, match="NUL"):
        storage.list(bucket, "a\0")
    with pytest.raises(BucketNotFound):
        list(storage.list("no-such-bucket", "../a"))


# --- listing -----------------------------------------------------------------------------


def test_list_gives_size_etag_and_time_but_no_content_type_or_metadata(storage: Storage, bucket: str) -> None:
    before = datetime.now(UTC) - timedelta(seconds=2)
    storage.put(bucket, "docs/a.txt", b"hello", content_type="text/plain", metadata={"author": "ann"})
    storage.put(bucket, "docs/b.png", b"\x89PNG....", metadata={"w": "1"})

    listed = list(storage.list(bucket))

    for info in listed:
        head = storage.head(bucket, info.key)
        assert (info.bucket, info.size, info.etag) == (bucket, head.size, head.etag)
        # Not part of a listing on any backend (S3's has neither): head() gives them.
        assert (info.content_type, info.metadata, info.version_id) == (DEFAULT_CONTENT_TYPE, {}, None)
        assert info.last_modified is not None
        assert before <= info.last_modified <= datetime.now(UTC) + timedelta(seconds=2)
    assert [(i.key, i.size, i.etag) for i in listed] == [("docs/a.txt", 5, md5(b"hello")),
                                                         ("docs/b.png", 8, md5(b"\x89PNG...."))]


def test_every_backend_lists_and_heads_the_same_objects_alike(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    objects = {
        "photos/2026/cat.jpg": (b"jpeg bytes", None, {"Camera": "X100"}),
        "photos/2026/ünï côdé.png": (b"png", "image/png", {}),
        "notes": (b"", None, {"n": 7}),
    }

    def describe(kind: str) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        storage = make_storage(kind, request, tmp_path / kind)
        bucket = new_bucket(storage)
        for key, (data, content_type, metadata) in objects.items():
            storage.put(bucket, key, data, content_type=content_type, metadata=metadata)
        listed = [(o.key, o.size, o.etag, o.content_type, o.metadata, o.version_id, o.last_modified is not None)
                  for o in storage.list(bucket)]
        heads = [(h.key, h.size, h.etag, h.content_type, h.metadata, h.version_id)
                 for h in (storage.head(bucket, key) for key in sorted(objects))]
        return listed, heads

    local, memory, s3 = (describe(kind) for kind in BACKENDS)

    assert local == memory == s3
    assert {h[0]: h[3:5] for h in local[1]} == {
        "notes": ("application/octet-stream", {"n": "7"}),
        "photos/2026/cat.jpg": ("image/jpeg", {"camera": "X100"}),
        "photos/2026/ünï côdé.png": ("image/png", {}),
    }


# --- versions ----------------------------------------------------------------------------


def test_a_store_without_versions_has_no_version_ids(storage: Storage, bucket: str, tmp_path: Path) -> None:
    written = storage.put(bucket, "k", b"current")

    assert written.version_id is None
    assert storage.head(bucket, "k").version_id is None
    assert storage.head(bucket, "k", version_id="").etag == written.etag  # "" means the current one
    assert read(storage, bucket, "k", version_id=None) == b"current"
    # Not "null": S3 calls an object written without versioning that, and versitygw serves it to GET.
    for version_id in ("3HL4kqtJlcpXroDTDmJ+rmSpXd3dIbrHY", "01M8F66RT6XX3EYP0T79FE3BDJ"):
        with pytest.raises(ObjectNotFound, match="version"):
            storage.head(bucket, "k", version_id=version_id)
        with pytest.raises(ObjectNotFound, match="version"):
            storage.open(bucket, "k", version_id=version_id)
        with pytest.raises(ObjectNotFound, match="version"):
            storage.download(bucket, "k", tmp_path / "v", version_id=version_id)
    with pytest.raises(BucketNotFound):
        storage.head("no-such-bucket", "k", version_id="v1")


def test_versions_can_be_read_by_id(versioned: tuple[Storage, str], tmp_path: Path) -> None:
    storage, bucket = versioned
    first = storage.put(bucket, "doc.txt", b"first draft", metadata={"rev": "1"})
    second = storage.put(bucket, "doc.txt", b"second draft", metadata={"rev": "2"})

    assert first.version_id and second.version_id and first.version_id != second.version_id
    assert storage.head(bucket, "doc.txt").version_id == second.version_id
    old = storage.head(bucket, "doc.txt", version_id=first.version_id)
    assert (old.etag, old.size, old.metadata, old.version_id) == (md5(b"first draft"), 11, {"rev": "1"},
                                                                  first.version_id)
    assert read(storage, bucket, "doc.txt", first.version_id) == b"first draft"
    assert read(storage, bucket, "doc.txt") == b"second draft"
    downloaded = storage.download(bucket, "doc.txt", tmp_path / "old.txt", version_id=first.version_id)
    assert ((tmp_path / "old.txt").read_bytes(), downloaded.version_id) == (b"first draft", first.version_id)
    assert [(o.key, o.version_id) for o in storage.list(bucket)] == [("doc.txt", None)]  # listings carry none

    storage.delete(bucket, "doc.txt")

    with pytest.raises(ObjectNotFound):
        storage.head(bucket, "doc.txt")
    assert list(storage.list(bucket)) == []
    assert read(storage, bucket, "doc.txt", first.version_id) == b"first draft"  # old versions stay readable


def test_a_version_the_store_does_not_have_is_not_found(versioned: tuple[Storage, str]) -> None:
    storage, bucket = versioned
    storage.put(bucket, "k", b"x")

    for version_id in ("null", "0123456789abcdef", "v99999999"):
        with pytest.raises(ObjectNotFound, match="version"):
            storage.head(bucket, "k", version_id=version_id)
        with pytest.raises(ObjectNotFound, match="version"):
            storage.open(bucket, "k", version_id=version_id)


# --- the in-memory backend ---------------------------------------------------------------


def test_memory_storage_is_safe_for_threads() -> None:
    storage = MemoryStorage()
    storage.ensure_bucket("inbox")
    payloads = {f"k{i % 4}": bytes([65 + i]) * 1000 for i in range(4)}

    wrong: list[str] = []

    def writer(n: int) -> None:
        key = f"k{n % 4}"
        for _ in range(200):
            storage.put("inbox", key, payloads[key])
            listed = {o.key: o.etag for o in storage.list("inbox")}
            if listed[key] != md5(payloads[key]) or read(storage, "inbox", key) != payloads[key]:
                wrong.append(key)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert wrong == []
    assert {o.key: o.etag for o in storage.list("inbox")} == {k: md5(v) for k, v in payloads.items()}


def test_memory_storage_hands_out_copies_of_metadata() -> None:
    storage = MemoryStorage()
    storage.ensure_bucket("inbox")
    storage.put("inbox", "k", b"x", metadata={"a": "1"})

    storage.head("inbox", "k").metadata["a"] = "changed"

    assert storage.head("inbox", "k").metadata == {"a": "1"}


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


def test_local_file_dropped_by_hand_gets_a_signature_etag_that_follows_changes(local: LocalStorage) -> None:
    dropped = local.root / "inbox" / "scans" / "page 1.pdf"
    dropped.parent.mkdir()
    dropped.write_bytes(b"%PDF-1.7 first")

    first = local.head("inbox", "scans/page 1.pdf")
    assert (first.etag, first.content_type, first.metadata) == (signature_etag(dropped.stat()), "application/pdf", {})
    assert first.etag.startswith("s") and len(first.etag) == 32
    assert [o.etag for o in local.list("inbox")] == [first.etag]

    dropped.write_bytes(b"%PDF-1.7 second version")
    second = local.head("inbox", "scans/page 1.pdf")
    assert second.etag != first.etag
    assert [o.etag for o in local.list("inbox")] == [second.etag]

    # Rewritten with the same size and mtime, the inode still tells the files apart.
    replacement = local.root / "inbox" / "new.pdf"
    replacement.write_bytes(b"%PDF-1.7 second versioN")
    st = dropped.stat()
    os.utime(replacement, ns=(st.st_atime_ns, st.st_mtime_ns))
    replacement.replace(dropped)
    assert local.head("inbox", "scans/page 1.pdf").etag not in (first.etag, second.etag)


def test_local_head_and_list_agree_on_every_kind_of_file(local: LocalStorage) -> None:
    local.put("inbox", "written.txt", b"by put", metadata={"k": "v"})
    (local.root / "inbox" / "dropped.txt").write_bytes(b"by hand")
    local.put("inbox", "edited.txt", b"by put")
    (local.root / "inbox" / "edited.txt").write_bytes(b"then by hand, longer")

    listed = {o.key: o.etag for o in local.list("inbox")}

    assert listed == {key: local.head("inbox", key).etag for key in listed}
    assert listed["written.txt"] == md5(b"by put")
    assert listed["dropped.txt"].startswith("s") and listed["edited.txt"].startswith("s")


def test_local_list_and_head_never_open_a_file(local: LocalStorage) -> None:
    local.put("inbox", "a/written.bin", os.urandom(1000), metadata={"k": "v"})
    (local.root / "inbox" / "a" / "dropped.bin").write_bytes(os.urandom(1000))
    unreadable = local.root / "inbox" / "b" / "locked.bin"
    unreadable.parent.mkdir()
    unreadable.write_bytes(b"secret")
    unreadable.chmod(0)

    with opens_under(local.root) as opened:
        listed = list(local.list("inbox"))
        heads = [local.head("inbox", o.key) for o in listed]

    assert opened == []
    assert [o.key for o in listed] == ["a/dropped.bin", "a/written.bin", "b/locked.bin"]
    assert [o.etag for o in listed] == [h.etag for h in heads]
    assert stat.S_IMODE(unreadable.stat().st_mode) == 0  # still locked: listing changed nothing


_OPEN_WATCHERS: list[tuple[str, list[str]]] = []


def _record_opens(event: str, args: tuple[Any, ...]) -> None:
    if event == "open" and _OPEN_WATCHERS and isinstance(args[0], str | bytes | os.PathLike):
        path = os.fsdecode(args[0])
        for root, opened in _OPEN_WATCHERS:
            if path.startswith(root):
                opened.append(path)


@contextlib.contextmanager
def opens_under(root: Path) -> Iterator[list[str]]:
    """Every file opened below ``root`` (seen by Python's audit hook) while in the block."""
    if not any(hook is _record_opens for hook in _INSTALLED_HOOKS):
        sys.addaudithook(_record_opens)  # cannot be removed: installed once, idle outside the block
        _INSTALLED_HOOKS.append(_record_opens)
    watcher: tuple[str, list[str]] = (str(root), [])
    _OPEN_WATCHERS.append(watcher)
    try:
        yield watcher[1]
    finally:
        _OPEN_WATCHERS.remove(watcher)


_INSTALLED_HOOKS: list[Any] = []


def test_local_file_rewritten_by_hand_loses_stale_metadata(local: LocalStorage) -> None:
    local.put("inbox", "notes.txt", b"v1", content_type="text/markdown", metadata={"author": "ann"})
    (local.root / "inbox" / "notes.txt").write_bytes(b"v2 by hand")

    info = local.head("inbox", "notes.txt")
    st = (local.root / "inbox" / "notes.txt").stat()
    assert (info.etag, info.content_type, info.metadata) == (signature_etag(st), "text/plain", {})


def test_local_list_buckets_leaves_out_folders_no_bucket_may_be_called(local: LocalStorage) -> None:
    (local.root / "Not A Bucket").mkdir()
    (local.root / "stray-file").write_text("x")

    assert local.list_buckets() == ["inbox"]


def test_local_read_of_a_version_is_not_found(local: LocalStorage, tmp_path: Path) -> None:
    local.put("inbox", "k", b"x")

    with pytest.raises(ObjectNotFound, match="keeps no versions"):
        local.download("inbox", "k", tmp_path / "k", version_id="anything")
    assert not (tmp_path / "k").exists()


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


def test_local_storage_follows_no_link_to_a_file_outside_its_buckets(local: LocalStorage, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("fileproc's own")
    local.put("inbox", "real/a.txt", b"a tenant's")
    (local.root / "inbox" / "planted.txt").symlink_to(secret)  # a link to a file
    (local.root / "inbox" / "via").symlink_to(tmp_path)  # a link to a folder on the way
    for key in ("planted.txt", "via/secret.txt"):
        with pytest.raises(ObjectNotFound):
            local.head("inbox", key)
        with pytest.raises(ObjectNotFound):
            local.open("inbox", key)
    assert [o.key for o in local.list("inbox")] == ["real/a.txt"]
    assert local.open("inbox", "real/a.txt").read() == b"a tenant's"
