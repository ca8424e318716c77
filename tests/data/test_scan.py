"""Bad files are found before training and named; odd-but-valid files load; scans are cached
and show their progress."""

import fcntl
import io
import logging
import os
import pty
import select
import struct
import sys
import termios
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnlab.data import load_data
from cnnlab.data.scan import scan_image, scan_images
from cnnlab.data.scan_cache import cache_dir, cache_summary, clear_cache
from cnnlab.errors import BadImagesError


@pytest.fixture
def messy_folder(make_folder):
    """The issue's eight files in one class (three bad) beside a clean class."""
    root = make_folder("messy", classes=("clean", "messy"), per_class=6)
    d = root / "messy"
    for f in d.iterdir():
        f.unlink()
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8))
    rgb.save(d / "ok_base.jpg")
    data = (d / "ok_base.jpg").read_bytes()
    (d / "ok_base.jpg").unlink()
    (d / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (d / "empty.jpg").write_bytes(b"")
    (d / "notes.jpg").write_text("this is not an image")
    rgb.save(d / "png_named.jpg", format="PNG")
    rgb.convert("CMYK").save(d / "cmyk.jpg")
    Image.fromarray(rng.integers(0, 65535, (16, 16), dtype=np.uint16)).save(d / "deep16.png")
    rgb.convert("RGBA").save(d / "rgba.png")
    rgb.convert("L").save(d / "gray.jpg")
    return root


def test_scan_names_exactly_the_three_bad_files(messy_folder):
    with pytest.raises(BadImagesError) as e:
        load_data(f"folder:{messy_folder}")
    bad = sorted(b.path.rsplit("/", 1)[-1] for b in e.value.bad)
    assert bad == ["empty.jpg", "notes.jpg", "truncated.jpg"]
    msg = str(e.value)
    assert "3 file(s)" in msg and "empty file (0 bytes)" in msg
    assert "not an image" in msg and "truncated image data" in msg
    assert "--skip-bad-images" in msg


def test_skip_bad_images_keeps_the_five_odd_but_valid_files(messy_folder):
    data = load_data(f"folder:{messy_folder}", skip_bad_images=True, val_split=0, test_split=0)
    assert len(data.bad_files) == 3
    kept = data.examples("train")["paths"]
    names = sorted(p.rsplit("/", 1)[-1] for p in kept if "/messy/messy/" in p)
    assert names == ["cmyk.jpg", "deep16.png", "gray.jpg", "png_named.jpg", "rgba.png"]
    x, y = next(iter(data.dataset("train", training=False).unbatch().batch(64)))
    assert x.shape == (11, 16, 16, 3)


def test_extension_mismatch_is_detected_but_loads(messy_folder):
    info = scan_image(str(messy_folder / "messy" / "png_named.jpg"))
    assert info.ok and info.format == "PNG" and info.extension_mismatch


def test_unsupported_format_is_bad(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "x.tiff")
    info = scan_image(str(tmp_path / "x.tiff"))
    assert not info.ok and "unsupported format TIFF" in info.problem


# --------------------------------------------------------------------------- the scan cache
@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch) -> Path:
    """Each test its own cache folder ($CNNLAB_CACHE_DIR)."""
    monkeypatch.setenv("CNNLAB_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def decodes(monkeypatch):
    """Counts the files Pillow opens (the scan's and the dataset check's decoding)."""
    opened: list[str] = []
    real_open = Image.open

    def counting_open(fp, *args, **kwargs):
        opened.append(str(getattr(fp, "name", fp)))
        return real_open(fp, *args, **kwargs)

    monkeypatch.setattr(Image, "open", counting_open)
    return opened


def _infos(folder) -> tuple[list[str], list]:
    paths = sorted(str(p) for p in folder.rglob("*.png"))
    return paths, scan_images(paths)


def test_second_scan_decodes_nothing(image_folder, decodes, own_cache):
    paths, first = _infos(image_folder)
    assert len(decodes) == len(paths) == 24
    decodes.clear()
    again = scan_images(paths)
    assert decodes == [] and again == first
    assert cache_dir() == own_cache  # $CNNLAB_CACHE_DIR, one file for the source folder
    assert [p.name.split("-")[0] for p in own_cache.glob("*.sqlite")] == ["images"]


def test_changed_added_and_removed_files_are_rescanned_alone(image_folder, decodes):
    paths, first = _infos(image_folder)
    touched, replaced, removed = paths[0], paths[1], paths[2]
    os.utime(touched, ns=(time.time_ns(), time.time_ns() + 10**9))  # touch: newer mtime
    data = Path(replaced).read_bytes()
    Path(replaced).write_bytes(data[: len(data) // 2])  # replaced by a truncated copy
    Path(removed).unlink()
    added = image_folder / "circle" / "new.png"
    Image.new("RGB", (9, 7)).save(added)
    decodes.clear()
    paths2, second = _infos(image_folder)
    assert sorted(decodes) == sorted([touched, replaced, str(added)])
    by_path = {i.path: i for i in second}
    assert removed not in by_path and by_path[str(added)].width == 9
    assert not by_path[replaced].ok and "truncated" in by_path[replaced].problem
    assert by_path[touched] == first[0]
    decodes.clear()
    assert scan_images(paths2) == second and decodes == []  # and cached again
    # 24 files, each with the scan's entry and the check's from the same read; the
    # removed file's rows are gone
    assert [row["entries"] for row in cache_summary()] == [48]


def test_cache_bypassed_and_cleared(image_folder, decodes, monkeypatch):
    paths, _ = _infos(image_folder)
    decodes.clear()
    scan_images(paths, cache=False)
    assert len(decodes) == 24
    monkeypatch.setenv("CNNLAB_NO_CACHE", "1")
    decodes.clear()
    scan_images(paths)
    assert len(decodes) == 24
    monkeypatch.delenv("CNNLAB_NO_CACHE")
    removed, size = clear_cache()
    assert removed >= 1 and size > 0 and not list(cache_dir().glob("*.sqlite"))
    decodes.clear()
    scan_images(paths)
    assert len(decodes) == 24  # nothing cached after clearing


def test_cache_cli_clear(image_folder, capsys):
    from cnnlab.cli.main import main

    _infos(image_folder)
    assert main(["data", "cache", "info"]) == 0
    out = capsys.readouterr().out
    assert str(cache_dir()) in out and "images-" in out and str(image_folder) in out
    assert main(["data", "cache", "clear"]) == 0
    assert "Removed 1 cache file(s)" in capsys.readouterr().out
    assert not list(cache_dir().glob("*.sqlite"))


def test_dataset_check_is_cached_per_file(image_folder, decodes):
    from cnnlab.data.inspect import inspect_data

    first = inspect_data(f"folder:{image_folder}").to_dict()
    assert len(decodes) == 24
    decodes.clear()
    again = inspect_data(f"folder:{image_folder}").to_dict()
    assert decodes == []
    first["seconds"] = again["seconds"] = 0
    assert again == first
    touched = image_folder / "circle" / "circle_000.png"
    os.utime(touched, ns=(time.time_ns(), time.time_ns() + 10**9))
    decodes.clear()
    inspect_data(f"folder:{image_folder}")
    assert len(decodes) == 1  # the touched file alone (read from its bytes)
    decodes.clear()
    fast = inspect_data(f"folder:{image_folder}", full_decode=False)  # takes the full entries
    assert decodes == [] and fast.num_images == 24
    decodes.clear()
    inspect_data(f"folder:{image_folder}", cache=False)
    assert len(decodes) == 24
    clear_cache()
    decodes.clear()
    inspect_data(f"folder:{image_folder}", full_decode=False)  # fast entries only...
    inspect_data(f"folder:{image_folder}")  # ...do not stand in for a full decode
    assert len(decodes) == 48


# --------------------------------------------------------------------------- one read per file
@pytest.fixture
def reads(monkeypatch):
    """Counts the files whose bytes are read (by the scan and the dataset check alike)."""
    from cnnlab.data import imagefile

    read: list[str] = []
    real = imagefile._read_bytes
    monkeypatch.setattr(imagefile, "_read_bytes", lambda path: read.append(path) or real(path))
    return read


def _cached_files(paths: list[str], kind: str) -> int:
    from cnnlab.data.scan_cache import FileCache

    store = FileCache.open(paths, kind)
    hits, _ = store.lookup(paths)
    store.close()
    return len(hits)


def test_cold_run_reads_and_decodes_each_file_once(image_folder, decodes, reads):
    """The pre-flight scan's one read and full decode also give the check's result: the
    check before training finds every file in the cache, and finds what it finds unaided."""
    from cnnlab.data.inspect import check_before_training, inspect_data
    from cnnlab.data.scan_cache import CHECK_FULL, SCAN

    bundle = load_data(f"folder:{image_folder}", seed=0)
    paths = sorted(str(p) for p in bundle.source.paths)
    assert sorted(decodes) == sorted(reads) == paths  # each file once
    assert _cached_files(paths, SCAN) == _cached_files(paths, CHECK_FULL) == 24
    decodes.clear()
    reads.clear()
    report = check_before_training(bundle)
    assert decodes == [] and reads == []  # the check read nothing
    unaided = inspect_data(
        bundle.source, split=bundle.split, full_decode=False, cache=False, quiet=True
    )
    assert len(reads) == 24  # this one did read every file
    report_dict, unaided_dict = report.to_dict(), unaided.to_dict()
    report_dict["seconds"] = unaided_dict["seconds"] = 0
    assert report_dict == unaided_dict


def test_touched_file_is_read_once_for_the_scan_and_the_check(image_folder, decodes, reads):
    from cnnlab.data.inspect import check_before_training
    from cnnlab.data.scan_cache import CHECK_FULL, SCAN

    spec = f"folder:{image_folder}"
    check_before_training(load_data(spec))
    touched = str(image_folder / "circle" / "circle_000.png")
    os.utime(touched, ns=(time.time_ns(), time.time_ns() + 10**9))
    paths = sorted(str(p) for p in image_folder.rglob("*.png"))
    assert _cached_files(paths, SCAN) == _cached_files(paths, CHECK_FULL) == 23
    decodes.clear()
    reads.clear()
    check_before_training(load_data(spec))
    assert decodes == reads == [touched]  # the scan's one read; the check none
    assert _cached_files(paths, SCAN) == _cached_files(paths, CHECK_FULL) == 24
    assert [row["entries"] for row in cache_summary()] == [48]


def test_no_cache_scan_does_not_make_the_checks_thumbnails(image_folder, reads, monkeypatch):
    """Without a cache to keep it, the scan skips the check's part (digest, thumbnail)."""
    from cnnlab.data import imagefile

    made: list[int] = []
    real = imagefile._thumbnail
    monkeypatch.setattr(imagefile, "_thumbnail", lambda im: made.append(1) or real(im))
    _, infos = _infos(image_folder)
    assert len(made) == 24
    made.clear()
    paths = sorted(str(p) for p in image_folder.rglob("*.png"))
    assert scan_images(paths, cache=False) == infos and made == []


# --------------------------------------------------------------------------- progress
def _read_all(fd: int) -> str:
    chunks = []
    while select.select([fd], [], [], 0.5)[0]:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the terminal's other end is closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


def test_progress_bar_on_a_terminal_not_in_a_pipe(image_folder, monkeypatch, caplog):
    paths = sorted(str(p) for p in image_folder.rglob("*.png"))
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # 100 columns
    with os.fdopen(slave, "w") as terminal:
        monkeypatch.setattr(sys, "stderr", terminal)
        scan_images(paths, cache=False)
        scan_images(paths, cache=False, quiet=True)
    shown = _read_all(master)
    os.close(master)
    assert shown.count("Scanning") >= 1 and "24/24" in shown and "file/s" in shown
    assert "100%" in shown and "<00:00" in shown  # rate and time left
    read, write = os.pipe()
    with os.fdopen(write, "w") as pipe:
        monkeypatch.setattr(sys, "stderr", pipe)
        with caplog.at_level(logging.INFO, logger="cnnlab"):
            scan_images(paths, cache=False)
    assert _read_all(read) == ""  # no bar in a pipe, and no log line for a short scan
    os.close(read)
    assert "Scanning" not in caplog.text


def test_progress_log_lines_when_not_a_terminal(caplog):
    from cnnlab._progress import Progress

    stream = io.StringIO()  # not a terminal
    with caplog.at_level(logging.INFO, logger="cnnlab"):
        with Progress(50, "Checking", stream=stream, log_every=0) as progress:
            for _ in range(50):
                progress.update()
        with Progress(50, "Quiet", stream=stream, log_every=0, quiet=True) as progress:
            progress.update(50)
    assert stream.getvalue() == ""
    lines = [r.getMessage() for r in caplog.records]
    assert "Checking: 1 of 50 files (2 %)" in lines[0] and "files/s, about" in lines[0]
    assert lines[-1].startswith("Checking: 50 files in ")
    assert len(lines) == 50 and not any("Quiet" in line for line in lines)


def test_data_inspect_no_cache_and_quiet_flags(image_folder, tmp_path, capsys, monkeypatch):
    from cnnlab.cli.main import main
    from cnnlab.data.inspect import files

    examined: list[str] = []
    real = files.examine_file
    monkeypatch.setattr(files, "examine_file", lambda p, full: examined.append(p) or real(p, full))

    def inspect(*flags: str) -> int:
        examined.clear()
        out = tmp_path / f"check{len(list(tmp_path.glob('check*')))}"
        assert (
            main(["data", "inspect", f"folder:{image_folder}", "--output", str(out), *flags]) == 0
        )
        return len(examined)

    assert inspect("--quiet") == 24  # the first check reads every file
    assert inspect("--quiet") == 0  # the second, none
    assert inspect("--no-cache", "--quiet") == 24
    assert "24 images, 2 classes" in capsys.readouterr().out


def test_train_quiet_silences_the_scan_and_check_progress(
    image_folder, tmp_path, monkeypatch, capsys
):
    """`cnnlab train -q` shows no progress of the pre-flight scan or the dataset check (it
    used to print the scan's lines to stderr); without -q both show theirs."""
    from cnnlab._progress import Progress
    from cnnlab.cli.main import main

    monkeypatch.setitem(Progress.__init__.__kwdefaults__, "log_every", 0.0)  # a line per file
    monkeypatch.setenv("CNNLAB_NO_CACHE", "1")  # so that the check reads the files too

    def train(*flags: str) -> str:
        args = ["--data", f"folder:{image_folder}", "--epochs", "1", "-b", "8"]
        args += ["--model-kwargs", "filters=[8] dense=[8]", "--runs-dir", str(tmp_path / "runs")]
        assert main(["train", *args, *flags]) == 0
        return capsys.readouterr().err

    quiet = train("-q")
    assert "Scanning" not in quiet and "Checking" not in quiet
    shown = train()
    assert "cnnlab: Scanning: 1 of 24 files (4 %)" in shown
    assert "cnnlab: Checking: 1 of 24 files (4 %)" in shown


def test_progress_lines_go_to_the_stream_when_no_log_shows_them():
    """``cnnlab data inspect`` in a pipe sets up no logging: the lines are printed instead."""
    from cnnlab._progress import Progress

    stream = io.StringIO()
    unshown = logging.getLogger("cnnlab.test-progress")
    unshown.setLevel(logging.WARNING)  # INFO would not be shown
    with Progress(4, "Scanning", stream=stream, log_every=0, logger=unshown) as progress:
        progress.update(3)
        progress.update(1)
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("Scanning: 3 of 4 files (75 %), ") and lines[0].endswith(" left")
    assert lines[1].startswith("Scanning: 4 files in ") and len(lines) == 2


def test_large_scans_read_in_worker_processes_with_the_same_results(messy_folder, monkeypatch):
    from cnnlab.data import scan

    paths = sorted(str(p) for p in messy_folder.rglob("*") if p.is_file()) * 6  # 84 files
    used = []
    real = scan._read_in_processes

    def spy(read, files, workers):
        used.append((len(files), workers))
        yield from real(read, files, workers)

    monkeypatch.setattr(scan, "_read_in_processes", spy)
    monkeypatch.setattr(scan, "PROCESS_MIN_FILES", 64)
    in_processes = scan_images(paths, cache=False)
    monkeypatch.setattr(scan, "PROCESS_MIN_FILES", 10**9)
    in_threads = scan_images(paths, cache=False)
    if sys.platform == "linux" and (os.cpu_count() or 1) > 1:
        assert used == [(84, os.cpu_count())]
    assert in_processes == in_threads
    assert sorted({Path(i.path).name for i in in_processes if not i.ok}) == [
        "empty.jpg",
        "notes.jpg",
        "truncated.jpg",
    ]


def test_a_broken_worker_pool_falls_back_to_threads_for_the_rest(messy_folder, monkeypatch, caplog):
    from concurrent.futures.process import BrokenProcessPool

    from cnnlab.data import scan

    paths = sorted(str(p) for p in messy_folder.rglob("*") if p.is_file()) * 6
    expected = scan_images(paths, cache=False)

    def breaks_after_ten(read, files, workers):
        yield from map(read, files[:10])
        raise BrokenProcessPool("a worker was killed")

    monkeypatch.setattr(scan, "_read_in_processes", breaks_after_ten)
    monkeypatch.setattr(scan, "PROCESS_MIN_FILES", 64)
    monkeypatch.setattr(scan.sys, "platform", "linux")
    monkeypatch.setattr(scan.os, "cpu_count", lambda: 2)
    caplog.set_level(logging.WARNING, logger="cnnlab")
    assert scan_images(paths, cache=False) == expected
    assert "Reading files in worker processes failed (a worker was killed); using threads" in (
        caplog.text
    )
