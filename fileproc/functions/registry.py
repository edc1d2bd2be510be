"""The function registry: every function one service can run, by name.

Each :class:`~fileproc.service.Service` owns one, filled from three places,
in this order:

1. **Entry points** in the group ``fileproc.functions``: the built-ins of
   ``workers/`` and any installed package register the same way::

       # a package's pyproject.toml
       [project.entry-points."fileproc.functions"]
       resize = "mypkg.resize:handler"     # a handler, decorated or plain

2. **The ``functions.paths`` folders**: every ``*.py`` in them is imported
   (under a module name unique to its folder, so two folders may each hold a
   ``shout.py``) and each handler decorated with
   :func:`fileproc.function` in it is registered.
3. **Plain handlers a pipeline step names**: ``handler = "module:function"``.
   The module is looked for in the ``functions.paths`` folders first, then
   imported as an installed module; no decorator is needed (a decorated one
   keeps its defaults). The function's name is the step's ``function`` if
   given, else the handler reference itself.

Nothing is kept between registries: a service built without
``functions.paths`` never sees functions another one loaded.

A function may declare its params as a pydantic model; :meth:`Registry.check`
validates every pipeline step's params against it when the service starts,
and :meth:`Registry.params_for` gives a handler its validated params.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Callable, Iterable, Mapping
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from fileproc.errors import ConfigError, FileprocError, FunctionNotFound
from fileproc.functions import FunctionSpec, declared_spec
from fileproc.rules import Pipeline, Step

if TYPE_CHECKING:
    from fileproc.config import Settings

ENTRY_POINT_GROUP = "fileproc.functions"
"""The entry point group built-ins and installed packages declare functions in."""


class Registry:
    """Functions by name. Built with :meth:`for_settings`; tests may :meth:`add` directly."""

    def __init__(self) -> None:
        self._specs: dict[str, FunctionSpec] = {}
        self._modules: dict[Path, ModuleType] = {}  # functions.paths files this registry imported
        self._elsewhere: Callable[[], Iterable[str]] = tuple  # names known outside it (deployed functions)

    # --- reading -----------------------------------------------------------------------

    def get(self, name: str) -> FunctionSpec:
        """The function ``name``; raises FunctionNotFound naming the known ones."""
        try:
            return self._specs[name]
        except KeyError:
            raise FunctionNotFound(f"no function named {name!r} (known: {self.known()})") from None

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    def specs(self) -> dict[str, FunctionSpec]:
        """A copy of name -> spec."""
        return dict(self._specs)

    def known(self) -> str:
        """The names an "unknown function" message lists: registered ones, then those known elsewhere."""
        registered = ", ".join(sorted(self._specs)) or "none"
        try:
            others = sorted(set(self._elsewhere()) - set(self._specs))
        except FileprocError:  # no database to ask: name what is known here
            others = []
        return registered + (f"; deployed: {', '.join(others)}" if others else "")

    def also_known(self, names: Callable[[], Iterable[str]]) -> None:
        """Name ``names()`` (the deployed functions, say) in "unknown function" messages too."""
        self._elsewhere = names

    # --- filling -----------------------------------------------------------------------

    @classmethod
    def for_settings(cls, settings: Settings, deployed: Callable[[str], bool] | None = None) -> Registry:
        """Entry points, then ``functions.paths``, then the steps' handlers; pipelines checked.

        ``deployed(name)`` says whether a step's unknown function is a deployed
        one (``fileproc functions deploy``), which the check then accepts.
        """
        registry = cls.loaded(settings)
        registry.check(settings.pipelines, deployed)
        return registry

    @classmethod
    def loaded(cls, settings: Settings) -> Registry:
        """Entry points, then ``functions.paths``, then the steps' handlers; pipelines not checked yet."""
        registry = cls()
        registry.load_entry_points()
        registry.load_paths(settings.functions.paths)
        registry.load_step_handlers(settings.pipelines, settings.functions.paths)
        return registry

    def add(self, spec: FunctionSpec) -> None:
        """Register ``spec``; the same name for a different handler is a ConfigError."""
        existing = self._specs.get(spec.name)
        if existing is not None and existing.handler is not spec.handler:
            raise ConfigError(f"function {spec.name!r} is defined twice: {existing.source or existing.module} "
                              f"and {spec.source or spec.module}")
        if existing is None:
            self._specs[spec.name] = spec

    def load_entry_points(self, group: str = ENTRY_POINT_GROUP) -> None:
        """Register what installed packages (fileproc's built-ins too) declare in ``group``."""
        for point in entry_points(group=group):
            where = f"entry point {point.name} = {point.value!r}"
            try:
                target = point.load()
            except Exception as exc:  # any import-time failure of someone else's package
                raise ConfigError(f"{where} failed to load: {exc!r}") from exc
            if isinstance(target, ModuleType):
                self._add_declared(target, where)
                continue
            if not callable(target):
                raise ConfigError(f"{where} is not a callable handler(event, context)")
            spec = declared_spec(target)
            if spec is not None and spec.name != point.name:
                raise ConfigError(f"{where} names the function {spec.name!r} in its decorator; use one name")
            self.add(dataclasses.replace(spec, source=where) if spec else
                     FunctionSpec(point.name, target, queue=point.name, source=where))

    def load_paths(self, paths: Iterable[Path]) -> None:
        """Import every ``*.py`` of each folder and register its decorated handlers."""
        for directory in paths:
            if not directory.is_dir():
                raise ConfigError(f"functions.paths: {directory} is not a directory")
            for file in sorted(directory.glob("*.py")):
                self._add_declared(self._import_file(file), f"functions.paths {file}")

    def load_step_handlers(self, pipelines: Iterable[Pipeline], paths: Iterable[Path] = ()) -> None:
        """Register the plain handlers steps name (``handler = "module:function"``)."""
        folders = list(paths)
        for pipeline in pipelines:
            for index, step in enumerate(pipeline.steps):
                if step.handler is None:
                    continue
                where = f"pipelines.{pipeline.name}.steps[{index}].handler"
                handler = self._resolve(step.handler, folders, where)
                declared = declared_spec(handler)
                if declared is not None:
                    spec = dataclasses.replace(declared, name=step.function, source=f"{where} = {step.handler!r}")
                else:
                    spec = FunctionSpec(step.function, handler, queue=step.function,
                                        source=f"{where} = {step.handler!r}")
                self.add(spec)

    # --- params ------------------------------------------------------------------------

    def check(self, pipelines: Iterable[Pipeline], deployed: Callable[[str], bool] | None = None) -> None:
        """Every step names a known (or deployed) function, with params its model accepts."""
        for pipeline in pipelines:
            for index, step in enumerate(pipeline.steps):
                where = f"pipelines.{pipeline.name}.steps[{index}]"
                if step.function not in self._specs and deployed is not None and deployed(step.function):
                    continue
                if step.function not in self._specs:
                    raise ConfigError(f"{where}.function: no function named {step.function!r} (known: {self.known()})")
                validate_params(self._specs[step.function], step.params, f"{where}.params")

    def params_for(self, step: Step) -> dict[str, Any]:
        """The params ``step``'s handler gets as ``context.params``: validated, defaults filled in."""
        return validate_params(self.get(step.function), step.params, f"step {step.function}: params")

    # --- loading modules ---------------------------------------------------------------

    def _add_declared(self, module: ModuleType, where: str) -> None:
        for value in list(vars(module).values()):
            spec = declared_spec(value)
            # Only what the module defines: a handler it imports is registered where it lives.
            if spec is not None and getattr(value, "__module__", None) == module.__name__:
                self.add(dataclasses.replace(spec, source=where))

    def _import_file(self, file: Path) -> ModuleType:
        file = file.resolve()
        if file in self._modules:
            return self._modules[file]
        # Unique per folder, so functions/a/x.py and functions/b/x.py are two modules;
        # kept in sys.modules so pickling and a second service reuse the same module.
        digest = hashlib.sha1(str(file.parent).encode()).hexdigest()[:12]
        name = f"fileproc_functions_{digest}_{file.stem}"
        module = sys.modules.get(name)
        if module is None:
            spec = importlib.util.spec_from_file_location(name, file)
            if spec is None or spec.loader is None:
                raise ConfigError(f"functions.paths: cannot load {file}")
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            try:
                spec.loader.exec_module(module)
            except Exception as exc:  # the user's module failing at import is a config problem
                del sys.modules[name]
                raise ConfigError(f"functions.paths: {file} failed to import: {exc!r}") from exc
        self._modules[file] = module
        return module

    def _resolve(self, reference: str, folders: list[Path], where: str) -> Any:
        module_name, _, attribute = reference.partition(":")
        module: ModuleType | None = None
        for folder in folders:
            candidate = folder / f"{module_name}.py"
            if "." not in module_name and candidate.is_file():
                module = self._import_file(candidate)
                break
        if module is None:
            try:
                module = importlib.import_module(module_name)
            except Exception as exc:  # ImportError, or the module failing as it runs
                raise ConfigError(f"{where}: cannot import {module_name!r}: {exc!r}") from exc
        handler = getattr(module, attribute, None)
        if not callable(handler):
            raise ConfigError(f"{where}: {module_name!r} has no function {attribute!r}")
        return handler


def validate_params(spec: FunctionSpec, params: Mapping[str, Any], where: str) -> dict[str, Any]:
    """``params`` checked against ``spec``'s model; a ConfigError names ``where.FIELD``.

    Without a model the params pass as they are. A model that does not forbid
    unknown fields still gets them refused: a misspelt param is always a mistake.
    """
    model = spec.params
    if model is None:
        return dict(params)
    if model.model_config.get("extra") in (None, "ignore"):
        known = {field.alias or name for name, field in model.model_fields.items()} | set(model.model_fields)
        unknown = sorted(set(params) - known)
        if unknown:
            listed = ", ".join(sorted(known))
            raise ConfigError(f"{where}.{unknown[0]}: unknown param of {spec.name!r} (known: {listed})")
    try:
        # JSON-shaped (lists, not tuples): what a handler gets must cross to its runner process.
        return model.model_validate(dict(params)).model_dump(mode="json")
    except ValidationError as exc:
        raise ConfigError(_describe(exc, model, spec.name, where)) from exc


def _describe(error: ValidationError, model: type[BaseModel], function: str, where: str) -> str:
    lines = []
    for item in error.errors():
        location = ".".join(str(part) for part in item["loc"])
        place = f"{where}.{location}" if location else where
        if item["type"] == "extra_forbidden":
            known = ", ".join(sorted(model.model_fields))
            lines.append(f"{place}: unknown param of {function!r} (known: {known})")
        else:
            lines.append(f"{place}: {item['msg']}")
    return "; ".join(lines)


__all__ = ["ENTRY_POINT_GROUP", "Registry", "validate_params"]
