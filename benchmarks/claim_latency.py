"""Claim latency: how long a posted job waits before an idle, long-polling worker has it running.

    python -m benchmarks.claim_latency                          # 30 jobs on PostgreSQL, one service process
    python -m benchmarks.claim_latency --jobs 100 --databases sqlite,postgresql --processes 1,2

Starts the service with no embedded worker and one real worker process (`python -m lrbs.worker`, long-polling
`POST /v1/worker/claim`). Then, one at a time, for each of `--jobs` tiny jobs: wait until the previous job has
ended and a random 0.2-0.5 s more (so the worker is back in its long-poll, idle), POST the job, and follow it on
`GET /v1/jobs/{id}/events` (Server-Sent Events; the service polls the job every LRBS_EVENTS_POLL_SECONDS, set
to --events-poll here) until it ends. Two measures per job:

* server: `started_at - created_at` of the job (both stamped by the service: the queue wait itself);
* client: from sending the POST to receiving the first event whose state is no longer `queued` (adds the POST's
  own round trip and up to one events poll).

Two processes are two replicas of `lrbs serve --workers 0` on the same database. The worker long-polls the first;
jobs are posted to each in turn. A POST answered by the replica that holds the long-poll rings its doorbell; one
answered by the other replica cannot, so the claim finds the job at its next look (RECHECK_SECONDS = 1 in
lrbs/service/api/worker_protocol.py): the table shows the two cases apart. Prints a markdown table of p50, p90,
p99 and max per database, process count and case, with the load average. Goal (issue 11): p99 < 1 s.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import httpx
from httpx_sse import connect_sse

from benchmarks import harness

MEASURES = {"server": "server: started_at − created_at", "client": "client: POST → running event"}


def follow(http: httpx.Client, job_id: str, posted: float) -> tuple[float, str]:
    """Seconds from `posted` until the first event past `queued`; then read on until the job ends: its state."""
    running_at = None
    with connect_sse(http, "GET", f"/v1/jobs/{job_id}/events", timeout=httpx.Timeout(60, read=120)) as source:
        for event in source.iter_sse():
            state = json.loads(event.data)["state"]
            if running_at is None and state != "queued":
                running_at = time.perf_counter() - posted
            if event.event == "end":
                assert running_at is not None
                return running_at, state
    raise RuntimeError(f"the event stream of job {job_id} closed before it ended")


def measure(database: str, replicas: int, jobs: int, events_poll: float, spec: dict) -> dict[int, dict]:
    """Per replica posted to: the server and client latencies of its jobs, their end states; the load average."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        with (
            harness.database(database, folder) as url,
            harness.service(url, folder, replicas, events_poll_seconds=str(events_poll)) as svc,
            harness.workers(svc, 1, folder),  # long-polls the first replica
        ):
            clients = [svc.client(replica=r) for r in range(replicas)]
            harness.wait_for_workers(clients[0], 1)
            # One job first, not counted: the worker's first job also starts its job-process machinery.
            follow(clients[0], harness.submit(clients[0], spec), time.perf_counter())
            found: dict[int, dict] = {r: {"server": [], "client": [], "states": []} for r in range(replicas)}
            for i in range(jobs):
                replica = i % replicas
                http = clients[replica]
                time.sleep(random.uniform(0.2, 0.5))
                posted = time.perf_counter()
                job_id = harness.submit(http, spec)
                seen, state = follow(http, job_id, posted)
                job = http.get(f"/v1/jobs/{job_id}").json()
                wait = datetime.fromisoformat(job["started_at"]) - datetime.fromisoformat(job["created_at"])
                found[replica]["server"].append(wait.total_seconds())
                found[replica]["client"].append(seen)
                found[replica]["states"].append(state)
                if (i + 1) % 10 == 0:
                    print(f"{database} {replicas}p: {i + 1}/{jobs} (load {harness.loadavg()})", file=sys.stderr)
            for http in clients:
                http.close()
            for block in svc.tracebacks():
                print(f"\n!! a traceback in the service log:\n{block}")
            load = harness.loadavg()
            for per_replica in found.values():
                per_replica["loadavg"] = load
            return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=30, help="jobs measured per configuration")
    parser.add_argument("--databases", type=lambda s: s.split(","), default=["postgresql"])
    parser.add_argument("--processes", type=lambda s: [int(x) for x in s.split(",")], default=[1])
    parser.add_argument("--events-poll", type=float, default=0.05, help="LRBS_EVENTS_POLL_SECONDS of the service")
    parser.add_argument("--steps", type=int, default=30, help="range-test steps of each tiny job")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    random.seed(args.seed)
    spec = {**harness.TINY_SPEC, "lr_range": {"num_steps": args.steps, "thoroughness": "quick"}}
    started = harness.loadavg()
    rows = []
    for database in args.databases:
        for processes in args.processes:
            for replica, found in measure(database, processes, args.jobs, args.events_poll, spec).items():
                case = "one process" if processes == 1 else "posted to the worker's replica" if replica == 0 else (
                    "posted to the other replica")  # fmt: skip
                not_ok = sum(state != "succeeded" for state in found["states"])
                for measure_name in ("server", "client"):
                    values = found[measure_name]
                    rows.append((
                        database, processes, case,
                        MEASURES[measure_name],
                        len(values), *(f"{harness.percentile(values, q) * 1000:.0f}" for q in (50, 90, 99)),
                        f"{max(values) * 1000:.0f}", "yes" if harness.percentile(values, 99) < 1 else "no",
                        not_ok, found["loadavg"],
                    ))  # fmt: skip
    print(
        f"\nOne idle worker, tiny jobs (mlp, {args.steps}-step quick range test, cpu) posted one at a time; "
        f"events polled every {args.events_poll:g} s; {harness.describe_source()}; "
        f"load average (1/5/15 min) at start {started}, at end {harness.loadavg()}\n"
    )
    headers = ["database", "processes", "case", "measure", "jobs", "p50 ms", "p90 ms", "p99 ms", "max ms", "p99 < 1 s",
               "jobs not succeeded", "load avg at end"]  # fmt: skip
    print(harness.table(headers, rows))


if __name__ == "__main__":
    main()
