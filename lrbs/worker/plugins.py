"""Code named in a job: imported only from modules the worker's operator allow-listed.

A job names `package.module:callable`, or an entry-point name registered by an installed package under
lrbs.models, lrbs.datasets, lrbs.losses or lrbs.optimizers. Either way the module is checked against
LRBS_PLUGIN_MODULES (comma-separated module prefixes, empty by default) *before* anything is imported.
"""

from __future__ import annotations

import importlib
import inspect
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

from lrbs.worker.errors import JobError

GROUPS = {"model": "lrbs.models", "dataset": "lrbs.datasets", "loss": "lrbs.losses", "optimizer": "lrbs.optimizers"}


@dataclass(frozen=True)
class PluginPolicy:
    modules: tuple[str, ...] = field(default_factory=tuple)  # allowed module prefixes

    @classmethod
    def parse(cls, text: str | None) -> PluginPolicy:
        return cls(tuple(m.strip() for m in (text or "").split(",") if m.strip()))

    def allows(self, module: str) -> bool:
        return any(module == p or module.startswith(p + ".") for p in self.modules)


def installed(kind: str) -> dict[str, str]:
    """Entry-point name → 'module:attr' for one kind, without importing anything."""
    return {ep.name: ep.value for ep in entry_points(group=GROUPS[kind])}


def resolve(kind: str, name: str, policy: PluginPolicy) -> Callable[..., Any]:
    if ":" in name:
        target = name
    else:
        found = installed(kind)
        if name not in found:
            known = ", ".join(sorted(found)) or "none"
            raise JobError(
                f"no {kind} plugin named {name!r} is installed on this worker (entry points in {GROUPS[kind]}: {known})"
            )
        target = found[name]
    module, _, attr = target.partition(":")
    if not policy.allows(module):
        allowed = ", ".join(policy.modules) or "nothing"
        raise JobError(
            f"{kind} plugin {name!r} lives in module {module!r}, which this worker does not allow; "
            f"its operator allows {allowed} (LRBS_PLUGIN_MODULES)"
        )
    try:
        factory = operator.attrgetter(attr)(importlib.import_module(module))
    except (ImportError, AttributeError) as exc:
        raise JobError(f"cannot load {kind} plugin {target!r} on this worker: {exc}") from None
    if not callable(factory):
        raise JobError(f"{kind} plugin {target!r} is not callable")
    # The allow-list is about the code that runs, not the module that names it: a re-export such as
    # `from os import system` in an allowed package still lives in an unallowed module.
    home = getattr(factory, "__module__", None) or module
    if not policy.allows(home):
        allowed = ", ".join(policy.modules) or "nothing"
        raise JobError(
            f"{kind} plugin {name!r} is {home}.{getattr(factory, '__qualname__', attr)}, defined in module {home!r}, "
            f"which this worker does not allow; its operator allows {allowed} (LRBS_PLUGIN_MODULES)"
        )
    return factory


def call(
    factory: Callable[..., Any], name: str, *args: Any, params: dict[str, Any], context: dict[str, Any] | None = None
) -> Any:
    """Call a factory with the job's params, plus whichever of `context` (input_shape, num_classes,
    vocab_size) it names in its signature and the job did not set."""
    try:
        accepted: Mapping[str, inspect.Parameter] = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        accepted = {}
    extra = {k: v for k, v in (context or {}).items() if k in accepted and k not in params}
    try:
        inspect.signature(factory).bind(*args, **params, **extra)
    except TypeError as exc:
        raise JobError(f"plugin {name!r} does not take these arguments: {exc}") from None
    except ValueError:
        pass  # no introspectable signature (some builtins): let the call speak
    return factory(*args, **params, **extra)
