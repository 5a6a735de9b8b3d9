"""What the service benchmarks share: a fresh database, a live `lrbs serve`, workers, and markdown tables.

Used by benchmarks/load.py, claim_latency.py, fleet.py and memory.py. Every service and worker here is a real
process on loopback; every database is new (a SQLite file in a temporary folder, or a PostgreSQL schema of its
own that is dropped afterwards). The machine's load average is printed next to every figure, because these
numbers depend on what else runs on the machine.
"""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from lrbs.worker.__main__ import threads_each

PG_URL = os.environ.get("LRBS_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
WORKER_TOKEN = "bench-worker-token"
WORKER_AUTH = {"Authorization": f"Bearer {WORKER_TOKEN}"}
BIN = Path(sys.executable).parent
# The services and workers started here import the same lrbs as this process (a checkout other than the
# editable install, e.g. an exported commit, is benchmarked by running from its folder).
SOURCE = Path(__file__).resolve().parent.parent


def child_env(**extra: str) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(SOURCE), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, **extra}


# tests/conftest.py's MINIMAL_SPEC with a quick 30-step range test: about a second of CPU on a worker.
TINY_SPEC: dict[str, Any] = {
    "model": {"name": "mlp", "params": {"hidden": [32]}},
    "dataset": {"name": "synthetic_classification", "params": {"n_samples": 512}},
    "optimizer": {"name": "sgd", "params": {"momentum": 0.9}},
    "device": "cpu",
    "lr_range": {"num_steps": 30, "thoroughness": "quick"},
}


def describe_source() -> str:
    """Which lrbs runs: its folder, and its commit when that folder is a git checkout."""
    commit = subprocess.run(["git", "-C", str(SOURCE), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    if commit.returncode:  # an exported tree (git archive): a COMMIT file beside lrbs/ may name its commit
        marker = SOURCE / "COMMIT"
        return f"lrbs from {SOURCE}" + (f" (export of {marker.read_text().strip()})" if marker.exists() else "")
    dirty = subprocess.run(["git", "-C", str(SOURCE), "status", "--porcelain", "--", "lrbs"], capture_output=True,
                           text=True).stdout.strip()  # fmt: skip
    return f"lrbs from {SOURCE} at {commit.stdout.strip()}" + (" with uncommitted changes in lrbs/" if dirty else "")


AUTOGROUP = Path("/proc/sys/kernel/sched_autogroup_enabled")


def autogroup_setting() -> str:
    """Whether the kernel groups tasks by session for CPU time (see benchmarks/scheduling_stall.py): on, off or
    n/a. It decides whether PostgreSQL is starved for seconds while the replicas saturate the cores."""
    return {"1": "on", "0": "off"}.get(AUTOGROUP.read_text().strip(), "?") if AUTOGROUP.exists() else "n/a"


def loadavg() -> str:
    """The 1, 5 and 15 minute load averages, as 'a / b / c'."""
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))  # ceil(n q / 100), at least 1
    return ordered[int(rank) - 1]


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def rss_mib(pid: int) -> float:
    """Resident memory of one process (VmRSS in /proc/PID/status), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------------------------------------- databases


@contextmanager
def database(kind: str, folder: Path) -> Iterator[str]:
    """A URL to a new, migrated database: kind 'sqlite' (a file in `folder`) or 'postgresql' (a schema of its own,
    dropped afterwards)."""
    from sqlalchemy import create_engine, text

    from lrbs.service import db

    if kind == "sqlite":
        url = f"sqlite:///{folder}/lrbs.db"
        engine = db.make_engine(url)
        db.upgrade(engine)
        engine.dispose()
        yield url
        return
    if kind != "postgresql":
        raise ValueError(f"database kind {kind!r}: sqlite or postgresql")
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    url = f"{PG_URL}?options=-csearch_path%3D{schema}"
    try:
        engine = db.make_engine(url)
        db.upgrade(engine)
        engine.dispose()
        yield url
    finally:
        with admin.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


def create_key(url: str) -> str:
    """An admin API key on that database (`lrbs keys create`), printed once."""
    env = child_env(LRBS_DATABASE_URL=url)
    name = f"bench-{uuid.uuid4().hex[:6]}"
    made = subprocess.run(
        [BIN / "lrbs", "keys", "create", "--name", name, "--admin"], env=env, check=True, capture_output=True, text=True
    )
    return made.stdout.strip()


# -------------------------------------------------------------------------------------------------- services


@dataclass
class Service:
    """One or more replicas of the service on one database, each `lrbs serve --workers 0` on a port of its own."""

    ports: list[int]
    procs: list[subprocess.Popen[bytes]]
    logs: list[Path]
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        """The first replica (the only one unless more were asked for)."""
        return self.urls[0]

    @property
    def urls(self) -> list[str]:
        return [f"http://127.0.0.1:{port}" for port in self.ports]

    def server_pids(self) -> list[int]:
        return [proc.pid for proc in self.procs]

    def client(self, timeout: float = 30, replica: int = 0) -> httpx.Client:
        return httpx.Client(base_url=self.urls[replica], headers=self.headers, timeout=timeout)

    def tracebacks(self) -> list[str]:
        """Every traceback the replicas logged, each as one block of text."""
        found = []
        for log in self.logs:
            lines = log.read_text(errors="replace").splitlines()
            for i, line in enumerate(lines):
                if line.startswith("Traceback"):
                    block = [lines[i - 1]] if i else []
                    for follow in lines[i:]:
                        if block and follow[:4].isdigit() and len(block) > 2:  # the next timestamped log line
                            break
                        block.append(follow)
                    found.append("\n".join(block))
        return found


@contextmanager
def service(
    url: str, folder: Path, replicas: int = 1, key: str | None = None, own_sessions: bool = True, **settings: str
) -> Iterator[Service]:
    """The service with no embedded worker: `replicas` processes of `lrbs serve --workers 0` (what the README
    deploys), each on a free port of its own, all on the same database, as replicas behind a load balancer
    would run. (uvicorn --workers N on one port is not used: with keep-alive connections opened at once, the
    kernel gave all of them to one process, so the second stayed idle.)

    `own_sessions`: each replica in a session of its own, as separate services (systemd units, containers) run.
    In this script's session, with the load generator, Linux's autogroups left PostgreSQL's backends runnable
    but off the CPU for up to seconds (benchmarks/scheduling_stall.py)."""
    env = child_env(
        LRBS_DATABASE_URL=url,
        LRBS_WORKER_TOKEN=WORKER_TOKEN,
        LRBS_DATA_DIR=str(folder / "data"),
        **{f"LRBS_{k.upper()}": v for k, v in settings.items()},
    )
    running = Service([], [], [], {"Authorization": f"Bearer {key}"} if key else {})
    try:
        for _ in range(replicas):
            port = free_port()
            log = folder / f"service-{port}.log"
            with open(log, "wb") as out:
                command = [str(BIN / "lrbs"), "serve", "--port", str(port), "--workers", "0"]
                running.procs.append(
                    subprocess.Popen(
                        command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=own_sessions
                    )
                )
            running.ports.append(port)
            running.logs.append(log)
        for replica, (proc, log) in enumerate(zip(running.procs, running.logs, strict=True)):
            deadline = time.monotonic() + 60
            with running.client(timeout=5, replica=replica) as http:
                while True:
                    if proc.poll() is not None:
                        raise RuntimeError(f"the service exited: {log.read_text()[-3000:]}")
                    try:
                        if http.get("/readyz").status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"the service did not come up: {log.read_text()[-3000:]}")
                    time.sleep(0.2)
        yield running
    finally:
        for proc in running.procs:
            stop(proc)


def stop(proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def workers(svc: Service, count: int, folder: Path, wait: float = 20.0) -> Iterator[list[subprocess.Popen[bytes]]]:
    """`count` real worker processes (`python -m lrbs.worker`) long-polling the service."""
    procs = []
    env = child_env(LRBS_WORKER_TOKEN=WORKER_TOKEN)
    try:
        for i in range(count):
            with open(folder / f"worker-{i}.log", "wb") as out:
                command = [sys.executable, "-m", "lrbs.worker", "--url", svc.url, "--worker-id", f"bench-{i}",
                           "--wait", str(wait), "--threads", str(threads_each(count))]  # fmt: skip
                procs.append(subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT))
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            stop(proc)


def wait_for_workers(http: httpx.Client, count: int, timeout: float = 120) -> None:
    """Until `count` workers have registered and are online (each imports torch first: seconds)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        online = [w for w in http.get("/v1/workers").json()["workers"] if w["online"] and w["info"]]
        if len(online) >= count:
            return
        time.sleep(0.2)
    raise RuntimeError(f"fewer than {count} workers came online in {timeout:.0f} s")


# -------------------------------------------------------------------------------- jobs through the protocol


def synthetic_result(points: int = 100, sweeps: int = 3, seed: int = 0) -> dict[str, Any]:
    """A Result shaped like a real one of MINIMAL_SPEC (a standard range test: `sweeps` curves of about
    `points` steps and their median; about 25 kB of JSON), with no recommendation, as a worker would send it."""
    from lrbs.contract.results import Curve, Environment, Result

    rng = random.Random(seed)

    def curve() -> Curve:
        lrs = [1e-6 * (1e6 ** (i / (points - 1))) for i in range(points)]
        losses = [2.3 - 1.5 * i / points + rng.random() * 0.1 for i in range(points)]
        return Curve(lr=lrs, loss=losses, smoothed_loss=[x - 0.01 for x in losses])

    result = Result(
        curve=curve(), sweep_curves=[curve() for _ in range(sweeps)], suggestions={}, stop_reason="completed",
        steps_run=points * sweeps, sweeps=sweeps, wall_time_s=1.0,
        environment=Environment(device="cpu", torch="bench", python="bench", lrbs="bench"),
    )  # fmt: skip
    return result.model_dump(mode="json")


def complete_next(http: httpx.Client, result: dict[str, Any], worker_id: str = "bench-protocol") -> str | None:
    """Claim the oldest queued job over the worker protocol and complete it with `result` at once; its id, or
    None when nothing was queued."""
    claimed = http.post("/v1/worker/claim", json={"worker_id": worker_id, "wait_seconds": 0}, headers=WORKER_AUTH)
    if claimed.status_code == 204:
        return None
    claimed.raise_for_status()
    lease = claimed.json()
    body = {"lease_token": lease["lease_token"], "result": result}
    done = http.post(f"/v1/worker/jobs/{lease['job_id']}:complete", json=body, headers=WORKER_AUTH)
    done.raise_for_status()
    return str(lease["job_id"])


def submit(http: httpx.Client, spec: dict[str, Any] = TINY_SPEC) -> str:
    answer = http.post("/v1/jobs", json=spec)
    answer.raise_for_status()
    return str(answer.json()["id"])
