"""The API process's search index: searched by ``GET /search`` and the dashboard's search page.

With search on and a pipeline that indexes, the process runs this host's
indexer (:class:`fileproc.search.indexer.Indexer`, started by the app's
lifespan) and searches its index; without one it opens the index read-only,
once, on the first search.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from fileproc.service import Service


def search_index(app: FastAPI) -> Any:
    """This process's search index: its indexer's, or opened once for searching (``GET /search``, ``/ui``)."""
    from fileproc.search.whoosh import WhooshIndex

    index = getattr(app.state, "search_index", None)
    if index is None:
        index = app.state.search_index = WhooshIndex(app.state.service.settings.search_dir, read_ahead=True)
    return index


def start_indexer(service: Service) -> Any:
    """This host's search indexer, started, if search is on and a pipeline indexes (else None)."""
    if not service.settings.search.enabled:
        return None
    if not any(step.function == "index" for p in service.pipelines.values() for step in p.steps):
        return None
    from fileproc.search.indexer import Indexer

    return Indexer(service).start()


__all__ = ["search_index", "start_indexer"]
