"""Token-by-token generation on an SSA cache, streamed as text.

An explicit decode loop rather than ``model.generate``: the engine needs the first token's
time (time to first token), a text delta per token for the Markdown stream, and control over
when SSA's source tracking is on. Each step runs the model on one token with the cache, which
works the same on transformers 5.17 (``past_key_values=``) and 5.24+ (``cache=``); on CUDA the
plain SSA steps replay a CUDA graph (``decode.py``).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Iterable, Iterator


@dataclass(frozen=True)
class GenerationConfig:
    """Decoding settings. ``temperature == 0`` is greedy decoding.

    ``stop_repeats``: stop once the answer ends in this many identical non-blank lines in a row,
    the loop greedy decoding falls into (0: never; :func:`repeated_line`).
    """

    max_new_tokens: int = 512
    temperature: float = 0.0
    top_p: float = 0.95
    seed: int | None = None
    stop_repeats: int = 4

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.stop_repeats < 0 or self.stop_repeats == 1:
            raise ValueError(f"stop_repeats must be 0 (never) or >= 2, got {self.stop_repeats}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


@dataclass(frozen=True)
class Step:
    """One generated token and the text it added to the answer (may be empty mid-character)."""

    token_id: int
    text: str


def cache_kwarg(model: Any) -> str:
    """Name of the forward argument that takes the cache: ``cache`` (5.24+) or ``past_key_values``."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def forward_tokens(model: Any, cache: Any, token_ids: Any) -> Any:
    """Run ``token_ids`` ``[1, M]`` through the model on ``cache``; logits of the last one ``[V]``.

    Positions continue from ``cache.get_seq_length()`` and are passed explicitly.
    """
    import torch

    start = cache.get_seq_length()
    positions = torch.arange(start, start + token_ids.shape[1], device=token_ids.device)[None]
    with torch.inference_mode():
        out = model(
            input_ids=token_ids, position_ids=positions, use_cache=True, logits_to_keep=1,
            **{cache_kwarg(model): cache},
        )
    return out.logits[0, -1]


def stop_token_ids(model: Any, tokenizer: Any) -> set[int]:
    """End-of-sequence ids from the generation config and the tokenizer."""
    ids: set[int] = set()
    candidates: list[Any] = [getattr(tokenizer, "eos_token_id", None)]
    gen_cfg = getattr(model, "generation_config", None)
    if gen_cfg is not None:
        candidates.append(getattr(gen_cfg, "eos_token_id", None))
    for c in candidates:
        if isinstance(c, int):
            ids.add(c)
        elif isinstance(c, (list, tuple)):
            ids.update(int(x) for x in c)
    return ids


def pick_token(logits: Any, cfg: GenerationConfig, generator: Any = None) -> int:
    """Greedy (``temperature == 0``) or nucleus sampling from ``logits`` ``[V]``."""
    import torch

    logits = logits.float()
    if cfg.temperature == 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits / cfg.temperature, dim=-1)
    if cfg.top_p < 1:
        sorted_p, order = torch.sort(probs, descending=True)
        # Keep the smallest prefix whose mass reaches top_p (always at least one token).
        keep = torch.cumsum(sorted_p, dim=-1) - sorted_p < cfg.top_p
        sorted_p = sorted_p * keep
        choice = torch.multinomial(sorted_p / sorted_p.sum(), 1, generator=generator)
        return int(order[choice])
    return int(torch.multinomial(probs, 1, generator=generator))


def repeated_line(text: str, times: int) -> str | None:
    """The line that ``text`` ends with ``times`` times in a row, each complete (newline ended)
    and non-blank; None when it does not (or ``times`` is 0)."""
    if times < 2:
        return None
    lines = text.split("\n")[:-1]  # the piece after the last newline is not a complete line
    last = lines[-times:]
    if len(last) < times or not last[0].strip() or any(line != last[0] for line in last):
        return None
    return last[0]


class TextStream:
    """Turns token ids into text deltas, holding back an incomplete UTF-8 character."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.emitted = 0

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            return ""
        delta = text[self.emitted :]
        self.emitted = len(text)
        return delta

    def text(self) -> str:
        return self.tokenizer.decode(self.ids, skip_special_tokens=True)


def generate(
    model: Any,
    cache: Any,
    first_logits: Any,
    tokenizer: Any,
    cfg: GenerationConfig,
    stop_ids: Iterable[int] | None = None,
) -> Iterator[Step]:
    """Yield tokens, starting from the logits of the last prompt token, until a stop token, or
    until the answer repeats one line ``cfg.stop_repeats`` times in a row.

    Each yielded token except the last is fed back through the model on ``cache``; the caller
    can stop early by closing the iterator. The stop token itself is not yielded.
    """
    import torch

    stops = set(stop_ids) if stop_ids is not None else stop_token_ids(model, tokenizer)
    generator = None
    if cfg.temperature > 0 and cfg.seed is not None:
        generator = torch.Generator(device=first_logits.device).manual_seed(cfg.seed)
    stream = TextStream(tokenizer)
    from ssa_code.engine.decode import Decoder

    decoder = Decoder(model, cache)
    logits = first_logits
    answer = ""
    for i in range(cfg.max_new_tokens):
        token = pick_token(logits, cfg, generator)
        if token in stops:
            return
        step = Step(token, stream.push(token))
        yield step
        answer += step.text
        if "\n" in step.text and repeated_line(answer, cfg.stop_repeats) is not None:
            return
        if i + 1 < cfg.max_new_tokens:
            logits = decoder(token)
