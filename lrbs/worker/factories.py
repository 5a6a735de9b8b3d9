"""From a job spec to the torch objects a probe runs: model, loss, optimizer and device.

Built-in models come from `networks.BUILDERS`; plugins go through `plugins` and its allow-list.
A job builds them through its `JobContext` (job.py), which seeds each model the same way for every caller.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lrbs.contract.common import PluginRef
from lrbs.contract.job_spec import ModelSpec, PluginLoss
from lrbs.contract.optimizers import OPTIMIZER_CLASSES, OptimizerSpec, PluginOptimizer
from lrbs.contract.shapes import DataShape
from lrbs.worker import networks, plugins
from lrbs.worker.errors import JobError
from lrbs.worker.plugins import PluginPolicy


def make_model(model: ModelSpec, shape: DataShape, loss: str | None, policy: PluginPolicy) -> nn.Module:
    if isinstance(model, PluginRef):
        context: dict[str, object] = {"input_shape": shape.input_shape}
        context["vocab_size" if shape.task == "language_modeling" else "num_classes"] = shape.num_outputs
        net = plugins.call(
            plugins.resolve("model", model.name, policy), model.name, params=model.params, context=context
        )
        if not isinstance(net, nn.Module):
            raise JobError(f"model plugin {model.name!r} returned {type(net).__name__}, not a torch nn.Module")
        return net
    build = networks.BUILDERS.get(model.name)
    if build is None:
        raise JobError(f"model {model.name} is not available on this worker")
    net = build(model.params, shape)  # type: ignore[attr-defined]
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
    "cross_entropy": cross_entropy,
    "nll": nll,
    "bce_with_logits": bce_with_logits,
    "mse": F.mse_loss,
    "l1": F.l1_loss,
}


# ----------------------------------------------------------------------------------- optimizer, device


def make_optimizer(
    optimizer: OptimizerSpec | PluginOptimizer, params, lr: float, policy: PluginPolicy
) -> torch.optim.Optimizer:
    if isinstance(optimizer, PluginOptimizer):
        factory = plugins.resolve("optimizer", optimizer.name, policy)
        made = plugins.call(factory, optimizer.name, list(params), lr, params=optimizer.params)
        if not isinstance(made, torch.optim.Optimizer):
            raise JobError(
                f"optimizer plugin {optimizer.name!r} returned {type(made).__name__}, not a torch.optim.Optimizer"
            )
        return made
    cls = getattr(torch.optim, OPTIMIZER_CLASSES[optimizer.name])
    try:
        return cls(params, lr=lr, **optimizer.params)
    except (TypeError, ValueError) as exc:  # what the contract's table could not check, torch says here
        raise JobError(f"{optimizer.name} rejects these params: {exc}") from None


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise JobError(f"the job asks for device {device}, but this worker has no CUDA GPU; use auto or cpu")
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise JobError(
                f"the job asks for {device}, but this worker has {torch.cuda.device_count()} GPU(s) "
                f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})"
            )
    return torch.device(device)


def check_precision(precision: str, device: torch.device) -> None:
    """Refuse what the hardware cannot do, in words the user can act on."""
    if precision == "fp16" and device.type != "cuda":
        raise JobError(
            f"precision fp16 needs a CUDA GPU (it trains with a GradScaler); this job runs on "
            f"{device}: use bf16 or fp32"
        )
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise JobError(f"precision bf16 is not supported by {torch.cuda.get_device_name(device)}; use fp16 or fp32")
