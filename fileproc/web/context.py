"""What a route works with: the app's :class:`~fileproc.service.Service`, as a FastAPI dependency.

The app factory puts the service in ``app.state.service``; a route asks for
it as a parameter (``service: ServiceDep``), so no route closes over it and a
test can call a route's function with any service.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from fileproc.service import Service


async def service_of(request: Request) -> Service:  # async: resolved on the event loop, no thread hop
    service: Service = request.app.state.service
    return service


ServiceDep = Annotated[Service, Depends(service_of)]
"""A route parameter that receives the app's service."""

__all__ = ["ServiceDep", "service_of"]
