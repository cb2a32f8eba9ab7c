"""The session pipeline: sources from attention mass, line anchors, and reuse that changes nothing."""

from __future__ import annotations

import pytest
import torch

from assist_fixtures import init_repo
from ssa_code.attention import SSAConfig
from ssa_code.context import pack_repository
from ssa_code.engine.generate import GenerationConfig
from ssa_code.engine.models import ModelSpec, load_model
from ssa_code.engine.session import Query, QuietUI, anchors_for_lines, file_sources, run_query
from ssa_code.engine.state import StateStore


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("repo")
    (root / "pkg").mkdir()
    (root / "pkg" / "core.py").write_text("".join(f"def f{i}(x):\n    return x + {i}\n\n" for i in range(40)))
    (root / "pkg" / "app.py").write_text("from pkg.core import f1\n\n\ndef main():\n    return f1(2)\n")
    (root / "README.md").write_text("# Demo\n\nCalls f1 from main.\n")
    return init_repo(root)


@pytest.fixture(scope="module")
def packed(repo):
    return pack_repository(str(repo))


def test_sources_follow_the_mass(packed):
    b = 16
    n = (len(packed.token_ids) + 100 + b - 1) // b
    f = next(f for f in packed.files if f.path == "pkg/app.py")
    mass = torch.zeros(n)
    offset = 7
    # All mass on blocks lying fully inside pkg/app.py (after the prompt offset).
    first = -(-(f.token_start + offset) // b)
    last = (f.token_end + offset) // b
    assert last > first, "pkg/app.py must span a whole block"
    mass[first:last] = 1.0
    got = file_sources(mass, b, packed, offset)
    assert [s.path for s in got] == ["pkg/app.py"] and got[0].share == pytest.approx(1.0)


def test_sources_split_straddling_blocks(packed):
    b = 4
    a, c = packed.files[0], packed.files[1]
    boundary = a.token_end
    assert c.token_start == boundary
    n = (len(packed.token_ids) + b - 1) // b
    mass = torch.zeros(n)
    blk = boundary // b
    mass[blk] = 1.0
    got = {s.path: s.share for s in file_sources(mass, b, packed, 0)}
    left = (boundary - blk * b) / b
    if left == 0:
        assert got == {c.path: pytest.approx(1.0)}
    else:
        assert got[a.path] == pytest.approx(left) and got[c.path] == pytest.approx(1 - left)
    assert file_sources(torch.zeros(n), b, packed, 0) == []


def test_anchors_for_lines_cover_the_lines(packed):
    from ssa_code.models import default_tokenizer

    tok = default_tokenizer()
    [(s, e)] = anchors_for_lines(packed, [("pkg/core.py", 4, 5)])
    text = tok.decode(packed.token_ids[s:e])
    assert "def f1(x):" in text and "return x + 1" in text and "f2" not in text
    assert anchors_for_lines(packed, [("missing.py", 1, 2)]) == []


def test_reused_state_gives_the_same_answer(repo, packed, random_model_dir, tmp_path):
    loaded = load_model(ModelSpec(str(random_model_dir), "option"))
    cfg = SSAConfig.from_name("small")
    gen = GenerationConfig(max_new_tokens=5)
    store = StateStore(tmp_path)
    opts = {"include": ()}
    q = Query("ask", "What does main return?")
    fresh = run_query(packed, q, loaded, cfg, gen, opts, ui=QuietUI(), store=store, reuse_state=False)
    first = run_query(packed, q, loaded, cfg, gen, opts, ui=QuietUI(), store=store)
    second = run_query(packed, q, loaded, cfg, gen, opts, ui=QuietUI(), store=store)
    assert not first.state_reused and second.state_reused
    assert first.prefill_s > 0 and second.prefill_s == 0
    assert fresh.answer == first.answer == second.answer
    assert [s.path for s in first.sources] == [s.path for s in second.sources]
    assert first.tokens == second.tokens
    assert first.tokens["context"] > len(packed.token_ids)
    # A different question reuses the same state.
    other = run_query(packed, Query("ask", "Where is f7?"), loaded, cfg, gen, opts, ui=QuietUI(), store=store)
    assert other.state_reused


def test_budget(repo, packed, random_model_dir, tmp_path):
    from ssa_code.errors import UserError

    loaded = load_model(ModelSpec(str(random_model_dir), "option"))
    with pytest.raises(UserError, match="budget is 100"):
        run_query(packed, Query("ask", "q"), loaded, SSAConfig.from_name("small"), GenerationConfig(max_new_tokens=5),
                  {}, store=StateStore(tmp_path), budget=100)
    assert list(tmp_path.iterdir()) == []


class _Packed:
    def __init__(self, map_span, headers):
        self.map_span = map_span
        self.anchors = [map_span, *headers]


def test_pinned_budget_goes_to_extra_spans_then_headers_then_the_map_top():
    from ssa_code.engine.session import choose_anchors

    packed = _Packed((0, 1000), [(1000, 1010), (2000, 2012)])
    # Everything fits: all spans, the map whole.
    spans, map_kept = choose_anchors(packed, [(1500, 1600)], 5000)
    assert spans == [(0, 1010), (1500, 1600), (2000, 2012)] and map_kept == 1000
    # A map larger than the room left: headers first, then the map from its top.
    spans, map_kept = choose_anchors(packed, [(1500, 1600)], 200)
    assert spans == [(0, 78), (1000, 1010), (1500, 1600), (2000, 2012)] and map_kept == 78
    assert sum(e - s for s, e in spans) == 200
    # Less room than the extra spans: they are cut, nothing else is pinned.
    spans, map_kept = choose_anchors(packed, [(1500, 1600)], 50)
    assert spans == [(1500, 1550)] and map_kept == 0
    # Overlapping spans count once.
    spans, _ = choose_anchors(packed, [(1005, 1020)], 25)
    assert spans == [(1000, 1020), (2000, 2005)] and sum(e - s for s, e in spans) == 25


@pytest.mark.parametrize("exact", [True, False])
def test_the_question_chooses_its_blocks_exactly(repo, packed, random_model_dir, tmp_path, monkeypatch, exact):
    """SSAConfig.exact_question: the question's chunk (only) has select_exact set, and the answer
    keeps the blocks it chose."""
    import ssa_code.engine.question as question
    import ssa_code.engine.session as session

    real = session._prefill_fn()
    calls = []

    def recording_prefill(model, cache, ids, **kwargs):
        calls.append((cache.select_exact, ids.shape[1]))
        out = real(model, cache, ids, **kwargs)
        calls[-1] += (cache,)
        return out

    monkeypatch.setattr(session, "_prefill_fn", lambda: recording_prefill)
    monkeypatch.setattr(question, "prefill", recording_prefill)
    loaded = load_model(ModelSpec(str(random_model_dir), "option"))
    cfg = SSAConfig.from_name("small", exact_question=exact)
    run_query(packed, Query("ask", "What does main return?"), loaded, cfg, GenerationConfig(max_new_tokens=5),
              {"include": ()}, ui=QuietUI(), store=StateStore(tmp_path), reuse_state=False)
    (repo_flag, _, cache), (question_flag, _, same) = calls
    assert same is cache and repo_flag is False and question_flag is exact
    assert cache.select_exact is False
    assert all(layer.store.num_blocks > 0 for layer in cache.layers)
    assert all(layer.exact_staged is exact for layer in cache.layers)
