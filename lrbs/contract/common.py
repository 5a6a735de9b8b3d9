"""Pieces every part of the contract uses: strict models and references to plugin code."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

MAX_PARAMS_DEPTH = 16  # nesting of lists and objects inside free-form params


class Model(BaseModel):
    """Every number that crosses a boundary is finite or refused: NaN and ±Infinity fail validation."""

    model_config = ConfigDict(allow_inf_nan=False)


class Strict(Model):
    """Unknown fields are rejected everywhere: a typo must not silently fall back to a default."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


def plain_json(value: Any, depth: int = 0, where: str = "params") -> Any:
    """Free-form values (plugin and optimizer params): JSON of bounded depth with finite numbers only."""
    if depth > MAX_PARAMS_DEPTH:
        raise ValueError(f"{where} nests deeper than {MAX_PARAMS_DEPTH} levels; accepted: at most {MAX_PARAMS_DEPTH}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{where} holds {value}; accepted: finite numbers only")
    if isinstance(value, dict):
        for key, item in value.items():
            plain_json(item, depth + 1, f"{where}.{key}")
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            plain_json(item, depth + 1, f"{where}.{i}")
    return value


Params = Annotated[dict[str, Any], AfterValidator(plain_json)]


def source_of(value: Any) -> str:
    """Discriminates the members of a union on `source`, which defaults to builtin."""
    if isinstance(value, dict):
        return str(value.get("source", "builtin"))
    return str(getattr(value, "source", "builtin"))


PLUGIN_NAME = r"^([A-Za-z_][\w.]*:[A-Za-z_]\w*|[A-Za-z0-9_][\w.\-]*)$"


class PluginRef(Strict):
    """Code installed on the worker: `package.module:callable`, or an entry-point name registered under
    lrbs.models, lrbs.datasets, lrbs.losses or lrbs.optimizers. A worker imports it only if its operator
    allow-listed the module (LRBS_PLUGIN_MODULES)."""

    source: Literal["plugin"]
    name: str = Field(pattern=PLUGIN_NAME, max_length=300, examples=["team_models.vision:resnet50"])
    params: Params = Field(default_factory=dict, description="Keyword arguments of the factory.")


Precision = Literal["fp32", "bf16", "fp16"]
