"""A live service for end-to-end tests: `lrbs serve` (real uvicorn, real workers) on a free port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.conftest import WORKER_TOKEN

CHROMIUM = Path("/usr/bin/chromium")  # Debian's package: test tools cannot download their own browser here


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def process(args: list[str], env: dict[str, str], log_path, cwd=None, program: str = sys.executable):
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [program, *args], env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT, cwd=cwd
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextmanager
def service(database_url: str, tmp_path, workers: int = 1, cwd=None, **settings: str):
    """`lrbs serve` on a free port; yields an httpx client pointed at it. With `cwd`, the installed `lrbs`
    command is started from that folder, as a user would."""
    port = free_port()
    env = {
        "LRBS_DATABASE_URL": database_url,
        "LRBS_WORKER_TOKEN": WORKER_TOKEN,
        "LRBS_AUTO_MIGRATE": "1",
        "LRBS_DATA_DIR": str(tmp_path / "data"),
        **{f"LRBS_{k.upper()}": v for k, v in settings.items()},
    }
    args = ["serve", "--port", str(port), "--workers", str(workers)]
    if cwd is None:
        launch = process(["-m", "lrbs", *args], env, tmp_path / "service.log")
    else:
        launch = process(
            args, env, tmp_path / "service.log", cwd=cwd, program=str(Path(sys.executable).parent / "lrbs")
        )
    with (
        launch as proc,
        httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http,
    ):
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (tmp_path / "service.log").read_text()
            try:
                if http.get("/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the service did not come up"
            time.sleep(0.2)
        http.port = port
        http.pid = proc.pid
        yield http


def worker(port: int, tmp_path, name: str):
    args = ["-m", "lrbs.worker", "--url", f"http://127.0.0.1:{port}", "--worker-id", name, "--wait", "5"]
    return process(args, {"LRBS_WORKER_TOKEN": WORKER_TOKEN}, tmp_path / f"{name}.log")


def wait_for(http: httpx.Client, job_id: str, states=("succeeded", "failed", "cancelled"), timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = http.get(f"/v1/jobs/{job_id}").json()
        if job["state"] in states:
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} still {job['state']} after {timeout} s: {job}")


def wait_for_progress(http: httpx.Client, job_id: str) -> None:
    """Until the worker has reported range-test steps: the job is really under way."""
    wait_for(http, job_id, states=("running",))
    while http.get(f"/v1/jobs/{job_id}").json()["progress"]["step"] == 0:
        time.sleep(0.1)


def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path}/lrbs.db"


@contextmanager
def chromium():
    """Headless Chromium driven by Playwright, or a skip when either is missing (a failure when
    LRBS_TEST_REQUIRE_BROWSER=1, as .ci/run sets)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        missing = f"playwright is not installed ({exc}; pip install -e '.[test]')"
    else:
        missing = None if CHROMIUM.exists() else f"{CHROMIUM} is missing (Debian: apt-get install chromium)"
    if missing:
        if os.environ.get("LRBS_TEST_REQUIRE_BROWSER") == "1":
            pytest.fail(f"{missing}, and LRBS_TEST_REQUIRE_BROWSER=1")
        pytest.skip(f"no browser test: {missing}")
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox", "--disable-background-networking"]
        )
        try:
            yield browser
        finally:
            browser.close()


def only_loopback(target) -> list[str]:
    """Abort every request `target` (a Playwright page or context) makes to a host other than 127.0.0.1; the
    returned list collects their URLs, so a test can assert that nothing needed the internet."""
    from urllib.parse import urlsplit

    outside: list[str] = []

    def route(request_route) -> None:
        if urlsplit(request_route.request.url).hostname == "127.0.0.1":
            request_route.continue_()
        else:
            outside.append(request_route.request.url)
            request_route.abort()

    target.route("**/*", route)
    return outside
