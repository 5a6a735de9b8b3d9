"""What a model needs to know about its data, and the one rule that reads it off arrays.

The service applies it to uploads, the worker to plugin data; built-in datasets know their shape from
their params (`lrbs.contract.builtins`).
"""

from __future__ import annotations

from typing import Literal

from lrbs.contract.common import Model

Task = Literal["classification", "regression", "language_modeling"]

LOSSES_BY_TASK: dict[str, tuple[str, ...]] = {
    "classification": ("cross_entropy", "nll", "bce_with_logits"),
    "regression": ("mse", "l1"),
    "language_modeling": ("cross_entropy", "nll"),
}
DEFAULT_LOSS = {"classification": "cross_entropy", "regression": "mse", "language_modeling": "cross_entropy"}


class DataShape(Model):
    """What a model needs to know about its data. Derived from the data, never sent by clients."""

    task: Task
    input_shape: tuple[int, ...]  # one sample; (T,) token ids for language modelling
    num_outputs: int  # classes (classification), targets (regression) or vocabulary (language modelling)


def infer_shape(
    x_shape: tuple[int, ...], x_integer: bool, y_shape: tuple[int, ...], y_integer: bool, largest_id: int
) -> DataShape:
    """The one rule that reads a task off arrays (uploads on the service, plugin data on the worker).

    - integer x and integer y of the same shape (N, T): language modelling, vocabulary largest_id + 1;
    - integer y of shape (N,): classification, classes largest_id + 1;
    - float y of shape (N,) or (N, k): regression with 1 or k targets.
    `largest_id` is the largest token id (x and y) or label. Raises ValueError saying what is accepted.
    """
    accepted = (
        "accepted: integer x and y of equal shape (N, T) for language modelling, integer labels y (N,) "
        "for classification, float targets y (N,) or (N, k) for regression"
    )
    if len(x_shape) < 2:
        raise ValueError(f"x must hold one row per sample, shape (N, ...); got {list(x_shape)}")
    if x_integer and y_integer and x_shape == y_shape and len(x_shape) == 2:
        return DataShape(task="language_modeling", input_shape=x_shape[1:], num_outputs=largest_id + 1)
    if y_integer:
        if len(y_shape) != 1:
            raise ValueError(f"integer labels y must have shape (N,); got {list(y_shape)}; {accepted}")
        if largest_id < 1:
            raise ValueError("classification needs at least two classes (labels 0 and 1)")
        return DataShape(task="classification", input_shape=x_shape[1:], num_outputs=largest_id + 1)
    if len(y_shape) not in (1, 2):
        raise ValueError(f"float targets y must have shape (N,) or (N, k); got {list(y_shape)}; {accepted}")
    return DataShape(task="regression", input_shape=x_shape[1:], num_outputs=1 if len(y_shape) == 1 else y_shape[1])
