"""The header line format, and that format.py imports without tree-sitter or gitpython."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ssa_code.context.format import count_lines, file_block, file_header, normalise_text, parse_header


def test_header_round_trip():
    h = file_header("src/a b.py", "python", 12)
    assert h == "=== src/a b.py (python, 12 lines) ===\n"
    assert parse_header(h).path == "src/a b.py"
    assert parse_header(h).lines == 12
    assert file_header("x", "text", 1) == "=== x (text, 1 line) ===\n"
    assert parse_header("=== x (text, 1 line) ===").language == "text"
    assert parse_header("not a header") is None


def test_header_rejects_multiline_path():
    with pytest.raises(ValueError, match="one line"):
        file_header("a\nb", "text", 1)


@pytest.mark.parametrize(("raw", "body"), [
    ("a\r\nb\r\n", "a\nb\n"),      # CRLF
    ("a\rb", "a\nb\n"),            # old Mac line ends
    ("no newline", "no newline\n"),
    ("x\n\n\n  \n", "x\n"),        # trailing blank lines dropped
    ("", ""),
    ("\n\n", ""),
    ("\n\nlead\n", "\n\nlead\n"),  # leading blank lines kept: line numbers stay right
])
def test_normalise_text(raw, body):
    assert normalise_text(raw) == body
    assert count_lines(body) == body.count("\n")


def test_file_block_counts_lines():
    header, body = file_block("a.py", "python", "x = 1\r\ny = 2")
    assert header == "=== a.py (python, 2 lines) ===\n"
    assert body == "x = 1\ny = 2\n"


def test_importable_without_tree_sitter_or_git():
    code = ("import sys\n"
            "for m in ('tree_sitter', 'tree_sitter_language_pack', 'git', 'tokenizers', 'transformers', 'torch'):\n"
            "    sys.modules[m] = None\n"
            "import importlib.util, pathlib\n"
            "spec = importlib.util.spec_from_file_location('fmt', pathlib.Path('ssa_code/context/format.py'))\n"
            "mod = importlib.util.module_from_spec(spec); sys.modules['fmt'] = mod; spec.loader.exec_module(mod)\n"
            "print(mod.file_header('a.py', 'python', 3), end='')\n")
    root = __import__("pathlib").Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "=== a.py (python, 3 lines) ===\n"


def test_package_import_is_lazy():
    """``import ssa_code.context.format`` must not pull gitpython or tree-sitter in."""
    code = ("import sys\n"
            "for m in ('tree_sitter', 'tree_sitter_language_pack', 'git'):\n"
            "    sys.modules[m] = None\n"
            "import ssa_code.context.format as f\n"
            "import ssa_code.context.languages as l\n"
            "print(l.detect_language('a.rs'), f.FORMAT_VERSION)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[0] == "rust"
