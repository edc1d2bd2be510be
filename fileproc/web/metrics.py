"""``GET /metrics``: Prometheus's text format (:mod:`fileproc.metrics`), for the metrics token or the admin token.

The metrics token (``metrics.token``) lets a Prometheus server scrape
without holding the admin token; either goes in the Authorization header.
The app keeps one :class:`~fileproc.metrics.Metrics` in ``app.state.metrics``.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from fileproc.metrics import METRICS_CONTENT_TYPE, Metrics
from fileproc.web import auth
from fileproc.web.bounds import JSONRoute

router = APIRouter(route_class=JSONRoute)


@router.get("/metrics", include_in_schema=False)
def prometheus_metrics(request: Request) -> Response:
    """Prometheus text format; the metrics token (``metrics.token``) or the admin token."""
    state = request.app.state
    metrics_token = state.service.settings.metrics.token.get_secret_value()
    if not (metrics_token and auth.same(auth.bearer(request), metrics_token)):
        auth.admin(request)
    metrics: Metrics = state.metrics
    return Response(metrics.render(), media_type=METRICS_CONTENT_TYPE)


__all__ = ["prometheus_metrics", "router"]
