"""A fleet draining a queue: 1, 2 and 4 workers running the same batch of tiny jobs, on PostgreSQL.

    python -m benchmarks.fleet                                  # 30 jobs per fleet size: a few minutes
    python -m benchmarks.fleet --jobs 200 --workers 1,2,4       # the issue's figure (much longer on 2 cores)

For each fleet size: a new PostgreSQL schema, `lrbs serve --workers 0`, N real worker processes
(`python -m lrbs.worker`), all online before the clock starts; then `--jobs` tiny jobs (an mlp on 512 synthetic
samples, a 30-step quick range test, device cpu) are posted back to back and the workers drain them. Figures come
from the jobs' own timestamps (stamped by the service): makespan = last finished_at - first created_at;
throughput = jobs / makespan; scaling efficiency = throughput(N) / (N x throughput(1)). Also each job's run time
(finished_at - started_at) and the worker's own wall time for it (result.wall_time_s), which grow once workers
outnumber cores: every job is CPU-bound, and each uses PyTorch's default of one thread per core.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

import httpx

from benchmarks import harness


def all_jobs(http: httpx.Client) -> list[dict]:
    jobs, token = [], None
    while True:
        params: dict[str, str | int] = {"page_size": 200, "view": "summary"}
        if token:
            params["page_token"] = token
        page = http.get("/v1/jobs", params=params).json()
        jobs += page["jobs"]
        token = page["next_page_token"]
        if not token:
            return jobs


def unfinished(http: httpx.Client) -> int:
    return sum(
        len(http.get("/v1/jobs", params={"state": s, "page_size": 200}).json()["jobs"]) for s in ("queued", "running")
    )


def drain(workers: int, jobs: int, timeout: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        with (
            harness.database("postgresql", folder) as url,
            harness.service(url, folder, max_active_jobs_per_key="1000000") as svc,
            svc.client() as http,
            harness.workers(svc, workers, folder),
        ):
            harness.wait_for_workers(http, workers)
            for _ in range(jobs):
                harness.submit(http)
            deadline = time.monotonic() + timeout
            while unfinished(http):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{workers} workers did not drain {jobs} jobs in {timeout:.0f} s")
                time.sleep(1.0)
            found = all_jobs(http)
    at = datetime.fromisoformat
    makespan = (max(at(j["finished_at"]) for j in found) - min(at(j["created_at"]) for j in found)).total_seconds()
    ran = [j for j in found if j["started_at"] and j["finished_at"]]
    run_seconds = [(at(j["finished_at"]) - at(j["started_at"])).total_seconds() for j in ran]
    walls = [j["result"]["wall_time_s"] for j in found if j.get("result")]
    per_worker = Counter(j["worker_id"] for j in found)
    return {
        "makespan": makespan,
        "per_minute": 60 * len(found) / makespan,
        "run_p50": statistics.median(run_seconds),
        "wall_p50": statistics.median(walls) if walls else float("nan"),
        "states": Counter(j["state"] for j in found),
        "per_worker": sorted(per_worker.values(), reverse=True),
        "loadavg": harness.loadavg(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=30, help="tiny jobs per fleet size")
    parser.add_argument("--workers", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 4])
    parser.add_argument("--timeout", type=float, default=3600, help="seconds one fleet may take to drain")
    args = parser.parse_args()
    started = harness.loadavg()
    results = {}
    for n in args.workers:
        results[n] = drain(n, args.jobs, args.timeout)
        print(f"{n} workers: {results[n]['per_minute']:.1f} jobs/min (load {harness.loadavg()})", file=sys.stderr)
    base = results.get(1)
    rows = []
    for n, r in results.items():
        efficiency = f"{r['per_minute'] / (n * base['per_minute']):.2f}" if base else "n/a (no 1-worker run)"
        rows.append((
            n, args.jobs, f"{r['makespan']:.1f}", f"{r['per_minute']:.1f}", efficiency, f"{r['run_p50']:.2f}",
            f"{r['wall_p50']:.2f}", " / ".join(map(str, r["per_worker"])),
            ", ".join(f"{k} {v}" for k, v in sorted(r["states"].items())), r["loadavg"],
        ))  # fmt: skip
    print(
        f"\nPostgreSQL, one service process, tiny jobs (mlp, 30-step quick range test, cpu); "
        f"{os.cpu_count()} CPUs; {harness.describe_source()}; "
        f"load average (1/5/15 min) at start {started}, at end {harness.loadavg()}\n"
    )
    headers = ["workers", "jobs", "makespan s", "jobs/min", "scaling efficiency", "job run p50 s",
               "worker wall p50 s", "jobs per worker", "end states", "load avg at end"]  # fmt: skip
    print(harness.table(headers, rows))


if __name__ == "__main__":
    main()
