"""When this folder is imported as the top-level package ``kernels`` instead of ``ssa_code.kernels``.

That happens whenever the repository root is on ``sys.path`` ahead of site-packages:
``python -m ...`` run from a checkout, or pytest's rootdir insertion. The folder then hides the
PyPI package ``kernels`` (Hugging Face's hub kernels), which transformers imports from 5.25 on:
``from kernels import CUDAProperties`` failed with an ImportError inside ``import transformers``.
The folder's name is part of the project layout (DESIGN.md: top-level ``kernels/``, installed
as ``ssa_code.kernels``), so instead of renaming it, an import under the wrong name hands over to
the installed package.
"""
from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
from pathlib import Path


def hand_over_to_installed(name: str = "kernels") -> bool:
    """Put the installed package ``name`` found outside the repository into ``sys.modules``.

    Called from this folder's ``__init__`` while it is being imported as ``name``: the import
    system returns ``sys.modules[name]`` once that body ends, so the importer gets the installed
    package. Returns False (and changes nothing) when no other package of that name is installed;
    the import then yields this folder, as it did before transformers looked for ``kernels``.
    """
    root = Path(__file__).resolve().parents[1]
    path = [p for p in sys.path if Path(p or ".").resolve() != root]
    spec = importlib.machinery.PathFinder.find_spec(name, path)
    if spec is None or spec.loader is None:
        return False
    ours = sys.modules.get(name)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        if ours is not None:
            sys.modules[name] = ours
        raise
    return True
