"""Logging for the service and its workers: plain lines, or one JSON object per line (LRBS_LOG_FORMAT=json).

Every line carries the request id (service: set per request) and the job id (service: requests about a job;
worker: everything done for one) from context variables, set where a request or a job begins.
"""

from __future__ import annotations

import json
import logging
import time
from contextvars import ContextVar

request_id: ContextVar[str | None] = ContextVar("request_id", default=None)
job_id: ContextVar[str | None] = ContextVar("job_id", default=None)
TEXT_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"


class _Context(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = getattr(record, "request_id", None) or request_id.get()
        record.job_id = getattr(record, "job_id", None) or job_id.get()
        return True


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        tags = [f"{name}={value}" for name in ("request_id", "job_id") if (value := getattr(record, name, None))]
        return f"{line} [{' '.join(tags)}]" if tags else line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in ("request_id", "job_id"):
            if value := getattr(record, name, None):
                entry[name] = value
        for name in ("method", "route", "path", "status", "duration_ms"):  # a request line's own fields
            if (value := getattr(record, name, None)) is not None:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure(log_format: str = "text", level: int = logging.INFO) -> None:
    """One handler on the root logger, for lrbs, uvicorn and everything else; call once at process start."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    handler.addFilter(_Context())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):  # through the root handler, not uvicorn's own
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
