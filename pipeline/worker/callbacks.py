"""Recipe callbacks: code of the user's (or a test's) that every worker runs at fixed points of a fit.

    callbacks: ["my_hooks:LogGradNorms(every=10)", "tools/faults.py:FailOnceAt(step=15)"]     # TrainConfig key

A spec names a class or function by import path (`module:Name`) or by file (`path/to/file.py:Name`), with
optional keyword arguments as Python literals. The driver checks each spec before Ray starts (the file exists,
the name imports, the arguments parse) and makes file paths absolute; every worker builds the objects again.
A callback implements any of:

    on_step_end(recipe)    after each optimizer step (`recipe.state.step` is the step just taken)

Fault-injection tests install theirs this way (tests/fault_hooks.py), so the training step holds no test code.
Standard library only: the driver imports this module before it imports Ray or torch.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

from pipeline.core.errors import UserError

HOOKS = ("on_step_end",)


def parse_spec(spec: str) -> tuple[str, str, dict[str, Any]]:
    """`"where:Name(k=v, ...)"` -> (where, Name, {k: v}); arguments must be literals."""
    where, sep, call = spec.rpartition(":")
    if not sep or not where or not call:
        raise UserError(f"callbacks: {spec!r} is not 'module:Name' or 'file.py:Name'; e.g. 'my_hooks:LogLoss'.")
    try:
        node = ast.parse(call, mode="eval").body
    except SyntaxError as err:
        raise UserError(f"callbacks: {spec!r}: {call!r} does not parse ({err.msg}); write Name or "
                        "Name(key=value, ...).") from None
    if isinstance(node, ast.Name):
        return where, node.id, {}
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.args):
        raise UserError(f"callbacks: {spec!r}: give keyword arguments only, as in Name(step=15).")
    try:
        kwargs = {kw.arg: ast.literal_eval(kw.value) for kw in node.keywords}
    except ValueError:
        raise UserError(f"callbacks: {spec!r}: arguments must be literals (numbers, strings, lists).") from None
    return where, node.func.id, kwargs


def resolve_callback_spec(spec: str) -> str:
    """On the driver: check the spec builds, and make a file path absolute (workers run in another directory)."""
    where, name, _ = parse_spec(spec)
    if where.endswith(".py"):
        path = Path(where).expanduser().resolve()
        if not path.is_file():
            raise UserError(f"callbacks: {spec!r}: the file {str(path)!r} does not exist.")
        spec = f"{path}:{spec.rpartition(':')[2]}"
    build_callback(spec)
    return spec


def build_callback(spec: str) -> Any:
    where, name, kwargs = parse_spec(spec)
    try:
        module = _load_file(Path(where)) if where.endswith(".py") else importlib.import_module(where)
    except ImportError as err:
        raise UserError(f"callbacks: {spec!r}: cannot import {where!r} ({err}); put it on PYTHONPATH or give a "
                        "file path.") from err
    factory = getattr(module, name, None)
    if factory is None:
        raise UserError(f"callbacks: {spec!r}: {where!r} has no {name!r}.")
    try:
        callback = factory(**kwargs)
    except TypeError as err:
        raise UserError(f"callbacks: {spec!r}: {err}") from err
    if not any(callable(getattr(callback, hook, None)) for hook in HOOKS):
        raise UserError(f"callbacks: {spec!r} implements none of {HOOKS}.")
    return callback


def build_callbacks(specs: list[str] | None) -> list[Any]:
    return [build_callback(spec) for spec in specs or []]


def _load_file(path: Path):
    name = f"adept_callbacks_{path.stem}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"{path} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
