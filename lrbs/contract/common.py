"""Pieces every part of the contract uses: strict models and references to plugin code."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class Strict(BaseModel):
    """Unknown fields are rejected everywhere: a typo must not silently fall back to a default."""

    model_config = ConfigDict(extra="forbid")


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
    params: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments of the factory.")


Precision = Literal["fp32", "bf16", "fp16"]
