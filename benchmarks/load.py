"""The API under load on loopback: GET a job, list jobs, submit jobs; SQLite and PostgreSQL; 1 and 2 processes.

    python -m benchmarks.load                                   # every cell, 8 s each: about 3 minutes
    python -m benchmarks.load --databases postgresql --processes 2 --endpoints get-done --duration 20
    python -m benchmarks.load --profile-dir /tmp/prof           # also a py-spy profile of each cell's server

Needs `wrk` (Debian: apt-get install -y wrk) and, for PostgreSQL, a server at LRBS_BENCH_POSTGRES_URL (default
postgresql+psycopg://postgres@127.0.0.1:5432/test; each run gets a schema of its own, dropped afterwards).

For each database and process count, a fresh database gets an admin API key (every request is authenticated,
as once a key exists) and LRBS_MAX_ACTIVE_JOBS_PER_KEY is raised so POSTs are never refused; the service runs
with no worker (`lrbs serve --workers 0`; two processes are two such replicas on two ports, on the same
database, and the load is split between them: one wrk per replica with half the connections, their latency
distributions merged, as a load balancer in front of replicas would spread it). It is seeded with jobs
completed over the worker protocol with a result shaped like a real one (about 25 kB of JSON) and a few left
queued, so the newest page of 50 holds 40 succeeded and 10 queued jobs. Then wrk (one thread: it leaves the
cores to the server) holds a fixed number of keep-alive connections open against one endpoint at a time, a
closed loop: latency ≈ connections / throughput once the server is busy. Each cell starts with --warmup seconds
of the same load, not measured: the steady state is what counts, not a fresh process opening its connections.

Prints a markdown table: requests/s, p50, p99, errors (non-2xx answers, socket errors and timeouts), the
server's own CPU time per request (steadier than requests/s on a shared machine) and the load average when
the cell ended. `requests/s per server core` = 1000 / (server CPU ms per request): what one core given to
the service alone would serve, the database's own CPU not counted.
Goals (issue 11): ≥ 1,000 GET/s with p99 < 50 ms and no errors; POST ≥ 300/s.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import httpx

from benchmarks import harness

ENDPOINTS = {
    "get-done": "GET /v1/jobs/{id} (succeeded, 25 kB result)",
    "get-queued": "GET /v1/jobs/{id} (queued)",
    "list": "GET /v1/jobs?page_size=50",
    "list-summary": "GET /v1/jobs?page_size=50&view=summary",
    "post": "POST /v1/jobs",
}
QUEUED_IN_PAGE = 10  # the newest seeded jobs stay queued; the rest are completed

PERCENTILES = [0.5 * i for i in range(1, 200)] + [99.9]  # then 100: the max (wrk's percentile(100) answers 0)
WRK_DONE = (
    """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %d, "duration_us": %d, "connect": %d, "read": %d, "write": %d, "status": %d, ' ..
    '"timeout": %d, "percentiles": [',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout))
  local ps = {"""
    + ", ".join(f"{p:g}" for p in PERCENTILES)
    + """}
  for i, p in ipairs(ps) do
    io.write(string.format('%s[%s, %d]', i > 1 and ', ' or '', p, latency:percentile(p)))
  end
  io.write(string.format(', [100, %d]]}\\n', latency.max))
end
"""
)


@dataclass
class Cell:
    database: str
    processes: int
    endpoint: str
    connections: int
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: int
    cpu_ms_per_request: float
    loadavg: str

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    def meets_goal(self) -> str:
        errors = self.non_2xx + self.socket_errors
        if self.endpoint == "post":
            return "yes" if self.rate >= 300 and errors == 0 else "no"
        return "yes" if self.rate >= 1000 and self.p99_ms < 50 and errors == 0 else "no"


def wrk_script(folder: Path, method: str, key: str | None, body: dict | None) -> Path:
    lines = [f'wrk.method = "{method}"']
    if key:
        lines.append(f'wrk.headers["Authorization"] = "Bearer {key}"')
    if body is not None:
        lines.append('wrk.headers["Content-Type"] = "application/json"')
        lines.append(f"wrk.body = [==[{json.dumps(body)}]==]")
    path = folder / f"{method.lower()}.lua"
    path.write_text("\n".join(lines) + "\n" + WRK_DONE)
    return path


def start_wrk(url: str, script: Path, connections: int, seconds: int) -> subprocess.Popen[str]:
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s", "-s", str(script), url]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish_wrk(proc: subprocess.Popen[str]) -> dict:
    out, err = proc.communicate()
    if proc.returncode:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {err}")
    line = next(x for x in out.splitlines() if x.startswith("WRKJSON "))
    return dict(json.loads(line[len("WRKJSON ") :]))


def run_wrk(urls: list[str], script: Path, connections: int, seconds: int) -> dict:
    """One wrk per URL, at once, the connections split between them; their counts summed and their latency
    distributions merged (each known by its percentiles, PERCENTILES, weighted by its requests)."""
    procs = [start_wrk(url, script, max(1, connections // len(urls)), seconds) for url in urls]
    runs = [finish_wrk(proc) for proc in procs]
    merged = {k: sum(run[k] for run in runs) for k in ("requests", "connect", "read", "write", "status", "timeout")}
    merged["duration_us"] = max(run["duration_us"] for run in runs)
    for q in (50, 99):
        merged[f"p{q}_us"] = merged_percentile(runs, q)
    return merged


def merged_percentile(runs: list[dict], q: float) -> float:
    """The q-th percentile of several runs' latencies together: bisect on the value where the runs' CDFs (each
    linear between its known percentiles), weighted by request counts, reach q."""
    total = sum(run["requests"] for run in runs) or 1

    def below(x: float) -> float:  # share of all requests at or under x, in percent
        share = 0.0
        for run in runs:
            points = [(0.0, 0.0)] + [(float(v), float(p)) for p, v in run["percentiles"]]
            cdf = 100.0
            for (x0, p0), (x1, p1) in zip(points, points[1:], strict=False):
                if x <= x1:
                    cdf = p1 if x1 == x0 else p0 + (p1 - p0) * (x - x0) / (x1 - x0)
                    break
            share += cdf * run["requests"] / total
        return share

    low, high = 0.0, max(float(run["percentiles"][-1][1]) for run in runs)
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if below(middle) < q else (low, middle)
    return high


def seed(http: httpx.Client, jobs: int) -> tuple[str, str]:
    """`jobs` jobs, all but the newest QUEUED_IN_PAGE completed with a realistic result.
    Returns (a succeeded job's id, a queued job's id)."""
    result = harness.synthetic_result()
    done = ""
    for _ in range(jobs - QUEUED_IN_PAGE):
        harness.submit(http)
        done = harness.complete_next(http, result) or done
    queued = [harness.submit(http) for _ in range(QUEUED_IN_PAGE)]
    return done, queued[0]


def profile(pids: list[int], seconds: float, out: Path) -> subprocess.Popen[bytes] | None:
    """py-spy record on the first server process: collapsed stacks of the thread holding the GIL, i.e. where the
    Python CPU goes (time in C with the GIL released, such as SQLite's own work, is not counted)."""
    spy = Path(sys.executable).parent / "py-spy"
    if not spy.exists():
        print(f"(no {spy}: pip install py-spy to profile)", file=sys.stderr)
        return None
    command = [str(spy), "record", "--pid", str(pids[0]), "--duration", str(int(seconds)), "--rate", "250",
               "--format", "raw", "--output", str(out), "--nonblocking", "--gil"]  # fmt: skip
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


IDLE_LEAVES = ("Condition.wait", "EpollSelector.select", "Event.wait", "Queue.get")  # threads waiting, not working


def summarize_profile(path: Path, top: int = 30) -> str:
    """Share of the busy samples (idle leaves dropped) in which each function is on the stack (inclusive) and
    at the top (self), from py-spy's collapsed stacks."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    busy = idle = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        frames = [short(frame) for frame in stack.split(";")]
        if frames[-1].split(" (")[0] in IDLE_LEAVES:
            idle += n
            continue
        busy += n
        own[frames[-1]] += n
        for name in set(frames):
            inclusive[name] += n
    rows = [
        (name, f"{100 * n / busy:.1f} %", f"{100 * own[name] / busy:.1f} %") for name, n in inclusive.most_common(top)
    ]
    heading = f"{busy} busy samples ({idle} idle left out)\n\n"
    return heading + harness.table(["function (file)", "inclusive", "self"], rows)


def short(frame: str) -> str:
    """'get_job (lrbs/service/api/jobs.py:123)' -> 'get_job (lrbs/service/api/jobs.py)'."""
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rsplit(':', 1)[0]})" if where else name


def run_cells(args: argparse.Namespace) -> list[Cell]:
    cells = []
    for database in args.databases:
        for processes in args.processes:
            with tempfile.TemporaryDirectory() as tmp:
                folder = Path(tmp)
                with harness.database(database, folder) as url:
                    key = None if args.no_key else harness.create_key(url)
                    with harness.service(url, folder, processes, key, max_active_jobs_per_key="1000000000") as svc:
                        with svc.client() as http:
                            done_id, queued_id = seed(http, args.seed_jobs)
                        paths = {
                            "get-done": f"/v1/jobs/{done_id}",
                            "get-queued": f"/v1/jobs/{queued_id}",
                            "list": "/v1/jobs?page_size=50",
                            "list-summary": "/v1/jobs?page_size=50&view=summary",
                            "post": "/v1/jobs",
                        }
                        for endpoint in args.endpoints:
                            method = "POST" if endpoint == "post" else "GET"
                            body = harness.TINY_SPEC if endpoint == "post" else None
                            script = wrk_script(folder, method, key, body)
                            urls = [base + paths[endpoint] for base in svc.urls]
                            if args.warmup:  # unmeasured: connections opened, caches and statement caches filled
                                run_wrk(urls, script, args.connections, args.warmup)
                            pids = svc.server_pids()
                            cpu = sum(harness.cpu_seconds(p) for p in pids)
                            spy = None
                            if args.profile_dir:
                                args.profile_dir.mkdir(parents=True, exist_ok=True)
                                out = args.profile_dir / f"{database}-{processes}p-{endpoint}.txt"
                                spy = profile(pids, args.duration, out)
                            found = run_wrk(urls, script, args.connections, args.duration)
                            cpu = sum(harness.cpu_seconds(p) for p in pids) - cpu
                            if spy is not None:
                                spy.wait()
                            requests = max(1, found["requests"])
                            cell = Cell(
                                database, processes, endpoint, args.connections, found["requests"],
                                found["duration_us"] / 1e6, found["p50_us"] / 1e3, found["p99_us"] / 1e3,
                                found["status"], found["connect"] + found["read"] + found["write"] + found["timeout"],
                                1000 * cpu / requests, harness.loadavg(),
                            )  # fmt: skip
                            print(
                                f"{database} {processes}p {endpoint}: {cell.rate:.0f}/s p50 {cell.p50_ms:.1f} ms "
                                f"p99 {cell.p99_ms:.1f} ms errors {cell.non_2xx}+{cell.socket_errors} "
                                f"(load {cell.loadavg})",
                                file=sys.stderr,
                                flush=True,
                            )
                            cells.append(cell)
                            time.sleep(args.pause)
                    for block in svc.tracebacks():
                        print(f"\n!! a traceback in the service log ({database}, {processes} processes):\n{block}")
    return cells


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--databases", type=lambda s: s.split(","), default=["sqlite", "postgresql"])
    parser.add_argument("--processes", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2])
    parser.add_argument("--endpoints", type=lambda s: s.split(","), default=list(ENDPOINTS), help=",".join(ENDPOINTS))
    parser.add_argument("--duration", type=int, default=8, help="seconds of load per cell")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of unmeasured load before each cell")
    parser.add_argument("--connections", type=int, default=16, help="wrk's open connections (the concurrency)")
    parser.add_argument("--seed-jobs", type=int, default=200, help="jobs in the database before the load")
    parser.add_argument("--pause", type=float, default=2.0, help="seconds between cells (let the machine settle)")
    parser.add_argument("--no-key", action="store_true", help="no API key: the open API (one auth query, not two)")
    parser.add_argument("--profile-dir", type=Path, help="py-spy record each cell's (first) server process here")
    args = parser.parse_args()
    for endpoint in args.endpoints:
        if endpoint not in ENDPOINTS:
            parser.error(f"unknown endpoint {endpoint!r}; known: {', '.join(ENDPOINTS)}")
    if shutil.which("wrk") is None:
        parser.error("wrk is not installed (Debian: apt-get install -y wrk)")
    started = harness.loadavg()
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.splitlines()[0]
    cells = run_cells(args)
    print(
        f"\n{len(cells)} cells, {args.duration} s each, {args.connections} connections, wrk -t1 ({wrk_version}); "
        f"{os.cpu_count()} CPUs; {harness.describe_source()}; API key: {'no' if args.no_key else 'yes'}; "
        f"scheduler autogroups: {harness.autogroup_setting()} (benchmarks/scheduling_stall.py); "
        f"load average (1/5/15 min) at start {started}, at end {harness.loadavg()}\n"
    )
    rows = [
        (ENDPOINTS[c.endpoint], c.database, c.processes, f"{c.rate:,.0f}", f"{c.p50_ms:.1f}", f"{c.p99_ms:.1f}",
         f"{c.non_2xx} / {c.socket_errors}", f"{c.cpu_ms_per_request:.2f}",
         f"{1000 / max(c.cpu_ms_per_request, 1e-3):,.0f}", c.meets_goal(), c.loadavg)
        for c in sorted(cells, key=lambda c: (list(ENDPOINTS).index(c.endpoint), c.database, c.processes))
    ]  # fmt: skip
    headers = ["endpoint", "database", "processes", "requests/s", "p50 ms", "p99 ms", "non-2xx / socket errors",
               "server CPU ms/request", "requests/s per server core", "goal met", "load avg at end"]  # fmt: skip
    print(harness.table(headers, rows))
    if args.profile_dir:
        for path in sorted(args.profile_dir.glob("*.txt")):
            if path.stat().st_size:
                print(f"\n### {path.stem}\n\n{summarize_profile(path)}")


if __name__ == "__main__":
    main()
