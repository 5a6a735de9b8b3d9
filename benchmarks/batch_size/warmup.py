"""The batch-size warm-up lrbs advises (or declines) against fixed batches, trained to the same target.

    python -m benchmarks.batch_size.warmup     # fills benchmarks/batch_size/warmup_cache.json, prints the tables

For each task: run the lrbs job (constant schedule, the task's train_steps, batch_sizes = the candidates) with
the worker's own `advise`, which measures the noise-scale trajectory and advises a schedule or declines. Then
train, with the worker's own code, every run for the same budget of training samples, evaluating the
validation loss every ≤5% of the steps:
- each fixed candidate, at lrbs's LR for it × each of LR_FACTORS (its LR is tuned on that grid);
- the schedule lrbs advised (if any), its stages' LRs × the same factors;
- counterfactual warm-ups, so a decline can be checked: the planner's best schedule with no saving threshold
  ("planner, no threshold", when one exists), the same with no limit on predicted wall time (only samples
  bound it: "planner, no time limit", when it differs), and a plain warm-up that follows the noise scale (each
  stage's batch the candidate nearest the fitted B_noise at that point, "B ≈ B_noise").

The target: L(untrained) − FRACTION · (L(untrained) − L(best)), L(best) the lowest mean-over-seeds validation
loss any fixed run reached. Per configuration the LR factor with the fewest mean steps to the target wins
(ties: the lower factor); its steps, training wall time (evaluations excluded) to the target and final
loss (the lowest validation loss within the budget, as early stopping keeps) are the means over SEEDS. A run
that never reaches the target counts as infinite.

Two fixed baselines: the fastest in wall time to the target, and the one with the fewest steps to the target
among those whose final loss is within FINAL_TOLERANCE of the best fixed final loss ("fewest steps at no worse
loss"). The goal: where lrbs advises a schedule, it reaches the target in fewer steps than the latter at no
worse final loss; where it declines, no counterfactual warm-up does that by MIN_STEP_SAVING.

"No worse final loss" is settled on more seeds: a warm-up that passes on the means of SEEDS (fewer steps, final
loss within FINAL_TOLERANCE) is trained again, with the fixed batch it beat, on CHECK_SEEDS at their tuned LRs.
Their final losses are compared seed by seed (the same seed: the same initialisation); a 95% t-interval of the
mean difference above zero means the warm-up ended worse beyond the seeds' noise, and it did not pay.

Runs are cached in warmup_cache.json (one a line), trained by --processes processes (default 2) with one
torch thread each. Wall times come from a shared 2-core CPU and move with its load.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from benchmarks.lr_quality.tasks import HELD_OUT, POLICY, Task
from benchmarks.lr_quality.tasks import TASKS as LR_TASKS
from benchmarks.lr_quality.training import job_of
from lrbs.worker import batch_schedule as bs

CACHE_FILE = Path(__file__).parent / "warmup_cache.json"
SEEDS = (0, 1)
CHECK_SEEDS = (0, 1, 2, 3, 4)  # the seeds behind a verdict's "no worse final loss"
LR_FACTORS = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
FRACTION = 0.95
FINAL_TOLERANCE = 0.02
EVAL_GAP = 0.05
VAL_BATCH = 1024
DIVERGED = 3.0

Stages = tuple[tuple[int, int, float], ...]  # (from_step, batch, lr)


@dataclass(frozen=True)
class Setup:
    candidates: tuple[int, ...]
    samples: int  # every run's training budget
    lr_scaling: str


SETUPS = {
    "blobs-mlp-sgd": Setup((16, 32, 64, 128, 256, 512), 48_000, "linear"),
    "digits-mlp-momentum": Setup((16, 32, 64, 128, 256, 512), 48_000, "linear"),
    "tokens-transformer-adamw": Setup((8, 16, 32, 64, 128), 12_000, "sqrt"),
    "blobs-wide-mlp-momentum": Setup((32, 64, 128, 256, 512, 1024, 2048), 128_000, "linear"),
    "text-chars-lm-adamw": Setup((8, 16, 32, 64, 128, 256), 32_000, "sqrt"),
    # The textbook case for a warm-up (lr_quality.tasks.HELD_OUT, benchmarks/batch_size/powerlaw.py): a linear
    # regression whose noise scale grows ~300x within the job's 1,000 train_steps while its loss keeps falling, and
    # whose step time grows with the batch beyond ~64. 512k samples: 1,000 steps of the fixed batch lrbs chose (512).
    "powerlaw-regression-sgd": Setup((16, 32, 64, 128, 256, 512, 1024, 2048), 512_000, "linear"),
}
# Tasks of this benchmark only (the others are lr_quality's).
OWN_TASKS = [
    # A wider MLP on more data: its step time grows with the batch (so lrbs's fixed batch is not the largest
    # candidate) and its noise scale grows ~50x within the job's train_steps.
    Task(
        "blobs-wide-mlp-momentum",
        {
            "model": {"name": "mlp", "params": {"hidden": [256, 256]}},
            "dataset": {
                "name": "synthetic_classification",
                "params": {"n_samples": 32768, "n_features": 16, "n_classes": 4},
            },
            "optimizer": {"name": "sgd", "params": {"momentum": 0.9}},
        },
        batch_size=256,
        steps=250,  # the job's train_steps: 250 steps of the fixed batch lrbs chose (512) are the 128k samples
    ),
    # A character-level language model on real text with enough of it that no run sees a window twice: its loss
    # is still falling when the budget ends, so the budget binds (a large fixed batch takes too few steps).
    Task(
        "text-chars-lm-adamw",
        {
            "model": {"name": "transformer_lm", "params": {"layers": 2, "d_model": 64, "heads": 4}},
            "dataset": {
                "source": "plugin",
                "name": "benchmarks.lr_quality.text_data:chars",
                "params": {"context": 32, "n_train": 65536, "n_val": 1024},
            },
            "optimizer": {"name": "adamw", "params": {"weight_decay": 0.01}},
        },
        batch_size=16,
        steps=2000,  # the job's train_steps: 2,000 steps of the fixed batch lrbs chose (16) are the 32k samples
    ),
]
TASKS = {t.name: t for t in [*LR_TASKS, *HELD_OUT, *OWN_TASKS] if t.name in SETUPS}


# ---- the lrbs job ----------------------------------------------------------------------------------------


def lrbs_advice(name: str) -> dict:
    """What the job advised, with the counterfactual schedules built from its own trajectory."""
    import torch

    from lrbs.worker.advise import advise

    torch.set_num_threads(1)
    task, setup = TASKS[name], SETUPS[name]
    spec = task.job(
        "constant", device="cpu", train_steps=task.steps, batch_sizes=list(setup.candidates),
        lr_scaling=setup.lr_scaling,
    )  # fmt: skip
    started = time.perf_counter()
    result = advise(spec, policy=POLICY)
    advice = result.batch_advice
    assert advice is not None and advice.noise_trajectory is not None
    lrs = {c.batch_size: c.lr for c in advice.candidates if c.lr}
    fitting = [b for b in setup.candidates if b in lrs]
    points = [bs.Point(p.step, p.b_noise, p.low, p.high) for p in advice.noise_trajectory]
    times = {c.batch_size: c.step_time_s for c in advice.candidates if c.step_time_s}
    probe = spec.lr_range.batch_size  # the trajectory's training batch (no accumulation in these tasks)
    best = bs.plan(points, probe, fitting, advice.batch_size, task.steps, times, min_saving=0.0)
    schedule = advice.batch_schedule
    return {
        "fixed": advice.batch_size,
        "lrs": {str(b): lr for b, lr in lrs.items()},
        "trajectory": [p.model_dump() for p in advice.noise_trajectory],
        "trajectory_steps": advice.trajectory_steps,
        "noise_seconds": result.phase_seconds.get("noise_scale"),
        "job_seconds": time.perf_counter() - started,
        "reason": advice.batch_schedule_reason,
        "schedule": [[s.from_step, s.batch_size, s.lr] for s in schedule.stages] if schedule else None,
        "predicted_saving": schedule.step_saving if schedule else best.step_saving,
        "predicted_time_saving": schedule.time_saving if schedule else best.time_saving,
        "no_threshold": [[s.from_step, s.batch, lrs[s.batch]] for s in best.stages] or None,
        "follow_noise": follow_noise(points, probe, fitting, advice.batch_size, task.steps, lrs),
    }


def points_of(trajectory: list[dict]) -> list[bs.Point]:
    """The planner's points from a trajectory as the cache keeps it (NoisePoint.model_dump())."""
    return [bs.Point(p["step"], p["b_noise"], p["low"], p["high"]) for p in trajectory]


def progress(points: list[bs.Point], probe: int, fixed: int, steps: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The planner's cells (dτ, fitted B_noise) over the progress the fixed batch makes in `steps`."""
    measured, noise_fit = bs.fitted(points)
    if len(measured) < 2:
        return None
    return bs.horizon(*bs.cells(measured, noise_fit, probe), fixed, steps)


def follow_noise(
    points: list[bs.Point], probe: int, sizes: list[int], fixed: int, steps: int, lrs: dict[int, float]
) -> list[list] | None:
    """A plain warm-up: at each point of progress the candidate nearest the fitted B_noise (in log scale)."""
    cells = progress(points, probe, fixed, steps)
    if cells is None:
        return None
    d_tau, noise = cells
    grid = np.array(sizes, dtype=float)
    batch = grid[np.argmin(np.abs(np.log(noise[:, None]) - np.log(grid[None, :])), axis=1)]
    batch = bs.merge_short(batch, d_tau, noise)
    return [[s.from_step, s.batch, lrs[s.batch]] for s in bs.stages_of(batch, d_tau, noise)]


def no_time_limit(name: str, advice: dict) -> list[list] | None:
    """The planner's best schedule against the job's fixed batch at no more samples, with no limit on predicted
    wall time and no saving threshold: what lrbs would advise if only optimizer steps counted."""
    lrs = advice["lrs"]
    sizes = [b for b in SETUPS[name].candidates if str(b) in lrs]
    task = TASKS[name]
    found = bs.plan(points_of(advice["trajectory"]), task.batch_size, sizes, advice["fixed"], task.steps, None, 0.0)
    return [[s.from_step, s.batch, lrs[str(s.batch)]] for s in found.stages] or None


def model_bound(name: str, advice: dict) -> float | None:
    """bs.saving_bound over the job's trajectory: the most any schedule could save against its fixed batch under
    the planner's model, with batches of any size."""
    cells = progress(points_of(advice["trajectory"]), TASKS[name].batch_size, advice["fixed"], TASKS[name].steps)
    return None if cells is None else bs.saving_bound(*cells, advice["fixed"])


# ---- one run ---------------------------------------------------------------------------------------------


def train(name: str, stages: Stages, seed: int, samples: int) -> dict:
    """Train through `stages` until `samples` training samples; the validation loss's new lows and the end."""
    from lrbs.worker.probes.batches import forever
    from lrbs.worker.probes.step import TrainingStep
    from lrbs.worker.probes.train import evaluate

    job = job_of(TASKS[name])
    model, optimizer = job.fresh(stages[0][2], seed)
    val = job.data.val_batches(VAL_BATCH)
    step_fn = TrainingStep(model, job.loss_fn, optimizer, job.step_settings)
    untrained = evaluate(model, job.loss_fn, val)
    record: dict[str, list[float]] = {"steps": [0], "samples": [0], "loss": [untrained], "time": [0.0]}
    model.train()
    step, seen, clock, stage, due = 0, 0, 0.0, -1, 1
    data = None
    last = (0, 0, untrained, 0.0)
    while seen < samples:
        if stage + 1 < len(stages) and stages[stage + 1][0] <= step:
            stage += 1
            _, batch, lr = stages[stage]
            data = forever(job.data.batches(batch, seed * 1000 + stage))
            step_fn.set_lr(lr)
        assert data is not None
        started = time.perf_counter()
        step_fn(data)
        clock += time.perf_counter() - started
        step, seen = step + 1, seen + stages[stage][1]
        if step == due or seen >= samples:
            due = step + max(1, int(EVAL_GAP * step))
            loss = evaluate(model, job.loss_fn, val)
            last = (step, seen, loss, clock)
            if not loss <= DIVERGED * untrained:  # NaN too
                return {**record, "final": [step, seen, math.inf, clock], "diverged": True}
            if loss < record["loss"][-1]:
                for k, v in zip(("steps", "samples", "loss", "time"), last, strict=True):
                    record[k].append(v)
    return {**record, "final": list(last), "diverged": False}


# ---- cache and pool --------------------------------------------------------------------------------------

Run = tuple[str, Stages, int, int]  # task, stages, seed, samples


def key(run: Run) -> str:
    name, stages, seed, samples = run
    return f"{name}|{';'.join(f'{s},{b},{lr:.4g}' for s, b, lr in stages)}|{seed}|{samples}"


def load() -> dict[str, dict]:
    return json.loads(CACHE_FILE.read_text()) if CACHE_FILE.exists() else {}


def save(results: dict[str, dict]) -> None:
    lines = (f"{json.dumps(k)}: {json.dumps(v, separators=(',', ':'))}" for k, v in sorted(results.items()))
    CACHE_FILE.write_text("{\n" + ",\n".join(lines) + "\n}\n")


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


def _run(run: Run) -> tuple[str, dict]:
    return key(run), _rounded(train(*run))


def _rounded(record: dict) -> dict:
    def r(x):
        return float(f"{x:.5g}") if isinstance(x, float) and math.isfinite(x) else x

    return {k: [r(x) for x in v] if isinstance(v, list) else v for k, v in record.items()}


def run_all(runs: list[Run], results: dict[str, dict], processes: int = 2) -> dict[str, dict]:
    todo = [r for r in dict.fromkeys(runs) if key(r) not in results]
    if todo:
        print(f"  {len(todo)} runs to train", flush=True)
        with ProcessPoolExecutor(processes, initializer=_init_worker) as pool:
            for i, (k, record) in enumerate(pool.map(_run, todo), 1):
                results[k] = record
                if i % 20 == 0 or i == len(todo):
                    save(results)
    return results


# ---- configurations and scores ---------------------------------------------------------------------------


def configurations(name: str, advice: dict) -> dict[str, Stages]:
    """Label → stages at LR factor 1."""
    out: dict[str, Stages] = {}
    for b in SETUPS[name].candidates:
        if str(b) in advice["lrs"]:
            out[f"fixed {b}"] = ((0, b, advice["lrs"][str(b)]),)
    for label, field in (("lrbs schedule", "schedule"), ("planner, no threshold", "no_threshold")):
        if advice[field] and not (label == "planner, no threshold" and advice["schedule"]):
            out[label] = tuple((int(s), int(b), float(lr)) for s, b, lr in advice[field])
    if unlimited := no_time_limit(name, advice):
        stages = tuple((int(s), int(b), float(lr)) for s, b, lr in unlimited)
        if stages not in out.values():
            out["planner, no time limit"] = stages
    if advice["follow_noise"] and len(advice["follow_noise"]) > 1:
        out["B ≈ B_noise"] = tuple((int(s), int(b), float(lr)) for s, b, lr in advice["follow_noise"])
    return out


def scaled(stages: Stages, factor: float) -> Stages:
    return tuple((s, b, lr * factor) for s, b, lr in stages)


def runs_for(name: str, advice: dict) -> list[Run]:
    samples = SETUPS[name].samples
    return [
        (name, scaled(stages, f), seed, samples)
        for stages in configurations(name, advice).values()
        for f in LR_FACTORS
        for seed in SEEDS
    ]


def first(record: dict, target: float) -> tuple[float, float, float]:
    """(steps, samples, time) when the validation loss first reached the target (inf: never)."""
    for step, seen, loss, clock in zip(record["steps"], record["samples"], record["loss"], record["time"], strict=True):
        if loss <= target:
            return step, seen, clock
    return math.inf, math.inf, math.inf


@dataclass
class Score:
    factor: float
    steps: float
    samples: float
    time_s: float
    final: float


def records_of(name: str, stages: Stages, factor: float, seeds: tuple[int, ...], results: dict[str, dict]) -> list:
    """The cached runs of these stages at this LR factor, one per seed."""
    return [results[key((name, scaled(stages, factor), seed, SETUPS[name].samples))] for seed in seeds]


def final_of(record: dict) -> float:
    """A run's final loss: the lowest validation loss within the budget (as early stopping keeps); diverged: inf."""
    return math.inf if record["diverged"] else min(record["loss"])


def at_factor(name: str, stages: Stages, target: float, results: dict[str, dict], factor: float) -> Score:
    """Means over seeds of one LR factor's steps, samples and time to the target, and final loss."""
    records = records_of(name, stages, factor, SEEDS, results)
    hits = [first(r, target) for r in records]
    return Score(
        factor,
        float(np.mean([h[0] for h in hits])),
        float(np.mean([h[1] for h in hits])),
        float(np.mean([h[2] for h in hits])),
        float(np.mean([final_of(r) for r in records])),
    )


def score(name: str, stages: Stages, target: float, results: dict[str, dict]) -> Score:
    """The LR factor with the fewest mean steps to the target (ties: the lower factor)."""
    scores = [at_factor(name, stages, target, results, f) for f in LR_FACTORS]
    return min(scores, key=lambda s: s.steps)


def target_of(name: str, advice: dict, results: dict[str, dict]) -> tuple[float, float, float]:
    """(target, untrained, best): best = the lowest mean-over-seeds loss of any fixed run."""
    samples, fixed = SETUPS[name].samples, {k: v for k, v in configurations(name, advice).items() if "fixed" in k}
    untrained = float(np.mean([results[key((name, s, seed, samples))]["loss"][0] for s in fixed.values()
                               for seed in SEEDS]))  # fmt: skip
    lows = [
        float(np.mean([min(results[key((name, scaled(s, f), seed, samples))]["loss"]) for seed in SEEDS]))
        for s in fixed.values()
        for f in LR_FACTORS
    ]
    best = min(lows)
    return untrained - FRACTION * (untrained - best), untrained, best


# ---- report ----------------------------------------------------------------------------------------------


@cache
def advice_of(name: str) -> dict:
    results = load()
    k = f"advice|{name}"
    if k not in results:
        print(f"  running the lrbs job for {name}", flush=True)
        results[k] = lrbs_advice(name)
        save(results)
    return results[k]


def _f(x: float | None, spec: str = ".3g") -> str:
    return "—" if x is None or not math.isfinite(x) else format(x, spec)


def _stages(stages: Stages | list | None) -> str:
    return " → ".join(f"{b}@{s}" for s, b, *_ in stages) if stages else "—"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="*", default=list(SETUPS))
    parser.add_argument("--processes", type=int, default=2, help="training processes, one torch thread each")
    args = parser.parse_args()
    started = time.perf_counter()
    advices = {name: advice_of(name) for name in args.tasks}
    runs = [r for name in args.tasks for r in runs_for(name, advices[name])]
    results = run_all(runs, load(), args.processes)
    summary = []
    for name in args.tasks:
        advice = advices[name]
        target, untrained, best_loss = target_of(name, advice, results)
        configs = configurations(name, advice)
        scores = {label: score(name, stages, target, results) for label, stages in configs.items()}
        print(f"\n## {name}\n")
        trajectory = ", ".join(f"{p['step']}: {_f(p['b_noise'])}" for p in advice["trajectory"])
        print(f"lrbs job: fixed batch {advice['fixed']}; B_noise by step {trajectory} "
              f"({advice['trajectory_steps']} trajectory steps, {_f(advice['noise_seconds'], '.1f')} s)")  # fmt: skip
        print(f"lrbs: {advice['reason']}\n")
        print(f"target {target:.4g} = {FRACTION:g} of the way from untrained {untrained:.4g} to best {best_loss:.4g}; "
              f"{SETUPS[name].samples} training samples per run; seeds {SEEDS}\n")  # fmt: skip
        print("| run | stages (batch@from step) | LR × | steps to target | samples to target | time to target (s) "
              "| final loss |")  # fmt: skip
        print("|---|---|---:|---:|---:|---:|---:|")
        for label, s in scores.items():
            stages = configs[label]
            print(f"| {label} | {_stages(stages)} | {s.factor:g} | {_f(s.steps, '.1f')} | {_f(s.samples, '.0f')} "
                  f"| {_f(s.time_s, '.2f')} | {_f(s.final, '.4g')} |")  # fmt: skip
        own = [(k, at_factor(name, v, target, results, 1.0)) for k, v in configs.items() if k.startswith("fixed")]
        own_text = ", ".join(f"{k.split()[1]}: {_f(s.steps, '.0f')} ({_f(s.time_s, '.2f')} s)" for k, s in own)
        print(f"\nAt lrbs's own LRs (factor 1), fixed batch: steps (time) to the target: {own_text}")
        summary.append((name, advice, scores))

    verdicts = judge(summary, results, args.processes)
    print("\n## Summary\n")
    print(f"Steps and time to the target, and final loss; means over seeds {SEEDS}, each at its tuned LR. A warm-up")
    print(f"that passes on those means is checked on seeds {CHECK_SEEDS} against the fixed batch it beat.\n")
    print("| task | B_noise along the trajectory (step: B_noise) | most any schedule could save (model) "
          "| lrbs advice | fastest fixed batch | fewest steps at no worse loss | lrbs schedule | B ≈ B_noise warm-up "
          "| verdict |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for (name, advice, scores), (baselines, verdict) in zip(summary, verdicts, strict=True):
        fastest, fewest = baselines
        trajectory = ", ".join(f"{p['step']}: {_f(p['b_noise'], '.0f')}" for p in advice["trajectory"])
        print(
            f"| {name} | {trajectory} | {_f(model_bound(name, advice), '.0%')} | {_advice_text(advice)} "
            f"| {fastest}: {_sc(scores[f'fixed {fastest}'])} | {fewest}: {_sc(scores[f'fixed {fewest}'])} "
            f"| {_sc(scores['lrbs schedule']) if advice['schedule'] else '—'} | {_sc(scores.get('B ≈ B_noise'))} "
            f"| {verdict} |"
        )
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


def _beats(s: Score | None, steps: float, loss: float, by: float = 0.0) -> bool:
    """Fewer steps to the target than `steps` (by the share `by`), at a final loss no worse than `loss`."""
    return s is not None and s.steps < steps * (1 - by) and s.final <= loss


@dataclass(frozen=True)
class LossCheck:
    """A warm-up's final loss against a fixed batch's, paired by seed: the mean difference and its 95% t-interval."""

    difference: float
    low: float
    high: float
    worse: int  # seeds where the warm-up ended worse
    seeds: int

    @property
    def worse_beyond_noise(self) -> bool:
        return self.low > 0

    def describe(self) -> str:
        return (f"final loss {self.difference:+.3f} (95% interval {self.low:+.3f} to {self.high:+.3f}), "
                f"worse in {self.worse} of {self.seeds} seeds")  # fmt: skip


def loss_check(warmup: list[float], fixed: list[float]) -> LossCheck:
    from scipy import stats

    d = np.array(warmup) - np.array(fixed)
    half = float(stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))) if np.isfinite(d).all() else 0.0
    mean = float(d.mean())
    return LossCheck(mean, mean - half, mean + half, int((d > 0).sum()), len(d))


def finals(name: str, stages: Stages, factor: float, seeds: tuple[int, ...], results: dict[str, dict]) -> list[float]:
    """The final loss per seed (`final_of`)."""
    return [final_of(r) for r in records_of(name, stages, factor, seeds, results)]


def judge(summary: list, results: dict[str, dict], processes: int) -> list[tuple[tuple[int, int], str]]:
    """Per task: the two fixed baselines (fastest, fewest steps at no worse loss) and the verdict, after training
    the warm-ups that pass on the means, and the fixed batch they beat, on CHECK_SEEDS."""
    passed = []  # (name, configurations, fixed scores by batch, fewest, [(label, score)]) per task
    extra: list[Run] = []
    for name, advice, scores in summary:
        configs = configurations(name, advice)
        fixed = {int(k.split()[1]): v for k, v in scores.items() if k.startswith("fixed")}
        ok_loss = min(v.final for v in fixed.values()) * (1 + FINAL_TOLERANCE)
        good = {b: v for b, v in fixed.items() if v.final <= ok_loss}
        fewest = min(good, key=lambda b: good[b].steps)
        labels = ["lrbs schedule"] if advice["schedule"] else ["planner, no threshold", "planner, no time limit",
                                                                 "B ≈ B_noise"]  # fmt: skip
        by = 0.0 if advice["schedule"] else bs.MIN_STEP_SAVING
        winners = [(lb, scores[lb]) for lb in labels if _beats(scores.get(lb), good[fewest].steps, ok_loss, by)]
        passed.append((name, configs, fixed, fewest, winners))
        for label in [f"fixed {fewest}", *(lb for lb, _ in winners)] if winners else []:
            factor = scores[label].factor
            extra += [(name, scaled(configs[label], factor), seed, SETUPS[name].samples) for seed in CHECK_SEEDS]
    run_all(extra, results, processes)

    out = []
    for (name, advice, _), (_, configs, fixed, fewest, winners) in zip(summary, passed, strict=True):
        fastest = min(fixed, key=lambda b: fixed[b].time_s)
        checks = {
            lb: loss_check(
                finals(name, configs[lb], s.factor, CHECK_SEEDS, results),
                finals(name, configs[f"fixed {fewest}"], fixed[fewest].factor, CHECK_SEEDS, results),
            )
            for lb, s in winners
        }
        paid = [(lb, s) for lb, s in winners if not checks[lb].worse_beyond_noise]
        bar = fixed[fewest]

        said = {
            lb: f"{lb} took {1 - s.steps / bar.steps:.0%} fewer steps than fixed {fewest}, with "
            f"{s.samples / bar.samples - 1:+.0%} samples and {s.time_s / bar.time_s - 1:+.0%} time; "
            f"{checks[lb].describe()}"
            for lb, s in winners
        }
        if advice["schedule"]:
            verdict = "goal met" if paid else "goal not met"
            verdict += "".join(f": {said[lb]}" for lb, _ in winners)
        elif paid:  # lrbs plans for fewer steps with no more samples: say what a warm-up that paid spent
            verdict = "declined, but " + " and ".join(said[lb] for lb, _ in paid)
        elif winners:
            verdict = "declined rightly: " + " and ".join(
                f"{said[lb]}, so it ended worse beyond the seeds' noise" for lb, _ in winners
            )
        else:
            verdict = "declined rightly: no warm-up paid"
        out.append(((fastest, fewest), verdict))
    return out


def _advice_text(advice: dict) -> str:
    if advice["schedule"]:
        return f"schedule {_stages(advice['schedule'])}, predicted {advice['predicted_saving']:.0%} fewer steps"
    reason = advice["reason"]
    if "did not confirm" in reason:
        return (
            f"declined after its check training: the planned {_stages(advice['no_threshold'])} "
            f"({advice['predicted_saving']:.0%} fewer steps predicted) did not beat fixed {advice['fixed']}"
        )
    if "largest candidate" in reason:
        return f"declined: the fixed batch {advice['fixed']} is the largest candidate"
    if "saves only" in reason:
        return f"declined: predicted saving {advice['predicted_saving']:.0%} against fixed {advice['fixed']}"
    if "no schedule" in reason:
        return f"declined: no schedule beats fixed {advice['fixed']} without more samples or time"
    return f"declined: {reason}"


def _sc(s: Score | None) -> str:
    if s is None:
        return "—"
    return f"{_f(s.steps, '.0f')} steps, {_f(s.time_s, '.2f')} s, loss {_f(s.final, '.4g')}"


if __name__ == "__main__":
    main()
