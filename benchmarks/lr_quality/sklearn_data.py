"""Real tabular data shipped with scikit-learn (no download), for the held-out LR tasks.

A plugin dataset (`{"source": "plugin", "name": "benchmarks.lr_quality.sklearn_data:tabular", "params": {...}}`):
`name` one of wine, breast_cancer (classification; features standardised, as a user would) or diabetes
(regression; features as scikit-learn ships them, centred with each column scaled to unit norm, so they are
small and the loss's curvature is low; the target standardised). A seeded 80/20 split.
"""

from __future__ import annotations

import numpy as np
from sklearn import datasets

LOADERS = {"wine": datasets.load_wine, "breast_cancer": datasets.load_breast_cancer, "diabetes": datasets.load_diabetes}


def tabular(name: str = "wine", seed: int = 0):
    if name not in LOADERS:
        raise ValueError(f"unknown dataset {name!r}; accepted: {', '.join(LOADERS)}")
    x, y = LOADERS[name](return_X_y=True)
    x = x.astype(np.float32)
    if name == "diabetes":
        y = ((y - y.mean()) / y.std()).astype(np.float32)[:, None]
    else:
        x = (x - x.mean(axis=0)) / x.std(axis=0)
        y = y.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    cut = int(0.8 * len(x))
    train, val = order[:cut], order[cut:]
    return x[train], y[train], x[val], y[val]
