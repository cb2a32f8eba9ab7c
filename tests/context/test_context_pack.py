"""The packer: golden output, exact token ids, spans, anchors, locate, budget, cache, graph."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from repo_helpers import git, make_repo
from ssa_code.context import PackOptions, pack_repository
from ssa_code.context.cache import BlobCache, cache_root_for, db_name
from ssa_code.context.format import parse_header
from ssa_code.context.pack import _Encoder, _encode_blocks
from ssa_code.errors import UsageError

GOLDEN = Path(__file__).parent / "golden" / "sample-repo.txt"
QUESTION = "How is the stock total computed?"


def expected_locations(packed, tokenizer):
    """(path, line) of every token, computed independently from the full text's offsets."""
    import bisect

    enc = tokenizer.backend_tokenizer.encode(packed.text, add_special_tokens=False)
    text = packed.text
    bounds = []  # (header start char, header end char, path)
    pos = 0
    for span in packed.files:
        start = text.index(f"=== {span.path} (", pos)
        end = text.index("\n", start) + 1
        bounds.append((start, end, span.path))
        pos = end
    starts = [b[0] for b in bounds]
    out = []
    running = 0
    for s, _e in enc.offsets:
        running = max(running, s)  # offsets of split multi-byte characters may repeat
        i = bisect.bisect_right(starts, running) - 1
        if i < 0:
            out.append(None)
        elif running < bounds[i][1]:
            out.append((bounds[i][2], 1))
        else:
            out.append((bounds[i][2], text.count("\n", bounds[i][1], running) + 1))
    return out


def check_consistent(packed, tokenizer):
    ids = tokenizer(packed.text, add_special_tokens=False)["input_ids"]
    assert packed.token_ids == ids, "token ids must be exactly the tokenizer's ids of the text"
    assert packed.anchors[0] == packed.map_span == (0, packed.files[0].token_start if packed.files else len(ids))
    prev = packed.map_span[1]
    for span in packed.files:
        assert span.token_start == prev == span.header_start
        assert span.header_start < span.header_end <= span.token_end
        prev = span.token_end
        header = tokenizer.decode(packed.token_ids[span.header_start:span.header_end])
        parsed = parse_header(header.split("\n", 1)[0])
        assert parsed is not None and parsed.path == span.path and parsed.lines == span.lines
    assert prev == len(ids)
    assert packed.anchors[1:] == [(s.header_start, s.header_end) for s in packed.files]
    expected = expected_locations(packed, tokenizer)
    got = [packed.locate(i) for i in range(len(ids))]
    assert got == expected


def test_golden_sample_repo(sample_repo, default_tok):
    packed = pack_repository(sample_repo, default_tok, PackOptions())
    if os.environ.get("SSA_CODE_UPDATE_GOLDEN"):
        GOLDEN.write_bytes(packed.text.encode("utf-8"))
    assert packed.text == GOLDEN.read_bytes().decode("utf-8"), (
        "packed output changed; if intended, rerun with SSA_CODE_UPDATE_GOLDEN=1 and review the diff")


@pytest.mark.parametrize("tok_name", ["default_tok", "gpt2_tokenizer", "metaspace_tokenizer"])
def test_token_ids_spans_and_locate_are_exact(sample_repo, tok_name, request):
    tokenizer = request.getfixturevalue(tok_name)
    for question in (None, QUESTION):
        packed = pack_repository(sample_repo, tokenizer, PackOptions(question=question))
        check_consistent(packed, tokenizer)


def test_newline_table_path_matches_offsets_path(sample_repo, default_tok):
    packed = pack_repository(sample_repo, default_tok, PackOptions(use_cache=False))
    fast = _Encoder(default_tok)
    assert fast.newlines is not None, "the bundled byte-level tokenizer takes the fast path"
    slow = _Encoder(default_tok)
    slow.newlines = None
    items = []
    text = packed.text
    for i, span in enumerate(packed.files):
        start = text.index(f"=== {span.path} (")
        end = text.index(f"=== {packed.files[i + 1].path} (") if i + 1 < len(packed.files) else len(text)
        block = text[start:end]
        items.append((block, block.index("\n") + 1))
    nocache = BlobCache(None, "tokens")
    for a, b in zip(_encode_blocks(fast, items, nocache), _encode_blocks(slow, items, nocache)):
        assert (list(a.ids), a.header_ntok, list(a.line_tok)) == (list(b.ids), b.header_ntok, list(b.line_tok))


def test_crlf_and_missing_final_newline_are_normalised(sample_repo, default_tok):
    packed = pack_repository(sample_repo, default_tok)
    assert "\r" not in packed.text
    cli = next(s for s in packed.files if s.path == "inventory/cli.py")
    assert cli.lines == 18
    assert "as T;\n}\n=== " in packed.text  # http.ts has no final newline: one is added
    assert packed.locate(cli.token_end - 1) == ("inventory/cli.py", 18)


def test_output_is_byte_identical_across_runs_and_cache_states(sample_repo, default_tok, tmp_path):
    opts = PackOptions(question=QUESTION, cache_dir=str(tmp_path / "c"))
    cold = pack_repository(sample_repo, default_tok, opts)
    warm = pack_repository(sample_repo, default_tok, opts)
    nocache = pack_repository(sample_repo, default_tok, PackOptions(question=QUESTION, use_cache=False))
    assert cold.to_json() == warm.to_json() == nocache.to_json()
    assert cold.summary() == warm.summary()
    db = tmp_path / "c" / db_name()
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM parse").fetchone()[0] > 0
        assert conn.execute("SELECT COUNT(*) FROM tokens").fetchone()[0] >= len(cold.files)
    assert not any(p.name.endswith(".sqlite") for p in sample_repo.rglob("*"))


def test_corrupt_cache_is_ignored(sample_repo, default_tok, tmp_path):
    cache = tmp_path / "c"
    cache.mkdir()
    (cache / db_name()).write_bytes(b"this is not a database" * 100)
    packed = pack_repository(sample_repo, default_tok, PackOptions(cache_dir=str(cache)))
    assert packed.text == pack_repository(sample_repo, default_tok, PackOptions(use_cache=False)).text


def test_cache_never_inside_the_repository(sample_repo, default_tok):
    assert cache_root_for(sample_repo, sample_repo / ".cache") is None
    assert cache_root_for(sample_repo, sample_repo.parent / "elsewhere") == sample_repo.parent / "elsewhere"
    pack_repository(sample_repo, default_tok, PackOptions(cache_dir=str(sample_repo / ".cache")))
    assert not (sample_repo / ".cache").exists()


def test_question_moves_relevant_files_to_the_end(sample_repo, default_tok):
    plain = pack_repository(sample_repo, default_tok)
    asked = pack_repository(sample_repo, default_tok, PackOptions(question=QUESTION))
    assert asked.files[-1].path == "inventory/core.py"
    assert asked.focus and asked.focus[-1] == "inventory/core.py"
    assert sorted(s.path for s in plain.files) == sorted(s.path for s in asked.files)
    assert [s.path for s in plain.files] != [s.path for s in asked.files]
    by_path = pack_repository(sample_repo, default_tok, PackOptions(question="what does web/table.js render?"))
    assert by_path.files[-1].path == "web/table.js"


def test_budget_leaves_out_least_relevant_files_whole(sample_repo, default_tok):
    full = pack_repository(sample_repo, default_tok, PackOptions(question=QUESTION))
    budget = len(full.token_ids) - 400
    cut = pack_repository(sample_repo, default_tok, PackOptions(question=QUESTION, budget=budget))
    check_consistent(cut, default_tok)
    assert len(cut.token_ids) <= budget
    omitted = [p for p, _ in cut.omitted]
    assert omitted and all(r.startswith("left out by --budget (") for _, r in cut.omitted)
    kept = {s.path for s in cut.files}
    assert kept.isdisjoint(omitted) and kept | set(omitted) == {s.path for s in full.files}
    assert "inventory/core.py" in kept  # the question's file stays
    # Every packed file is whole: same line count as in the full pack.
    lines = {s.path: s.lines for s in full.files}
    assert all(s.lines == lines[s.path] for s in cut.files)
    for p in omitted:
        assert f"{p.rsplit('/', 1)[-1]} (omitted)" in cut.text.split("\n=== ", 1)[0]
    summary = cut.summary()
    assert [o["path"] for o in summary["omitted"]] == omitted
    with pytest.raises(UsageError, match="smaller than the repository map"):
        pack_repository(sample_repo, default_tok, PackOptions(budget=5))
    with pytest.raises(UsageError, match="positive"):
        PackOptions(budget=0)


def test_graph_for_explain(sample_repo, default_tok):
    graph = pack_repository(sample_repo, default_tok).graph
    [d] = graph.definitions("stock_total")
    assert (d.path, d.line, d.kind) == ("inventory/core.py", 28, "function")
    callers = graph.callers("to_cents")
    assert ("inventory/core.py", 24, "add") in {(c.path, c.line, c.enclosing) for c in callers}
    callees = {c.name for c in graph.callees("inventory/core.py", "stock_total")}
    assert {"sum", "value_cents"} <= callees
    assert graph.callees("inventory/core.py", "no_such_function") == []
    assert graph.definitions("no_such_name") == []


def test_summary_counts(sample_repo, default_tok):
    packed = pack_repository(sample_repo, default_tok)
    s = packed.summary()
    assert s["files"] == len(packed.files) == sum(v["files"] for v in s["by_language"].values())
    assert s["tokens"] == len(packed.token_ids) == s["map_tokens"] + sum(v["tokens"] for v in s["by_language"].values())
    assert s["tree_id"] == git(sample_repo, "rev-parse", "HEAD^{tree}").strip()
    assert {x["path"] for x in s["skipped"]} >= {"web/logo.png", "package-lock.json"}
    with pytest.raises(IndexError):
        packed.locate(len(packed.token_ids))
    assert packed.locate(0) is None  # the repository map


def test_empty_and_tiny_repositories(tmp_path, default_tok):
    repo = make_repo(tmp_path / "r", {"empty.py": "", "blank.txt": "\n\n", "one.py": "x = 1"})
    packed = pack_repository(repo, default_tok)
    check_consistent(packed, default_tok)
    assert [s.lines for s in packed.files] == [1, 0, 0] or sorted(s.lines for s in packed.files) == [0, 0, 1]
    only_binary = make_repo(tmp_path / "b", {"x.bin": b"\x00\x00"})
    packed = pack_repository(only_binary, default_tok)
    assert packed.files == [] and packed.skipped == [("x.bin", "binary (NUL bytes)")]
    assert packed.token_ids == default_tok(packed.text, add_special_tokens=False)["input_ids"]


def test_slow_tokenizer_is_a_clear_error(sample_repo):
    class NotFast:
        pass

    with pytest.raises(UsageError, match="not a fast tokenizer"):
        pack_repository(sample_repo, NotFast())


@pytest.mark.parametrize(("tok_name", "whole"), [("default_tok", False), ("metaspace_tokenizer", True)])
def test_block_boundaries_fall_back_to_whole_text_encoding(sample_repo, tok_name, whole, request, monkeypatch):
    """Byte-level BPE splits cleanly at block boundaries; a prefix-space tokenizer does not."""
    import ssa_code.context.pack as pack_mod

    calls = []
    real = pack_mod._reencode_whole
    monkeypatch.setattr(pack_mod, "_reencode_whole", lambda *a: calls.append(1) or real(*a))
    tokenizer = request.getfixturevalue(tok_name)
    packed = pack_repository(sample_repo, tokenizer, PackOptions(use_cache=False))
    assert bool(calls) == whole
    assert packed.token_ids == tokenizer(packed.text, add_special_tokens=False)["input_ids"]
