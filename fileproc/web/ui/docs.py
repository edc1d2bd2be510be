"""The API's docs, for the dashboard's session: ``/ui/docs``, ``/ui/redoc`` and the schema they fetch.

The admin API takes its token in the Authorization header only, which a
browser cannot send: the docs pages and ``/ui/openapi.json`` are opened with
the session's cookie instead (same site, under ``/ui``).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import JSONResponse, Response

from fileproc.web.ui.session import session_of

router = APIRouter(prefix="/ui", include_in_schema=False)


@router.get("/docs")
def api_docs(request: Request) -> Response:
    session_of(request)
    return get_swagger_ui_html(openapi_url="/ui/openapi.json", title="fileproc API")


@router.get("/redoc")
def api_redoc(request: Request) -> Response:
    session_of(request)
    return get_redoc_html(openapi_url="/ui/openapi.json", title="fileproc API")


@router.get("/openapi.json")
def openapi(request: Request) -> Response:
    session_of(request)  # the session's cookie goes with the docs page's fetch (same site, under /ui)
    return JSONResponse(request.app.openapi())


__all__ = ["api_docs", "api_redoc", "openapi", "router"]
