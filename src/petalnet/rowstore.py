"""The row store: backbone outputs on disk in a few large, append-only, memory-mapped files.

A second ``fit`` on the same images reads their rows (features, or a frozen front's layer
outputs) from here instead of running the backbone again. Layout (format 2)::

    <root>/rows-v2/index.sqlite              namespaces, shards, and key -> (shard, row)
    <root>/rows-v2/<namespace>/<shard>.rows  raw rows of one namespace, fixed size, appended

* A **namespace** hashes everything that shapes a row: backbone name, a fingerprint of its
  parameters, preprocessing, precision, storage dtype and the petalnet/torchvision versions.
  Change any of them and the old rows are simply never looked at again.
* A **key** hashes the image's absolute path, size and modification time and the view
  (centre crop, mirror, the k-th augmentation). An edited or replaced file gets a new key.
* **Shards** are plain files of ``rows x row_bytes``, read through ``numpy.memmap`` (the page
  cache holds them, not the process) and filled by appending; a shard is full at
  :data:`SHARD_BYTES`, so a million 1280-float rows live in about five files.
* The **index** is one SQLite database (standard library, crash-safe, several processes):
  a row exists once its key is committed there. A writer holds SQLite's own write lock
  (``BEGIN IMMEDIATE``) while it appends to the shard and commits the keys, so two fits can
  fill one cache folder at once. ``kill -9`` at any moment leaves committed rows intact and,
  at most, bytes after the last committed row; the next writer truncates those away.
* The size bound (``max_bytes`` over every namespace of ``root``) evicts whole shards, least
  recently used first. Using a shard updates its time once per read call, not per row; the
  total size is a sum over the shard table, never a scan of the folder.

Why these parts: numpy memory maps give zero-copy reads of any rows without a dependency;
SQLite answers 100 000 key look-ups in well under a second (see ``benchmarks/scale.py``) and
its write lock and journal already give the concurrency and crash safety a lock file plus a
home-made log would; LMDB would do the same job as a new dependency with a fixed map size.
Format 1 (one ``.npy`` file per row) is not read; delete ``<root>/<hash>/`` folders left by it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torchvision

from petalnet._version import __version__

__all__ = [
    "COMMIT_ROWS",
    "DEFAULT_MAX_BYTES",
    "FORMAT",
    "SHARD_BYTES",
    "RowStore",
    "row_key",
    "row_keys",
]

FORMAT = 2
"""Layout version; part of the folder name, so another layout is never misread."""
DEFAULT_MAX_BYTES = 10 * 1024**3
"""Size bound of a cache folder."""
SHARD_BYTES = 1024**3
"""A shard takes no more rows once this large (whole shards are what eviction removes)."""
COMMIT_ROWS = 1024
"""Rows an appender buffers before it writes and commits them (what a crash can lose)."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS namespaces (
    id INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL, description TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS shards (
    id INTEGER PRIMARY KEY, namespace INTEGER NOT NULL, dtype TEXT NOT NULL,
    shape TEXT NOT NULL, rows INTEGER NOT NULL, bytes INTEGER NOT NULL, last_used REAL NOT NULL);
CREATE TABLE IF NOT EXISTS rows (
    namespace INTEGER NOT NULL, key BLOB NOT NULL, shard INTEGER NOT NULL, row INTEGER NOT NULL,
    PRIMARY KEY (namespace, key)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS rows_of_shard ON rows (shard);
"""
_LOOKUP_CHUNK = 500  # keys per SELECT ... IN (...), under every SQLite's variable limit


def row_key(path: str | os.PathLike[str], view: str = "center") -> bytes:
    """Key of one image view: absolute path, size, modification time and view name.

    Args:
        path: The image file.
        view: The view's name (see :meth:`petalnet.features.View.key`).

    Returns:
        A 16-byte digest.

    Raises:
        OSError: The file cannot be found.
    """
    return row_keys(path, [view])[0]


def row_keys(path: str | os.PathLike[str], views: Sequence[str]) -> list[bytes]:
    """:func:`row_key` of several views of one image, the file looked up once.

    Args:
        path: The image file.
        views: The views' names.

    Returns:
        One 16-byte digest per view, in order.

    Raises:
        OSError: The file cannot be found.
    """
    p = Path(path).resolve()
    st = p.stat()
    stem = f"{p}\0{st.st_size}\0{st.st_mtime_ns}\0"
    return [hashlib.blake2b(f"{stem}{view}".encode(), digest_size=16).digest() for view in views]


class RowStore:
    """The rows of one namespace in a cache folder (see the module docs).

    Args:
        root: Folder of the whole cache (all namespaces share its size bound).
        namespace: JSON-compatible description of what shapes the rows.
        max_bytes: Size bound of ``root``; least recently used shards go first.
        dtype: How rows are stored (``"float32"`` or ``"float16"``); part of the namespace.
        shard_bytes: A shard is full at this size (:data:`SHARD_BYTES`).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        namespace: Mapping[str, Any],
        max_bytes: int = DEFAULT_MAX_BYTES,
        dtype: str = "float32",
        shard_bytes: int = SHARD_BYTES,
    ) -> None:
        self.root = Path(root).expanduser()
        self.dtype = np.dtype(dtype)
        described = {
            "format": FORMAT,
            "petalnet": __version__,
            "torchvision": torchvision.__version__,
            **namespace,
            **({} if self.dtype == np.float32 else {"stored_as": self.dtype.name}),
        }
        self.description = json.dumps(described, sort_keys=True, default=str)
        self.namespace = hashlib.blake2b(self.description.encode(), digest_size=12).hexdigest()
        self.home = self.root / f"rows-v{FORMAT}"
        self.dir = self.home / self.namespace
        self.max_bytes = int(max_bytes)
        self.shard_bytes = int(shard_bytes)
        self.hits = 0
        self.misses = 0

    key = staticmethod(row_key)

    # -- the index ---------------------------------------------------------------------------
    def _connect(self, create: bool) -> sqlite3.Connection | None:
        """The index (``None`` if there is none and ``create`` is false).

        A damaged index (not an SQLite file) is removed with every shard: the rows are
        recomputed, which is all a cache owes.
        """
        db = self.home / "index.sqlite"
        if not create and not db.exists():
            return None
        self.home.mkdir(parents=True, exist_ok=True)
        for attempt in (1, 2):
            con = sqlite3.connect(db, timeout=120, isolation_level=None)  # explicit transactions
            try:
                con.execute("PRAGMA synchronous=NORMAL")
                known = con.execute("SELECT 1 FROM sqlite_master WHERE name = 'rows'").fetchone()
                if known is None:  # a new index: readers never take the write lock for this
                    con.execute("PRAGMA journal_mode=WAL")  # persistent: set once
                    con.executescript(_SCHEMA)
                return con
            except sqlite3.DatabaseError as exc:
                con.close()
                # "locked" and other operational errors leave the store alone; only a file
                # that is no database at all is replaced
                if attempt == 2 or not create or isinstance(exc, sqlite3.OperationalError):
                    raise
                shutil.rmtree(self.home, ignore_errors=True)
                self.home.mkdir(parents=True, exist_ok=True)
        raise AssertionError("unreachable")

    def _namespace_id(self, con: sqlite3.Connection, create: bool) -> int | None:
        got = con.execute("SELECT id FROM namespaces WHERE name = ?", (self.namespace,)).fetchone()
        if got is not None or not create:
            return None if got is None else int(got[0])
        cur = con.execute(
            "INSERT INTO namespaces (name, description) VALUES (?, ?)",
            (self.namespace, self.description),
        )
        return int(cur.lastrowid or 0)

    def _shard_file(self, shard: int) -> Path:
        return self.dir / f"{shard:06d}.rows"

    # -- reading -----------------------------------------------------------------------------
    def read_into(self, keys: Sequence[bytes | None], out: np.ndarray) -> np.ndarray:
        """Copy the stored row of each key into ``out[i]``; ``None`` keys are skipped.

        Args:
            keys: One key (or ``None``) per row of ``out``.
            out: ``(len(keys), D)`` array to fill (a memory map or memory).

        Returns:
            ``(len(keys),)`` booleans: which rows were found and copied (a damaged or
            missing store finds none; the caller computes them again).
        """
        found = np.zeros(len(keys), dtype=bool)
        wanted = {k: i for i, k in enumerate(keys) if k is not None}
        if wanted:
            try:
                self._read(wanted, out, found)
            except sqlite3.Error:
                found[:] = False
        hits = int(found.sum())
        self.hits += hits
        self.misses += len(wanted) - hits
        return found

    def _read(self, wanted: dict[bytes, int], out: np.ndarray, found: np.ndarray) -> None:
        con = self._connect(create=False)
        if con is None:
            return
        with closing(con):
            ns = self._namespace_id(con, create=False)
            if ns is None:
                return
            where: dict[int, list[tuple[int, int]]] = {}  # shard -> [(row, slot)]
            listed = list(wanted)
            for start in range(0, len(listed), _LOOKUP_CHUNK):
                part = listed[start : start + _LOOKUP_CHUNK]
                query = "SELECT key, shard, row FROM rows WHERE namespace = ? AND key IN ({})"
                for key, shard, row in con.execute(
                    query.format(",".join("?" * len(part))), (ns, *part)
                ):
                    where.setdefault(int(shard), []).append((int(row), wanted[bytes(key)]))
            shapes = {
                int(s): (n, tuple(json.loads(shape)), np.dtype(dt))
                for s, n, shape, dt in con.execute(
                    "SELECT id, rows, shape, dtype FROM shards WHERE namespace = ?", (ns,)
                )
            }
            used = []
            for shard, pairs in where.items():
                if shard in shapes and self._copy(shard, shapes[shard], pairs, out):
                    found[[slot for _, slot in pairs]] = True
                    used.append(shard)
            if used:  # one write per call: these shards were used now
                con.execute(
                    f"UPDATE shards SET last_used = ? WHERE id IN ({','.join('?' * len(used))})",
                    (time.time(), *used),
                )

    def _copy(
        self,
        shard: int,
        layout: tuple[int, tuple[int, ...], np.dtype[Any]],
        pairs: list[tuple[int, int]],
        out: np.ndarray,
    ) -> bool:
        """Copy rows of one shard into their slots of ``out``; ``False`` if it is unusable."""
        n, shape, dtype = layout
        if tuple(out.shape[1:]) != shape:
            return False
        try:
            rows = np.memmap(self._shard_file(shard), dtype=dtype, mode="r", shape=(n, *shape))
        except (OSError, ValueError):  # evicted or damaged meanwhile: recomputed
            return False
        pairs.sort()
        src = np.fromiter((r for r, _ in pairs), dtype=np.int64, count=len(pairs))
        dst = np.fromiter((s for _, s in pairs), dtype=np.int64, count=len(pairs))
        for start in range(0, len(src), 4096):  # bounded temporaries
            out[dst[start : start + 4096]] = rows[src[start : start + 4096]]
        del rows
        return True

    # -- writing -----------------------------------------------------------------------------
    @contextmanager
    def appender(self) -> Iterator[_Appender]:
        """Collect rows to store; they are committed in groups and when the block ends.

        Yields:
            An object whose ``add(keys, rows)`` stores ``rows[i]`` under ``keys[i]``.
        """
        app = _Appender(self)
        try:
            yield app
        finally:
            app.flush()
            if app.written:
                self.evict()

    def _append(self, keys: list[bytes], rows: np.ndarray) -> None:
        """Write rows to the namespace's open shard and commit their keys (one transaction)."""
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        row_bytes = int(rows[0].nbytes)
        cap = max(1, self.shard_bytes // max(row_bytes, 1))
        shape = json.dumps(list(rows.shape[1:]))
        con = self._connect(create=True)
        assert con is not None
        with closing(con):
            con.execute("BEGIN IMMEDIATE")  # SQLite's write lock: one writer at a time
            try:
                ns = self._namespace_id(con, create=True)
                done = 0
                while done < len(keys):
                    got = con.execute(
                        "SELECT id, rows FROM shards WHERE namespace = ? AND shape = ? AND "
                        "dtype = ? AND rows < ? ORDER BY id DESC LIMIT 1",
                        (ns, shape, self.dtype.name, cap),
                    ).fetchone()
                    if got is None:
                        cur = con.execute(
                            "INSERT INTO shards (namespace, dtype, shape, rows, bytes, last_used) "
                            "VALUES (?, ?, ?, 0, 0, ?)",
                            (ns, self.dtype.name, shape, time.time()),
                        )
                        shard, used = int(cur.lastrowid or 0), 0
                    else:
                        shard, used = int(got[0]), int(got[1])
                    take = min(cap - used, len(keys) - done)
                    self.dir.mkdir(parents=True, exist_ok=True)
                    path = self._shard_file(shard)
                    with open(path, "r+b" if path.exists() else "w+b") as f:
                        if os.fstat(f.fileno()).st_size < used * row_bytes:  # cut short
                            con.execute("DELETE FROM rows WHERE shard = ?", (shard,))
                            used = 0
                            take = min(cap, len(keys) - done)
                        f.truncate(used * row_bytes)  # drops a torn tail of a killed writer
                        f.seek(used * row_bytes)
                        f.write(rows[done : done + take].tobytes())
                    con.executemany(
                        "INSERT OR IGNORE INTO rows (namespace, key, shard, row) VALUES (?,?,?,?)",
                        [(ns, keys[done + j], shard, used + j) for j in range(take)],
                    )
                    con.execute(
                        "UPDATE shards SET rows = ?, bytes = ?, last_used = ? WHERE id = ?",
                        (used + take, (used + take) * row_bytes, time.time(), shard),
                    )
                    done += take
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise

    def evict(self) -> int:
        """Delete least recently used shards until ``root`` fits ``max_bytes``.

        Returns:
            Number of bytes freed.
        """
        try:
            con = self._connect(create=False)
        except sqlite3.Error:
            return 0
        if con is None:
            return 0
        freed = 0
        with closing(con):
            con.execute("BEGIN IMMEDIATE")
            try:
                total = int(con.execute("SELECT COALESCE(SUM(bytes), 0) FROM shards").fetchone()[0])
                doomed = []
                for shard, name, size in con.execute(
                    "SELECT shards.id, namespaces.name, shards.bytes FROM shards "
                    "JOIN namespaces ON namespaces.id = shards.namespace ORDER BY last_used"
                ).fetchall():
                    if total - freed <= self.max_bytes:
                        break
                    doomed.append((int(shard), str(name)))
                    freed += int(size)
                for shard, _ in doomed:
                    con.execute("DELETE FROM rows WHERE shard = ?", (shard,))
                    con.execute("DELETE FROM shards WHERE id = ?", (shard,))
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        for shard, name in doomed:  # after the commit: no index entry points there any more
            (self.home / name / f"{shard:06d}.rows").unlink(missing_ok=True)
        return freed


class _Appender:
    """Buffers rows for :meth:`RowStore._append`; see :meth:`RowStore.appender`."""

    def __init__(self, store: RowStore) -> None:
        self.store = store
        self.keys: list[bytes] = []
        self.rows: list[np.ndarray] = []
        self.written = 0

    def add(self, keys: Sequence[bytes], rows: np.ndarray) -> None:
        """Store ``rows[i]`` under ``keys[i]`` (committed with the next group)."""
        self.keys.extend(keys)
        self.rows.append(np.asarray(rows))
        if len(self.keys) >= COMMIT_ROWS:
            self.flush()

    def flush(self) -> None:
        """Write and commit what is buffered; a failure to write only costs the cache."""
        if not self.keys:
            return
        keys, rows = self.keys, np.concatenate(self.rows)
        self.keys, self.rows = [], []
        try:
            self.store._append(keys, rows)
        except (OSError, sqlite3.Error):
            return
        self.written += len(keys)
