"""fileproc's public surface: exactly ``fileproc.__all__``; and one exception tree, drawn whole in fileproc.errors."""

from __future__ import annotations

import importlib
import pkgutil
import re
import types

import fileproc
import fileproc.errors
from fileproc.errors import FileprocError

PUBLIC = {
    "Context", "FileprocError", "InputObject", "InvalidInput", "ObjectNotFound", "OutputRef", "OutputWriter",
    "PermanentError", "TransientError", "__version__", "function",
}


def test_all_is_exactly_the_public_surface() -> None:
    assert len(fileproc.__all__) == len(set(fileproc.__all__))
    assert set(fileproc.__all__) == PUBLIC
    namespace: dict[str, object] = {}
    exec("from fileproc import *", namespace)
    assert {name for name in namespace if name != "__builtins__"} == PUBLIC
    # Nothing else public is defined at the top (submodules are attributes once imported; they are not names).
    public = {name for name, value in vars(fileproc).items()
              if not name.startswith("_") and not isinstance(value, types.ModuleType)}
    assert public == PUBLIC - {"__version__"}


def test_a_function_catches_a_missing_object_from_fileproc() -> None:
    assert fileproc.ObjectNotFound is fileproc.errors.ObjectNotFound
    assert issubclass(fileproc.ObjectNotFound, fileproc.errors.StorageError)


def all_fileproc_errors() -> dict[str, type[FileprocError]]:
    """Every subclass of FileprocError in fileproc, once every module of it is imported."""
    broken = []
    for module in pkgutil.walk_packages(fileproc.__path__, "fileproc."):
        if module.name != "fileproc.__main__":  # it runs the CLI
            try:
                importlib.import_module(module.name)
            except Exception as exc:
                broken.append(f"{module.name}: {exc!r}")
    assert not broken, "modules that do not import:\n" + "\n".join(broken)
    found: dict[str, type[FileprocError]] = {}
    todo: list[type[FileprocError]] = [FileprocError]
    while todo:
        cls = todo.pop()
        if cls.__module__.startswith("fileproc."):  # not a test's or a function's own
            assert found.setdefault(cls.__name__, cls) is cls, f"two errors named {cls.__name__}"
            todo.extend(cls.__subclasses__())
    return found


def drawn_tree() -> dict[str, tuple[str | None, str | None]]:
    """The tree in fileproc.errors' docstring: each name's parent and, if it says so, the module it is in."""
    assert fileproc.errors.__doc__
    lines = fileproc.errors.__doc__.split("::\n\n", 1)[1].split("\n\n", 1)[0].splitlines()
    drawn: dict[str, tuple[str | None, str | None]] = {}
    parents: list[str] = []
    for line in lines:
        match = re.match(r"    ([│├└─ ]*)(\w+)(.*?)(?:\((fileproc(?:\.\w+)+)\))?$", line)
        assert match, f"not a line of the tree: {line!r}"
        prefix, name, _, module = match.groups()
        depth = len(prefix) // 4
        parents[depth:] = [name]
        assert name not in drawn, f"{name} drawn twice"
        drawn[name] = (parents[depth - 1] if depth else None, module)
    return drawn


def test_the_errors_tree_draws_every_fileproc_error_where_it_is() -> None:
    errors = all_fileproc_errors()
    drawn = drawn_tree()
    assert set(drawn) == set(errors), "draw each FileprocError in fileproc/errors.py's docstring tree"
    for name, (parent, module) in drawn.items():
        cls = errors[name]
        if parent is not None:
            base = cls.__bases__[0]
            assert base.__name__ == parent, f"{name} is drawn under {parent}, its base is {base.__name__}"
        home = importlib.import_module(module or "fileproc.errors")
        assert getattr(home, name, None) is cls, f"{name} is not importable from {home.__name__}"
