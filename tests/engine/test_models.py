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


# -- how the weights reach the device ------------------------------------------------------------


def test_cpu_load_path_is_unchanged(random_model_dir):
    from ssa_code.engine.models import _direct_device_map

    assert _direct_device_map(torch.device("cpu")) is None
    loaded = load_model(ModelSpec(str(random_model_dir), "option"), device=torch.device("cpu"), dtype=torch.float32)
    assert loaded.load_path == "cpu"


def test_device_map_load_gives_the_same_weights_or_falls_back(random_model_dir, monkeypatch):
    """The direct path with a real transformers: the weights it loads equal the plain load's.

    Without ``accelerate`` transformers refuses the ``device_map``; the loader must then fall
    back to the plain path and still load the same weights.
    """
    import ssa_code.engine.models as models
    from transformers.utils import is_accelerate_available

    spec = ModelSpec(str(random_model_dir), "option")
    plain = load_model(spec, device=torch.device("cpu"), dtype=torch.float32).model.state_dict()
    monkeypatch.setattr(models, "_direct_device_map", lambda device: {"": torch.device("cpu")})
    loaded = load_model(spec, device=torch.device("cpu"), dtype=torch.float32)
    assert loaded.load_path == ("direct" if is_accelerate_available() else "cpu")
    assert all(torch.equal(a, b) for a, b in zip(plain.values(), loaded.model.state_dict().values(), strict=True))


class _Stub:
    def __init__(self) -> None:
        self.moved_to = None

    def to(self, device):
        self.moved_to = device
        return self


def _recording_auto_cls(fail_direct: bool):
    calls = []

    class Auto:
        @staticmethod
        def from_pretrained(where, **kwargs):
            calls.append(kwargs)
            if "device_map" in kwargs and fail_direct:
                raise ValueError("Using a `device_map` requires `accelerate`")
            return _Stub()

    return Auto, calls


@pytest.mark.parametrize("fail_direct", [False, True])
def test_cuda_loads_straight_to_the_device_else_via_cpu(monkeypatch, fail_direct):
    import ssa_code.engine.models as models

    cuda = torch.device("cuda", 0)  # only named: the stub model never touches it
    monkeypatch.setattr(models, "_direct_device_map", lambda device: {"": device})
    auto, calls = _recording_auto_cls(fail_direct)
    model, how = models._load_weights(auto, "dir", None, torch.bfloat16, cuda, ModelSpec("dir", "option"), True)
    assert calls[0]["device_map"] == {"": cuda}
    if fail_direct:
        assert how == "via_cpu" and model.moved_to == cuda
        assert len(calls) == 2 and "device_map" not in calls[1]
    else:
        assert how == "direct" and model.moved_to is None and len(calls) == 1


def test_no_device_map_without_accelerate_or_off_cuda(monkeypatch):
    import transformers.utils

    from ssa_code.engine.models import _direct_device_map

    assert _direct_device_map("cpu") is None
    monkeypatch.setattr(transformers.utils, "is_accelerate_available", lambda: False)
    assert _direct_device_map(torch.device("cuda", 0)) is None
    monkeypatch.setattr(transformers.utils, "is_accelerate_available", lambda: True)
    assert _direct_device_map(torch.device("cuda", 1)) == {"": torch.device("cuda", 1)}
