"""Command-line options from the typed config dataclasses: one source of truth for every option.

Each field becomes a flag (``lr_decay`` -> ``--lr-decay``) whose default is the field's default and whose help is
the docstring written under the field, with the default shown, so a job's ``--help`` can never disagree with the
library::

    group = parser.add_argument_group("optimization")
    add_options(group, TrainConfig, exclude=("eval_batch_size",))
    ...
    config = from_options(args, TrainConfig)
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import textwrap
import types
import typing
from typing import Any, Iterable


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of dataclass ``cls`` (the string literal that follows its annotation)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = next(node for node in ast.walk(tree) if isinstance(node, ast.ClassDef)).body
    docs = {}
    for node, following in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant) and isinstance(following.value.value, str)):
            docs[node.target.id] = " ".join(following.value.value.split())
    return docs


def flag(name: str, prefix: str = "") -> str:
    return "--" + (prefix + name).replace("_", "-")


def _plain(annotation: Any) -> tuple[Any, bool]:
    """(the type without ``None``, whether ``None`` is allowed)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0], len(args) < len(typing.get_args(annotation))
    return annotation, False


def add_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type, *,
                exclude: Iterable[str] = (), prefix: str = "", names: dict[str, str] | None = None,
                defaults: Any = None) -> None:
    """A flag for every field of dataclass ``cls`` but ``exclude`` (``names`` renames flags: field -> flag
    name without dashes); ``defaults`` (an instance) overrides the class's defaults."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    names = names or {}
    for spec in dataclasses.fields(cls):
        if spec.name in exclude or not spec.init:
            continue
        default = getattr(defaults, spec.name) if defaults is not None else (
            spec.default if spec.default is not dataclasses.MISSING else spec.default_factory())
        kind, optional = _plain(hints[spec.name])
        none = " ('none' for None)" if optional and kind is not bool else ""
        options: dict[str, Any] = {"default": default, "dest": prefix + spec.name,
                                   "help": f"{docs.get(spec.name, '')}{none} (default: %(default)s)".strip()}
        if kind is bool:
            options["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(kind) is tuple:
            options.update(nargs="+", type=typing.get_args(kind)[0])
        elif typing.get_origin(kind) is typing.Literal:
            options["choices"] = typing.get_args(kind)
        elif kind in (int, float, str):
            options["type"] = kind
        else:
            raise TypeError(f"{cls.__name__}.{spec.name}: no command-line form for {hints[spec.name]}")
        if none:
            options["type"] = _or_none(options.get("type", str))
        parser.add_argument(flag(names.get(spec.name, spec.name), "" if spec.name in names else prefix), **options)


def _or_none(convert: Any) -> Any:
    def parse(text: str) -> Any:
        return None if text.lower() == "none" else convert(text)

    parse.__name__ = getattr(convert, "__name__", "value")
    return parse


def from_options(args: argparse.Namespace, cls: type, *, prefix: str = "", **overrides: Any) -> Any:
    """An instance of ``cls`` from the parsed flags of :func:`add_options` (fields without a flag keep their
    defaults; ``overrides`` win)."""
    values = {spec.name: getattr(args, prefix + spec.name) for spec in dataclasses.fields(cls)
              if spec.init and hasattr(args, prefix + spec.name)}
    for name, value in values.items():
        if isinstance(value, list):
            values[name] = tuple(value)
    return cls(**{**values, **overrides})
