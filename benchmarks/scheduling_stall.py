"""The PostgreSQL stall with two replicas: rounds of GET load, a `SELECT 1` prober, and the kernel's scheduling delays.

    python -m benchmarks.scheduling_stall                          # 6 rounds with the machine's own setting
    python -m benchmarks.scheduling_stall --autogroup alternate    # rounds alternate autogroup on/off (root)
    python -m benchmarks.scheduling_stall --perf                   # also `perf sched` over each round (root)
    python -m benchmarks.scheduling_stall --sessions alternate     # replicas in this session / in their own

Each round is `benchmarks.load`'s `get-done` cell with 2 replicas on PostgreSQL (a fresh schema, 200 seeded jobs,
16 connections, 2 s of unmeasured warm-up), plus a prober: its own connection, outside lrbs, sends `SELECT 1`
every 5 ms and keeps the slowest answer. With --perf, `perf sched record` runs over the measured seconds and
`perf sched timehist` gives each task's scheduling delay: the time it was runnable but not on a CPU.

Why: on this 2-core machine, the two replicas' rounds had a p99 of 0.3–3.6 s in most rounds while the rest of
the requests went at full rate. The database logged no slow statement and no lock wait; the prober's
`SELECT 1` took up to 2 s in the same windows, and `perf sched` showed its backend (and other PostgreSQL
backends, and kernel threads) runnable for 1.2–2.0 s before it got a CPU. The scheduler's autogroups (one
group per session: the replicas with the load generator, PostgreSQL in its own) are what it follows:
`--autogroup alternate` starts every other round with `kernel.sched_autogroup_enabled` off and restores the
setting at the end. The replicas and the database are started afresh each round, so each round's processes are
grouped as the setting says when they start.

The replicas run in this script's session by default (`--sessions shared`), with the load generator: how the
stall was found. The other benchmarks start each replica in a session of its own, as separate services run
(`harness.service`'s `own_sessions`); `--sessions alternate` compares the two with the autogroups on.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import create_engine

from benchmarks import harness, load

SLOW_PROBE_MS = 50.0


def ms(value: float | None) -> str:
    return "—" if value is None else f"{value:,.1f}"


@dataclass
class Round:
    autogroup: str
    sessions: str  # the replicas': "shared" (with the load generator) or "own"
    rate: float
    p99_ms: float
    probes: int
    slow_probes: int  # over SLOW_PROBE_MS
    slowest_probe_ms: float
    postgres_delay_ms: float | None  # the longest scheduling delay of any PostgreSQL process (perf)
    other_delay_ms: float | None  # of any task other than lrbs, wrk and PostgreSQL (kernel threads, daemons)


@contextmanager
def autogroup_set(enabled: bool | None) -> Iterator[None]:
    """kernel.sched_autogroup_enabled for the block (None: leave it), restored afterwards."""
    if enabled is None or not harness.AUTOGROUP.exists():
        yield
        return
    before = harness.AUTOGROUP.read_text()
    harness.AUTOGROUP.write_text("1" if enabled else "0")
    try:
        yield
    finally:
        harness.AUTOGROUP.write_text(before)


class Prober:
    """`SELECT 1` every 5 ms on a connection of its own, from a thread: how long the database takes to answer
    anyone, lrbs aside."""

    def __init__(self) -> None:
        self.engine = create_engine(harness.PG_URL, isolation_level="AUTOCOMMIT")
        self.times: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with self.engine.connect() as conn:
            while not self._stop.is_set():
                started = time.perf_counter()
                conn.exec_driver_sql("select 1").scalar()
                self.times.append(time.perf_counter() - started)
                time.sleep(0.005)

    def __enter__(self) -> Prober:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.engine.dispose()


def longest_delays(timehist: str) -> tuple[float, float]:
    """The longest scheduling delay (ms) of a PostgreSQL process, and of any task other than lrbs, wrk and
    PostgreSQL, in `perf sched timehist`'s output (columns: time, cpu, task[tid/pid], wait, sch delay, run time)."""
    postgres = other = 0.0
    for line in timehist.splitlines():
        fields = line.split()
        try:
            delay = float(fields[-2])
        except (IndexError, ValueError):  # the heading and its rules
            continue
        task = " ".join(fields[2:-3]).split("[")[0]
        if task == "postgres":
            postgres = max(postgres, delay)
        elif task not in ("lrbs", "wrk", "perf", "python"):
            other = max(other, delay)
    return postgres, other


def one_round(seconds: int, use_perf: bool, autogroup: bool | None, own_sessions: bool) -> Round:
    with autogroup_set(autogroup), tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        with harness.database("postgresql", folder) as url:
            key = harness.create_key(url)
            with harness.service(url, folder, 2, key, own_sessions, max_active_jobs_per_key="1000000000") as svc:
                with svc.client() as http:
                    done_id, _ = load.seed(http, 200)
                script = load.wrk_script(folder, "GET", key, None)
                urls = [base + f"/v1/jobs/{done_id}" for base in svc.urls]
                load.run_wrk(urls, script, 16, 2)  # warm-up, unmeasured
                perf_data = folder / "perf.data"
                with Prober() as prober:
                    perf = None
                    if use_perf:
                        command = ["perf", "sched", "record", "-o", str(perf_data), "--", "sleep", str(seconds)]
                        perf = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    found = load.run_wrk(urls, script, 16, seconds)
                    if perf is not None:
                        perf.wait()
                setting = harness.autogroup_setting()
                delays: tuple[float | None, float | None] = (None, None)
                if perf is not None:
                    timehist = ["perf", "sched", "timehist", "-i", str(perf_data)]
                    delays = longest_delays(subprocess.run(timehist, capture_output=True, text=True).stdout)
        probe_ms = [t * 1000 for t in prober.times] or [0.0]
        rate = found["requests"] / (found["duration_us"] / 1e6)
        return Round(
            setting, "own" if own_sessions else "shared", rate, found["p99_us"] / 1e3, len(probe_ms),
            sum(t > SLOW_PROBE_MS for t in probe_ms), max(probe_ms), *delays,
        )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--duration", type=int, default=8, help="measured seconds per round")
    alternate = "alternate: every other round with kernel.sched_autogroup_enabled off (needs root)"
    parser.add_argument("--autogroup", choices=["as-is", "alternate"], default="as-is", help=alternate)
    sessions = "the replicas' sessions: this script's (shared), each its own (own), or alternate between the two"
    parser.add_argument("--sessions", choices=["shared", "own", "alternate"], default="shared", help=sessions)
    parser.add_argument("--perf", action="store_true", help="perf sched over each round (needs root and perf)")
    args = parser.parse_args()
    if args.autogroup == "alternate" and not harness.AUTOGROUP.exists():
        parser.error(f"{harness.AUTOGROUP} does not exist: this kernel has no autogroups")
    started = harness.loadavg()
    rounds = []
    for i in range(args.rounds):
        setting = None if args.autogroup == "as-is" else i % 2 == 0
        own = args.sessions == "own" or (args.sessions == "alternate" and i % 2 == 1)
        found = one_round(args.duration, args.perf, setting, own)
        print(f"round {i + 1}: autogroup {found.autogroup}, replicas' sessions {found.sessions}, {found.rate:.0f}/s, "
              f"p99 {found.p99_ms:.1f} ms, slowest SELECT 1 {found.slowest_probe_ms:.1f} ms", flush=True)  # fmt: skip
        rounds.append(found)
    print(
        f"\n{args.rounds} rounds of GET /v1/jobs/{{id}} (succeeded job), PostgreSQL, 2 replicas, {args.duration} s "
        f"each, 16 connections; {harness.describe_source()}; load average at start {started}, at end "
        f"{harness.loadavg()}\n"
    )
    rows = [
        (i + 1, r.autogroup, r.sessions, f"{r.rate:,.0f}", ms(r.p99_ms), f"{r.slow_probes} of {r.probes}",
         ms(r.slowest_probe_ms), ms(r.postgres_delay_ms), ms(r.other_delay_ms))
        for i, r in enumerate(rounds)
    ]  # fmt: skip
    headers = ["round", "autogroup", "replicas' sessions", "requests/s", "p99 ms",
               f"SELECT 1 over {SLOW_PROBE_MS:.0f} ms", "slowest SELECT 1 ms",
               "longest scheduling delay, PostgreSQL (ms)", "longest scheduling delay, other tasks (ms)"]  # fmt: skip
    print(harness.table(headers, rows))
    for setting in sorted({(r.autogroup, r.sessions) for r in rounds}):
        group = [r for r in rounds if (r.autogroup, r.sessions) == setting]
        stalled = sum(r.p99_ms > 100 for r in group)
        print(f"\nautogroup {setting[0]}, replicas' sessions {setting[1]}: {stalled} of {len(group)} rounds with a "
              f"p99 over 100 ms; median {statistics.median(r.rate for r in group):,.0f}/s, median p99 "
              f"{statistics.median(r.p99_ms for r in group):,.1f} ms", end="")  # fmt: skip
    print()


if __name__ == "__main__":
    main()
