"""Diffs via gitpython and the findings parser."""

from __future__ import annotations

import pytest

from assist_fixtures import git, init_repo
from ssa_code.engine.review import Finding, at_or_above, get_diff, parse_diff, parse_findings, severity_rank
from ssa_code.errors import UsageError


def test_severity_order():
    assert severity_rank("info") < severity_rank("warning") < severity_rank("error")
    assert severity_rank("WARN") == severity_rank("warning")
    with pytest.raises(ValueError, match="unknown severity"):
        severity_rank("fatal-ish")


def test_parse_findings_formats_and_filters():
    text = "\n".join([
        "Findings:",
        "- `src/app.py:12`: **error**: divide by zero when n is 0",
        "src/app.py:3: warning: unused import",
        "2. lib/util.py:4 [WARN] shadowed name",
        "invented.py:9: error: not in the repository",
        "src/app.py:0: error: line zero is not a line",
        "b/src/app.py:7:3: note - prefer a constant",
        "src/app.py:3: warning: unused import",
        "no findings",
    ])
    got = parse_findings(text, {"src/app.py", "lib/util.py"})
    assert got == [
        Finding("src/app.py", 12, "error", "divide by zero when n is 0"),
        Finding("src/app.py", 3, "warning", "unused import"),
        Finding("lib/util.py", 4, "warning", "shadowed name"),
        Finding("src/app.py", 7, "info", "prefer a constant"),
    ]
    assert [f.line for f in at_or_above(got, "warning")] == [12, 3, 4]
    assert [f.line for f in at_or_above(got, "error")] == [12]
    assert parse_findings("no findings", {"src/app.py"}) == []


def test_parse_diff_added_lines():
    d = parse_diff(
        "diff --git a/x.py b/x.py\n--- a/x.py\n+++ b/x.py\n@@ -1,3 +1,4 @@\n a\n+b\n c\n-d\n+e\n"
        "diff --git a/gone.py b/gone.py\n--- a/gone.py\n+++ /dev/null\n@@ -1 +0,0 @@\n-x\n"
    )
    assert d.files == ["x.py"]
    assert d.added == {"x.py": {2, 4}}


@pytest.fixture
def repo(tmp_path):
    (tmp_path / "a.py").write_text("def f():\n    return 1\n")
    return init_repo(tmp_path)


def test_staged_and_range(repo):
    assert get_diff(repo, staged=True).empty
    (repo / "a.py").write_text("def f():\n    return 2\n")
    assert get_diff(repo, staged=True).empty  # not staged yet
    git(repo, "add", "a.py")
    staged = get_diff(repo, staged=True)
    assert staged.files == ["a.py"] and staged.added == {"a.py": {2}}
    git(repo, "commit", "-q", "-m", "two")
    ranged = get_diff(repo, rev="HEAD~1..HEAD")
    assert ranged.files == ["a.py"] and "+    return 2" in ranged.text


def test_bad_inputs(repo, tmp_path_factory):
    with pytest.raises(UsageError, match="cannot diff"):
        get_diff(repo, rev="nope..HEAD")
    with pytest.raises(UsageError, match="not a revision range"):
        get_diff(repo, rev="--output=/tmp/x")
    with pytest.raises(UsageError, match="not a git repository"):
        get_diff(tmp_path_factory.mktemp("plain"))
