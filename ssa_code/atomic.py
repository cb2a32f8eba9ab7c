"""Files replaced whole: written beside their destination, then renamed over it.

A reader (or a crash) never sees a half-written file: ``os.replace`` within one directory is
atomic on POSIX and Windows. Used by every writer of a user-visible file (``ssa-code pack
--output``, the saved SSA state, the pre-commit hook, benchmark reports).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# The process's umask, read once (reading it means setting it): mkstemp makes files 0600, and a
# replaced file should get the permissions an ordinary open() would have given it.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


@contextmanager
def replacing(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary path in ``path``'s directory; on a normal exit it is renamed
    over ``path``, on an exception it is removed and ``path`` is left as it was.

    The directory must exist. The temporary name is unique (``mkstemp``), so two writers of
    one destination never share a temporary file; the last rename wins. The result keeps the
    mode of the file it replaces, or gets ``0o666`` less the umask for a new one.
    """
    path = Path(path)
    try:
        mode = path.stat().st_mode & 0o7777
    except FileNotFoundError:
        mode = 0o666 & ~_UMASK
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    os.chmod(tmp, mode)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Replace ``path`` with ``data`` (see :func:`replacing`)."""
    with replacing(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    """Replace ``path`` with ``text`` (see :func:`replacing`)."""
    write_bytes(path, text.encode(encoding))
