"""Real text for the benchmark's character-level language model: the Python documentation's topic pages
(`pydoc_data.topics`, about 0.5 MB of English prose and code examples, shipped with every CPython), so the
task needs no download.

A plugin dataset (`{"source": "plugin", "name": "benchmarks.lr_quality.text_data:chars"}`): windows of
`context + 1` characters at seeded random offsets, the first 90% of the text for training and the rest for
validation, characters mapped to ids by their rank in the text's sorted alphabet.
"""

from __future__ import annotations

import pydoc_data.topics

import numpy as np


def chars(context: int = 32, n_train: int = 2048, n_val: int = 512, seed: int = 0):
    text = "".join(pydoc_data.topics.topics[name] for name in sorted(pydoc_data.topics.topics))
    alphabet = sorted(set(text))
    ids = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    lookup = {ord(c): i for i, c in enumerate(alphabet)}
    ids = np.array([lookup[int(c)] for c in ids], dtype=np.int64)
    split = int(0.9 * len(ids))
    rng = np.random.default_rng(seed)

    def windows(part: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        starts = rng.integers(0, len(part) - context - 1, n)
        seq = np.stack([part[s : s + context + 1] for s in starts])
        return seq[:, :-1], seq[:, 1:]

    x, y = windows(ids[:split], n_train)
    x_val, y_val = windows(ids[split:], n_val)
    return x, y, x_val, y_val
