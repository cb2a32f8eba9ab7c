"""Throwaway git repositories for the repository-context tests (imported by tests and conftest)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Mapping, Union

ROOT = Path(__file__).resolve().parents[2]
SAMPLE_REPO = ROOT / "examples" / "sample-repo"

GIT_ENV = {
    "GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@example.com",
    "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@example.com",
    "GIT_AUTHOR_DATE": "2024-01-01T00:00:00Z", "GIT_COMMITTER_DATE": "2024-01-01T00:00:00Z",
    "GIT_CONFIG_NOSYSTEM": "1", "HOME": "/nonexistent-home-for-tests",
}


def git(repo: Path, *args: str) -> str:
    env = {**os.environ, **GIT_ENV}
    proc = subprocess.run(["git", "-c", "commit.gpgsign=false", "-c", "init.defaultBranch=main", *args],
                          cwd=repo, env=env, capture_output=True, text=True, check=True)
    return proc.stdout


def make_repo(path: Path, files: Mapping[str, Union[str, bytes]], commit: bool = True) -> Path:
    """A git repository at ``path`` holding ``files`` (text or bytes), committed."""
    path.mkdir(parents=True, exist_ok=True)
    for rel, content in files.items():
        f = path / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            f.write_bytes(content)
        else:
            f.write_bytes(content.encode("utf-8"))
    git(path, "init", "-q")
    if commit:
        git(path, "add", "-A")
        git(path, "commit", "-q", "-m", "init", "--allow-empty")
    return path


def copy_sample(dest_parent: Path) -> Path:
    """examples/sample-repo copied to ``dest_parent/sample-repo`` and committed."""
    dest = dest_parent / "sample-repo"
    shutil.copytree(SAMPLE_REPO, dest)
    git(dest, "init", "-q")
    git(dest, "add", "-A")
    git(dest, "commit", "-q", "-m", "sample")
    return dest
