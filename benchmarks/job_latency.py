"""Time from POST to a recommendation, through a real `lrbs serve` (SQLite, embedded worker).

    python benchmarks/job_latency.py --runs 5

Prints a markdown table: per job, seconds from POST until the worker picked it up, until it
succeeded, and the worker's own wall time. Goal (issue 2): a default-spec job on a small built-in
model succeeds in under 30 s from POST on the CPU.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import httpx

SPECS = {
    "mlp / sgd": {
        "model": {"name": "mlp"},
        "dataset": {"name": "synthetic_classification"},
        "optimizer": {"name": "sgd", "params": {"momentum": 0.9}},
    },
    "cnn / adamw": {
        "model": {"name": "cnn"},
        "dataset": {"name": "synthetic_images"},
        "optimizer": {"name": "adamw"},
    },
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="jobs per spec")
    args = parser.parse_args()
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "LRBS_DATABASE_URL": f"sqlite:///{tmp}/lrbs.db"}
        server = subprocess.Popen(
            [sys.executable, "-m", "lrbs", "serve", "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
            while True:
                try:
                    if http.get("/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.2)
            time.sleep(3)  # let the embedded worker start and begin its long-poll
            rows = []
            for name, spec in SPECS.items():
                for _ in range(args.runs):
                    rows.append((name, *run_one(http, spec)))
        finally:
            server.terminate()
            server.wait()
    print("| spec | POST → running (s) | POST → succeeded (s) | worker wall time (s) |")
    print("|---|---|---|---|")
    for name, started, done, wall in rows:
        print(f"| {name} | {started:.2f} | {done:.2f} | {wall:.2f} |")
    print(
        f"\nmedian POST → succeeded: {statistics.median(r[2] for r in rows):.2f} s "
        f"(goal < 30 s); worst {max(r[2] for r in rows):.2f} s"
    )


def run_one(http: httpx.Client, spec: dict) -> tuple[float, float, float]:
    posted = time.perf_counter()
    job_id = http.post("/v1/jobs", json=spec).json()["id"]
    started = None
    while True:
        job = http.get(f"/v1/jobs/{job_id}").json()
        if started is None and job["state"] != "queued":
            started = time.perf_counter() - posted
        if job["state"] in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(0.05)
    assert job["state"] == "succeeded", job
    return started, time.perf_counter() - posted, job["result"]["wall_time_s"]


if __name__ == "__main__":
    main()
