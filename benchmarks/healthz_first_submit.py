"""Liveness while the service takes its first jobs: /healthz latency during the first POSTs after a cold start.

    python -m benchmarks.healthz_first_submit                   # SQLite, 5 starts
    python -m benchmarks.healthz_first_submit --databases sqlite,postgresql --starts 5

For each start: a new database, `lrbs serve --workers 0` (no worker, so the jobs stay queued and nothing else
runs), and, as soon as it is ready, a thread that GETs /healthz back to back on its own connection while the
main thread POSTs --posts jobs one after another (the first POST is the one that once imported torch inside the
event loop and stalled every other request for seconds). Prints the first POST's latency, the later POSTs'
median, and the /healthz latencies seen while the POSTs ran: p50, p99 and max. Goal (issue 11): /healthz
answers within 100 ms at all times.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

from benchmarks import harness


def one_start(database: str, posts: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        with harness.database(database, folder) as url, harness.service(url, folder) as svc:
            health: list[float] = []
            done = threading.Event()

            def probe() -> None:
                with svc.client(timeout=30) as http:
                    while not done.is_set():
                        started = time.perf_counter()
                        http.get("/healthz").raise_for_status()
                        health.append(time.perf_counter() - started)

            watcher = threading.Thread(target=probe)
            watcher.start()
            time.sleep(0.2)  # the watcher is connected and answering before the first POST
            post_seconds = []
            with svc.client(timeout=120) as http:
                for _ in range(posts):
                    started = time.perf_counter()
                    harness.submit(http)
                    post_seconds.append(time.perf_counter() - started)
            done.set()
            watcher.join()
            return {"posts": post_seconds, "health": health, "loadavg": harness.loadavg()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--databases", type=lambda s: s.split(","), default=["sqlite"])
    parser.add_argument("--starts", type=int, default=5, help="cold starts per database")
    parser.add_argument("--posts", type=int, default=10, help="POSTs after each start")
    args = parser.parse_args()
    rows = []
    for database in args.databases:
        for start in range(1, args.starts + 1):
            found = one_start(database, args.posts)
            health, posts = found["health"], found["posts"]
            rows.append((
                database, start, f"{posts[0] * 1000:.0f}", f"{harness.percentile(posts[1:] or posts, 50) * 1000:.0f}",
                len(health), f"{harness.percentile(health, 50) * 1000:.1f}",
                f"{harness.percentile(health, 99) * 1000:.1f}", f"{max(health) * 1000:.1f}",
                "yes" if max(health) < 0.1 else "no", found["loadavg"],
            ))  # fmt: skip
    print(f"\n`lrbs serve --workers 0`, cold start each time; {harness.describe_source()}\n")
    headers = ["database", "start", "first POST ms", "later POSTs p50 ms", "/healthz calls", "/healthz p50 ms",
               "/healthz p99 ms", "/healthz max ms", "max < 100 ms", "load avg"]  # fmt: skip
    print(harness.table(headers, rows))


if __name__ == "__main__":
    main()
