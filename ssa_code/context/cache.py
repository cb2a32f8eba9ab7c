"""Content-addressed on-disk cache for parse results and token ids.

Entries are keyed by git blob id (the SHA-1 git gives a file's bytes) plus everything else
that determines the value (format version, query digest, tokenizer fingerprint), so an entry
never goes stale: a changed file has a new blob id.  The cache lives in the user's cache
directory (``platformdirs.user_cache_dir("ssa-code")``, or ``$SSA_CODE_CACHE_DIR``), never
inside the repository being packed.  Each entry is one small pickle written atomically
(temporary file in the same directory, then ``os.replace``), so concurrent runs never see a
half-written entry; an unreadable entry is treated as a miss.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any, Optional

from ssa_code.context.format import FORMAT_VERSION

ENV_CACHE_DIR = "SSA_CODE_CACHE_DIR"


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


class BlobCache:
    """A directory of pickled values, one file per key, under ``root/context-v<N>/<kind>/``.

    Args:
        root: cache root; ``None`` disables the cache (every ``get`` misses, ``put`` is a no-op).
        kind: namespace, e.g. ``"parse"`` or ``"tokens"``.
    """

    def __init__(self, root: Optional[Path], kind: str) -> None:
        self.dir = None if root is None else Path(root) / f"context-v{FORMAT_VERSION}" / kind
        self.hits = 0
        self.misses = 0
        self._write_ok = True

    @staticmethod
    def key(*parts: str) -> str:
        """Stable key from parts (blob id first); hashed so any part may be long."""
        return hashlib.sha1("\0".join(parts).encode("utf-8", "surrogatepass")).hexdigest()

    def _path(self, key: str) -> Path:
        assert self.dir is not None
        return self.dir / key[:2] / key[2:]

    def get(self, key: str) -> Any:
        """The stored value or ``None``."""
        if self.dir is None:
            self.misses += 1
            return None
        try:
            with open(self._path(key), "rb") as fh:
                value = pickle.load(fh)
        except (OSError, EOFError, pickle.UnpicklingError, AttributeError, ImportError, ValueError, TypeError):
            self.misses += 1
            return None
        self.hits += 1
        return value

    def put(self, key: str, value: Any) -> None:
        """Store ``value`` atomically; failures (read-only disk, full disk) only disable writes."""
        if self.dir is None or not self._write_ok:
            return
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as fh:
                    pickle.dump(value, fh, protocol=pickle.HIGHEST_PROTOCOL)
                os.replace(tmp, path)
            except BaseException:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
                raise
        except OSError:
            # A cache is an optimisation: never fail a pack because it cannot be written.
            self._write_ok = False


def cache_root_for(repo_root: Path, cache_dir: Optional[Path]) -> Optional[Path]:
    """The cache root to use for a repository, or ``None`` when it would lie inside it."""
    root = default_cache_dir() if cache_dir is None else Path(cache_dir)
    try:
        resolved = root.resolve()
        repo = repo_root.resolve()
    except OSError:
        return None
    if resolved == repo or repo in resolved.parents:
        return None
    return root
