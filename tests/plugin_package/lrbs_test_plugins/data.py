import numpy as np
import torch
from torch.utils.data import TensorDataset


def _make(n, features, classes, seed):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 3, (classes, features))
    y = rng.integers(0, classes, n)
    x = (centers[y] + rng.normal(0, 1, (n, features))).astype(np.float32)
    return x, y.astype(np.int64)


def blobs(n=512, features=8, classes=3, seed=0):
    """Arrays (x, y, x_val, y_val)."""
    x, y = _make(n, features, classes, seed)
    cut = int(n * 0.8)
    return x[:cut], y[:cut], x[cut:], y[cut:]


def torch_blobs(n=512, features=8, classes=3, seed=0):
    """(train, val) torch Datasets."""
    x, y = _make(n, features, classes, seed)
    cut = int(n * 0.8)
    return (
        TensorDataset(torch.from_numpy(x[:cut]), torch.from_numpy(y[:cut])),
        TensorDataset(torch.from_numpy(x[cut:]), torch.from_numpy(y[cut:])),
    )
