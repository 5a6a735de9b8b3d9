"""The built-in optimizers and the keywords each accepts, checked without importing torch.

`optimizer_keywords.json` beside this file is derived from torch's own signatures by
`python -m lrbs.contract.optimizers` (run it after upgrading torch; a test fails while it is stale).
Each keyword's kind comes from its default: a number, a flag, a flag or null, or a pair of numbers.
Values are checked the way torch checks them (numbers ≥ 0, betas in [0, 1), nesterov needs momentum
and no dampening); the worker builds the real optimizer and reports anything torch still refuses.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag, model_validator

from lrbs.contract.common import Params, PluginRef, Strict, source_of

TABLE_FILE = Path(__file__).with_name("optimizer_keywords.json")
OptimizerName = Literal["sgd", "adam", "adamw", "rmsprop", "adagrad"]
OPTIMIZER_CLASSES = {"sgd": "SGD", "adam": "Adam", "adamw": "AdamW", "rmsprop": "RMSprop", "adagrad": "Adagrad"}
ADAPTIVE_OPTIMIZERS = ("adam", "adamw", "rmsprop", "adagrad")  # per-parameter step sizes: LR ∝ √B

_TABLE: dict[str, dict[str, str]] = json.loads(TABLE_FILE.read_text())["optimizers"]


def optimizer_keywords(name: str) -> tuple[str, ...]:
    """The keyword arguments the torch optimizer accepts, besides `params` and `lr`."""
    return tuple(_TABLE[name])


def _kind_problem(kind: str, value: Any) -> str | None:
    """Why `value` is not a valid keyword of this kind, or None."""

    def number(v: Any) -> bool:
        return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)

    if kind == "number":
        return None if number(value) and value >= 0 else "a finite number ≥ 0"
    if kind == "flag":
        return None if isinstance(value, bool) else "true or false"
    if kind == "flag_or_null":
        return None if value is None or isinstance(value, bool) else "true, false or null"
    if kind == "pair":
        ok = isinstance(value, list | tuple) and len(value) == 2 and all(number(v) and 0 <= v < 1 for v in value)
        return None if ok else "two numbers in [0, 1)"
    return f"(unknown kind {kind})"


class OptimizerSpec(Strict):
    source: Literal["builtin"] = "builtin"
    name: OptimizerName
    params: Params = Field(
        default_factory=dict,
        description="Keyword arguments of the torch optimizer (momentum, betas, weight_decay, ...); "
        "checked against its real signature. `lr` is what lrbs searches, so it is not accepted here.",
    )

    @property
    def class_path(self) -> str:
        return f"torch.optim.{OPTIMIZER_CLASSES[self.name]}"

    @model_validator(mode="after")
    def _check_keywords(self) -> OptimizerSpec:
        accepted = _TABLE[self.name]
        unknown = sorted(set(self.params) - set(accepted))
        if unknown:
            raise ValueError(f"{self.name} does not take {', '.join(unknown)}; accepted: {', '.join(accepted)}")
        wrong = []
        for key, value in self.params.items():
            expected = _kind_problem(accepted[key], value)
            if expected is not None:
                wrong.append(f"{key} must be {expected}, got {json.dumps(value)[:40]}")
        if wrong:
            raise ValueError(f"{self.name} rejects these params: {'; '.join(wrong)}")
        if self.params.get("nesterov") and (self.params.get("momentum", 0) <= 0 or self.params.get("dampening", 0)):
            raise ValueError(f"{self.name} rejects these params: nesterov needs momentum > 0 and dampening 0")
        return self


class PluginOptimizer(PluginRef):
    """A factory called as `factory(params, lr, **params)` that returns a torch optimizer."""

    @property
    def class_path(self) -> str:
        return self.name.replace(":", ".")


OptimizerChoice = Annotated[
    Annotated[OptimizerSpec, Tag("builtin")] | Annotated[PluginOptimizer, Tag("plugin")], Discriminator(source_of)
]


def _derive_table() -> dict[str, dict[str, str]]:
    """From the installed torch: each optimizer's keywords and their kinds (read off the defaults)."""
    import inspect

    import torch

    def kind(default: Any) -> str:
        if isinstance(default, bool):
            return "flag"
        if default is None:
            return "flag_or_null"
        if isinstance(default, tuple):
            return "pair"
        return "number"

    table = {}
    for name, cls_name in OPTIMIZER_CLASSES.items():
        signature = inspect.signature(getattr(torch.optim, cls_name))
        table[name] = {k: kind(p.default) for k, p in signature.parameters.items() if k not in ("params", "lr")}
    return table


if __name__ == "__main__":
    import torch

    TABLE_FILE.write_text(
        json.dumps({"derived_from": f"torch {torch.__version__}", "optimizers": _derive_table()}, indent=2) + "\n"
    )
    print(f"wrote {TABLE_FILE}", file=sys.stderr)
