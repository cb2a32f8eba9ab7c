"""The kernels folder imported under its folder name (repository root on sys.path).

transformers >= 5.25 imports the PyPI package ``kernels``; run from a checkout (``python -m``,
pytest's rootdir), the folder ``kernels/`` came first and ``import transformers`` failed.
"""
import importlib.machinery
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(ROOT)!r}); {code}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip()


def test_transformers_imports_from_the_repository_root():
    assert _run("from transformers import LlamaConfig, LlamaForCausalLM; print('ok')") == "ok"


def test_top_level_kernels_is_the_installed_package_where_one_is():
    path = [p for p in sys.path if Path(p or ".").resolve() != ROOT]
    installed = importlib.machinery.PathFinder.find_spec("kernels", path)
    got = Path(_run("import kernels; print(kernels.__file__)")).resolve()
    if installed is None:
        assert got == ROOT / "kernels" / "__init__.py"  # nothing to hand over to: the folder itself
    else:
        assert got == Path(installed.origin).resolve()
    # ssa_code.kernels is the folder either way.
    assert Path(_run("import ssa_code.kernels as k; print(k.__file__)")).resolve() == ROOT / "kernels" / "__init__.py"
