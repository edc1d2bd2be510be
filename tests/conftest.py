"""Shared fixtures: real servers on loopback, started once per session where that is safe.

Tests that need a server ask for its fixture; without the binary the test is
skipped on a developer machine and fails under CI (see ``servers.require``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import pytest

from tests.servers import Versitygw, postgres_server, redis_server, versitygw_server


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """``redis://127.0.0.1:PORT/0`` of a Redis shared by the whole session."""
    with redis_server() as url:
        yield url


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """SQLAlchemy URL (``postgresql+psycopg://...``) of a PostgreSQL shared by the session."""
    with postgres_server() as url:
        yield url


@pytest.fixture
def versitygw() -> Iterator[Callable[..., Versitygw]]:
    """Start a versitygw for this test; stopped when the test ends.

    Each test gives its own webhook URL (start the receiver first: versitygw
    will not start if the URL does not answer) and, when its config must name
    the endpoint before the gateway starts, a port (``servers.free_port()``)::

        def test_events(versitygw):
            gw = versitygw(webhook_url="http://127.0.0.1:8080/events")
    """
    with contextlib.ExitStack() as stack:

        def start(webhook_url: str | None = None, port: int | None = None) -> Versitygw:
            return stack.enter_context(versitygw_server(webhook_url, port=port))

        yield start
