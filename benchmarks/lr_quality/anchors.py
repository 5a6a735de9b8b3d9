"""The two anchor LR finders, run from their own packages, for comparison with lrbs's suggestion.

- pytorch-lr-finder (`torch_lr_finder.LRFinder`): exponential sweep from `min_lr` to `max_lr`, its
  defaults otherwise (EMA smoothing 0.05, stop at 5 × best), and its own "steepest gradient"
  suggestion as `plot(suggest_lr=True)` computes it (skip first 10 and last 5 points).
- Lightning (`Tuner.lr_find`): exponential sweep, its defaults otherwise (debiased EMA β=0.98, stop
  at 4 × best), and `.suggestion()` (its own default rule).

How they differ: pytorch-lr-finder smooths with an undebiased EMA (0.05·loss + 0.95·previous) and stops at
5 × the best smoothed loss (a NaN never trips it); Lightning (like fastai) uses a debiased EMA and stops at
4 × best from the second step on. pytorch-lr-finder's suggestion is the argmin of the smoothed loss's
gradient against the step index; Lightning since 2.5.3 takes that gradient against the raw LR (its PR
#21055), which on exponential sweeps over-weights the low-LR end (its issue #21141). Both packages are an
optional extra (`[bench]`): they are imported inside the functions, so this module imports without them.

Data: both finders get the same stream, the first `num_steps` batches drawn from `batches` the way
lrbs's range test draws them (re-iterating it after each pass, so a `lrbs.worker.builtin_data.Batches` gives
a fresh shuffle every epoch). `batches` must be re-iterable when `num_steps` exceeds one pass. A
stateful iterable (like `Batches`) advances: pass each finder (and lrbs) its own fresh copy.

Side effects on the caller's objects (the benchmark passes fresh copies; both come back usable):
- `torch_lr_finder_suggestion` trains `model` and `optimizer` in place, then `LRFinder.reset()`
  loads back their state dicts (weights, buffers, momentum, lr, param groups). Left behind: the
  model's train/eval mode is train, the model is moved back to the device it started on, and the
  optimizer's `step` stays wrapped by the LR scheduler's step counter (harmless; a later scheduler
  sees it and does not wrap again).
- `lightning_suggestion` wraps `model` in a LightningModule, trains it on the CPU and lets Lightning
  restore it from its temporary checkpoint (kept in a temporary directory, deleted afterwards).
  The model ends up on the CPU in train mode; RNG state is restored by Lightning (`isolate_rng`).

`wall_time_s` is the finder's own work: state save, sweep, suggestion, state restore
(`LRFinder(...)` to `reset()`; `Tuner.lr_find(...)` and `.suggestion()`). Building the DataLoader,
the LightningModule and the Trainer is not counted.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import Parameter
from torch.optim import Optimizer

from lrbs.worker.probes.batches import forever

# Loggers that Lightning writes through (GPU/TPU banners, "Restoring states", the suggestion error).
_LIGHTNING_LOGGERS = ("lightning", "lightning.pytorch", "lightning_fabric", "pytorch_lightning")


@dataclass
class AnchorSuggestion:
    lr: float | None  # the package's suggested LR; None when it gave none (see note)
    wall_time_s: float
    note: str  # how the sweep went, or why lr is None


def torch_lr_finder_suggestion(
    model: nn.Module,
    loss_fn,
    optimizer: torch.optim.Optimizer,
    batches: Iterable[tuple[Tensor, Tensor]],
    *,
    min_lr: float = 1e-7,
    max_lr: float = 10.0,
    num_steps: int = 100,
    device: str = "cpu",
) -> AnchorSuggestion:
    """pytorch-lr-finder's range test and its steepest-gradient suggestion; see the module docstring.

    The sweep starts at `min_lr` (`range_test(start_lr=min_lr)` sets the optimizer's lr first; its
    default would be the optimizer's current lr). Any exception from the finder (e.g. "Need at least
    17 iterations" after an early divergence) gives lr=None with the exception in `note`.
    """
    _check_sweep(min_lr, max_lr, num_steps)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from torch_lr_finder import LRFinder, TrainDataLoaderIter

    # A list of (x, y) tuples is what TrainDataLoaderIter unpacks; it re-iterates it if ever run dry.
    loader = TrainDataLoaderIter(_take(batches, num_steps))
    # An Agg figure outside pyplot: no GUI backend is chosen, nothing is registered with pyplot.
    fig = Figure()
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    finder = None
    lr: float | None = None
    note = ""
    t0 = time.perf_counter()
    with _quiet():
        try:
            finder = LRFinder(model, optimizer, loss_fn, device=device)
            finder.range_test(loader, start_lr=min_lr, end_lr=max_lr, num_iter=num_steps, step_mode="exp")
            note = _finder_note(finder.history["loss"], num_steps)
            _, suggested = finder.plot(ax=ax, suggest_lr=True)  # defaults: skip_start=10, skip_end=5
            lr = float(suggested)
        except Exception as exc:
            lr = None
            note = f"{note}; " if note else ""
            note += f"no suggestion: {type(exc).__name__}: {exc}"
        finally:
            if finder is not None:
                finder.reset()
    wall = time.perf_counter() - t0
    fig.clear()
    return AnchorSuggestion(lr=lr, wall_time_s=wall, note=note)


def lightning_suggestion(
    model: nn.Module,
    loss_fn,
    optimizer_factory: Callable[[Iterable[Parameter], float], Optimizer],
    batches: Iterable[tuple[Tensor, Tensor]],
    *,
    min_lr: float = 1e-8,
    max_lr: float = 1.0,
    num_steps: int = 100,
) -> AnchorSuggestion:
    """Lightning's `Tuner.lr_find` on the CPU and its `.suggestion()`; see the module docstring.

    `optimizer_factory(params, lr)` builds the optimizer inside `configure_optimizers` (Lightning then
    sets every group's lr to `min_lr`). The train loader is a DataLoader over the concatenated batches
    (batch size = the first batch's, no shuffling): it yields the same batches as long as they all
    have the first one's size. lr=None when the suggestion is None (too few finite points after the
    first 10) or the finder raises.
    """
    _check_sweep(min_lr, max_lr, num_steps)
    import pytorch_lightning as pl
    from pytorch_lightning.tuner import Tuner
    from torch.utils.data import DataLoader, TensorDataset

    drawn = _take(batches, num_steps)
    xs, ys = zip(*drawn, strict=True)
    loader = DataLoader(TensorDataset(torch.cat(xs), torch.cat(ys)), batch_size=len(xs[0]), shuffle=False)

    class _Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = model
            self.loss_fn = loss_fn
            self.lr = min_lr  # lr_find finds it here (and overrides the groups' lr with min_lr anyway)

        def forward(self, x: Tensor) -> Tensor:
            return self.model(x)

        def training_step(self, batch, batch_idx: int) -> Tensor:
            x, y = batch
            return self.loss_fn(self.model(x), y)

        def configure_optimizers(self) -> Optimizer:
            return optimizer_factory(self.parameters(), self.lr)

    lr: float | None = None
    note = ""
    wall = 0.0
    with tempfile.TemporaryDirectory(prefix="lrbs-lightning-") as root, _quiet(_LIGHTNING_LOGGERS):
        module = _Module()
        trainer = pl.Trainer(
            accelerator="cpu",
            devices=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            max_epochs=math.ceil(num_steps / len(loader)) + 1,  # max_steps (set by lr_find) ends the sweep
            default_root_dir=root,
        )
        t0 = time.perf_counter()
        try:
            finder = Tuner(trainer).lr_find(
                module,
                train_dataloaders=loader,
                min_lr=min_lr,
                max_lr=max_lr,
                num_training=num_steps,
                mode="exponential",
                update_attr=False,
            )
            if finder is None:
                note = "lr_find returned no result"
            else:
                note = _finder_note(finder.results["loss"], num_steps)
                lr = finder.suggestion()
                if lr is None:
                    note += "; no suggestion: too few finite points after skipping the first 10 and last 1"
                else:
                    lr = float(lr)
        except Exception as exc:
            lr = None
            note = f"{note}; " if note else ""
            note += f"no suggestion: {type(exc).__name__}: {exc}"
        wall = time.perf_counter() - t0
    return AnchorSuggestion(lr=lr, wall_time_s=wall, note=note)


def _check_sweep(min_lr: float, max_lr: float, num_steps: int) -> None:
    if not 0 < min_lr < max_lr:
        raise ValueError(f"need 0 < min_lr < max_lr, got min_lr={min_lr}, max_lr={max_lr}")
    if num_steps < 2:
        raise ValueError(f"num_steps must be at least 2, got {num_steps}")


def _take(batches: Iterable[tuple[Tensor, Tensor]], n: int) -> list[tuple[Tensor, Tensor]]:
    """The first `n` batches of `batches` cycled by re-iterating it, as lrbs's range test draws them."""
    out: list[tuple[Tensor, Tensor]] = []
    stream = forever(batches)
    while len(out) < n:
        x, y = next(stream)
        out.append((x, y))
    return out


def _finder_note(losses: list[float], num_steps: int) -> str:
    n = len(losses)
    note = f"{n}/{num_steps} steps" + (" (stopped early: loss diverged)" if n < num_steps else "")
    bad = sum(not math.isfinite(v) for v in losses)
    return note + (f", {bad} non-finite loss(es)" if bad else "")


@contextlib.contextmanager
def _quiet(logger_names: Iterable[str] = ()) -> Iterator[None]:
    """Swallow the packages' prints, progress bars (stdout/stderr), warnings and log records."""
    loggers = [logging.getLogger(name) for name in logger_names]
    levels = [lg.level for lg in loggers]
    sink = io.StringIO()
    try:
        for lg in loggers:
            lg.setLevel(logging.CRITICAL + 1)
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
