"""Generated requests against a live service: schemathesis over /openapi.json, every public endpoint, with a key.

    python -m benchmarks.fuzz --examples 300        # prints a table; schemathesis comes with `pip install -e '.[test]'`

Starts `lrbs serve` (SQLite, one embedded worker) in a temporary folder, creates an API key with
`lrbs keys create`, runs `schemathesis run` with the checks named below, then checks that the embedded
worker is still alive and that a normal job still succeeds. Everything runs on loopback and stops by itself.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx

CHECKS = "not_a_server_error,response_schema_conformance"
NORMAL_JOB = {
    "model": {"name": "mlp", "params": {"hidden": [16]}},
    "dataset": {"name": "synthetic_classification", "params": {"n_samples": 256}},
    "optimizer": {"name": "sgd"},
    "lr_range": {"num_steps": 30, "thoroughness": "quick"},
    "device": "cpu",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cancel_everything(http: httpx.Client) -> int:
    cancelled = 0
    for state in ("queued", "running"):
        while jobs := http.get("/v1/jobs", params={"state": state, "page_size": 200}).json()["jobs"]:
            for job in jobs:
                cancelled += http.post(f"/v1/jobs/{job['id']}:cancel").status_code == 200
            if state == "running":
                time.sleep(1)  # running jobs end once their worker hears of the cancel
    return cancelled


def run(examples: int, seed: int, checks: str) -> dict:
    bin_dir = Path(sys.executable).parent
    with tempfile.TemporaryDirectory() as folder:
        env = {**os.environ, "LRBS_DATABASE_URL": f"sqlite:///{folder}/lrbs.db", "LRBS_DATA_DIR": f"{folder}/data"}
        created = subprocess.run([bin_dir / "lrbs", "keys", "create", "--name", "fuzz"], env=env, check=True,
                                 capture_output=True, text=True)  # fmt: skip
        key = created.stdout.strip()
        port = free_port()
        log = open(Path(folder) / "service.log", "wb")  # noqa: SIM115 (closed below)
        service = subprocess.Popen([bin_dir / "lrbs", "serve", "--port", str(port)], env=env, stdout=log,
                                   stderr=subprocess.STDOUT)  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        headers = {"Authorization": f"Bearer {key}"}
        try:
            http = httpx.Client(base_url=url, headers=headers, timeout=30)
            for _ in range(300):
                try:
                    if http.get("/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.2)
            report = Path(folder) / "events.ndjson"
            started = time.monotonic()
            fuzz = subprocess.run(
                [bin_dir / "schemathesis", "run", f"{url}/openapi.json", "--checks", checks, "-n", str(examples),
                 "--seed", str(seed), "-H", f"Authorization: Bearer {key}", "--exclude-path-regex", "^/v1/worker",
                 "--report", "ndjson", "--report-ndjson-path", str(report), "--max-response-time", "30"],
                capture_output=True, text=True, timeout=3000,
            )  # fmt: skip
            elapsed = time.monotonic() - started
            statuses: Counter[int] = Counter()
            failures: Counter[str] = Counter()
            for line in report.read_text().splitlines():
                event = json.loads(line)
                for name, body in event.items():
                    if name == "ScenarioFinished" or "recorder" in body:
                        for interaction in body.get("recorder", {}).get("interactions", {}).values():
                            response = interaction.get("response")
                            if response:
                                statuses[int(response["status_code"])] += 1
                        for check in body.get("recorder", {}).get("checks", {}).values():
                            for result in check:
                                if result.get("status") == "FAILURE":
                                    failures[result.get("name", "?")] += 1
            workers = http.get("/v1/workers").json()["workers"]
            cancelled = cancel_everything(http)  # the fuzzed jobs would otherwise queue ahead of the normal one
            job = http.post("/v1/jobs", json=NORMAL_JOB).json()
            for _ in range(600):
                job = http.get(f"/v1/jobs/{job['id']}").json()
                if job["state"] in ("succeeded", "failed", "cancelled"):
                    break
                time.sleep(0.2)
            return {
                "requests": sum(statuses.values()),
                "statuses": dict(sorted(statuses.items())),
                "5xx": sum(n for s, n in statuses.items() if s >= 500),
                "check failures": dict(failures),
                "seconds": round(elapsed, 1),
                "fuzzed jobs cancelled after": cancelled,
                "worker online after": any(w["online"] for w in workers),
                "normal job after": job["state"],
                "normal job error": (job.get("error") or {}).get("message"),
                "schemathesis exit": fuzz.returncode,
                "schemathesis tail": fuzz.stdout[-3000:],
            }
        finally:
            service.terminate()
            service.wait(timeout=30)
            log.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=100, help="examples per operation and phase")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checks", default=CHECKS)
    parser.add_argument("--verbose", action="store_true", help="print schemathesis's own summary too")
    args = parser.parse_args()
    found = run(args.examples, args.seed, args.checks)
    tail = found.pop("schemathesis tail")
    if args.verbose or found["schemathesis exit"] not in (0, 1):
        print(tail)
    print("| measure | value |\n|---|---|")
    for name, value in found.items():
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
