"""How good is LR advice? Every method's suggestion, trained at, against the best LR of a grid search.

    python -m benchmarks.lr_quality.grid     # once: the ground truth (cached)
    python -m benchmarks.lr_quality.run      # suggestions (cached per method) → training → regret tables

regret = (L(suggested) − L(best)) / (L(untrained) − L(best)), with L the mean final validation loss over
the training seeds and L(best) the best grid point's; 0 is as good as the grid's best, 1 is as bad as
not training; a diverged run is infinite regret. A suggestion between grid points can beat the grid's
best: that counts as 0. Each method runs over several finder seeds; every (task, schedule, finder seed)
is one sample.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import torch

from benchmarks.lr_quality import grid
from benchmarks.lr_quality.tasks import HELD_OUT, POLICY, SCHEDULES, TASKS, Task
from benchmarks.lr_quality.training import build, job_of
from lrbs.worker.advise import advise

FINDER_SEEDS = (100, 200, 300)
SUGGESTIONS_FILE = grid.CACHE / "suggestions.json"
TRAINED_FILE = grid.CACHE / "suggested.json"
RESULTS_FILE = Path(__file__).parent / "results.md"
HELD_OUT_RESULTS_FILE = Path(__file__).parent / "results_held_out.md"  # --held-out
MAIN_SCHEDULES = ("constant", "cosine", "one_cycle")
LRBS_RULES = ("steepest", "valley", "minimum", "slide", "lowest")
ANCHORS = ("pytorch-lr-finder", "lightning")
ANCHOR_STEPS = 100  # both anchors' default sweep (num_iter, num_training): at most this many steps


def lrbs_suggestions(task: Task, finder_seed: int) -> dict[str, dict]:
    """{f"{method}|{schedule}": {"lr", "wall_time_s", "steps"}} from the service's own code, default settings;
    steps are every optimizer step the job ran (its sweeps and confirmation trainings)."""
    out = {}
    for schedule in SCHEDULES:
        result = advise(task.job(schedule, seed=finder_seed, train_steps=task.steps), policy=POLICY)
        rec = result.recommendation
        cost = {"wall_time_s": result.wall_time_s, "steps": sum(result.phase_steps.values())}
        out[f"lrbs recommended|{schedule}"] = {"lr": rec.lr if rec else None, **cost}
        for rule in LRBS_RULES:  # one sweep's reading: the sweeps' cost, not the confirmations'
            sweeps = {"wall_time_s": result.phase_seconds.get("lr_range"), "steps": result.steps_run}
            out[f"lrbs {rule}|{schedule}"] = {"lr": result.suggestions[rule].lr, **sweeps}
        thorough = advise(
            task.job(schedule, seed=finder_seed, train_steps=task.steps, lr_range={"thoroughness": "thorough"}),
            policy=POLICY,
        )
        rec = thorough.recommendation
        cost = {"wall_time_s": thorough.wall_time_s, "steps": sum(thorough.phase_steps.values())}
        out[f"lrbs thorough|{schedule}"] = {"lr": rec.lr if rec else None, **cost}
    return out


def anchor_suggestions(task: Task, finder_seed: int) -> dict[str, dict]:
    from benchmarks.lr_quality.anchors import lightning_suggestion, torch_lr_finder_suggestion

    spec, data, model, loss_fn, optimizer = build(task, finder_seed, 1e-7)
    found = {
        "pytorch-lr-finder": torch_lr_finder_suggestion(
            model, loss_fn, optimizer, data.batches(task.batch_size, finder_seed), min_lr=1e-7, max_lr=10.0
        )
    }
    spec, data, model, loss_fn, _ = build(task, finder_seed, 1e-7)
    from lrbs.worker.factories import make_optimizer as build_optimizer

    def make_optimizer(params, lr):
        return build_optimizer(spec.optimizer, params, lr, POLICY)

    batches = data.batches(task.batch_size, finder_seed)
    found["lightning"] = lightning_suggestion(model, loss_fn, make_optimizer, batches)
    return {
        f"{name}|{schedule}": {"lr": s.lr, "wall_time_s": s.wall_time_s, "steps": ANCHOR_STEPS}
        for name, s in found.items()
        for schedule in SCHEDULES
    }


def collect(tasks: list[Task], methods: set[str], refresh: set[str]) -> dict[str, dict]:
    """Suggestions per f"{task}|{finder_seed}", cached; `refresh` names method groups to recompute."""
    cache = json.loads(SUGGESTIONS_FILE.read_text()) if SUGGESTIONS_FILE.exists() else {}
    for task in tasks:
        for fs in FINDER_SEEDS:
            entry = cache.setdefault(f"{task.name}|{fs}", {})
            if "lrbs" in methods and ("lrbs" in refresh or not any(k.startswith("lrbs") for k in entry)):
                entry.update(lrbs_suggestions(task, fs))
            if "anchors" in methods and ("anchors" in refresh or not any(k.startswith(ANCHORS) for k in entry)):
                entry.update(anchor_suggestions(task, fs))
            SUGGESTIONS_FILE.write_text(json.dumps(cache, indent=1, sort_keys=True))
        print(f"  suggestions ready: {task.name}", flush=True)
    return cache


def rounded(lr: float | None) -> float | None:
    return None if lr is None or not math.isfinite(lr) or lr <= 0 else float(f"{lr:.4g}")


def regret(results: dict[str, float], task: str, schedule: str, lr: float | None) -> float:
    best = min(grid.mean_loss(results, task, schedule, g) for g in grid.GRID)
    untrained = grid.mean_loss(results, task, "untrained", 0.0)
    if lr is None:
        return math.inf  # no advice is as bad as advice that diverges
    loss = grid.mean_loss(results, task, schedule, lr)
    return grid.regret(loss, best, untrained)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="*", default=["lrbs", "anchors"], choices=["lrbs", "anchors"])
    parser.add_argument(
        "--refresh",
        nargs="*",
        default=[],
        choices=["lrbs", "anchors"],
        help="recompute these suggestions instead of reading the cache",
    )
    parser.add_argument("--suggest-only", action="store_true", help="collect suggestions (for tune.py), train nothing")
    parser.add_argument(
        "--held-out", action="store_true", help=f"score tasks.HELD_OUT instead (into {HELD_OUT_RESULTS_FILE.name})"
    )
    args = parser.parse_args()
    tasks = HELD_OUT if args.held_out else TASKS
    torch.set_num_threads(1)
    for task in tasks:
        job_of(task)  # load once, before timing anything
    suggestions = collect(tasks, set(args.methods), set(args.refresh))
    if args.suggest_only:
        return
    samples = [
        (task.name, fs, method, schedule, rounded(v["lr"]), v["wall_time_s"], v.get("steps"))
        for task in tasks
        for fs in FINDER_SEEDS
        for k, v in suggestions[f"{task.name}|{fs}"].items()
        for method, schedule in [k.split("|")]
        if method != "lrbs lowest"
    ]  # a landmark (where the loss bottoms out), not an LR to train at
    jobs = [(t, sch, lr, seed) for t, _, _, sch, lr, *_ in samples if lr is not None for seed in grid.SEEDS]
    results = grid.load()
    results.update(grid.train_many(jobs, TRAINED_FILE))
    report(samples, results, tasks, HELD_OUT_RESULTS_FILE if args.held_out else RESULTS_FILE)


def report(samples, results, tasks: list[Task], path: Path) -> None:
    order = ("lrbs recommended", "lrbs thorough")
    methods = sorted(
        {m for _, _, m, *_ in samples}, key=lambda m: (m not in order, order.index(m) if m in order else 0, m)
    )
    lines = [
        "# LR advice against grid search",
        "",
        f"{len(tasks)} tasks × {len(SCHEDULES)} schedules × {len(FINDER_SEEDS)} finder seeds; "
        f"grid {len(grid.GRID)} LRs ({grid.POINTS_PER_DECADE}/decade, {grid.GRID[0]:g}–{grid.GRID[-1]:g}), "
        f"{len(grid.SEEDS)} training seeds; torch {torch.__version__}, CPU. Cells: the regret of each finder "
        "seed's suggestion; ∞ = the run diverged or the method gave no LR.",
        "",
    ]
    for task in tasks:
        lines += [
            f"## {task.name}",
            "",
            "| method | " + " | ".join(SCHEDULES) + " |",
            "|---|" + "---|" * len(SCHEDULES),
        ]
        for method in methods:
            cells = []
            for schedule in SCHEDULES:
                rs = [
                    regret(results, task.name, schedule, lr)
                    for t, _, m, sch, lr, *_ in samples
                    if t == task.name and m == method and sch == schedule
                ]
                cells.append(" ".join(_pct(r) for r in rs))
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    for title, schedules in [
        ("the issue's three schedules: constant, cosine, one_cycle", MAIN_SCHEDULES),
        ("all five schedules", SCHEDULES),
    ]:
        lines += [
            f"## Summary over {title} (all tasks and finder seeds)",
            "",
            "| method | median regret | worst regret | within 2% | optimizer steps per job: median / max | "
            "× one 100-step anchor sweep (median job) | probe wall time per job (median s) |",
            "|---|---|---|---|---|---|---|",
        ]
        for method in methods:
            picked = [
                (t, sch, lr, wall, steps)
                for t, _, m, sch, lr, wall, steps in samples
                if m == method and sch in schedules
            ]
            rs = [regret(results, t, sch, lr) for t, sch, lr, *_ in picked]
            within = sum(r <= 0.02 for r in rs) / len(rs)
            steps = [n for *_, n in picked if n is not None]
            cost = f"{statistics.median(steps):.0f} / {max(steps)}" if steps else "not recorded"
            ratio = f"{statistics.median(steps) / ANCHOR_STEPS:.1f}×" if steps else ""
            walls = [w for *_, w, _ in picked if w is not None]
            lines.append(
                f"| {method} | {_pct(statistics.median(rs))} | {_pct(max(rs))} | {within:.0%} | {cost} | {ratio} | "
                f"{statistics.median(walls):.2f} |"
            )
        lines.append("")
    text = "\n".join(lines)
    path.write_text(text + "\n")
    print(text)


def _pct(r: float) -> str:
    if not math.isfinite(r):
        return "∞"
    return ">1000%" if r > 10 else f"{100 * r:.1f}%"


if __name__ == "__main__":
    started = time.perf_counter()
    main()
    print(f"\n(total {time.perf_counter() - started:.0f} s)")
