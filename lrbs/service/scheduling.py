"""Which worker can run which job: each job's requirements, read off its spec at submit, against what each
worker registered (its devices, precisions and allowed plugins).

A worker claims only jobs it can run; a queued job that no online worker can run says why (`waiting_for`), and
fails after LRBS_UNSCHEDULABLE_SECONDS. A worker that never registered claims anything, as before.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from lrbs.contract.common import Model, PluginRef, Precision
from lrbs.contract.job_spec import JobSpec
from lrbs.contract.resources import WorkerInfo, WorkerOut

GB = 2**30
PLUGIN_KINDS = ("model", "dataset", "loss", "optimizer")


class Requirements(Model):
    """What a worker needs to run a job; stored with the job."""

    device: Literal["any", "cpu", "cuda"] = "any"
    cuda_index: int | None = None
    precision: Precision = "fp32"
    plugin_modules: list[str] = Field(default_factory=list, description="Modules named as module:callable.")
    plugin_entry_points: dict[str, list[str]] = Field(default_factory=dict, description="Kind → entry-point names.")
    memory_gb: float | None = Field(None, description="The admission estimate of one training step (built-ins).")


def requirements(spec: JobSpec, memory_bytes: int | None = None) -> Requirements:
    device: Literal["any", "cpu", "cuda"] = "any"
    index = None
    if spec.device == "cpu":
        device = "cpu"
    elif spec.device.startswith("cuda") or spec.precision == "fp16":  # fp16 trains with a GradScaler: CUDA only
        device = "cuda"
        index = int(spec.device.partition(":")[2]) if ":" in spec.device else None
    modules: set[str] = set()
    entry_points: dict[str, list[str]] = {}
    for kind in PLUGIN_KINDS:
        ref = getattr(spec, kind)
        if isinstance(ref, PluginRef):
            if ":" in ref.name:
                modules.add(ref.name.partition(":")[0])
            else:
                entry_points.setdefault(kind, []).append(ref.name)
    return Requirements(
        device=device,
        cuda_index=index,
        precision=spec.precision,
        plugin_modules=sorted(modules),
        plugin_entry_points=entry_points,
        memory_gb=round(memory_bytes / GB, 3) if memory_bytes else None,
    )


def missing(need: Requirements, info: WorkerInfo | None) -> list[str]:
    """What this worker lacks to run the job, in words ("CUDA", "fp16", ...); empty when it can run it."""
    if info is None:
        return []
    gpus = [d for d in info.devices if d.name.startswith("cuda")]
    on_gpu = need.device == "cuda" or (need.device == "any" and bool(gpus))
    lacks = []
    if need.device == "cuda" and not gpus:
        lacks.append("CUDA")
    elif need.cuda_index is not None and need.cuda_index >= len(gpus):
        lacks.append(f"cuda:{need.cuda_index}")
    if on_gpu and gpus and need.precision not in info.precisions:
        lacks.append(f"{need.precision} on its GPU")
    if not on_gpu and need.precision == "fp16":
        lacks.append("fp16 (CUDA)")
    for module in need.plugin_modules:
        if not any(module == p or module.startswith(p + ".") for p in info.plugin_modules):
            lacks.append(f"plugin module {module} allowed (LRBS_PLUGIN_MODULES)")
    for kind, names in need.plugin_entry_points.items():
        lacks += [f"the {kind} plugin {name!r} installed" for name in names if name not in info.plugins.get(kind, [])]
    memories = [d.memory_gb for d in (gpus if on_gpu else info.devices[:1]) if d.memory_gb]
    if need.memory_gb is not None and memories and need.memory_gb > max(memories):
        lacks.append(f"{need.memory_gb:.1f} GB of {'GPU ' if on_gpu else ''}memory")
    return lacks


def kind_of(info: WorkerInfo | None) -> str:
    if info is None:
        return "unregistered"
    return "CUDA" if any(d.name.startswith("cuda") for d in info.devices) else "CPU"


def waiting_for(need: Requirements | None, workers: list[WorkerOut]) -> str | None:
    """Why no online worker can run a job (None: one can), e.g. "a worker with CUDA; online: 2 CPU workers"."""
    online = [w for w in workers if w.online]
    if need is None and online:
        return None
    gaps = [missing(need, w.info) for w in online] if need is not None else []
    if any(not gap for gap in gaps):
        return None
    wanted = min(gaps, key=len) if gaps else _all_of(need)
    counts: dict[str, int] = {}
    for w in online:
        counts[kind_of(w.info)] = counts.get(kind_of(w.info), 0) + 1
    present = ", ".join(f"{n} {kind} worker{'s' if n > 1 else ''}" for kind, n in sorted(counts.items())) or "none"
    return f"{'a worker with ' + ' and '.join(wanted) if wanted else 'any worker'}; online: {present}"


def _all_of(need: Requirements | None) -> list[str]:
    if need is None:
        return []
    bare = WorkerInfo(hostname="", lrbs="", torch="", python="", devices=[], precisions=[], builtins={},
                      plugin_modules=[], plugins={})  # fmt: skip
    return missing(need, bare)
