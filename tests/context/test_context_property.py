"""Property: arbitrary bytes in a file never crash the walk, the parser or the packer."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from repo_helpers import make_repo
from ssa_code.context import PackOptions, pack_repository
from ssa_code.context.languages import PARSED
from ssa_code.context.parse import parse_source
from ssa_code.context.walk import walk_repository

NAMES = ["a.py", "b.js", "c.ts", "d.tsx", "e.go", "f.rs", "G.java", "h.c", "i.cpp", "j.cs", "k.rb", "l.php",
         "m.kt", "n.swift", "o.md", "p.txt"]

# Bytes that stress decoders and grammars: NUL, CR, lone surrogate encodings, BOMs, quotes.
interesting = st.sampled_from([b"\x00", b"\r", b"\r\n", b"\xed\xa0\x80", b"\xef\xbb\xbf", b"\xff", b"'", b'"',
                               b"{", b"}", b"/*", b"#", b"\\", b"\n", b"def ", b"class ", b"import ", b"\xc3\xa9"])
contents = st.one_of(st.binary(max_size=400), st.lists(interesting, max_size=60).map(b"".join))


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return make_repo(tmp_path_factory.mktemp("prop") / "r", {n: "x\n" for n in NAMES})


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(NAMES), data=contents)
def test_arbitrary_bytes_never_crash(repo, default_tok, name, data):
    (repo / name).write_bytes(data)
    try:
        result = walk_repository(repo)
        assert {f.path for f in result.files} | {p for p, _ in result.skipped} == set(NAMES)
        packed = pack_repository(repo, default_tok, PackOptions(use_cache=False))
        assert packed.token_ids == default_tok(packed.text, add_special_tokens=False)["input_ids"]
        for i in range(0, len(packed.token_ids), 7):
            packed.locate(i)
    finally:
        (repo / name).write_bytes(b"x\n")


@settings(max_examples=60, deadline=None)
@given(language=st.sampled_from(sorted(PARSED)), text=st.text(max_size=300))
def test_parser_accepts_any_text(language, text):
    symbols = parse_source(text, language)
    n_lines = text.count("\n") + 1
    assert all(1 <= d[2] <= d[3] <= n_lines + 1 for d in symbols.defs)
    assert all(1 <= r[2] <= n_lines + 1 for r in symbols.refs)
