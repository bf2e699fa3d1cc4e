"""Config reference generated from the config classes: every key of a `seewhy` config, dotted, with
its type, default and the field's docstring (``seewhy run|featurize|tune --help-config``).

The field docstrings of the config classes (``featurize/config.py``, ``train/config.py``,
``ray_jobs/config.py``, ...) are the single source: the same text is the code's documentation, this
help and the error context of a bad key."""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass

from pydantic import BaseModel
from pydantic_core import PydanticUndefined


@dataclass(frozen=True)
class Key:
    """One documented config key."""

    path: str
    type: str
    default: str
    doc: str


def _models_in(annotation: object) -> list[type[BaseModel]]:
    """The config classes inside a field's type (``X``, ``X | None``, ``tuple[X, ...]``, ``dict[str, X]``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    out = []
    for arg in typing.get_args(annotation):
        out += _models_in(arg)
    return out


def _type_name(annotation: object) -> str:
    if annotation is type(None):
        return "None"
    if isinstance(annotation, type):
        return annotation.__name__
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return " | ".join(_type_name(a) for a in typing.get_args(annotation))
    text = str(annotation).replace("typing.", "")
    return text.replace("NoneType", "None")


def _default(field) -> str:
    if field.default is not PydanticUndefined:
        value = field.default
        if isinstance(value, BaseModel):
            return "(section)"
        return repr(value)
    if field.default_factory is not None:
        try:
            value = field.default_factory()
        except TypeError:
            return "(computed)"
        return repr(value) if not isinstance(value, BaseModel) else "(section)"
    return "(required)"


def keys(model: type[BaseModel], prefix: str = "") -> list[Key]:
    """Every key of ``model`` and of the config classes nested in it, depth first, in field order."""
    out = []
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        doc = " ".join((field.description or "").split())
        subs = _models_in(field.annotation)
        if not doc and subs and subs[0].__doc__:  # a section: its class docstring says what it holds
            doc = " ".join(subs[0].__doc__.strip().split("\n\n")[0].split())
        out.append(Key(path, _type_name(field.annotation), _default(field), doc))
        for sub in subs:
            if sub is not model:
                marker = "[]" if typing.get_origin(field.annotation) in (tuple, list) else ""
                out += keys(sub, f"{path}{marker}.")
    return out


def undocumented(model: type[BaseModel]) -> list[str]:
    """Keys of ``model`` (nested too) without a docstring: each must say what it is for."""
    return [k.path for k in keys(model) if not k.doc]


def render(model: type[BaseModel], title: str) -> str:
    """Plain-text reference of ``model``: one block per key."""
    lines = [title, "", model.__doc__.strip().splitlines()[0] if model.__doc__ else "", ""]
    for k in keys(model):
        lines.append(f"{k.path}: {k.type} = {k.default}")
        if k.doc:
            lines.append(f"    {k.doc}")
    return "\n".join(lines) + "\n"


def help_action(model_path: str, title: str):
    """An argparse action class printing the reference of the config class at ``model_path``
    (``"module:Class"``, imported only when asked) and exiting, like ``--help``."""
    import argparse

    class HelpConfig(argparse.Action):
        def __init__(self, option_strings, dest, **kwargs):
            super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

        def __call__(self, parser, namespace, values, option_string=None):
            import importlib

            module, _, name = model_path.partition(":")
            print(render(getattr(importlib.import_module(module), name), title), end="")
            parser.exit()

    return HelpConfig
