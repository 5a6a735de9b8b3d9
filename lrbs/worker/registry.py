"""From a job spec to the objects a probe runs: data, model, loss, optimizer and device.

Built-ins come from worker/models.py and worker/datasets.py; uploads arrive as .npz files fetched by
the runner; plugins go through worker/plugins.py and its allow-list.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from lrbs.contract.builtins import CNNModel, LinearModel, MLPModel, ResNetModel, TransformerLMModel
from lrbs.contract.common import PluginRef
from lrbs.contract.job_spec import DatasetSpec, JobSpec, ModelSpec, PluginDataset, PluginLoss, UploadedDataset
from lrbs.contract.optimizers import OPTIMIZER_CLASSES, OptimizerSpec, PluginOptimizer
from lrbs.contract.shapes import DataShape, infer_shape
from lrbs.worker import builtin_data, networks, plugins
from lrbs.worker.errors import JobError
from lrbs.worker.plugins import PluginPolicy

__all__ = ["JobError", "TrainData", "fresh", "load_data", "make_model", "make_loss", "make_optimizer", "resolve_device"]


# ------------------------------------------------------------------------------------------------ data


@dataclass
class TrainData:
    """Whatever the source: the shape the model is built for, and batches on demand."""

    shape: DataShape
    batches: Callable[[int, int], Iterable[tuple[Tensor, Tensor]]]  # (batch_size, seed) -> re-iterable
    n_train: int
    val_batches: Callable[[int], Iterable[tuple[Tensor, Tensor]]]  # batch_size -> every validation sample once


def load_data(dataset: DatasetSpec, device: torch.device, policy: PluginPolicy,
              fetch_upload: Callable[[str], Path] | None = None) -> TrainData:
    if isinstance(dataset, UploadedDataset):
        if fetch_upload is None:
            raise JobError("this worker cannot fetch uploaded datasets")
        return _tensors(_load_npz(fetch_upload(dataset.id), dataset.validation_fraction), device)
    if isinstance(dataset, PluginDataset):
        factory = plugins.resolve("dataset", dataset.name, policy)
        made = plugins.call(factory, dataset.name, params=dataset.params)
        return _from_plugin(made, dataset, device)
    try:
        data = builtin_data.builtin(dataset)
    except (ValueError, NotImplementedError, ImportError) as exc:
        raise JobError(str(exc)) from None
    return _tensors(data, device, dataset.shape())


def _load_npz(path: Path, validation_fraction: float) -> builtin_data.Data:
    """The service stores every upload as a canonical .npz (x, y, optional x_val and y_val)."""
    with np.load(path, allow_pickle=False) as npz:
        arrays = {k: torch.from_numpy(npz[k]) for k in npz.files}
    if "x_val" in arrays:
        return builtin_data.Data(arrays["x"], arrays["y"], arrays["x_val"], arrays["y_val"])
    return builtin_data.split(arrays["x"], arrays["y"], validation_fraction)


def shape_of(data: builtin_data.Data) -> DataShape:
    """The task and sizes, by the same rule the service applies to uploads (labels of both splits count)."""
    integer = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)
    x_int, y_int = data.x.dtype in integer, data.y.dtype in integer
    ids = [data.y, data.y_val] if y_int else []
    if x_int and y_int and data.x.shape == data.y.shape:
        ids += [data.x, data.x_val]
    largest = max((int(t.max()) for t in ids if t.numel()), default=0)
    try:
        return infer_shape(tuple(data.x.shape), x_int, tuple(data.y.shape), y_int, largest)
    except ValueError as exc:
        raise JobError(str(exc)) from None


def _tensors(data: builtin_data.Data, device: torch.device, shape: DataShape | None = None) -> TrainData:
    shape = shape or shape_of(data)

    def typed(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        if shape.task == "language_modeling":
            x, y = x.long(), y.long()
        else:
            x = x.float()
            y = y.long() if shape.task == "classification" else y.float().reshape(len(y), -1)
        return x.to(device), y.to(device)  # small enough to live on the device: no per-batch copies

    x, y = typed(data.x, data.y)
    x_val, y_val = typed(data.x_val, data.y_val)
    return TrainData(
        shape, lambda batch_size, seed: builtin_data.Batches(x, y, batch_size, seed), len(x),
        lambda batch_size: [(x_val[i : i + batch_size], y_val[i : i + batch_size])
                            for i in range(0, len(x_val), batch_size)],
    )


def _from_plugin(made, dataset: PluginDataset, device: torch.device) -> TrainData:
    if isinstance(made, tuple) and len(made) == 4:
        x, y, x_val, y_val = (torch.as_tensor(np.asarray(a)) for a in made)
        return _tensors(builtin_data.Data(x, y, x_val, y_val), device)
    if isinstance(made, tuple) and len(made) == 2 and all(isinstance(d, Dataset) for d in made):
        train = made[0]
        if len(train) == 0:
            raise JobError(f"dataset plugin {dataset.name!r} returned an empty training set")
        x0, y0 = train[0]
        x0, y0 = torch.as_tensor(x0), torch.as_tensor(y0)
        largest = _largest_label(train, y0) if not y0.is_floating_point() else 0
        if not x0.is_floating_point() and x0.shape == y0.shape:  # token data: the vocabulary
            largest = max(largest, int(x0.max()))
        try:
            shape = infer_shape((len(train), *x0.shape), not x0.is_floating_point(), (len(train), *y0.shape),
                                  not y0.is_floating_point(), largest)
        except ValueError as exc:
            raise JobError(f"dataset plugin {dataset.name!r}: {exc}") from None

        def loader(batch_size: int, seed: int) -> DataLoader:
            return DataLoader(train, batch_size=min(batch_size, len(train)), shuffle=True, drop_last=True,
                              generator=torch.Generator().manual_seed(seed))

        return TrainData(shape, loader, len(train), lambda batch_size: DataLoader(made[1], batch_size=batch_size))
    raise JobError(f"dataset plugin {dataset.name!r} must return (train, val) torch Datasets or arrays "
                   f"(x, y, x_val, y_val); it returned {type(made).__name__}")


def _largest_label(train: Dataset, y0: Tensor) -> int:
    """From `num_classes` or `targets` when the dataset has them (torchvision's do); else a scan of y."""
    if hasattr(train, "num_classes"):
        return int(train.num_classes) - 1
    if hasattr(train, "targets"):
        return int(torch.as_tensor(train.targets).max())
    return max(int(torch.as_tensor(train[i][1]).max()) for i in range(len(train)))


# ---------------------------------------------------------------------------------------------- models


def make_model(model: ModelSpec, shape: DataShape, loss: str | None, policy: PluginPolicy) -> nn.Module:
    if isinstance(model, PluginRef):
        context = {"input_shape": shape.input_shape}
        context["vocab_size" if shape.task == "language_modeling" else "num_classes"] = shape.num_outputs
        net = plugins.call(plugins.resolve("model", model.name, policy), model.name, params=model.params,
                           context=context)
        if not isinstance(net, nn.Module):
            raise JobError(f"model plugin {model.name!r} returned {type(net).__name__}, not a torch nn.Module")
        return net
    p = model.params
    match model:
        case LinearModel():
            net = networks.linear(p.in_features or math.prod(shape.input_shape), p.out_features or shape.num_outputs)
        case MLPModel():
            net = networks.mlp(p.in_features or math.prod(shape.input_shape), p.out_features or shape.num_outputs,
                             p.hidden, p.activation, p.dropout, p.batch_norm)
        case CNNModel():
            net = networks.cnn(p.in_channels or shape.input_shape[0], p.num_classes or shape.num_outputs,
                             p.channels, p.dropout)
        case ResNetModel():
            net = networks.resnet(p.in_channels or shape.input_shape[0], p.num_classes or shape.num_outputs,
                                depth=p.depth, width=p.width, stages=p.stages)
        case TransformerLMModel():
            net = networks.transformer_lm(p.vocab_size or shape.num_outputs, p.context or shape.input_shape[0],
                                        layers=p.layers, d_model=p.d_model, heads=p.heads, mlp_ratio=p.mlp_ratio,
                                        dropout=p.dropout)
        case _:
            raise JobError(f"model {model.name} is not available on this worker")
    if loss == "nll":  # nll_loss takes log-probabilities; built-in models end in logits
        net = nn.Sequential(net, nn.LogSoftmax(dim=-1))
    return net


# ---------------------------------------------------------------------------------------------- losses


def make_loss(loss: str | PluginLoss, policy: PluginPolicy) -> Callable[[Tensor, Tensor], Tensor]:
    if isinstance(loss, PluginLoss):
        fn = plugins.call(plugins.resolve("loss", loss.name, policy), loss.name, params=loss.params)
        if not callable(fn):
            raise JobError(f"loss plugin {loss.name!r} must return a callable (output, target) -> loss")
        return fn
    return LOSSES[loss]


def cross_entropy(out: Tensor, y: Tensor) -> Tensor:
    """Logits (N, C) against (N,), or language-model logits (N, T, V) against (N, T)."""
    return F.cross_entropy(out.flatten(0, -2), y.flatten())


def nll(out: Tensor, y: Tensor) -> Tensor:
    return F.nll_loss(out.flatten(0, -2), y.flatten())


def bce_with_logits(out: Tensor, y: Tensor) -> Tensor:
    """Class labels become one-hot targets: one independent sigmoid per class."""
    if not y.is_floating_point() and y.shape != out.shape:
        y = F.one_hot(y, out.shape[-1]).to(out.dtype)
    return F.binary_cross_entropy_with_logits(out, y)


LOSSES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "cross_entropy": cross_entropy, "nll": nll, "bce_with_logits": bce_with_logits,
    "mse": F.mse_loss, "l1": F.l1_loss,
}


# ----------------------------------------------------------------------------------- optimizer, device


def make_optimizer(optimizer: OptimizerSpec | PluginOptimizer, params, lr: float,
                   policy: PluginPolicy) -> torch.optim.Optimizer:
    if isinstance(optimizer, PluginOptimizer):
        factory = plugins.resolve("optimizer", optimizer.name, policy)
        made = plugins.call(factory, optimizer.name, list(params), lr, params=optimizer.params)
        if not isinstance(made, torch.optim.Optimizer):
            raise JobError(f"optimizer plugin {optimizer.name!r} returned {type(made).__name__}, "
                           "not a torch.optim.Optimizer")
        return made
    cls = getattr(torch.optim, OPTIMIZER_CLASSES[optimizer.name])
    return cls(params, lr=lr, **optimizer.params)


def fresh(spec: JobSpec, shape: DataShape, device: torch.device, policy: PluginPolicy, lr: float,
          seed: int) -> tuple[nn.Module, torch.optim.Optimizer]:
    """A newly initialised model (seeded) on `device` and its optimizer at `lr`: every probe run starts here."""
    torch.manual_seed(seed)
    loss = spec.loss if isinstance(spec.loss, str) else None
    model = make_model(spec.model, shape, loss, policy).to(device)
    return model, make_optimizer(spec.optimizer, model.parameters(), lr, policy)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise JobError(f"the job asks for device {device}, but this worker has no CUDA GPU; use auto or cpu")
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise JobError(f"the job asks for {device}, but this worker has {torch.cuda.device_count()} GPU(s) "
                           f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    return torch.device(device)


def check_precision(precision: str, device: torch.device) -> None:
    """Refuse what the hardware cannot do, in words the user can act on."""
    if precision == "fp16" and device.type != "cuda":
        raise JobError(f"precision fp16 needs a CUDA GPU (it trains with a GradScaler); this job runs on "
                       f"{device}: use bf16 or fp32")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise JobError(f"precision bf16 is not supported by {torch.cuda.get_device_name(device)}; use fp16 or fp32")
