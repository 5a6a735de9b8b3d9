"""What this worker can run, reported to the service when it connects (GET /v1/workers shows it)."""

from __future__ import annotations

import platform
import socket
from typing import get_args

import torch

import lrbs
from lrbs.contract.builtins import BUILTIN_DATASETS, BUILTIN_MODELS, names
from lrbs.contract.job_spec import LossName
from lrbs.contract.optimizers import OptimizerName
from lrbs.contract.resources import DeviceInfo, WorkerInfo
from lrbs.worker import plugins
from lrbs.worker.plugins import PluginPolicy


def describe(policy: PluginPolicy, memory_gb: float | None = None) -> WorkerInfo:
    """`memory_gb`: the CPU memory one job may use here (the job memory ceiling)."""
    devices = [DeviceInfo(name="cpu", model=platform.processor() or platform.machine(), memory_gb=memory_gb)]
    for i in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
        props = torch.cuda.get_device_properties(i)
        devices.append(DeviceInfo(name=f"cuda:{i}", model=props.name, memory_gb=round(props.total_memory / 2**30, 1)))
    precisions = ["fp32", "bf16"]
    if torch.cuda.is_available():
        precisions = ["fp32", "fp16"] + (["bf16"] if torch.cuda.is_bf16_supported() else [])
    allowed_plugins = {
        kind: sorted(
            name for name, target in plugins.installed(kind).items() if policy.allows(target.partition(":")[0])
        )
        for kind in plugins.GROUPS
    }
    return WorkerInfo(
        hostname=socket.gethostname(),
        lrbs=lrbs.__version__,
        torch=torch.__version__,
        python=platform.python_version(),
        devices=devices,
        precisions=precisions,
        builtins={
            "models": names(BUILTIN_MODELS),
            "datasets": names(BUILTIN_DATASETS),
            "losses": list(get_args(LossName)),
            "optimizers": list(get_args(OptimizerName)),
        },
        plugin_modules=list(policy.modules),
        plugins=allowed_plugins,
    )
