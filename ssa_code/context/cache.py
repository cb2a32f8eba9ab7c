"""Content-addressed on-disk cache for parse results and token ids.

Entries are keyed by git blob id (the SHA-1 git gives a file's bytes) plus everything else
that determines the value (format version, query digest, tokenizer fingerprint), so an entry
never goes stale: a changed file has a new blob id.  The cache lives in the user's cache
directory (``platformdirs.user_cache_dir("ssa-code")``, or ``$SSA_CODE_CACHE_DIR``), never
inside the repository being packed.

Values are plain data (tuples, lists, str, int, bytes) serialised with :mod:`marshal`, several
times faster to load than pickle for thousands of small tuples; the Python version is part of
the file name since marshal's format may change between versions.

Storage is one SQLite database per format version (``context-v<N>-py<XY>.sqlite``): a pack writes
thousands of small entries, and one transaction is far cheaper than thousands of
temp-file-and-rename writes; SQLite's journal makes each batch atomic and lets concurrent
runs share the file.  A cache that cannot be opened, read or written is simply not used.
"""

from __future__ import annotations

import hashlib
import os
import marshal
import sqlite3
import sys
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

from ssa_code.context.format import FORMAT_VERSION

ENV_CACHE_DIR = "SSA_CODE_CACHE_DIR"
_DB_ERRORS = (sqlite3.Error, OSError)


def default_cache_dir() -> Path:
    """``$SSA_CODE_CACHE_DIR`` if set, else the platform's user cache dir for ssa-code."""
    env = os.environ.get(ENV_CACHE_DIR)
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("ssa-code"))


def blob_id(data: bytes) -> str:
    """The git blob id of ``data`` (what ``git hash-object`` prints)."""
    h = hashlib.sha1(b"blob %d\0" % len(data))
    h.update(data)
    return h.hexdigest()


def db_name() -> str:
    """File name of the cache database: format version and Python version (marshal)."""
    return f"context-v{FORMAT_VERSION}-py{sys.version_info[0]}{sys.version_info[1]}.sqlite"


class BlobCache:
    """A key -> marshalled value table ``kind`` in ``root/<db_name()>``.

    Args:
        root: cache root; ``None`` disables the cache (every lookup misses, writes are no-ops).
        kind: namespace, e.g. ``"parse"`` or ``"tokens"`` (one table each).
    """

    def __init__(self, root: Optional[Path], kind: str) -> None:
        if not kind.isidentifier():
            raise ValueError(f"cache kind must be an identifier, got {kind!r}")
        self.path = None if root is None else Path(root) / db_name()
        self.kind = kind
        self.hits = 0
        self.misses = 0
        self._db: Optional[sqlite3.Connection] = None
        self._failed = self.path is None

    @staticmethod
    def key(*parts: str) -> str:
        """Stable key from parts (blob id first); hashed so any part may be long."""
        return hashlib.sha1("\0".join(parts).encode("utf-8", "surrogatepass")).hexdigest()

    def _conn(self) -> Optional[sqlite3.Connection]:
        if self._failed:
            return None
        if self._db is None:
            assert self.path is not None
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                # check_same_thread=False: the packer tokenizes in a worker thread; every
                # use of one connection is still sequential.
                db = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
                db.execute("PRAGMA journal_mode=WAL")
                db.execute(f"CREATE TABLE IF NOT EXISTS {self.kind} (key TEXT PRIMARY KEY, value BLOB)")
                db.commit()
                self._db = db
            except _DB_ERRORS:
                self._failed = True
                return None
        return self._db

    def get_many(self, keys: Sequence[str]) -> dict[str, Any]:
        """Stored values of those ``keys`` that are present (unreadable entries are misses)."""
        db = self._conn()
        found: dict[str, Any] = {}
        if db is not None:
            try:
                for i in range(0, len(keys), 500):
                    chunk = list(keys[i:i + 500])
                    marks = ",".join("?" * len(chunk))
                    for k, v in db.execute(f"SELECT key, value FROM {self.kind} WHERE key IN ({marks})", chunk):
                        try:
                            found[k] = marshal.loads(v)
                        except (EOFError, ValueError, TypeError):
                            continue
            except _DB_ERRORS:
                self._failed = True
        self.hits += len(found)
        self.misses += len(keys) - len(found)
        return found

    def get(self, key: str) -> Any:
        """The stored value or ``None``."""
        return self.get_many([key]).get(key)

    def put_many(self, items: Iterable[tuple[str, Any]]) -> None:
        """Store values in one transaction; failures (read-only or full disk) disable the cache."""
        db = self._conn()
        if db is None:
            return
        rows = [(k, marshal.dumps(v)) for k, v in items]
        if not rows:
            return
        try:
            with db:
                db.executemany(f"INSERT OR REPLACE INTO {self.kind} (key, value) VALUES (?, ?)", rows)
        except _DB_ERRORS:
            # A cache is an optimisation: never fail a pack because it cannot be written.
            self._failed = True

    def put(self, key: str, value: Any) -> None:
        self.put_many([(key, value)])

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


def cache_root_for(repo_root: Path, cache_dir: Optional[Path]) -> Optional[Path]:
    """The cache root to use for a repository, or ``None`` when it would lie inside it."""
    root = default_cache_dir() if cache_dir is None else Path(cache_dir)
    try:
        resolved = root.expanduser().resolve()
        repo = repo_root.resolve()
    except OSError:
        return None
    if resolved == repo or repo in resolved.parents:
        return None
    return root
