"""Command-line flags for ``EngineArgs``, named as vLLM names them (``--max-model-len``...)."""

from __future__ import annotations

import argparse
import typing
from typing import Any

from llmserve.config import EngineArgs

#: Flags a command takes positionally or not at all.
_SKIP = {"model"}


def _flag_type(annotation: Any):
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    base = args[0] if args else annotation
    if typing.get_origin(base) is typing.Literal:
        return str, list(typing.get_args(base))
    return base, None


def add_engine_args(parser: argparse.ArgumentParser) -> None:
    """Add one flag per ``EngineArgs`` field (booleans get a ``--no-`` form)."""
    group = parser.add_argument_group("engine")
    for name, field in EngineArgs.model_fields.items():
        if name in _SKIP:
            continue
        flag = "--" + name.replace("_", "-")
        kind, choices = _flag_type(field.annotation)
        if kind is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                               help=f"(default: {field.default})")
        else:
            group.add_argument(flag, type=kind if kind in (int, float) else str, choices=choices,
                               default=None, help=f"(default: {field.default})")


def engine_args_from(ns: argparse.Namespace, model: str | None) -> EngineArgs:
    """EngineArgs from parsed flags; flags left unset keep EngineArgs' defaults."""
    values = {name: getattr(ns, name) for name in EngineArgs.model_fields
              if name not in _SKIP and getattr(ns, name, None) is not None}
    return EngineArgs(model=model, **values)
