"""The folder watcher, on real files with real inotify."""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fileproc.intake import watcher as watcher_module
from fileproc.intake.watcher import FolderWatcher

SETTLE = 0.3


class Recorder:
    """Collects (bucket, key) reports, with the file's size when it was reported."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.calls: list[tuple[str, str]] = []
        self.sizes: dict[tuple[str, str], int] = {}
        self._changed = threading.Condition()

    def __call__(self, bucket: str, key: str) -> None:
        with self._changed:
            self.calls.append((bucket, key))
            self.sizes[(bucket, key)] = (self.root / bucket / key).stat().st_size
            self._changed.notify_all()

    def wait_for(self, count: int, timeout: float = 5.0) -> list[tuple[str, str]]:
        """Block until ``count`` reports arrived (or fail after ``timeout``)."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.calls) >= count, timeout):
                pytest.fail(f"expected {count} report(s) within {timeout} s, got {self.calls}")
            return list(self.calls)

    def expect_no_more(self, count: int) -> None:
        """Wait out one settle window (plus slack) and check nothing else was reported."""
        time.sleep(SETTLE * 3)
        assert len(self.calls) == count, self.calls


@pytest.fixture
def root(tmp_path: Path) -> Path:
    buckets = tmp_path / "buckets"
    (buckets / "photos").mkdir(parents=True)
    return buckets


@pytest.fixture
def recorder(root: Path) -> Recorder:
    return Recorder(root)


@pytest.fixture
def watching(root: Path, recorder: Recorder) -> Iterator[Callable[..., FolderWatcher]]:
    """Start a watcher on ``root`` reporting to ``recorder``; stopped after the test."""
    started: list[FolderWatcher] = []

    def start(settle: float = SETTLE, on_object: Callable[[str, str], None] = recorder) -> FolderWatcher:
        watcher = FolderWatcher(root, on_object, settle_seconds=settle)
        watcher.start()
        started.append(watcher)
        return watcher

    yield start
    for watcher in started:
        watcher.stop()


def test_a_file_written_slowly_is_reported_once_when_complete(root: Path, recorder: Recorder, watching) -> None:
    watching(settle=0.5)
    target = root / "photos" / "big.bin"
    # Several opens, gaps shorter than the settle time: like a copy tool writing in pieces.
    for _ in range(6):
        with target.open("ab") as out:
            out.write(b"x" * 1000)
        time.sleep(0.25)
    assert recorder.calls == []

    assert recorder.wait_for(1) == [("photos", "big.bin")]
    assert recorder.sizes[("photos", "big.bin")] == 6000
    recorder.expect_no_more(1)


def test_a_file_kept_open_is_not_reported_while_the_writer_pauses(root: Path, recorder: Recorder, watching) -> None:
    watching()
    with (root / "photos" / "slow.bin").open("wb") as out:
        out.write(b"first half")
        out.flush()
        time.sleep(SETTLE * 3)  # quiet, but still open
        assert recorder.calls == []
        out.write(b" second half")
    recorder.wait_for(1)
    assert recorder.sizes[("photos", "slow.bin")] == len(b"first half second half")


def test_with_no_settle_time_a_file_still_being_written_waits_for_its_close(root: Path, recorder: Recorder,
                                                                             watching) -> None:
    watching(settle=0)  # "files arrive whole": closed or renamed files are reported at first sight
    with (root / "photos" / "growing.bin").open("wb") as out:
        out.write(b"first half")
        out.flush()
        time.sleep(SETTLE * 3)
        assert recorder.calls == []
        out.write(b" second half")
    assert recorder.wait_for(1) == [("photos", "growing.bin")]
    assert recorder.sizes[("photos", "growing.bin")] == len(b"first half second half")
    recorder.expect_no_more(1)


def test_an_atomic_rename_into_place_is_reported_once(root: Path, tmp_path: Path, recorder: Recorder, watching) -> None:
    watching()
    staging = tmp_path / "tmp"
    staging.mkdir()
    (staging / "upload").write_bytes(b"payload")
    os.replace(staging / "upload", root / "photos" / "cat.jpg")

    assert recorder.wait_for(1) == [("photos", "cat.jpg")]
    recorder.expect_no_more(1)


def test_hidden_and_temp_files_are_ignored_and_rsync_reports_the_final_name(
    root: Path, recorder: Recorder, watching
) -> None:
    watching()
    bucket = root / "photos"
    for name in ("notes.tmp", "video.part", "a.partial", "b.crdownload", ".c.swp", "d~", ".hidden"):
        (bucket / name).write_bytes(b"ignored")
    (bucket / ".git").mkdir()
    (bucket / ".git" / "config").write_bytes(b"ignored")
    (root / "loose-file-in-root").write_bytes(b"belongs to no bucket")
    # rsync: write a hidden temp file, then rename it into place.
    (bucket / ".dog.jpg.Ab12Cd").write_bytes(b"woof")
    os.rename(bucket / ".dog.jpg.Ab12Cd", bucket / "dog.jpg")

    assert recorder.wait_for(1) == [("photos", "dog.jpg")]
    recorder.expect_no_more(1)


def test_a_bucket_created_after_start_is_watched(root: Path, recorder: Recorder, watching) -> None:
    watching()
    (root / "late").mkdir()
    (root / "late" / "file.txt").write_text("hello")

    assert recorder.wait_for(1) == [("late", "file.txt")]


# watchdog warns when `mkdir -p` races its own recursive watch setup; harmless.
@pytest.mark.filterwarnings("ignore:Callback with id:RuntimeWarning")
def test_keys_keep_spaces_unicode_and_deep_prefixes(root: Path, recorder: Recorder, watching) -> None:
    watching()
    folder = root / "photos" / "2024" / "été à Paris" / "jour 1"
    folder.mkdir(parents=True)
    (folder / "tour eiffel ☀.jpg").write_bytes(b"jpeg")

    assert recorder.wait_for(1) == [("photos", "2024/été à Paris/jour 1/tour eiffel ☀.jpg")]


def test_a_directory_moved_in_reports_every_file_inside(
    root: Path, tmp_path: Path, recorder: Recorder, watching
) -> None:
    watching()
    outside = tmp_path / "album"
    (outside / "day2").mkdir(parents=True)
    (outside / "a.jpg").write_bytes(b"a")
    (outside / "day2" / "b.jpg").write_bytes(b"b")
    (outside / ".thumbs").write_bytes(b"hidden")
    shutil.move(outside, root / "photos" / "album")

    calls = recorder.wait_for(2)
    assert sorted(calls) == [("photos", "album/a.jpg"), ("photos", "album/day2/b.jpg")]
    recorder.expect_no_more(2)


def test_a_file_changed_after_its_report_is_reported_again(root: Path, recorder: Recorder, watching) -> None:
    watching()
    target = root / "photos" / "doc.txt"
    target.write_text("v1")
    recorder.wait_for(1)

    target.write_text("version 2")
    assert recorder.wait_for(2) == [("photos", "doc.txt"), ("photos", "doc.txt")]
    assert recorder.sizes[("photos", "doc.txt")] == len("version 2")


def test_scan_lists_files_already_there(root: Path) -> None:
    (root / "photos" / "old.jpg").write_bytes(b"old")
    (root / "photos" / "deep" / "er").mkdir(parents=True)
    (root / "photos" / "deep" / "er" / "x.png").write_bytes(b"x")
    (root / "photos" / ".hidden").write_bytes(b"no")
    (root / "photos" / "partial.part").write_bytes(b"no")
    (root / "docs").mkdir()
    (root / "docs" / "readme.md").write_text("hi")
    (root / "in-root.txt").write_text("no bucket")

    found = sorted(FolderWatcher(root, lambda b, k: None).scan())
    assert found == [("docs", "readme.md"), ("photos", "deep/er/x.png"), ("photos", "old.jpg")]


def test_a_failing_callback_does_not_stop_later_reports(root: Path, recorder: Recorder, watching) -> None:
    def flaky(bucket: str, key: str) -> None:
        recorder(bucket, key)
        if key == "first.txt":
            raise RuntimeError("boom")

    watching(on_object=flaky)
    (root / "photos" / "first.txt").write_text("1")
    recorder.wait_for(1)
    (root / "photos" / "second.txt").write_text("2")
    assert recorder.wait_for(2) == [("photos", "first.txt"), ("photos", "second.txt")]


def test_stop_returns_promptly(root: Path, recorder: Recorder) -> None:
    watcher = FolderWatcher(root, recorder, settle_seconds=5.0)
    with watcher:
        (root / "photos" / "pending.txt").write_text("never settles before stop")
        started = time.monotonic()
    assert time.monotonic() - started < 2.0
    assert recorder.calls == []


def test_falls_back_to_polling_when_inotify_cannot_start(
    root: Path, recorder: Recorder, watching, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    class NoInotify:
        def __init__(self) -> None:
            raise OSError(28, "inotify watch limit reached")

    monkeypatch.setattr(watcher_module, "InotifyObserver", NoInotify)
    watching()
    assert "polling" in caplog.text
    (root / "photos" / "polled.txt").write_text("found by polling")

    assert recorder.wait_for(1) == [("photos", "polled.txt")]


def test_files_dropped_at_once_are_reported_together_each_once(root: Path) -> None:
    batches: list[list[tuple[str, str]]] = []
    done = threading.Event()

    def on_objects(found: list[tuple[str, str]]) -> None:
        batches.append(found)
        if sum(map(len, batches)) >= 200:
            done.set()

    staging = root.parent / "staging"
    staging.mkdir()
    for n in range(200):
        (staging / f"f{n:03}.txt").write_text(str(n))
    with FolderWatcher(root, settle_seconds=0, on_objects=on_objects):
        for n in range(200):
            os.rename(staging / f"f{n:03}.txt", root / "photos" / f"f{n:03}.txt")
        assert done.wait(10), batches
        time.sleep(SETTLE)
    reported = [found for batch in batches for found in batch]
    assert sorted(reported) == [("photos", f"f{n:03}.txt") for n in range(200)]  # each once
    assert len(batches) < 50  # a burst is a few calls (one transaction each), not one per file
    with pytest.raises(ValueError):
        FolderWatcher(root)
