"""Stands for code nobody allow-listed: importing it leaves a mark the tests look for."""

import os
from pathlib import Path

Path(os.environ.get("LRBS_TEST_EVIL_MARK", "/tmp/lrbs-test-evil-imported")).write_text("imported")


def model(**kwargs):
    raise AssertionError("never to be called")
