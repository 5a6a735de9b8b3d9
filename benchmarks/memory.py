"""Service memory as jobs accumulate: resident memory of `lrbs serve` after 10, 100 and 1,000 finished jobs.

    python -m benchmarks.memory                                 # SQLite and PostgreSQL, 10/100/1,000 jobs
    python -m benchmarks.memory --databases postgresql --checkpoints 10,100,1000,2000,3000 --plots 100

For each database: `lrbs serve --workers 0` on a new database with an API key. Jobs are submitted and completed
over the worker protocol (claim, then :complete with the worker token), each with a result shaped like a real
one (--result-points steps, 3 sweeps: about 25 kB of JSON at 100 points), so no PyTorch runs and 1,000 jobs take
a minute or two. After each batch of new jobs, the service is also read the way users read it: every new job
once (GET /v1/jobs/{id}), every page of the full list (page_size 50, results included), and the lr_range.svg
plot of up to --plots of the new jobs, which fills the plot cache (app.state.plot_cache: an LRU of the last 128
plots rendered). Then VmRSS of the service process is read from /proc/PID/status.

What may hold memory in the service, and its bound: the plot LRU (128 entries of 40-80 kB), SQLAlchemy's
compiled-statement cache (an LRU of 500 statements per engine), psycopg's prepared statements (at most 100 per
connection) and the connection pool (PostgreSQL: 10 kept, up to 30 open; SQLite: 5 kept, up to 15), the
threadpool's 40 threads and their malloc arenas, and whatever the allocator keeps after the largest response
(a full page of 50 results is about 1.3 MB of JSON). Growth that stops between the last checkpoints is those;
growth in proportion to jobs would be a leak.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx

from benchmarks import harness


def read_everything(http: httpx.Client, new_ids: list[str], plots: int) -> int:
    """Reads users make: each new job, every page of the list, and some plots; the plots rendered."""
    for job_id in new_ids:
        http.get(f"/v1/jobs/{job_id}").raise_for_status()
    token = None
    while True:
        params: dict[str, str | int] = {"page_size": 50}
        if token:
            params["page_token"] = token
        page = http.get("/v1/jobs", params=params)
        page.raise_for_status()
        token = page.json()["next_page_token"]
        if not token:
            break
    rendered = 0
    for job_id in new_ids[-plots:] if plots else []:
        http.get(f"/v1/jobs/{job_id}/plots/lr_range.svg", timeout=120).raise_for_status()
        rendered += 1
    return rendered


def measure(database: str, checkpoints: list[int], plots: int, points: int) -> list[tuple]:
    result = harness.synthetic_result(points=points)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        with harness.database(database, folder) as url:
            key = harness.create_key(url)
            with (
                harness.service(url, folder, 1, key, max_active_jobs_per_key="1000000") as svc,
                svc.client(timeout=60) as http,
            ):
                pid = svc.server_pids()[0]
                rows.append((database, 0, 0, f"{harness.rss_mib(pid):.1f}", "", "", harness.loadavg()))
                done = rendered = 0
                previous = harness.rss_mib(pid)
                for target in checkpoints:
                    started = time.monotonic()
                    new_ids = []
                    while done < target:
                        harness.submit(http)
                        job_id = harness.complete_next(http, result)
                        assert job_id is not None
                        new_ids.append(job_id)
                        done += 1
                    rendered += read_everything(http, new_ids, plots)
                    time.sleep(1.0)
                    rss = harness.rss_mib(pid)
                    rows.append((
                        database, done, rendered, f"{rss:.1f}", f"{rss - previous:+.1f}",
                        f"{time.monotonic() - started:.0f}", harness.loadavg(),
                    ))  # fmt: skip
                    print(f"{database}: {done} jobs, {rendered} plots, RSS {rss:.1f} MiB", file=sys.stderr)
                    previous = rss
                errors = len(svc.tracebacks())
                if errors:
                    print(f"!! {errors} tracebacks in the service log", file=sys.stderr)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--databases", type=lambda s: s.split(","), default=["sqlite", "postgresql"])
    parser.add_argument("--checkpoints", type=lambda s: [int(x) for x in s.split(",")], default=[10, 100, 1000])
    parser.add_argument("--plots", type=int, default=50, help="most plots rendered after each batch of new jobs")
    parser.add_argument("--result-points", type=int, default=100, help="steps in each result's curves")
    args = parser.parse_args()
    started = harness.loadavg()
    rows = []
    for database in args.databases:
        rows += measure(database, args.checkpoints, args.plots, args.result_points)
    print(
        f"\nlrbs serve --workers 0, one process, API key; results of {args.result_points} points x 3 sweeps; "
        f"{os.cpu_count()} CPUs; {harness.describe_source()}; "
        f"load average (1/5/15 min) at start {started}, at end {harness.loadavg()}\n"
    )
    headers = ["database", "jobs completed", "plots rendered", "service RSS MiB", "change MiB", "batch seconds",
               "load avg"]  # fmt: skip
    print(harness.table(headers, rows))


if __name__ == "__main__":
    main()
