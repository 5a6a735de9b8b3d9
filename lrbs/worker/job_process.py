"""Each job runs in a child process of its worker, so no job can take the worker down.

The child is forked from a forkserver that imported torch and lrbs once (a fresh job process starts in
milliseconds, with no threads or CUDA state inherited from the worker). It runs `advise` and sends its
progress, then its result or its error, back over a pipe as JSON. The worker watches it:

- a memory ceiling (`LRBS_JOB_MEMORY_GB`, default 80% of the machine's memory): the resident memory of the
  child and its descendants is read every WATCH_SECONDS and the child is killed past the ceiling;
- a hard stop: a cancel, a lost lease, the run-time limit or the worker's shutdown kill the child at once,
  whatever it is doing (SIGTERM, then SIGKILL after KILL_GRACE_SECONDS);
- a child that dies on its own (the kernel's OOM killer, a segfault in an extension) is seen and reported.

The child also raises its own `oom_score_adj`, so when the machine runs out of memory the kernel kills the
job, not the worker.
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

log = logging.getLogger("lrbs.worker")

WATCH_SECONDS = 0.1
KILL_GRACE_SECONDS = 2.0
_CONTEXT = multiprocessing.get_context("forkserver")
_CONTEXT.set_forkserver_preload(["torch", "lrbs.worker.advise"])


def default_memory_gb() -> float:
    """80% of the machine's memory (Linux: MemTotal), or 8 GB where it cannot be read."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(0.8 * int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return 8.0


@dataclass
class Outcome:
    """How a job process ended: a result, an error the job raised, or a stop the worker imposed."""

    kind: str  # "result" | "error" | "stopped" | "died"
    result: dict[str, Any] | None = None
    error_kind: str = "internal"
    message: str = ""


def _child(control: Connection, conn: Connection) -> None:
    """The job process: prepare the device, say so, wait for the job, run it, send progress, then one final
    message. Started before its job is claimed, so CUDA's start-up is not part of the job's wall time."""
    with contextlib.suppress(OSError):
        Path("/proc/self/oom_score_adj").write_text("1000")  # under memory pressure the kernel kills us first
    _die_with_parent()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    from lrbs import logs

    logs.configure(os.environ.get("LRBS_LOG_FORMAT", "text"))  # a forkserver child inherits no logging setup
    prepare_device()
    conn.send_bytes(json.dumps({"kind": "ready"}).encode())
    try:
        job = json.loads(control.recv_bytes())
    except EOFError:  # the worker stopped before it had a job for us
        return
    logs.job_id.set(job["job_id"])
    from lrbs.contract.job_spec import JobSpec
    from lrbs.redact import without_paths
    from lrbs.worker.advise import advise
    from lrbs.worker.errors import JobError
    from lrbs.worker.plugins import PluginPolicy

    def send(kind: str, **payload: Any) -> None:
        conn.send_bytes(json.dumps({"kind": kind, **payload}).encode())

    dataset_path = job["dataset_path"]
    try:
        spec = JobSpec.model_validate_json(job["spec"])
        result = advise(
            spec,
            lambda progress: send("progress", progress=progress.model_dump()),
            policy=PluginPolicy(tuple(job["plugin_modules"])),
            memory_headroom=job["memory_headroom"],
            fetch_upload=(lambda _id: Path(dataset_path)) if dataset_path else None,
        )
        send("result", result=result.model_dump(mode="json"))
    except JobError as exc:
        send("error", error_kind="invalid_job", message=without_paths(str(exc)))
    except MemoryError:
        send("error", error_kind="out_of_memory", message="the job ran out of memory allocating its tensors")
    except Exception as exc:
        logging.getLogger("lrbs.worker").exception("job process failed")  # the traceback stays in the log
        text = without_paths(str(exc))[:500]
        if "can't allocate memory" in text or "out of memory" in text.lower():
            send("error", error_kind="out_of_memory", message=f"the job ran out of memory: {text}")
        else:
            send("error", error_kind="internal", message=f"{type(exc).__name__}: {text}")
    finally:
        conn.close()


def prepare_device() -> None:
    """Create the CUDA context and load cuDNN now (seconds on a GPU machine); nothing to do on a CPU. Take the
    worker's --threads."""
    import torch

    if threads := int(os.environ.get("LRBS_WORKER_THREADS") or 0):
        torch.set_num_threads(threads)

    if torch.cuda.is_available():
        torch.empty(1, device="cuda").add_(1)
        torch.cuda.synchronize()
        torch.backends.cudnn.version()


class JobProcess:
    """A job process started ahead of its job: its device is ready when the job arrives (`run_job` takes it)."""

    def __init__(self) -> None:
        control_in, self.control_out = _CONTEXT.Pipe(duplex=False)  # the job goes to the child
        self.receiver, sender = _CONTEXT.Pipe(duplex=False)  # "ready", progress and the outcome come back
        self.process = _CONTEXT.Process(target=_child, args=(control_in, sender), daemon=True)
        self.process.start()
        control_in.close()
        sender.close()  # the child holds the only sending end: EOF means it is gone

    def ready(self, timeout: float) -> bool:
        """Whether the child has prepared its device (waits up to `timeout` for it)."""
        if not self.receiver.poll(timeout):
            return False
        try:
            return json.loads(self.receiver.recv_bytes())["kind"] == "ready"
        except EOFError:
            return False

    def close(self) -> None:
        """Stop a job process that never got its job."""
        self.control_out.close()
        if self.process.is_alive():
            _kill(self.process)
        self.receiver.close()


def _die_with_parent() -> None:
    """Linux: the job is killed when the process that forked it (the forkserver, which exits with its worker)
    dies, so a worker killed outright leaves no job running behind it."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() == 1:  # the parent died before the line above took effect
        os._exit(1)


def resident_bytes(pid: int) -> int:
    """Resident memory of a process and all its descendants (Linux /proc), 0 once it is gone."""
    total, stack = 0, [pid]
    while stack:
        current = stack.pop()
        try:
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
                    break
            for task in Path(f"/proc/{current}/task").iterdir():
                children = (task / "children").read_text().split()
                stack.extend(int(c) for c in children)
        except (OSError, ValueError):
            continue
    return total


def run_job(
    spec_json: str,
    *,
    dataset_path: Path | None,
    plugin_modules: tuple[str, ...],
    memory_headroom: float,
    memory_limit_bytes: int,
    on_progress: Callable[[dict[str, Any]], None],
    should_stop: Callable[[], str | None],
    job_id: str = "",
    standby: JobProcess | None = None,
) -> Outcome:
    """Run one job in a child process and watch it. `should_stop()` returns a reason to kill it, or None.
    `standby`: a JobProcess started ahead of time (with its device ready); else one is started now."""
    standby = standby or JobProcess()
    process, receiver = standby.process, standby.receiver
    job = {"spec": spec_json, "dataset_path": str(dataset_path) if dataset_path else None, "job_id": job_id,
           "plugin_modules": list(plugin_modules), "memory_headroom": memory_headroom}  # fmt: skip
    with contextlib.suppress(OSError):  # a standby that died while it waited shows below as a death
        standby.control_out.send_bytes(json.dumps(job).encode())
    standby.control_out.close()
    final: Outcome | None = None
    watched = 0.0
    try:
        while final is None:
            if receiver.poll(WATCH_SECONDS):
                try:
                    message = json.loads(receiver.recv_bytes())
                except EOFError:
                    process.join(KILL_GRACE_SECONDS)
                    final = _died(process.exitcode, memory_limit_bytes)
                    break
                if message["kind"] == "ready":  # a process started for this job says its device is ready
                    continue
                if message["kind"] == "result":
                    final = Outcome("result", result=message["result"])
                elif message["kind"] == "error":
                    final = Outcome("error", error_kind=message["error_kind"], message=message["message"])
                else:
                    on_progress(message["progress"])
                if final is not None or time.monotonic() - watched < WATCH_SECONDS:
                    continue  # a busy child sends progress often: the checks below still run every WATCH_SECONDS
            watched = time.monotonic()
            reason = should_stop()
            if reason is not None:
                _kill(process)
                final = Outcome("stopped", message=reason)
            elif (used := resident_bytes(process.pid or 0)) > memory_limit_bytes:
                _kill(process)
                final = Outcome(
                    "error",
                    error_kind="out_of_memory",
                    message=f"the job used {used / 2**30:.1f} GB, over this worker's ceiling of "
                    f"{memory_limit_bytes / 2**30:.1f} GB (LRBS_JOB_MEMORY_GB); ask for a smaller model, "
                    "fewer samples or smaller batch sizes",
                )
            elif not process.is_alive() and not receiver.poll(0):
                final = _died(process.exitcode, memory_limit_bytes)
    finally:
        if process.is_alive():
            _kill(process)
        receiver.close()
    return final


def _kill(process: Any) -> None:
    process.terminate()
    process.join(KILL_GRACE_SECONDS)
    if process.is_alive():
        os.kill(process.pid, signal.SIGKILL)
        process.join()


def _died(exitcode: int | None, memory_limit_bytes: int) -> Outcome:
    if exitcode is not None and exitcode < 0 and -exitcode == signal.SIGKILL:
        return Outcome(
            "error",
            error_kind="out_of_memory",
            message="the job's process was killed (SIGKILL), most likely by the kernel's out-of-memory killer; "
            f"this worker's ceiling is {memory_limit_bytes / 2**30:.1f} GB (LRBS_JOB_MEMORY_GB)",
        )
    how = f"signal {-exitcode}" if exitcode is not None and exitcode < 0 else f"exit status {exitcode}"
    return Outcome("error", error_kind="killed", message=f"the job's process ended without a result ({how})")


def warm_up() -> None:
    """Start the forkserver (importing torch once) before the first job, so its wall time is the job's."""
    process = _CONTEXT.Process(target=time.sleep, args=(0,), daemon=True)
    process.start()
    process.join()
