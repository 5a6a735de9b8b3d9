"""A Python client for the lrbs service: submit a job, wait for it, read the advice.

    from lrbs import Client, apply
    job = Client().wait(Client().submit(spec))       # LRBS_URL / LRBS_TOKEN, or Client(url=..., token=...)
    optimizer, scheduler = apply(job.result.recommendation, model.parameters())

Results are the contract's own pydantic models. Requests are retried with backoff on connection errors and
5xx; a submit carries an Idempotency-Key, so its retries never queue the job twice.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any

import httpx
from httpx_sse import SSEError, connect_sse

from lrbs.contract.job_spec import JobSpec
from lrbs.contract.resources import (
    TERMINAL_STATES,
    DatasetOut,
    Job,
    JobErrorDetail,
    JobEvent,
    JobPage,
    JobState,
    Progress,
)

DEFAULT_URL = "http://127.0.0.1:8000"
RETRIES = 5
# An event stream silent this long is reopened (resuming from its last event id), so `wait` notices its deadline.
# Shorter than the service's keep-alive interval (15 s), which would otherwise reset the read timeout.
STREAM_IDLE_SECONDS = 10.0


class LrbsError(Exception):
    """The service refused a request: `status` and the problem's `detail` (and `errors` for bad fields)."""

    def __init__(self, status: int, detail: str, errors: list[dict[str, str]] | None = None) -> None:
        super().__init__(f"{status}: {detail}")
        self.status, self.detail, self.errors = status, detail, errors or []


class JobFailed(Exception):
    def __init__(self, job: Job) -> None:
        error = job.error or JobErrorDetail(message="no error recorded", attempt=job.attempts)
        super().__init__(f"job {job.id} failed ({error.kind}): {error.message}")
        self.job, self.error = job, error


class JobCancelled(Exception):
    def __init__(self, job: Job) -> None:
        super().__init__(f"job {job.id} was cancelled")
        self.job = job


class Client:
    def __init__(self, url: str | None = None, token: str | None = None, http: httpx.Client | None = None) -> None:
        url = url or os.environ.get("LRBS_URL", DEFAULT_URL)
        token = token or os.environ.get("LRBS_TOKEN")
        self.http = http or httpx.Client(base_url=url.rstrip("/"), timeout=30.0)
        if token:
            self.http.headers["Authorization"] = f"Bearer {token}"

    # ------------------------------------------------------------------------------------------ jobs

    def submit(self, spec: JobSpec | dict[str, Any]) -> Job:
        """Queue a job. Retried through connection errors and 5xx with one Idempotency-Key, so a retry that
        reaches the service twice still makes one job."""
        body = spec.model_dump(mode="json", exclude_unset=True) if isinstance(spec, JobSpec) else spec
        headers = {"Idempotency-Key": uuid.uuid4().hex}
        return Job.model_validate(self._call("POST", "/v1/jobs", json=body, headers=headers))

    def get(self, job: Job | str) -> Job:
        return Job.model_validate(self._call("GET", f"/v1/jobs/{_id(job)}"))

    def list(
        self,
        state: JobState | str | None = None,
        labels: dict[str, str] | None = None,
        summary: bool = False,
        page_size: int = 100,
    ) -> Iterator[Job]:
        """Every job this key can see, newest first, following the pages; `summary` leaves out the curves."""
        token: str | None = None
        while True:
            params: dict[str, Any] = {"page_size": page_size, "view": "summary" if summary else "full"}
            if labels:
                params["label"] = [f"{k}:{v}" for k, v in labels.items()]
            if state is not None:
                params["state"] = str(state)
            if token:
                params["page_token"] = token
            page = JobPage.model_validate(self._call("GET", "/v1/jobs", params=params))
            yield from page.jobs
            if not page.next_page_token:
                return
            token = page.next_page_token

    def plot(self, job: Job | str, plot: str = "lr_range", fmt: str = "png") -> bytes:
        """A finished job's plot: `lr_range` or `batch_size`, as `png` or `svg` bytes (rendered by the service)."""
        return self._request("GET", f"/v1/jobs/{_id(job)}/plots/{plot}.{fmt}").content

    def cancel(self, job: Job | str) -> Job:
        return Job.model_validate(self._call("POST", f"/v1/jobs/{_id(job)}:cancel"))

    def wait(
        self,
        job: Job | str,
        timeout: float | None = None,
        on_progress: Callable[[Progress], None] | None = None,
        poll_seconds: float = 0.5,
    ) -> Job:
        """Until the job ends: its final state, or JobFailed / JobCancelled / TimeoutError.

        Follows the job's Server-Sent Events (`on_progress` is called on every change); where the stream cannot be
        had (a proxy that buffers it, a dropped connection), it polls every `poll_seconds` instead."""
        deadline = None if timeout is None else time.monotonic() + timeout
        followed = False
        with suppress(httpx.TransportError, SSEError):  # polling below gets there too, with the usual retries
            self._follow(_id(job), deadline, on_progress, poll_seconds)
            followed = True  # the stream's `end` event has shown the final progress already
        while True:
            current = self.get(job)
            if on_progress is not None and not followed:
                on_progress(current.progress)
            if current.state in TERMINAL_STATES:
                if current.state == JobState.failed:
                    raise JobFailed(current)
                if current.state == JobState.cancelled:
                    raise JobCancelled(current)
                return current
            _check(deadline, current.id)
            time.sleep(poll_seconds)

    def _follow(
        self, job_id: str, deadline: float | None, on_progress: Callable[[Progress], None] | None, pause: float
    ) -> None:
        """Read the job's event stream until its `end` event, reopening it from the last event id when it goes
        quiet or closes early."""
        last_id: str | None = None
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            _check(deadline, job_id)
            idle = STREAM_IDLE_SECONDS if remaining is None else max(0.01, min(remaining, STREAM_IDLE_SECONDS))
            headers = {"Last-Event-ID": last_id} if last_id else {}
            try:
                with connect_sse(self.http, "GET", f"/v1/jobs/{job_id}/events", headers=headers,
                                 timeout=httpx.Timeout(30.0, read=idle)) as source:  # fmt: skip
                    if source.response.is_error:
                        source.response.read()
                        raise _refusal(source.response)
                    for sse in source.iter_sse():
                        _check(deadline, job_id)
                        if not sse.data:
                            continue  # not an event (SSE dispatches none without data)
                        last_id = sse.id or last_id
                        event = JobEvent.model_validate_json(sse.data)
                        if on_progress is not None:
                            on_progress(event.progress)
                        if sse.event == "end":
                            return
            except httpx.ReadTimeout:
                continue  # quiet: look at the deadline, then resume
            time.sleep(pause)  # closed before the end (the service restarting): reopen

    # -------------------------------------------------------------------------------------- datasets

    def upload_dataset(self, path: str | Path, target_column: str | None = None) -> DatasetOut:
        path = Path(path)
        data = {"target_column": target_column} if target_column else None
        with open(path, "rb") as f:
            found = self._call("POST", "/v1/datasets", retry=False, files={"file": (path.name, f)}, data=data)
        return DatasetOut.model_validate(found)

    # ---------------------------------------------------------------------------------------- plumbing

    def _call(self, method: str, path: str, retry: bool = True, **kwargs: Any) -> Any:
        r = self._request(method, path, retry, **kwargs)
        return r.json() if r.content else None

    def _request(self, method: str, path: str, retry: bool = True, **kwargs: Any) -> httpx.Response:
        delay = 0.5
        for attempt in range(RETRIES if retry else 1):
            try:
                r = self.http.request(method, path, **kwargs)
            except httpx.TransportError:
                if attempt + 1 == (RETRIES if retry else 1):
                    raise
            else:
                if r.status_code < 500 or not retry or attempt + 1 == RETRIES:
                    break
            time.sleep(delay)
            delay = min(delay * 2, 8.0)
        if r.is_error:
            raise _refusal(r)
        return r


def _refusal(r: httpx.Response) -> LrbsError:
    try:
        problem = r.json()
    except ValueError:
        problem = {"detail": r.text[:500]}
    return LrbsError(r.status_code, problem.get("detail", r.reason_phrase), problem.get("errors"))


def _check(deadline: float | None, job_id: str) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise TimeoutError(f"job {job_id} has not ended within the time given to wait")


def _id(job: Job | str) -> str:
    return job if isinstance(job, str) else job.id
