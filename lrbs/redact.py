"""Messages users see carry no internals: absolute paths on a server or a worker become their file name."""

from __future__ import annotations

import re

_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/])(?:/[^/\s'\"(),:;]+)+/([^/\s'\"(),:;]+)")


def without_paths(message: str) -> str:
    """'/tmp/tmpab12/upload.parquet: bad magic' → 'upload.parquet: bad magic'; URLs are left alone."""
    return _ABSOLUTE_PATH.sub(r"\1", message)
