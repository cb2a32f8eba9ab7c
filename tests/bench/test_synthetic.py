"""Needles spliced as token ids equal tokenizing the combined text (training and bench rely on it)."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from ssa_code.bench.synthetic import (
    LineBoundaries, Needle, confusable_suffixes, encode, random_needles, random_value, splice,
)
from ssa_code.models import default_tokenizer

SAMPLES = [
    "import os\n\n\ndef f(x):\n    return x + 1  \n\nclass A:\n    pass\n",
    "#include <stdio.h>\n\nint main(void) {\n\treturn 0;\n}\n\n\n/* end */\n",
    "# Title\n\nSome *text*.\r\n\r\n- item 1\n- item 2\n",
    Path(__file__).read_text(),
]


@pytest.fixture(scope="module")
def tok():
    return default_tokenizer()


@pytest.fixture(scope="module")
def lines(tok):
    return LineBoundaries(tok)


@pytest.mark.parametrize("text", SAMPLES)
def test_splice_equals_tokenizing_the_text(tok, lines, text):
    rng = random.Random(0)
    ids = encode(tok, text)
    pos = lines.positions(np.array(ids))
    assert pos.size > 0
    for p in pos[:: max(1, pos.size // 60)].tolist():
        needle = random_needles(rng, 1)[0]
        spliced = splice(ids, [(p, encode(tok, needle.line))])
        joined = tok.decode(ids[:p]) + needle.line + tok.decode(ids[p:])
        assert spliced == encode(tok, joined), (p, needle)


def test_cue_is_a_token_prefix_of_the_line(tok):
    rng = random.Random(1)
    for _ in range(300):
        n = random_needles(rng, 1)[0]
        line, cue = encode(tok, n.line), encode(tok, n.cue)
        assert line[: len(cue)] == cue, n
        assert tok.decode(line[len(cue):]).startswith(n.value)


def test_multi_key_needles_are_distinct():
    rng = random.Random(2)
    ns = random_needles(rng, 8, similar=True)
    assert len({n.key for n in ns}) == 8 and len({n.value for n in ns}) == 8
    stems = {n.key.rsplit("_", 1)[0] for n in ns}
    assert len(stems) == 1


def test_validation():
    with pytest.raises(ValueError):
        Needle("K", "v", style="yaml")
    with pytest.raises(ValueError):
        Needle("K X", "v")
    with pytest.raises(ValueError):
        random_value(random.Random(0), "nope")
    with pytest.raises(ValueError):
        splice([1, 2], [(3, [9])])


def test_confusable_suffixes_differ_by_a_swap_or_one_digit():
    rng = random.Random(5)
    for n in (2, 4, 6, 27):
        got = confusable_suffixes(rng, n)
        assert len(set(got)) == n and all(100 <= x <= 999 for x in got)
        # Some base b: every suffix is a permutation of b's digits or b with one digit changed.
        def near(a: str, b: str) -> bool:
            return sorted(a) == sorted(b) or sum(x != y for x, y in zip(a, b)) <= 1
        assert any(all(near(str(x), str(b)) for x in got) for b in range(100, 1000))
    # 27 is the most every base allows (111: itself and its one-digit changes, no leading zero).
    assert all(len(set(confusable_suffixes(random.Random(s), 27))) == 27 for s in range(300))
    with pytest.raises(ValueError):
        confusable_suffixes(rng, 28)


def test_confusable_needles_share_a_stem_and_leave_the_default_draws_alone():
    ns = random_needles(random.Random(3), 4, similar=True, confusable=True)
    assert len({n.key.rsplit("_", 1)[0] for n in ns}) == 1 and len({n.key for n in ns}) == 4
    assert len({n.value for n in ns}) == 4
    # The default (the shipped checkpoint's training data) draws exactly as before.
    a, b = random.Random(9), random.Random(9)
    assert random_needles(a, 5) == random_needles(b, 5, confusable=False) and a.random() == b.random()
    with pytest.raises(ValueError, match="similar"):
        random_needles(random.Random(0), 3, similar=False, confusable=True)
