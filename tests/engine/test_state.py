"""The saved-state store: keys, atomic writes, corruption detection, pruning."""

from __future__ import annotations

import json

import pytest
import torch

from ssa_code.attention import SSACache, SSAConfig, patch
from ssa_code.engine.models import ModelSpec, load_model
from ssa_code.engine.prefill import prefill
from ssa_code.engine.state import META_FILE, CACHE_FILE, StateCorrupted, StateKey, StateStore

CFG = SSAConfig.from_name("small")


@pytest.fixture(scope="module")
def filled(random_model_dir):
    loaded = load_model(ModelSpec(str(random_model_dir), "option"))
    patch(loaded.model, CFG)
    ids = torch.randint(0, loaded.model.config.vocab_size, (1, 700), generator=torch.Generator().manual_seed(0))
    cache = SSACache(loaded.model.config, CFG)
    prefill(loaded.model, cache, ids, chunk_size=CFG.chunk_size, anchors=[(0, 20)])
    return loaded, cache, ids


def key(**changes) -> StateKey:
    base = dict(tree_id="t" * 40, pack_options={"include": ()}, model_identity={"model": "m"},
                ssa_config=CFG, prompt_prefix_ids=[1, 2], anchors=[(0, 20)], token_ids=list(range(700)))
    return StateKey.build(**{**base, **changes})


def loader(loaded):
    return lambda path: SSACache.load(path, loaded.model.config, CFG, device=loaded.device)


def test_key_depends_on_every_input():
    digests = {
        key().digest,
        key(tree_id="u" * 40).digest,
        key(pack_options={"include": ("*.py",)}).digest,
        key(model_identity={"model": "m", "revision": "abc"}).digest,
        key(ssa_config=CFG.replace(window=512)).digest,
        key(prompt_prefix_ids=[1, 3]).digest,
        key(anchors=[(0, 21)]).digest,
        key(token_ids=list(range(699))).digest,
    }
    assert len(digests) == 8
    assert key().digest == key().digest


def test_round_trip_continues_identically(filled, tmp_path):
    loaded, cache, ids = filled
    store = StateStore(tmp_path)
    k = key()
    assert store.load(k, loader(loaded), expected_tokens=700) is None
    folder = store.save(k, cache, tokens=700)
    assert sorted(p.name for p in folder.iterdir()) == [CACHE_FILE, META_FILE]
    assert [p.name for p in tmp_path.iterdir()] == [k.digest]  # no temporaries left
    assert json.loads((folder / META_FILE).read_text())["format_version"] >= 1
    again = store.load(k, loader(loaded), expected_tokens=700)
    assert again.get_seq_length() == 700
    # The restored state continues exactly like the original one.
    nxt = torch.tensor([[11, 12, 13]])
    import copy

    a = prefill(loaded.model, copy.deepcopy(cache), nxt)
    b = prefill(loaded.model, again, nxt)
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("damage", ["meta", "truncate", "flip", "missing", "tokens"])
def test_corruption_is_detected_and_removed(filled, tmp_path, damage):
    loaded, cache, _ = filled
    store = StateStore(tmp_path)
    k = key()
    folder = store.save(k, cache, tokens=700)
    blob = folder / CACHE_FILE
    if damage == "meta":
        (folder / META_FILE).write_text("{broken")
    elif damage == "truncate":
        blob.write_bytes(blob.read_bytes()[:-100])
    elif damage == "flip":
        data = bytearray(blob.read_bytes())
        data[len(data) // 2] ^= 1
        blob.write_bytes(bytes(data))
    elif damage == "missing":
        blob.unlink()
    expected = 699 if damage == "tokens" else 700
    with pytest.raises(StateCorrupted):
        store.load(k, loader(loaded), expected_tokens=expected)
    assert not folder.exists()


def test_interrupted_save_leaves_nothing(filled, tmp_path, monkeypatch):
    _, cache, _ = filled
    store = StateStore(tmp_path)

    def half(path):
        path.write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(cache, "save", half)
    with pytest.raises(KeyboardInterrupt):
        store.save(key(), cache, tokens=700)
    assert list(tmp_path.iterdir()) == []


def test_prune_keeps_the_most_recent(filled, tmp_path):
    import os
    import time

    _, cache, _ = filled
    store = StateStore(tmp_path, max_states=2)
    keys = [key(tree_id=str(i) * 40) for i in range(3)]
    for i, k in enumerate(keys):
        folder = store.save(k, cache, tokens=700)
        t = time.time() - 100 + i
        os.utime(folder / META_FILE, (t, t))
    assert not store.exists(keys[0]) and store.exists(keys[1]) and store.exists(keys[2])


def test_refuses_to_fill_the_disk(filled, tmp_path):
    import shutil

    _, cache, _ = filled
    store = StateStore(tmp_path)
    free = shutil.disk_usage(tmp_path).free
    with pytest.raises(OSError, match="GiB free"):
        store.save(key(), cache, tokens=700, size_hint=free)
    assert list(tmp_path.iterdir()) == []
    store.save(key(), cache, tokens=700, size_hint=cache.gpu_bytes() + cache.store_bytes())
    assert store.exists(key())
