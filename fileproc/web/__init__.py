"""The HTTP side: one router per area and the app that composes them.

- :mod:`~fileproc.web.app`: :func:`create_app`, the one app factory;
- :mod:`~fileproc.web.events` (``POST /events``, ``/stats``), :mod:`~fileproc.web.admin`
  (jobs, retries, backfill, why, search, health, the schema), :mod:`~fileproc.web.metrics`
  (``GET /metrics``), :mod:`~fileproc.web.functions` (deployed functions over HTTP)
  and :mod:`~fileproc.web.ui` (the dashboard): the routers;
- :mod:`~fileproc.web.auth` (tokens), :mod:`~fileproc.web.responses` (JSON and errors),
  :mod:`~fileproc.web.context` (the service a route gets), :mod:`~fileproc.web.search`
  (the process's search index) and :mod:`~fileproc.web.bounds` (body and login limits).
"""

from fileproc.web.app import create_app

__all__ = ["create_app"]
