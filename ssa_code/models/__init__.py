"""The bundled tiny model and its tokenizer (offline default).

``TINY_MODEL_DIR`` holds a byte-level BPE tokenizer (vocabulary 8192, trained by
``scripts/train_tokenizer.py`` on real source code) and, once trained by
``scripts/train_tiny.py``, a small Llama-architecture causal LM. Both load with
``from_pretrained(TINY_MODEL_DIR)`` and never touch the network.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

TINY_MODEL_DIR: Path = Path(__file__).resolve().parent / "tiny"

__all__ = ["TINY_MODEL_DIR", "default_tokenizer"]


@lru_cache(maxsize=1)
def default_tokenizer() -> "PreTrainedTokenizerFast":
    """The tiny model's tokenizer, loaded once from ``TINY_MODEL_DIR`` (offline).

    Adds no special tokens when encoding (``add_bos_token`` is off); its chat template
    renders ``<|bos|><|role|>\\ncontent<|eos|>\\n...`` and, with
    ``add_generation_prompt=True``, ends with ``<|assistant|>\\n``.
    """
    from transformers import AutoTokenizer

    if not (TINY_MODEL_DIR / "tokenizer.json").is_file():
        raise FileNotFoundError(f"bundled tokenizer missing: {TINY_MODEL_DIR / 'tokenizer.json'}")
    return AutoTokenizer.from_pretrained(str(TINY_MODEL_DIR), local_files_only=True)
