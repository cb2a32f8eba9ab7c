"""Synthetic key-value needles planted in real code, shared by training and the benchmark.

A needle is one line of code that defines a key, e.g. ``SECRET_TOKEN = "k3f9a2x7"``; it is
asked for later by a *cue*, the same line cut just before the value
(``SECRET_TOKEN = "``), and the answer is the value. This follows the needle-in-a-haystack
test (Kamradt, 2023) and RULER's multi-key variant (Hsieh et al., 2024: several similar keys
are defined, one is asked), with code instead of essays as the haystack.

Needles are inserted as token ids at *line boundaries* of already tokenized text, where the
result is exactly what tokenizing the combined text would give (checked in
``tests/bench/test_synthetic.py``): for the bundled byte-level tokenizer, whose
pre-tokenizer ends every piece that holds a newline at that newline, this holds at position
``p`` when token ``p - 1`` ends with ``"\\n"`` and token ``p`` does not start with one.

Needs only numpy and a Hugging Face tokenizer (it runs on the GPU machine, which has no
tree-sitter).
"""

from __future__ import annotations

import itertools
import random
import string
from dataclasses import dataclass
from typing import Sequence

import numpy as np

STYLES = ("str", "hex", "define")

_KEY_WORDS = (
    "SECRET", "TOKEN", "API", "KEY", "MAGIC", "SEED", "SALT", "NONCE", "CONFIG", "DEFAULT",
    "BUILD", "CACHE", "SESSION", "AUTH", "HASH", "PORT", "VERSION", "MAX", "BASE", "CODE",
    "ACCESS", "PRIVATE", "SIGNING", "DEPLOY", "LICENSE", "CLIENT", "SERVER", "ROOT", "MASTER",
    "TEST", "PROD", "DEBUG", "LOCAL", "REMOTE", "USER", "ADMIN", "DB", "REDIS", "S3", "GIT",
)
_VALUE_ALPHABET = string.ascii_lowercase + string.digits
_HEX = "0123456789abcdef"


@dataclass(frozen=True)
class Needle:
    """One planted key and its value.

    ``style`` is ``"str"`` (``KEY = "value"``), ``"hex"`` (``KEY = 0xvalue``) or
    ``"define"`` (``#define KEY value``, value in decimal).
    """

    key: str
    value: str
    style: str = "str"

    def __post_init__(self) -> None:
        if self.style not in STYLES:
            raise ValueError(f"style must be one of {STYLES}, got {self.style!r}")
        if not self.key or not self.value or any(c.isspace() for c in self.key + self.value):
            raise ValueError(f"key and value must be non-empty and without spaces: {self!r}")

    @property
    def cue(self) -> str:
        """The definition line cut just before the value."""
        if self.style == "str":
            return f'{self.key} = "'
        if self.style == "hex":
            return f"{self.key} = 0x"
        return f"#define {self.key} "

    @property
    def line(self) -> str:
        """The full definition line, newline included."""
        close = '"' if self.style == "str" else ""
        return f"{self.cue}{self.value}{close}\n"


def random_value(rng: random.Random, style: str = "str", length: int | None = None) -> str:
    """A random value: lowercase letters and digits (``str``), hex digits or a decimal."""
    if style == "str":
        n = length or rng.randint(6, 10)
        return "".join(rng.choice(_VALUE_ALPHABET) for _ in range(n))
    if style == "hex":
        n = length or rng.randint(4, 8)
        # A leading digit keeps "0x" a token boundary (a letter could merge with the "x").
        return rng.choice("123456789") + "".join(rng.choice(_HEX) for _ in range(n - 1))
    if style == "define":
        n = length or rng.randint(4, 8)
        return str(rng.randint(1, 9)) + "".join(rng.choice(string.digits) for _ in range(n - 1))
    raise ValueError(f"style must be one of {STYLES}, got {style!r}")


def random_key(rng: random.Random) -> str:
    """An upper-case constant name such as ``API_KEY`` or ``SIGNING_SALT_7``."""
    words = rng.sample(_KEY_WORDS, rng.randint(1, 3))
    if len(words) == 1 or rng.random() < 0.3:
        words.append(str(rng.randint(0, 99)))
    return "_".join(words)


def confusable_suffixes(rng: random.Random, n: int) -> list[int]:
    """``n`` distinct three-digit numbers, each a digit permutation of one base number or the base
    with one digit changed (``377``, ``737``, ``347`` ...): the suffixes a model must read digit by
    digit to tell apart."""
    if not 1 <= n <= 27:
        raise ValueError(f"n must be in [1, 27], got {n}")
    base = str(rng.randint(100, 999))
    near = {"".join(p) for p in itertools.permutations(base)}
    for i in range(3):
        near |= {base[:i] + d + base[i + 1:] for d in string.digits}
    # At least 27: the base and its one-digit changes, less a leading zero.
    pool = sorted(int(x) for x in near if x[0] != "0")
    return rng.sample(pool, n)


def random_needles(rng: random.Random, n: int, *, similar: bool | None = None,
                   style: str | None = None, confusable: bool = False) -> list[Needle]:
    """``n`` needles with distinct keys (and values).

    With ``similar`` the keys share one stem and differ only in a numeric suffix (RULER's
    hard multi-key setting); ``None`` picks at random. ``confusable`` (with ``similar``) draws
    the suffixes from :func:`confusable_suffixes` instead of uniformly.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if similar is None:
        similar = n > 1 and rng.random() < 0.5
    if confusable and not similar:
        raise ValueError("confusable keys need similar keys")
    stem = random_key(rng).rstrip(string.digits).rstrip("_") or "KEY"
    suffixes = iter(confusable_suffixes(rng, n)) if confusable else None
    keys: list[str] = []
    values: set[str] = set()
    out: list[Needle] = []
    while len(out) < n:
        if suffixes is not None:
            key = f"{stem}_{next(suffixes)}"
        else:
            key = f"{stem}_{rng.randint(0, 999)}" if similar else random_key(rng)
        st = style or rng.choice(STYLES)
        value = random_value(rng, st)
        if suffixes is not None:  # distinct keys by construction: only a value may repeat
            while value in values:
                value = random_value(rng, st)
        elif key in keys or value in values:
            continue
        keys.append(key)
        values.add(value)
        out.append(Needle(key, value, st))
    return out


class LineBoundaries:
    """Where token ids can be spliced in a tokenizer's output without changing it.

    Built once per tokenizer from its vocabulary: which ids end with a newline and which
    start with one.
    """

    def __init__(self, tokenizer) -> None:
        vocab = len(tokenizer)
        texts = tokenizer.batch_decode([[i] for i in range(vocab)])
        self.ends_nl = np.array([t.endswith("\n") for t in texts], dtype=bool)
        self.starts_nl = np.array([t.startswith("\n") for t in texts], dtype=bool)

    def positions(self, ids: np.ndarray) -> np.ndarray:
        """Positions ``p`` in ``[1, len(ids)]`` where a whole line may be inserted.

        ``ids``: int array ``[T]``. Returns int64 ``[P]``, ascending. ``p == len(ids)`` is
        included when the text ends with a newline.
        """
        ids = np.asarray(ids)
        if ids.size == 0:
            return np.zeros(0, dtype=np.int64)
        prev_nl = self.ends_nl[ids]
        next_ok = np.ones(ids.size, dtype=bool)
        next_ok[:-1] = ~self.starts_nl[ids[1:]]
        return np.nonzero(prev_nl & next_ok)[0].astype(np.int64) + 1


def encode(tokenizer, text: str) -> list[int]:
    """Token ids of ``text`` without special tokens."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def splice(ids: Sequence[int], inserts: Sequence[tuple[int, Sequence[int]]]) -> list[int]:
    """``ids`` with each ``(position, tokens)`` inserted before ``ids[position]``.

    Inserts at the same position keep their given order.
    """
    out: list[int] = []
    last = 0
    for _, (pos, toks) in sorted(enumerate(inserts), key=lambda x: (x[1][0], x[0])):
        if not 0 <= pos <= len(ids):
            raise ValueError(f"insert position {pos} outside [0, {len(ids)}]")
        out.extend(ids[last:pos])
        out.extend(toks)
        last = pos
    out.extend(ids[last:])
    return out
