"""What a finished job returns: the curve, every rule's suggestion, the recommendation and the batch advice."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from lrbs.contract.common import Model
from lrbs.contract.job_spec import ScheduleName


class Curve(Model):
    lr: list[float]
    loss: list[float]
    smoothed_loss: list[float]
    loss_kind: Literal["training", "validation"] = Field(
        "training",
        description="Which loss `loss` and `smoothed_loss` are (the spec's lr_range.loss): training, each "
        "step's own batch loss; validation, the loss on the validation batches just after each step.",
    )


class SuggestionOut(Model):
    lr: float | None
    reason: str


class Candidate(Model):
    lr: float
    val_loss: float | None = Field(
        description="Validation loss where its confirmation run ended (null: diverged): at `steps` of the run's "
        "length; short of it when the run was stopped as clearly behind."
    )
    steps: int | None = Field(None, description="Optimizer steps the run trained before it ended or was stopped.")
    seed: int | None = Field(
        None,
        description="Set on a close call's second run: the two best LRs train again on this seed, and the mean of "
        "their two validation losses decides.",
    )


class Recommendation(Model):
    """Settings a training pipeline can use as-is."""

    schedule: ScheduleName
    lr: float = Field(
        description="The LR to train with: the peak LR for cosine, step and exponential, "
        "max_lr for one_cycle, the LR for constant."
    )
    lr_low: float = Field(description="Lower end of the range lrbs considers safe for this schedule.")
    lr_high: float = Field(description="Upper end of the safe range: past it training degrades or diverges.")
    confidence: Literal["high", "medium", "low"] = Field(
        description="How much the range-test sweeps agreed (and whether a fallback rule had to answer)."
    )
    train_steps: int = Field(description="The training length the schedule parameters are for.")
    schedule_params: dict[str, float | int] = Field(
        description="Every parameter of the schedule: cosine peak LR, warm-up steps and final LR; one-cycle "
        "max_lr, div_factor, pct_start, final_div_factor; step and exponential initial LR, decay and interval."
    )
    warmup_steps: int = 0
    warmup_reason: str | None = Field(None, description="Why a warm-up is (or is not) advised.")
    snippet: str = Field(description="PyTorch code that builds this optimizer and scheduler.")
    optimizer_class: str = Field(
        "torch.optim.SGD", description="The optimizer, importable: torch.optim.AdamW, or a plugin's module.name."
    )
    optimizer_params: dict[str, Any] = Field(default_factory=dict, description="Its keyword arguments besides lr.")
    base_lr: float | None = Field(None, description="one_cycle: the starting LR (max_lr / div_factor).")
    max_lr: float | None = Field(None, description="one_cycle: the peak LR.")
    div_factor: float | None = Field(None, description="one_cycle: max_lr / base_lr.")
    batch_size: int = Field(description="The micro-batch the range test ran at.")
    grad_accumulation_steps: int = 1
    effective_batch_size: int = Field(0, description="batch_size × grad_accumulation_steps.")
    rule: str = Field(description="The rule that chose the LR.")
    reason: str = Field(description="How the LR was chosen, in plain words.")
    confirmation: list[Candidate] | None = Field(
        None,
        description="The short trainings that confirmed the LR (thorough, or standard when the sweeps "
        "disagreed), one per candidate.",
    )


class BatchCandidate(Model):
    batch_size: int
    fits: bool = Field(description="A full training step ran within the memory budget, with headroom.")
    peak_memory_mb: float | None = Field(
        None, description="Peak memory of one training step (CUDA: allocated; CPU: resident-set growth)."
    )
    step_time_s: float | None = None
    samples_per_s: float | None = None
    lr: float | None = Field(None, description="The LR to train this batch size with.")
    relative_time_to_target: float | None = Field(
        None, description="Predicted wall time to reach a target loss, relative to the best candidate (1.0)."
    )
    relative_steps_to_target: float | None = Field(
        None,
        description="Predicted optimizer steps to a target loss, relative to the chosen batch (1.0): "
        "S ∝ 1 + B_noise/B with B the global batch (null: no noise scale).",
    )
    relative_samples_to_target: float | None = Field(
        None,
        description="Predicted training samples to a target loss, relative to the chosen batch (1.0): "
        "E ∝ B + B_noise (null: no noise scale).",
    )
    val_loss: float | None = Field(
        None,
        description="generalization_check: validation loss after the equal-epoch "
        "training (null: not run, or diverged).",
    )
    fleet_samples_per_s: float | None = Field(
        None,
        description="Predicted samples per second over world_size devices at this micro-batch (with its "
        "accumulation): equal to samples_per_s on one device.",
    )
    note: str | None = Field(None, description="Why it does not fit, for example.")


class NoiseScaleOut(Model):
    b_noise: float | None = Field(description="B_simple = tr(Σ)/|G|² (McCandlish et al. 2018); the critical batch.")
    low: float | None = Field(description="95% bootstrap interval.")
    high: float | None
    measured_at_lr: float
    after_steps: int = Field(description="Warm-up steps at that LR before measuring (B_noise grows in training).")
    batch_sizes: tuple[int, int] = Field(description="The small and big batch the norms were measured at.")
    measurements: int


class DataParallelAdvice(Model):
    """The advised batch on world_size data-parallel devices: what each rank runs, the global batch, and its LR.

    Memory and speed are measured on one device; the fleet's throughput and all-reduce time are predicted."""

    world_size: int = Field(description="Data-parallel devices (ranks) the advice is for: the spec's world_size.")
    micro_batch_size: int = Field(
        description="Samples per device per forward and backward pass: the DataLoader batch_size on each rank."
    )
    grad_accumulation_steps: int = Field(
        description="Micro-batches each device accumulates per optimizer step; gradients are all-reduced once "
        "per optimizer step, on the last of them."
    )
    global_batch_size: int = Field(
        description="Samples per optimizer step over the fleet: micro_batch_size × grad_accumulation_steps × "
        "world_size. The noise scale, the time to a target loss and global_lr are about this batch."
    )
    global_lr: float | None = Field(description="The LR to train the global batch with (the schedule's peak LR).")
    global_lr_rule: str = Field(
        description="How global_lr was scaled from a measured LR, and whether the global batch lies beyond the "
        "batches whose LR was measured (then it is extrapolated)."
    )
    device_samples_per_s: float | None = Field(
        description="Measured: samples per second of one device at micro_batch_size, accumulation included."
    )
    fleet_samples_per_s: float | None = Field(
        description="Predicted: global_batch_size / step_time_s. Assumes no overlap of the all-reduce with the "
        "backward pass (DDP overlaps them in buckets), so it is a lower bound where the bandwidth holds."
    )
    step_time_s: float | None = Field(
        description="Predicted seconds per optimizer step on the fleet: one device's grad_accumulation_steps "
        "micro-batches (measured) plus allreduce_s."
    )
    allreduce_s: float = Field(
        description="Predicted seconds of the ring all-reduce per optimizer step: 2·(N−1)/N × gradient_bytes / "
        "(interconnect_gbps × 10⁹); 0 on one device."
    )
    gradient_bytes: int = Field(
        description="Gradient bytes all-reduced per step: every parameter that requires a gradient × its "
        "element size. Gradients take the parameters' dtype: fp32 parameters give 4 bytes each, also under "
        "bf16/fp16 autocast (autocast keeps parameters, so gradients, in fp32). Compression hooks are not modelled."
    )
    interconnect_gbps: float = Field(
        description="The all-reduce bus bandwidth assumed per device, in GB/s (10⁹ bytes/s): the spec's "
        "interconnect_gbps, its default unless you set it."
    )
    snippet: str = Field(
        description="Per-rank PyTorch code: DistributedSampler, the micro-batch, accumulation under no_sync "
        "(one all-reduce per optimizer step) and the LR for the global batch."
    )


class NoisePoint(Model):
    """One point of the gradient noise scale's trajectory over a short training."""

    step: int = Field(description="Optimizer steps trained before this measurement.")
    samples: int = Field(description="Training samples seen by then (steps × the effective batch).")
    train_loss: float | None = Field(description="Mean training loss of the measurement's big batches.")
    b_noise: float | None = Field(description="B_simple = tr(Σ)/|G|² here (null: |G|² came out ≤ 0, all noise).")
    low: float | None = Field(description="95% bootstrap interval.")
    high: float | None
    measurements: int


class BatchStage(Model):
    from_step: int = Field(description="The optimizer step this stage starts at (counted from 0 in this schedule).")
    batch_size: int = Field(description="The micro-batch of this stage.")
    grad_accumulation_steps: int
    effective_batch_size: int = Field(description="batch_size × grad_accumulation_steps.")
    lr: float | None = Field(description="The LR for this batch, by the job's LR scaling.")
    b_noise: float = Field(description="The (monotone-fitted) noise scale at the stage's start.")


class BatchSchedule(Model):
    """A batch-size warm-up: the batch grows with the noise scale (McCandlish et al. 2018; Merrill et al. 2025)."""

    stages: list[BatchStage]
    total_steps: int = Field(description="Predicted optimizer steps to the same progress as the fixed batch's run.")
    fixed_batch_size: int = Field(description="The fixed batch it is compared against (this advice's batch_size).")
    fixed_steps: int = Field(description="The optimizer steps the comparison is for: the job's train_steps.")
    step_saving: float = Field(description="Predicted share of optimizer steps saved against the fixed batch.")
    samples: int = Field(description="Predicted training samples of the schedule.")
    fixed_samples: int
    time_s: float | None = Field(description="Predicted wall time from the measured step times.")
    fixed_time_s: float | None
    time_saving: float | None = Field(description="Predicted share of wall time saved against the fixed batch.")
    snippet: str = Field(description="PyTorch code that trains with these stages.")


class BatchSizeAdvice(Model):
    batch_size: int = Field(description="The recommended batch size: the micro-batch on each device.")
    lr: float | None = Field(
        description="The LR that goes with it on one device with the job's grad_accumulation_steps; "
        "data_parallel.global_lr is the LR for the global batch."
    )
    lr_scaling: str = Field(description="How the LR was set per batch size (probe, linear, sqrt, interpolated).")
    largest_fitting: int | None = Field(
        description="The largest batch that fits with headroom (predicted from the "
        "memory fit and verified with a real step where one was run)."
    )
    largest_fitting_verified: bool = False
    memory_fit_mb: tuple[float, float] | None = Field(None, description="(a, b) of memory ≈ a + b·B, in MiB.")
    memory_budget_mb: float | None = Field(
        None, description="The memory a step may use: the GPU's on CUDA, else memory_budget_gb (null: unbounded)."
    )
    headroom: float = Field(description="Share of the memory budget kept free.")
    grad_accumulation_steps: int | None = Field(
        None, description="Per device, to reach target_effective_batch (over world_size devices)."
    )
    noise_scale: NoiseScaleOut | None = None
    generalization_epochs: int | None = Field(None, description="Epochs each candidate trained in the check.")
    candidates: list[BatchCandidate]
    data_parallel: DataParallelAdvice | None = Field(
        None,
        description="The recommendation as each of world_size ranks runs it: micro-batch, accumulation, global "
        "batch, the LR for the global batch and the predicted fleet throughput (also for world_size 1).",
    )
    reason: str
    noise_trajectory: list[NoisePoint] | None = Field(
        None,
        description="The noise scale at several points of one short training at the recommended LR "
        "(log-spaced steps); noise_scale is its last measurable point.",
    )
    trajectory_steps: int | None = Field(None, description="Optimizer steps the trajectory's training ran (its cost).")
    batch_schedule: BatchSchedule | None = Field(
        None, description="A batch-size warm-up, when the growing noise scale makes one pay; else null."
    )
    batch_schedule_reason: str | None = Field(None, description="Why a schedule is (or is not) advised.")


class Environment(Model):
    device: str
    torch: str
    python: str
    lrbs: str
    cpu_threads: int | None = Field(None, description="PyTorch's CPU threads in the job (the worker's --threads).")


class Result(Model):
    curve: Curve | None = Field(description="The median range-test curve (left out of lists with ?view=summary).")
    sweep_curves: list[Curve] | None = Field(
        None, description="Each range test's own curve, before the median (left out of lists with ?view=summary)."
    )
    suggestions: dict[str, SuggestionOut]
    recommendation: Recommendation | None = Field(
        None, description="Missing only when no rule could read the curve; `suggestions` says why."
    )
    stop_reason: Literal["completed", "diverged", "non_finite"]
    diverged_at_lr: float | None = Field(None, description="The LR at which the sweep stopped early.")
    steps_run: int = Field(description="Optimizer steps over all sweeps.")
    sweeps: int = Field(1, description="Range tests run; the curve is their per-step median.")
    batch_advice: BatchSizeAdvice | None = Field(None, description="Batch-size advice, when batch_sizes was given.")
    environment: Environment
    wall_time_s: float
    phase_seconds: dict[str, float] = Field(
        default_factory=dict, description="Wall time per phase (setup, lr_range, confirm, batch_size, ...)."
    )
    phase_steps: dict[str, int] = Field(
        default_factory=dict,
        description="Optimizer steps run per phase (lr_range, confirm, batch_size, ...): the job's cost, comparable "
        "across machines.",
    )
