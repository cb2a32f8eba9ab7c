"""Model resolution (option > env > config file > tiny) and offline loading."""

from __future__ import annotations

import pytest
import torch

from ssa_code.engine.models import (
    ModelSpec,
    default_model_note,
    load_model,
    pick_device,
    resolve_model_spec,
)
from ssa_code.errors import UsageError, UserError


def write_config(env_base, text: str) -> None:
    d = env_base / "config"
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.toml").write_text(text)


def test_resolution_order(isolated_env, monkeypatch):
    assert resolve_model_spec(None) == ModelSpec("tiny", "default")
    write_config(isolated_env, 'model = "from-config/model"\n')
    assert resolve_model_spec(None) == ModelSpec("from-config/model", "config")
    monkeypatch.setenv("SSA_CODE_MODEL", "from-env/model")
    assert resolve_model_spec(None) == ModelSpec("from-env/model", "env")
    assert resolve_model_spec("from-option") == ModelSpec("from-option", "option")


def test_bad_config_file_is_one_line_error(isolated_env):
    write_config(isolated_env, "model = [unclosed\n")
    with pytest.raises(UserError, match="config.toml"):
        resolve_model_spec(None)
    write_config(isolated_env, "model = 3\n")
    with pytest.raises(UserError, match="non-empty string"):
        resolve_model_spec(None)


def test_default_note_only_for_default():
    assert "larger model" in default_model_note(ModelSpec("tiny", "default"))
    assert default_model_note(ModelSpec("tiny", "option")) is None


def test_device_and_dtype_follow_hardware():
    device, dtype = pick_device()
    if torch.cuda.is_available():
        assert (device.type, dtype) == ("cuda", torch.bfloat16)
    else:
        assert (device.type, dtype) == ("cpu", torch.float32)


def test_load_local_path(random_model_dir):
    loaded = load_model(ModelSpec(str(random_model_dir), "option"))
    assert loaded.model.config.model_type == "llama"
    assert loaded.device.type == pick_device()[0].type
    assert next(loaded.model.parameters()).dtype == pick_device()[1]
    assert loaded.identity["model"] == str(random_model_dir)
    assert len(loaded.identity["fingerprint"]) == 16
    assert len(loaded.tokenizer) == loaded.model.config.vocab_size


def test_fingerprint_changes_with_weights(tmp_path):
    from assist_fixtures import save_random_llama

    a = load_model(ModelSpec(str(save_random_llama(tmp_path / "m", seed=1)), "option")).identity
    save_random_llama(tmp_path / "m", seed=2, hidden=32)
    b = load_model(ModelSpec(str(tmp_path / "m"), "option")).identity
    assert a["fingerprint"] != b["fingerprint"]


def test_hub_id_not_cached_is_one_line_usage_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    with pytest.raises(UsageError) as info:
        load_model(ModelSpec("some-org/not-a-cached-model", "option"))
    msg = info.value.message
    assert "\n" not in msg
    assert "neither a local path nor in the local Hugging Face cache" in msg
    assert "--model DIR" in msg


def test_path_that_is_not_a_model(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(UsageError, match="not a model directory"):
        load_model(ModelSpec(str(tmp_path), "option"))
    with pytest.raises(UsageError, match="not a model directory"):
        load_model(ModelSpec(str(tmp_path / "notes.txt"), "option"))
    with pytest.raises(UsageError, match="does not exist"):
        load_model(ModelSpec(str(tmp_path / "missing" / "model"), "option"))


def test_config_without_weights(tmp_path, random_model_dir):
    import shutil

    d = tmp_path / "noweights"
    d.mkdir()
    for f in random_model_dir.iterdir():
        if not f.name.endswith(".safetensors"):
            shutil.copy(f, d / f.name)
    with pytest.raises(UsageError, match="no loadable weights"):
        load_model(ModelSpec(str(d), "option"))


def test_garbage_config_json(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(UsageError) as info:
        load_model(ModelSpec(str(tmp_path), "option"))
    assert "\n" not in info.value.message
