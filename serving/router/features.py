"""Request features for the router's predictor: generic text statistics, nothing that
knows the demo task families.

- hashed word unigrams and bigrams (lowercased): what the request is about;
- hashed word *shapes* (`Reverse` -> `Aa+`, `4567` -> `0{4}`, `qwerty.` -> `a{6}.`) and
  shape bigrams: how long the numbers, words and records are, the usual proxy for how
  hard a request is (the word-shape features of classic NER systems);
- hashed character 3-grams of the last user message: robust to phrasings never seen;
- dense: log characters, log words, log lines, conversation depth, system prompt or not.

Hashing (CRC32 into `HASH_DIM` buckets, signed) keeps the model a fixed-size vector for
any vocabulary, so a user's own workload needs no re-fitted vocabulary, only retraining.
Featurising a 1 KB prompt takes well under a millisecond.
"""

from __future__ import annotations

import math
import re
import zlib
from collections import Counter

import numpy as np

HASH_DIM = 1 << 14
DENSE_NAMES = ("log_chars", "log_words", "log_lines", "depth", "has_system")
DIM = HASH_DIM + len(DENSE_NAMES)

_WORD = re.compile(r"\S+")
_RUNS = re.compile(r"(.)\1*")


def _shape_char(ch: str) -> str:
    if ch.isdigit():
        return "0"
    if ch.isalpha():
        return "A" if ch.isupper() else "a"
    return ch


def word_shape(word: str) -> str:
    """`4567` -> `0{4}`, `Reverse` -> `Aa{6}`, `K=042` -> `A=0{3}`: runs with lengths."""
    shaped = "".join(_shape_char(c) for c in word)
    parts = []
    for match in _RUNS.finditer(shaped):
        run = match.group(0)
        parts.append(run[0] if len(run) == 1 else f"{run[0]}{{{len(run)}}}")
    return "".join(parts)


def _bucket(token: str) -> tuple[int, float]:
    h = zlib.crc32(token.encode("utf-8"))
    return h % HASH_DIM, 1.0 if (h >> 31) & 1 else -1.0


def _add(counter: Counter[str], prefix: str, tokens: list[str]) -> None:
    for token in tokens:
        counter[prefix + token] += 1


def featurize(messages: list[dict[str, str]]) -> tuple[np.ndarray, np.ndarray]:
    """Sparse features of a chat request: (indices, values), indices unique and < DIM."""
    contents = [str(m.get("content") or "") for m in messages]
    text = "\n".join(contents)
    last_user = next(
        (str(m.get("content") or "") for m in reversed(messages) if m.get("role") == "user"),
        text,
    )
    words = _WORD.findall(text)
    lowered = [w.lower() for w in words]
    shapes = [word_shape(w) for w in words]

    grams: Counter[str] = Counter()
    _add(grams, "w:", lowered)
    _add(grams, "b:", [f"{a} {b}" for a, b in zip(lowered, lowered[1:], strict=False)])
    _add(grams, "s:", shapes)
    _add(grams, "S:", [f"{a} {b}" for a, b in zip(shapes, shapes[1:], strict=False)])
    tail = last_user.lower()
    _add(grams, "c:", [tail[i : i + 3] for i in range(max(0, len(tail) - 2))])

    buckets: dict[int, float] = {}
    norm = 0.0
    for token, count in grams.items():
        index, sign = _bucket(token)
        value = sign * (1.0 + math.log(count))
        buckets[index] = buckets.get(index, 0.0) + value
    norm = math.sqrt(sum(v * v for v in buckets.values())) or 1.0

    dense = (
        math.log1p(len(text)) / 8.0,
        math.log1p(len(words)) / 6.0,
        math.log1p(text.count("\n") + 1) / 4.0,
        math.log1p(sum(1 for m in messages if m.get("role") == "user")) / 2.0,
        1.0 if any(m.get("role") == "system" for m in messages) else 0.0,
    )
    indices = np.fromiter(buckets.keys(), dtype=np.int64, count=len(buckets))
    values = np.fromiter((v / norm for v in buckets.values()), dtype=np.float32)
    indices = np.concatenate([indices, np.arange(HASH_DIM, DIM, dtype=np.int64)])
    values = np.concatenate([values, np.asarray(dense, dtype=np.float32)])
    return indices, values


def feature_matrix(requests: list[list[dict[str, str]]]) -> np.ndarray:
    """Dense (n, DIM) float32 matrix for training (n is hundreds to a few thousands)."""
    matrix = np.zeros((len(requests), DIM), dtype=np.float32)
    for row, messages in enumerate(requests):
        indices, values = featurize(messages)
        matrix[row, indices] = values
    return matrix
