"""One job's context: what every step of a job needs, built once from its spec.

Every caller (the LR advice, the confirmation trainings, the batch-size probes, the noise scale, the
benchmarks) builds its models and runs its sweeps and trainings through a `JobContext`, so a job's
precision, gradient accumulation, clipping and memory format apply everywhere, the same way.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from lrbs.contract.job_spec import JobSpec
from lrbs.contract.resources import Progress
from lrbs.schedules import SCHEDULES
from lrbs.worker import factories, suggest
from lrbs.worker.data import TrainData, load_data
from lrbs.worker.errors import JobError
from lrbs.worker.plugins import PluginPolicy
from lrbs.worker.probes import batch_size as batch_probe
from lrbs.worker.probes.lr_range import RangeProgress, RangeResult, lr_range_test
from lrbs.worker.probes.step import LossFn, StepSettings
from lrbs.worker.probes.train import evaluate, training

ProgressFn = Callable[[Progress], None]
VALIDATION_BATCH = 256


class PhaseClock:
    """Passes progress reports on, times each phase (from its first report to the next phase's first) and counts
    the optimizer steps run in each."""

    def __init__(self, report: ProgressFn) -> None:
        self.report = report
        self.seconds: dict[str, float] = {}
        self.steps: dict[str, int] = {}
        self.phase: str | None = None
        self.since = time.perf_counter()

    def __call__(self, progress: Progress) -> None:
        if progress.phase != self.phase:
            self._close(time.perf_counter())
            self.phase = progress.phase
        self.report(progress)

    def _close(self, now: float) -> None:
        if self.phase is not None:
            self.seconds[self.phase] = self.seconds.get(self.phase, 0.0) + now - self.since
        self.since = now

    def add_steps(self, n: int) -> None:
        phase = self.phase or "setup"
        self.steps[phase] = self.steps.get(phase, 0) + n

    def totals(self) -> dict[str, float]:
        """Seconds per phase so far, the current one included."""
        self._close(time.perf_counter())
        return dict(self.seconds)


@dataclass
class JobContext:
    spec: JobSpec
    data: TrainData
    loss_fn: LossFn
    device: torch.device
    policy: PluginPolicy
    report: PhaseClock
    step_settings: StepSettings

    @classmethod
    def build(
        cls,
        spec: JobSpec,
        on_progress: ProgressFn | None = None,
        *,
        policy: PluginPolicy | None = None,
        fetch_upload: Callable[[str], Path] | None = None,
    ) -> JobContext:
        """Resolve the device, check the hardware can run the spec, load the data and fit the spec to it."""
        report = PhaseClock(on_progress or (lambda _p: None))
        report(Progress(phase="setup"))
        policy = policy or PluginPolicy()
        device = factories.resolve_device(spec.device)
        factories.check_precision(spec.precision, device)
        torch.manual_seed(spec.seed)
        data = load_data(spec.dataset, device, policy, fetch_upload)
        try:
            spec.resolve_for(data.shape)  # plugin data is first seen here: default loss, model and loss fit
        except ValueError as exc:
            raise JobError(str(exc)) from None
        assert spec.loss is not None  # resolve_for filled the default
        settings = StepSettings(
            precision=spec.precision,
            grad_accumulation_steps=spec.grad_accumulation_steps,
            grad_clip_norm=spec.grad_clip_norm,
            channels_last=spec.channels_last,
        )
        loss_fn = factories.make_loss(spec.loss, policy)
        return cls(spec, data, loss_fn, device, policy, report, settings)

    def progress(
        self, phase: str, step: int = 0, total: int = 0, lr: float | None = None, loss: float | None = None
    ) -> None:
        fraction = min(1.0, step / total) if total else 0.0
        self.report(Progress(phase=phase, step=step, total=total, fraction=fraction, lr=lr, loss=loss))

    def family(self) -> str | None:
        """The task family whose LR fractions apply (suggest.family_of); None: the default fractions."""
        optimizer = getattr(self.spec.optimizer, "name", None) if self.spec.optimizer.source == "builtin" else None
        return suggest.family_of(optimizer, self.data.shape.task)

    def fresh(self, lr: float, seed: int | None = None) -> tuple[nn.Module, torch.optim.Optimizer]:
        """A newly initialised model (seeded) on the job's device and its optimizer at `lr`."""
        torch.manual_seed(self.spec.seed if seed is None else seed)
        loss = self.spec.loss if isinstance(self.spec.loss, str) else None
        model = factories.make_model(self.spec.model, self.data.shape, loss, self.policy).to(self.device)
        return model, factories.make_optimizer(self.spec.optimizer, model.parameters(), lr, self.policy)

    def range_test(
        self, batch_size: int, seed: int | None = None, on_progress: RangeProgress | None = None
    ) -> RangeResult:
        """One LR range test with the spec's sweep settings, on a fresh model, at this micro-batch size.

        With lr_range.loss "validation", each point is the loss on the first `val_batches` validation
        batches of this size (the same ones every step), evaluated after the step."""
        sweep = self.spec.lr_range
        seed = self.spec.seed if seed is None else seed
        val_batches = None
        if sweep.loss == "validation":
            assert sweep.val_batches is not None  # the spec fills it in for validation
            val_batches = list(itertools.islice(self.data.val_batches(batch_size), sweep.val_batches))
            if not val_batches:
                raise JobError(
                    'lr_range.loss "validation" needs validation samples, but this dataset has none; '
                    "set dataset.validation_fraction above 0 (or upload x_val and y_val)"
                )
        model, optimizer = self.fresh(sweep.min_lr, seed)
        result = lr_range_test(
            model, self.loss_fn, optimizer, self.data.batches(batch_size, seed),
            min_lr=sweep.min_lr, max_lr=sweep.max_lr, num_steps=sweep.num_steps, mode=sweep.mode,
            smoothing=sweep.smoothing, diverge_factor=sweep.diverge_factor, on_progress=on_progress,
            step_settings=self.step_settings, val_batches=val_batches, in_place=True,
        )  # fmt: skip
        self.report.add_steps(result.steps_run)
        return result

    def train(
        self,
        lr: float,
        steps: int,
        *,
        schedule: str = "constant",
        warmup_steps: int = 0,
        batch_size: int | None = None,
        seed: int | None = None,
        on_progress: Callable[[int, int], None] | None = None,
        model: tuple[nn.Module, torch.optim.Optimizer] | None = None,
    ) -> float:
        """A short real training at `lr` with `schedule`; the final validation loss (inf if it diverged).

        Trains a fresh model, or `model` (a model and its optimizer) in place."""
        trained = self.training(
            lr, steps, schedule=schedule, warmup_steps=warmup_steps, batch_size=batch_size, seed=seed,
            on_progress=on_progress, model=model,
        )  # fmt: skip
        return deque(trained, maxlen=1)[0][1]

    def training(
        self,
        lr: float,
        steps: int,
        *,
        schedule: str = "constant",
        warmup_steps: int = 0,
        batch_size: int | None = None,
        seed: int | None = None,
        evaluate_at: Collection[int] = (),
        on_progress: Callable[[int, int], None] | None = None,
        model: tuple[nn.Module, torch.optim.Optimizer] | None = None,
    ) -> Iterator[tuple[int, float]]:
        """`train`, yielding (step, validation loss) at each step of `evaluate_at` and at the end; a caller that
        stops asking stops the training there."""
        seed = self.spec.seed if seed is None else seed
        net, optimizer = model or self.fresh(lr, seed)
        params = SCHEDULES[schedule].params(lr, steps, warmup_steps)
        batches = self.data.batches(batch_size or self.spec.lr_range.batch_size, seed)
        done = 0
        for step, val_loss in training(
            net, self.loss_fn, optimizer, batches, self.data.val_batches(VALIDATION_BATCH), schedule=schedule,
            schedule_params=params, steps=steps, evaluate_at=evaluate_at, on_progress=on_progress,
            step_settings=self.step_settings,
        ):  # fmt: skip
            self.report.add_steps(step - done)
            done = step
            yield step, val_loss

    def untrained_loss(self) -> float:
        """The validation loss of a fresh model (seeded as the job's trainings are): where training starts from."""
        model, _ = self.fresh(self.spec.lr_range.min_lr)
        with self.step_settings.autocast(self.device):
            return evaluate(model, self.loss_fn, self.data.val_batches(VALIDATION_BATCH), self.step_settings)

    def step_probe(
        self, batch_size: int, lr: float, timed_steps: int = batch_probe.TIMED_STEPS
    ) -> batch_probe.StepProbe:
        """Memory and speed of one optimizer step at this micro-batch size, as the job runs its steps."""
        probe = batch_probe.probe(
            lambda: self.fresh(lr), self.loss_fn, self.first_batch, batch_size, self.device,
            timed_steps=timed_steps, step_settings=self.step_settings,
        )  # fmt: skip
        self.report.add_steps(probe.steps_run)
        return probe

    def first_batch(self, batch_size: int) -> tuple[Tensor, Tensor]:
        return next(iter(self.data.batches(batch_size, self.spec.seed)))
