"""Endless batches for the probe loops."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

Batch = TypeVar("Batch")


def forever(batches: Iterable[Batch]) -> Iterator[Batch]:
    """Cycle through `batches`, re-iterating it each pass (a new shuffle per epoch for a `Batches` or a
    DataLoader; itertools.cycle would cache every batch instead)."""
    while True:
        empty = True
        for batch in batches:
            empty = False
            yield batch
        if empty:
            raise ValueError("batches yielded nothing; pass a re-iterable (list, DataLoader), not an iterator")
