"""Files replaced whole (ssa_code.atomic): all or nothing, no temporary left, sane modes."""

from __future__ import annotations

import os
import stat

import pytest

from ssa_code import atomic


def test_write_replaces_whole_and_leaves_no_temporary(tmp_path):
    p = tmp_path / "out.txt"
    atomic.write_text(p, "first\n")
    atomic.write_bytes(p, b"second\n")
    assert p.read_text() == "second\n"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["out.txt"]


def test_a_failed_write_keeps_the_old_file(tmp_path):
    p = tmp_path / "out.txt"
    p.write_text("kept\n")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic.replacing(p) as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk full")
    assert p.read_text() == "kept\n"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["out.txt"]
    with pytest.raises(FileNotFoundError):
        atomic.write_text(tmp_path / "missing" / "x.txt", "no directory")


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_modes_follow_the_replaced_file_or_the_umask(tmp_path):
    new = tmp_path / "new.txt"
    atomic.write_text(new, "x")
    # A new file gets 0o666 less the umask (read at import), not mkstemp's 0600.
    assert stat.S_IMODE(new.stat().st_mode) == 0o666 & ~atomic._UMASK
    ex = tmp_path / "hook"
    ex.write_text("#!/bin/sh\n")
    ex.chmod(0o755)
    atomic.write_text(ex, "#!/bin/sh\nexit 0\n")
    assert stat.S_IMODE(ex.stat().st_mode) == 0o755
