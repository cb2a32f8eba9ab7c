"""Cold and warm whole-process time of ``ssa-code pack`` on a real 100K+-line repository.

The repository is an installed package's source tree (code nobody on this project wrote),
copied into a temporary directory and committed with git.  "Cold" runs with an empty cache
directory; "warm" runs again with the cache the cold run filled.  Each run is a fresh
``ssa-code pack`` (``python -c 'from ssa_code.cli.app import main; main()'``) process, so interpreter start and imports are included.

    .venv/bin/python benchmarks/bench_context.py                  # pygments from site-packages
    .venv/bin/python benchmarks/bench_context.py --package networkx --runs 3
    .venv/bin/python benchmarks/bench_context.py --source /path/to/tree
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_COLD_S = 10.0
TARGET_WARM_S = 2.0


def package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"package {name!r} is not installed")
    return Path(list(spec.submodule_search_locations)[0])


def make_repo(source: Path, dest: Path) -> None:
    """Copy ``source`` (without caches) to ``dest/<name>`` and commit it."""
    shutil.copytree(source, dest / source.name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.so"))
    env = {**os.environ, "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@example.com",
           "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@example.com"}
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-q", "-m", "import"]):
        subprocess.run(cmd, cwd=dest, check=True, env=env)


def run_pack(repo: Path, cache: Path, extra: list[str]) -> tuple[float, float, dict]:
    """(wall seconds, CPU seconds user+sys, summary) of one ``ssa-code pack`` process."""
    env = {**os.environ, "SSA_CODE_CACHE_DIR": str(cache)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", "from ssa_code.cli.app import main; main()", "pack", str(repo), "--output", os.devnull, "--json", *extra],
        env=env, capture_output=True, text=True,
    )
    seconds = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        raise SystemExit(f"pack failed ({proc.returncode}): {proc.stderr.strip()}")
    return seconds, cpu, json.loads(proc.stderr.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--package", default="pygments", help="installed package whose source tree to pack")
    ap.add_argument("--source", type=Path, help="a directory to pack instead of a package")
    ap.add_argument("--runs", type=int, default=3, help="cold and warm runs each (median reported)")
    ap.add_argument("--question", default=None, help="also pass --question")
    args = ap.parse_args()
    source = args.source or package_dir(args.package)
    extra = ["--question", args.question] if args.question else []
    with tempfile.TemporaryDirectory(prefix="ssa-bench-") as tmp:
        repo = Path(tmp) / "repo"
        repo.mkdir()
        make_repo(source, repo)
        cold, warm, cold_cpu, warm_cpu = [], [], [], []
        summary: dict = {}
        for i in range(args.runs):
            cache = Path(tmp) / f"cache{i}"
            seconds, cpu, summary = run_pack(repo, cache, extra)
            cold.append(seconds)
            cold_cpu.append(cpu)
            seconds, cpu, _ = run_pack(repo, cache, extra)
            warm.append(seconds)
            warm_cpu.append(cpu)
        for xs in (cold, warm, cold_cpu, warm_cpu):
            xs.sort()
        result = {
            "source": str(source),
            "files": summary["files"],
            "lines": summary["lines"],
            "tokens": summary["tokens"],
            "skipped": len(summary["skipped"]),
            "cpus": os.cpu_count(),
            "cold_s": round(cold[len(cold) // 2], 2),
            "warm_s": round(warm[len(warm) // 2], 2),
            "cold_cpu_s": round(cold_cpu[len(cold_cpu) // 2], 2),
            "warm_cpu_s": round(warm_cpu[len(warm_cpu) // 2], 2),
            "load_average_1m": round(os.getloadavg()[0], 2),
            "cold_runs": [round(x, 2) for x in cold],
            "warm_runs": [round(x, 2) for x in warm],
            "target_cold_s": TARGET_COLD_S,
            "target_warm_s": TARGET_WARM_S,
        }
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
