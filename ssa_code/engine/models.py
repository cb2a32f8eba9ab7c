"""Which model to run, and loading it offline on the best device.

Resolution order for the model name: the ``--model`` option, the ``SSA_CODE_MODEL``
environment variable, ``model = "..."`` in ``config.toml`` of the user's config directory
(``platformdirs.user_config_dir("ssa-code")``, overridden by ``SSA_CODE_CONFIG_DIR``), and
finally the bundled tiny model. A name is a local directory, ``tiny``, or a Hugging Face hub id
that must already be in the local Hugging Face cache: nothing is ever downloaded
(``HF_HUB_OFFLINE=1`` and ``local_files_only=True``).

Device: CUDA when available (bfloat16), else CPU (float32). On CUDA the weights are loaded
straight onto the GPU (``device_map``, which transformers 5.17-5.39 only accepts with
``accelerate`` installed); without ``accelerate``, or if that load fails, they are loaded on the
CPU and moved, which holds a second copy of a 15 GB model in host memory for a while.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ssa_code.errors import UsageError, UserError

TINY = "tiny"
ENV_MODEL = "SSA_CODE_MODEL"
ENV_CONFIG_DIR = "SSA_CODE_CONFIG_DIR"
CONFIG_FILE = "config.toml"


@dataclass(frozen=True)
class ModelSpec:
    """Where a model name came from and what it names.

    ``name`` is what the user wrote (``tiny``, a path or a hub id); ``source`` is one of
    ``option``, ``env``, ``config`` or ``default``.
    """

    name: str
    source: str

    @property
    def is_tiny(self) -> bool:
        return self.name == TINY


@dataclass(frozen=True)
class LoadedModel:
    """A loaded causal LM with its tokenizer and an identity used to key saved state.

    ``identity`` holds the model id, the revision (hub commit) when known, and a fingerprint
    of the files it was loaded from (config and weight names, sizes and modification times),
    so that a retrained local model does not reuse state saved for the old weights.
    """

    model: Any
    tokenizer: Any
    spec: ModelSpec
    path: str
    device: Any
    dtype: Any
    identity: dict[str, str]
    # How the weights reached the device: "direct" (from_pretrained put them on the GPU),
    # "via_cpu" (loaded on the CPU, then moved) or "cpu" (they stay there).
    load_path: str = "cpu"


def config_dir() -> Path:
    override = os.environ.get(ENV_CONFIG_DIR)
    if override:
        return Path(override)
    import platformdirs

    return Path(platformdirs.user_config_dir("ssa-code"))


def read_config() -> dict[str, Any]:
    """The user's ``config.toml`` as a dict (empty when there is none).

    A file that is not valid TOML is a user error naming the file.
    """
    path = config_dir() / CONFIG_FILE
    if not path.is_file():
        return {}
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ModuleNotFoundError:
            raise UserError(f"reading {path} needs Python 3.11+ or the 'tomli' package") from None
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from None


def resolve_model_spec(option: str | None) -> ModelSpec:
    """Pick the model name: option, then environment, then config file, then ``tiny``."""
    if option:
        return ModelSpec(option, "option")
    env = os.environ.get(ENV_MODEL)
    if env:
        return ModelSpec(env, "env")
    configured = read_config().get("model")
    if configured is not None:
        if not isinstance(configured, str) or not configured:
            raise UserError(f"'model' in {config_dir() / CONFIG_FILE} must be a non-empty string")
        return ModelSpec(configured, "config")
    return ModelSpec(TINY, "default")


def pick_device() -> tuple[Any, Any]:
    """CUDA with bfloat16 when a GPU is present, else CPU with float32."""
    import torch

    if torch.cuda.is_available():
        return torch.device("cuda"), torch.bfloat16
    return torch.device("cpu"), torch.float32


def tiny_model_dir() -> Path:
    from ssa_code.models import TINY_MODEL_DIR

    return Path(TINY_MODEL_DIR)


def _fingerprint(directory: Path) -> str:
    """Content key of a local model directory without reading gigabytes of weights.

    Hashes ``config.json`` and the tokenizer files by content and the weight files by name,
    size and modification time.
    """
    h = hashlib.sha256()
    for p in sorted(directory.iterdir()):
        if not p.is_file():
            continue
        h.update(p.name.encode())
        if p.suffix in (".json", ".txt", ".model", ".jinja") and p.stat().st_size < 64 << 20:
            h.update(hashlib.sha256(p.read_bytes()).digest())
        else:
            st = p.stat()
            h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def _offline() -> None:
    # Never let transformers or huggingface_hub reach the network, even if a cached file is
    # incomplete: set before they are imported, and local_files_only=True on every call.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    try:
        import huggingface_hub.constants as hub_constants

        hub_constants.HF_HUB_OFFLINE = True
    except (ImportError, AttributeError):
        pass


def _not_available(name: str) -> UsageError:
    return UsageError(
        f"model '{name}' is neither a local path nor in the local Hugging Face cache; "
        f"download it on a machine with network access (huggingface-cli download {name} "
        f"--local-dir DIR), copy DIR here and pass --model DIR"
    )


def _where(spec: ModelSpec) -> tuple[str, bool]:
    """The directory or hub id to load, and whether it is a local directory."""
    if spec.is_tiny:
        d = tiny_model_dir()
        if not (d / "config.json").is_file():
            raise UserError(
                f"the bundled tiny model is missing from {d} (its weights are not installed); "
                "pass --model with a local model directory"
            )
        return str(d), True
    p = Path(spec.name).expanduser()
    if p.exists():
        if not p.is_dir() or not (p / "config.json").is_file():
            raise UsageError(f"{spec.name} is not a model directory (no config.json in it)")
        return str(p.resolve()), True
    # A hub id is "name" or "org/name"; anything else that does not exist is a mistyped path.
    if spec.name.startswith((".", "/", "~")) or spec.name.count("/") > 1 or "\\" in spec.name:
        raise UsageError(f"model path {spec.name} does not exist")
    return spec.name, False


def load_model(spec: ModelSpec, *, device: Any = None, dtype: Any = None) -> LoadedModel:
    """Load tokenizer and causal LM for ``spec`` offline.

    Raises :class:`UsageError` for a name that is neither a local model directory nor cached,
    and :class:`UserError` for a directory whose files transformers cannot load.
    """
    _offline()
    where, local = _where(spec)

    import torch  # noqa: F401  (imported before transformers on purpose: CUDA init order)
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    # The CLI draws its own progress; transformers' loading bars and warnings would clutter stderr.
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()

    if device is None or dtype is None:
        auto_device, auto_dtype = pick_device()
        device = device if device is not None else auto_device
        dtype = dtype if dtype is not None else auto_dtype

    try:
        config = AutoConfig.from_pretrained(where, local_files_only=True)
    except OSError:
        if local:
            raise UsageError(f"{spec.name} is not a model directory (config.json cannot be read)") from None
        raise _not_available(spec.name) from None
    except (ValueError, KeyError, json.JSONDecodeError) as exc:
        raise UsageError(f"{spec.name} is not a model transformers can load: {_first_line(exc)}") from None

    try:
        tokenizer = AutoTokenizer.from_pretrained(where, local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - any tokenizer failure is one line for the user
        if spec.is_tiny:
            tokenizer = _fallback_tokenizer(exc, spec)
        elif local:
            raise UsageError(f"{spec.name} has no tokenizer transformers can load: {_first_line(exc)}") from None
        else:
            raise _not_available(spec.name) from None

    model, load_path = _load_weights(AutoModelForCausalLM, where, config, dtype, device, spec, local)
    model.eval()

    identity = {"model": spec.name if not spec.is_tiny else TINY}
    revision = getattr(config, "_commit_hash", None)
    if revision:
        identity["revision"] = str(revision)
    if local:
        identity["fingerprint"] = _fingerprint(Path(where))
    identity["dtype"] = str(dtype).removeprefix("torch.")
    return LoadedModel(model, tokenizer, spec, where, device, dtype, identity, load_path)


def _direct_device_map(device: Any) -> dict[str, Any] | None:
    """A ``device_map`` that loads every weight straight onto ``device``, or ``None`` to load on the CPU.

    Only for CUDA: on the CPU the plain load is already direct. transformers (5.17 to 5.39)
    refuses any ``device_map``, and a default-device context too, unless ``accelerate`` is
    installed; a single-device map needs nothing else of it (no ``psutil``).
    """
    import torch

    if torch.device(device).type != "cuda":
        return None
    try:
        from transformers.utils import is_accelerate_available
    except ImportError:
        return None
    if not is_accelerate_available():
        return None
    device = torch.device(device)
    if device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return {"": device}


def _load_weights(auto_cls: Any, where: str, config: Any, dtype: Any, device: Any, spec: ModelSpec,
                  local: bool) -> tuple[Any, str]:
    """The causal LM on ``device`` and how it got there (``LoadedModel.load_path``).

    Straight to the GPU when :func:`_direct_device_map` allows it; if that raises (other than
    running out of GPU memory), the partial model is dropped and the CPU path runs, which
    reports a broken model directory as the usual one-line error.
    """
    import torch

    device_map = _direct_device_map(device)
    if device_map is not None:
        try:
            model = auto_cls.from_pretrained(where, config=config, dtype=dtype, local_files_only=True,
                                             device_map=device_map)
            return model, "direct"
        except torch.cuda.OutOfMemoryError:  # the CPU path would only run out again, later
            raise
        except Exception:  # noqa: BLE001 - any failure falls back to the path that always worked
            pass
        # Outside the handler, so the traceback no longer holds the partial model's GPU tensors.
        import gc

        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    try:
        model = auto_cls.from_pretrained(where, config=config, dtype=dtype, local_files_only=True)
    except OSError:
        if local:
            raise UsageError(f"{spec.name} has no loadable weights (model.safetensors or pytorch_model.bin)") from None
        raise _not_available(spec.name) from None
    except ValueError as exc:
        raise UsageError(f"{spec.name} is not a causal language model transformers can load: {_first_line(exc)}") from None
    if torch.device(device).type == "cpu":
        return model, "cpu"
    model.to(device)
    return model, "via_cpu"


def _fallback_tokenizer(exc: BaseException, spec: ModelSpec) -> Any:
    """The bundled tiny model uses the project's default tokenizer if its folder has none."""
    from ssa_code.models import default_tokenizer

    try:
        return default_tokenizer()
    except Exception:  # noqa: BLE001
        raise UserError(f"{spec.name} has no tokenizer transformers can load: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:200]


def default_model_note(spec: ModelSpec) -> str | None:
    """The one-line note printed when the tiny model is used because nothing is configured."""
    if spec.source != "default":
        return None
    return (
        "note: using the bundled tiny model; a larger model gives better answers "
        f"(--model ID_OR_PATH, ${ENV_MODEL}, or model = \"...\" in {config_dir() / CONFIG_FILE})"
    )
