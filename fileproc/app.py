"""The composition root: one place builds the service every command works with.

:func:`build` wires the small context (:class:`~fileproc.service.Service`)
with what each feature plugs in: the registry's sources (entry points,
``functions.paths``, the steps' handlers) and the deployed catalog, the
kinds of function and how their steps run, the pipelines (configured, and
the one-off pipeline of each direct invocation), the one path events are
submitted through, the relay's periodic tasks and the broker's
configuration. ``serve``, ``api``, ``worker`` and the CLI all start here;
nothing below this module knows which features exist.

Where a new piece plugs in:

- an event source: a module of :mod:`fileproc.intake` handed ``service.submit``;
- a kind of function: a :class:`~fileproc.functions.kinds.FunctionKind`, added below;
- a storage backend: a module of :mod:`fileproc.storage`, chosen by ``open_storage``.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from fileproc import dispatch
from fileproc.config import Settings
from fileproc.errors import ConfigError
from fileproc.functions.registry import Registry
from fileproc.functions.resolver import Functions, Pipelines
from fileproc.runtime import app as celery
from fileproc.runtime.direct import EventInvocations
from fileproc.runtime.kinds import RegisteredKind
from fileproc.serverless.catalog import Catalog
from fileproc.serverless.destinations import REDELIVERY
from fileproc.serverless.invocations import DirectInvocations
from fileproc.serverless.stepping import DeployedKind
from fileproc.service import Service
from fileproc.streams.filtering import compile_filters


def build(settings: Settings) -> Service:
    """The service of ``settings``, with every feature plugged in.

    Loading the functions checks every pipeline step against them: an
    unknown function or a param its model refuses stops the start with a
    ConfigError naming the field.
    """
    registry = Registry.loaded(settings)
    functions = Functions(registry)
    routes = Pipelines(settings.pipelines)
    routes.add_source(DirectInvocations(settings.functions.bucket))
    routes.add_source(EventInvocations(settings.functions.bucket))
    service = Service(settings, functions, routes)
    functions.add_source(Catalog(service))
    registry.also_known(partial(deployed_names, service))  # "unknown function" messages name them too
    registry.check(settings.pipelines, deployed=functions.exists)  # a step may name a deployed function
    check_filters(settings)
    functions.add_kind(RegisteredKind(service))
    functions.add_kind(DeployedKind(service))
    service.submit = partial(dispatch.submit_many, service)
    service.periodic.append(REDELIVERY)
    celery.configure(settings)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return service


def deployed_names(service: Service) -> list[str]:
    """The names of the deployed functions (``fileproc functions list``)."""
    from fileproc.state.deployments import list_versions

    return sorted({version.function for version in list_versions(service.db)})


def check_filters(settings: Settings) -> None:
    """ConfigError naming the first ``[[streams]]`` filter pattern Lambda's syntax refuses."""
    for index, mapping in enumerate(settings.streams):
        try:
            compile_filters(mapping.filter)
        except ValueError as exc:
            raise ConfigError(f"streams.{index}.filter: {exc}") from None


def app_from_settings() -> Any:
    """The HTTP API's app (:func:`fileproc.web.create_app`) for the settings of ``FILEPROC_CONFIG`` and the environment.

    For uvicorn's ``--workers`` (each worker process builds its own app):
    ``uvicorn --factory fileproc.app:app_from_settings --workers 2``. Several
    processes must share explicit tokens (``api.webhook_token``,
    ``api.admin_token``) or the data folder that keeps the generated ones.
    """
    from fileproc.config import load_settings
    from fileproc.service import setup_logging
    from fileproc.tokens import load_tokens
    from fileproc.web import create_app  # imported here: the CLI's other commands need no web framework

    settings = load_settings()
    setup_logging(settings)
    return create_app(build(settings), load_tokens(settings))


__all__ = ["app_from_settings", "build", "deployed_names"]
