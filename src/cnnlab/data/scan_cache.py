"""Per-file results of the pre-flight scan and the dataset check, kept between runs.

Decoding every file is the slow part of starting a run on file data (about
1 ms per CIFAR-sized JPEG, tens of ms per photo). Its result depends only on
the file, so it is kept, keyed by the file's absolute path, size and
modification time (``st_mtime_ns``): a second run on the same data reads the
results instead of the images, and a changed, added or removed file is
rescanned alone (a removed file's entry is dropped).

Where: ``$CNNLAB_CACHE_DIR`` if set, else ``~/.cache/cnnlab/scan/``; one
SQLite file per source folder (the folder its files share), named
``<folder name>-<hash of its absolute path>.sqlite``. SQLite writes in
transactions, so an interrupted run leaves the results it had committed and
never half a row; concurrent runs wait for each other's writes.

Bypass: ``CNNLAB_NO_CACHE=1`` (or ``cache=False`` in the Python API,
``--no-cache`` on ``cnnlab data inspect``). Clear: ``cnnlab data cache clear``
or :func:`clear_cache`.

Not caught: a file rewritten with the same size within the same mtime tick
(or whose mtime was set back, e.g. ``cp -p`` of a same-size file): clear the
cache after such edits.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path

log = logging.getLogger("cnnlab")

# Bump when what is stored changes meaning (a new field, a different decoder): old entries go.
CACHE_VERSION = "1"
_BATCH = 2000  # rows per transaction while results arrive

# The kinds of entry: the pre-flight scan's, and the dataset check's with a full decode
# (written by the scan too, from the same read) or a reduced-scale one.
SCAN, CHECK_FULL, CHECK_FAST = "scan", "check-full", "check-fast"
KINDS = (SCAN, CHECK_FULL, CHECK_FAST)


def cache_dir() -> Path:
    """Where the cache files live: ``$CNNLAB_CACHE_DIR`` or ``~/.cache/cnnlab/scan/``."""
    env = os.environ.get("CNNLAB_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "cnnlab" / "scan"


def cache_enabled(cache: bool | None = None) -> bool:
    """False when ``cache`` is False or ``CNNLAB_NO_CACHE`` is set to 1/true/yes."""
    if cache is False:
        return False
    return os.environ.get("CNNLAB_NO_CACHE", "").strip().lower() not in ("1", "true", "yes")


def cache_files() -> list[Path]:
    """The cache's SQLite files, one per source folder."""
    root = cache_dir()
    return sorted(root.glob("*.sqlite")) if root.is_dir() else []


def clear_cache() -> tuple[int, int]:
    """Delete every cache file (and SQLite's -wal/-shm companions); returns (files, bytes)."""
    count = size = 0
    for db in cache_files():
        for path in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
            try:
                size += path.stat().st_size
                path.unlink()
            except FileNotFoundError:
                continue
        count += 1
    return count, size


def cache_summary() -> list[dict]:
    """One row per cache file: its name, size, entries, the folder it serves and whether it exists."""
    rows = []
    for db in cache_files():
        try:
            with sqlite3.connect(db, timeout=5) as conn:
                entries = conn.execute("SELECT COUNT(*) FROM files").fetchone()[0]
                row = conn.execute("SELECT value FROM meta WHERE key='folder'").fetchone()
            conn.close()
        except sqlite3.Error:
            entries, row = 0, None
        folder = row[0] if row else "?"
        size = sum(p.stat().st_size for p in db.parent.glob(db.name + "*"))
        rows.append(
            {
                "file": db.name,
                "bytes": size,
                "entries": entries,
                "folder": folder,
                "exists": os.path.isdir(folder),
            }
        )
    return rows


def _folder(paths: Sequence[str]) -> str:
    dirs = {os.path.dirname(p) for p in paths}
    return os.path.commonpath(sorted(dirs)) if dirs else "/"


def _absolute(path: str) -> str:
    return path if os.path.isabs(path) else os.path.abspath(path)


def _stat(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


class FileCache:
    """One source folder's cache file, for one kind of result (``scan``, ``check-full``...).

    ``also``: other kinds whose entries count as hits too, preferred to this kind's own
    (a fast check takes a full-decode check's result: it is at least as good).

    Example:
        >>> cache = FileCache.open(paths, "scan")       # None when disabled
        >>> hits, keys = cache.lookup(paths)            # {index: (value, blob)}, stat per path
        >>> cache.store([(paths[i], keys[i], value, None) for i, value in results])
    """

    def __init__(self, db: Path, kind: str, folder: str = "", also: Sequence[str] = ()):
        self.db, self.kind = db, kind
        self.kinds = (*[k for k in also if k != kind], kind)  # lookup order, preferred first
        self._pending: dict[str, list[tuple]] = {}
        self.conn = sqlite3.connect(db, timeout=60, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        with self.conn:
            self.conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
            row = self.conn.execute("SELECT value FROM meta WHERE key='version'").fetchone()
            if row is None or row[0] != CACHE_VERSION:
                self.conn.execute("DROP TABLE IF EXISTS files")
                self.conn.execute(
                    "INSERT OR REPLACE INTO meta VALUES ('version', ?)", (CACHE_VERSION,)
                )
            self.conn.execute("INSERT OR REPLACE INTO meta VALUES ('folder', ?)", (folder,))
            self.conn.execute(
                "CREATE TABLE IF NOT EXISTS files (kind TEXT, path TEXT, size INTEGER, "
                "mtime_ns INTEGER, value TEXT, blob BLOB, PRIMARY KEY (kind, path))"
            )

    @classmethod
    def open(
        cls, paths: Sequence[str], kind: str, cache: bool | None = None, also: Sequence[str] = ()
    ) -> FileCache | None:
        """The cache for these files, or None when disabled or when it cannot be opened."""
        if not cache_enabled(cache) or not paths:
            return None
        folder = _folder([_absolute(p) for p in paths])
        name = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in Path(folder).name)
        digest = hashlib.sha1(folder.encode()).hexdigest()[:12]
        db = cache_dir() / f"{name or 'root'}-{digest}.sqlite"
        try:
            db.parent.mkdir(parents=True, exist_ok=True)
            return cls(db, kind, folder, also)
        except (OSError, sqlite3.Error) as e:
            log.warning("Scan cache unavailable (%s: %s); scanning every file", db, e)
            return None

    def lookup(
        self, paths: Sequence[str]
    ) -> tuple[dict[int, tuple[str, bytes | None]], list[tuple[int, int] | None]]:
        """Cached results of unchanged files, by index; and each file's (size, mtime_ns).

        A file's entry of the first of :attr:`kinds` that has one for its current size
        and mtime is the hit. Files that no longer exist and have an entry of these kinds
        lose their entries of every kind.
        """
        absolute = [_absolute(p) for p in paths]
        keys = [_stat(p) for p in absolute]
        hits: dict[int, tuple[str, bytes | None]] = {}
        gone: set[str] = set()
        for kind in self.kinds:
            rows = {
                path: (size, mtime, value, blob)
                for path, size, mtime, value, blob in self.conn.execute(
                    "SELECT path, size, mtime_ns, value, blob FROM files WHERE kind=?", (kind,)
                )
            }
            for i, (path, key) in enumerate(zip(absolute, keys)):
                row = rows.pop(path, None)
                if i not in hits and row is not None and key is not None and row[:2] == key:
                    hits[i] = (row[2], row[3])
            gone.update(p for p in rows if not os.path.exists(p))  # rows of files not asked for
        if gone:
            self._delete(sorted(gone))
        return hits, keys

    def _delete(self, paths: Sequence[str]) -> None:
        """Drop every entry (of any kind) of these files."""
        kinds = dict.fromkeys((*KINDS, *self.kinds))  # by (kind, path): the table's key
        try:
            with self.conn:
                self.conn.executemany(
                    "DELETE FROM files WHERE kind=? AND path=?",
                    ((k, p) for k in kinds for p in paths),
                )
        except sqlite3.Error as e:
            log.warning("Scan cache not updated (%s: %s)", self.db, e)

    def store(
        self,
        items: Iterable[tuple[str, tuple[int, int] | None, str, bytes | None]],
        kind: str | None = None,
    ) -> None:
        """Save ``(path, (size, mtime_ns), value, blob)`` rows of ``kind`` (default: this
        cache's), in transactions of _BATCH."""
        kind = kind or self.kind
        batch = []
        for path, key, value, blob in items:
            if key is None:  # could not stat: nothing to key it by
                continue
            batch.append((kind, _absolute(path), key[0], key[1], value, blob))
            if len(batch) >= _BATCH:
                self._insert(batch)
                batch = []
        if batch:
            self._insert(batch)

    def _insert(self, batch: list[tuple]) -> None:
        try:
            with self.conn:  # one transaction: all of the batch or none of it
                self.conn.executemany(
                    "INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?)", batch
                )
        except sqlite3.Error as e:
            log.warning("Scan cache not updated (%s: %s)", self.db, e)

    def add(
        self,
        path: str,
        key: tuple[int, int] | None,
        value: str,
        blob: bytes | None,
        kind: str | None = None,
    ) -> None:
        """Queue one row (of ``kind``, default this cache's) as results arrive; written
        _BATCH rows at a time, the rest by close."""
        kind = kind or self.kind
        pending = self._pending.setdefault(kind, [])
        pending.append((path, key, value, blob))
        if len(pending) >= _BATCH:
            self.store(pending, kind)
            pending.clear()

    def close(self) -> None:
        """Write the queued rows and close the file."""
        for kind, pending in self._pending.items():
            if pending:
                self.store(pending, kind)
        self._pending = {}
        self.conn.close()
