"""On CUDA the Triton kernels run the same SSA: model-level checks against dense and the reference path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ssa_code import SSACache, patch
from ssa_code.engine.prefill import prefill

from .conftest import SMALL, tiny_model

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

# head_dim 64 (hidden 256 / 4 heads): a size the Triton kernels are built for.
GPU_MODEL = dict(hidden_size=256, intermediate_size=512, num_attention_heads=4, num_key_value_heads=2)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_triton_path_matches_dense_in_float32(family):
    extra = {"head_dim": 64} if family == "qwen3" else {}
    model = tiny_model(family, **GPU_MODEL, **extra).cuda()
    ids = torch.randint(0, 300, (1, 900), generator=torch.Generator().manual_seed(0)).cuda()
    with torch.no_grad():
        dense = model(ids).logits[:, -1].float()
    cfg = SMALL.replace(kernels="triton")
    patch(model, cfg)
    cache = SSACache(model.config, cfg)
    ssa = prefill(model, cache, ids, chunk_size=128, anchors=[(0, 12)])
    err = _rel(ssa, dense)
    assert err < 1e-3, f"relative error {err:.2e} (Triton SSA vs dense SDPA, float32)"


def test_triton_and_reference_agree_in_bfloat16_and_decode_matches():
    model = tiny_model("qwen2", **GPU_MODEL).cuda().to(torch.bfloat16)
    ids = torch.randint(0, 300, (1, 1200), generator=torch.Generator().manual_seed(1)).cuda()
    outs = {}
    for kernels in ("triton", "torch"):
        cfg = SMALL.replace(kernels=kernels, top_k=8)
        patch(model, cfg)
        cache = SSACache(model.config, cfg)
        logits = prefill(model, cache, ids, chunk_size=256)
        steps = []
        from ssa_code.engine.prefill import forward_chunk
        tok = logits.argmax(-1, keepdim=True)
        for i in range(8):
            logits = forward_chunk(model, cache, tok, ids.shape[1] + i)
            steps.append(logits)
            tok = logits.argmax(-1, keepdim=True)
        outs[kernels] = torch.stack(steps)
    err = _rel(outs["triton"], outs["torch"])
    assert err < 3e-2, f"relative error {err:.2e} between Triton and PyTorch SSA paths (bf16)"


def test_state_is_on_the_gpu_and_constant():
    model = tiny_model("llama", **GPU_MODEL, num_hidden_layers=1).cuda().to(torch.bfloat16)
    cfg = SMALL.replace(kernels="triton")
    patch(model, cfg)
    cache = SSACache(model.config, cfg)
    sizes = []
    for n in (2048, 8192):
        prefill(model, cache, torch.randint(0, 300, (1, n - cache.get_seq_length()), device="cuda"), chunk_size=512)
        sizes.append(cache.gpu_bytes())
    assert sizes[0] == sizes[1] and cache.layers[0].k.is_cuda


def test_graph_decode_matches_eager_decode():
    """Plain decode steps replayed from a CUDA graph give the tokens and logits of full steps."""
    from ssa_code.engine.decode import Decoder

    model = tiny_model("qwen2", **GPU_MODEL).cuda()
    cfg = SMALL.replace(kernels="triton", decode_refresh=4)
    patch(model, cfg)
    ids = torch.randint(0, 300, (1, 700), generator=torch.Generator().manual_seed(2)).cuda()
    runs = {}
    for mode in ("eager", "graph"):
        cache = SSACache(model.config, cfg)
        logits = prefill(model, cache, ids, chunk_size=cfg.chunk_size)
        logits = logits.reshape(-1, logits.shape[-1])[-1]
        decoder = Decoder(model, cache, mode=mode)
        tokens, steps = [], []
        for _ in range(64):
            tokens.append(int(logits.argmax()))
            logits = decoder(tokens[-1])
            steps.append(logits.float())
        runs[mode] = (tokens, torch.stack(steps), decoder)
    graph = runs["graph"][2]
    assert graph.graph_error is None, graph.graph_error
    assert graph.steps["graph"] > 30, graph.steps
    assert runs["graph"][0] == runs["eager"][0]
    err = _rel(runs["graph"][1], runs["eager"][1])
    assert err < 1e-4, f"relative error {err:.2e} between graph and eager decode (float32)"


def test_host_store_round_trip_from_cuda():
    """Blocks appended from the GPU (asynchronous copy, written by the store's thread) come back intact."""
    from ssa_code.attention.store import PAGE_BLOCKS, HostStore

    store = HostStore(heads=2, block=16, dim=64, dtype=torch.bfloat16)
    g = torch.Generator(device="cuda").manual_seed(0)
    parts = [torch.randn(2, n, 16, 64, device="cuda", generator=g).to(torch.bfloat16) for n in (3, PAGE_BLOCKS, 40)]
    for p in parts:
        store.append(p, -p)
    every = torch.cat(parts, dim=1)  # [H, N, B, D]
    n = every.shape[1]
    heads = torch.tensor([0, 1, 1, 0, 1])
    ids = torch.tensor([0, 2, PAGE_BLOCKS + 1, n - 1, 5])
    k = torch.empty(5, 16, 64, dtype=torch.bfloat16, pin_memory=True)
    v = torch.empty_like(k)
    store.read_into(heads.numpy(), ids.numpy(), k, v, np.arange(5))
    assert torch.equal(k.cuda(), every[heads.cuda(), ids.cuda()]) and torch.equal(v, -k)
    assert store.nbytes() == 2 * 2 * n * 16 * 64 * 2
    store.close()


def test_store_runs_reach_the_gpu_intact():
    """to_device_runs: every run arrives equal to its host copy, and stays so while the two
    page-locked buffers are reused (and once regrown) for later runs."""
    from ssa_code.attention.store import to_device_runs

    g = torch.Generator().manual_seed(0)
    runs = [(i, torch.randn(n, 2, 16, 64, generator=g).to(torch.bfloat16)) for i, n in enumerate((3, 5, 5, 40, 2, 40))]
    got = list(to_device_runs(iter(runs), torch.device("cuda")))
    torch.cuda.synchronize()
    assert [f for f, _ in got] == [f for f, _ in runs]
    for (_, host), (_, dev) in zip(runs, got):
        assert dev.is_cuda and torch.equal(dev.cpu(), host)


@pytest.mark.parametrize("question", [{}, {"exact_top_k": 9, "exact_before": 1}, {"exact_margin": 2.0}],
                         ids=["shipped", "wider_tier", "margin"])
def test_question_choice_is_the_same_with_triton_and_torch_kernels(question):
    """The question's exact choice (select_exact) on CUDA stages the same blocks whichever
    kernels attended the haystack, and decode keeps them; also with a staging tier wider than a
    chunk's (exact_top_k > top_k) and with a per-head margin."""
    model = tiny_model("llama", **GPU_MODEL).cuda()
    ids = torch.randint(0, 300, (1, 1500), generator=torch.Generator().manual_seed(2)).cuda()
    staged = {}
    for kernels in ("triton", "torch"):
        cfg = SMALL.replace(kernels=kernels, top_k=6, **question)
        patch(model, cfg)
        cache = SSACache(model.config, cfg)
        prefill(model, cache, ids[:, :-20], chunk_size=128)
        cache.select_exact = True
        prefill(model, cache, ids[:, -20:], chunk_size=128)
        cache.select_exact = False
        assert all(layer.exact_staged for layer in cache.layers)
        staged[kernels] = [[frozenset(r[r >= 0].tolist()) for r in layer.staged_ids.numpy()] for layer in cache.layers]
        want = cfg.exact_top_k or cfg.top_k
        sizes = [len(head) for layer in staged[kernels] for head in layer]
        assert all(n == want for n in sizes) if not cfg.exact_margin else all(1 <= n <= want for n in sizes)
    assert staged["triton"] == staged["torch"]


def test_a_wider_question_tier_changes_no_prefill_output_on_cuda():
    """exact_top_k > top_k enlarges the staging tier; prefill chunks still stage top_k blocks,
    so with the Triton kernels the prefill's logits are those of the shipped tier up to bf16
    rounding: the larger buffer changes the kernels' split of the keys and so the order of the
    sums (on an H100 at 26bd94d, 220 of 300 logits differed, by at most 0.0078; bit for bit on
    the CPU reference, tests/attention/test_exact_select.py)."""
    model = tiny_model("qwen2", **GPU_MODEL).cuda().to(torch.bfloat16)
    ids = torch.randint(0, 300, (1, 1500), generator=torch.Generator().manual_seed(4)).cuda()
    outs = []
    for extra in ({}, {"exact_top_k": 10}):
        cfg = SMALL.replace(kernels="triton", top_k=6, **extra)
        patch(model, cfg)
        cache = SSACache(model.config, cfg)
        outs.append(prefill(model, cache, ids, chunk_size=128))
    err = _rel(outs[1], outs[0])
    assert err < 1e-2, f"relative error {err:.2e} between a wider staging tier and the shipped one (bf16)"


def test_question_tries_read_the_winner_again_on_cuda(monkeypatch):
    """SSAConfig.exact_tries with the Triton kernels: the chosen choice, read again after the
    last try, answers as a cache that read the question under it alone."""
    import ssa_code.engine.question as question

    model = tiny_model("qwen2", **GPU_MODEL).cuda().to(torch.bfloat16)
    gen = torch.Generator().manual_seed(5)
    ids = torch.randint(0, 300, (1, 1500), generator=gen).cuda()
    q = torch.randint(0, 300, (1, 40), generator=gen).cuda()
    cfg = SMALL.replace(kernels="triton", top_k=6, exact_tries=(1, 2, 0, 0))
    patch(model, cfg)
    cache = SSACache(model.config, cfg)
    prefill(model, cache, ids, chunk_size=128)
    sure = iter([0.2, 0.9, 0.5])
    monkeypatch.setattr(question, "_confidence", lambda logits: next(sure))
    got, choice = question.prefill_question(model, cache, q)
    assert choice.chosen == 1
    alone = cfg.question_choices()[1]
    fresh = SSACache(model.config, alone)
    prefill(model, fresh, ids, chunk_size=128)
    fresh.select_exact = True
    want = prefill(model, fresh, q, chunk_size=alone.chunk_size)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    for a, b in zip(cache.layers, fresh.layers):
        assert torch.equal(a.staged_ids, b.staged_ids)
