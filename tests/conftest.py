"""Fixtures: a real corral server per database kind, and the official SDK pointed at it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anthropic
import pytest

from corral.config import Settings

from .servers import ServerThread, database_url

API_KEY = "test-key-7f3a"


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def db_kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="session")
def server(db_kind: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    tmp: Path = tmp_path_factory.mktemp(f"server-{db_kind}")
    for url in database_url(db_kind, tmp):
        settings = Settings(
            database_url=url, api_key=API_KEY, data_dir=tmp / "data", workers=0, poll_interval=0.1, sse_ping_seconds=1.0
        )
        srv = ServerThread(settings).start()
        try:
            yield srv
        finally:
            srv.stop()


@pytest.fixture(scope="session")
def client(server: ServerThread) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.url, api_key=API_KEY, max_retries=0)


@pytest.fixture
def agent(client: anthropic.Anthropic):  # noqa: ANN201
    return client.beta.agents.create(name="Tester", model="claude-sonnet-4-6", system="You test things.")


@pytest.fixture
def environment(client: anthropic.Anthropic):  # noqa: ANN201
    import uuid

    return client.beta.environments.create(name=f"env-{uuid.uuid4().hex[:8]}")


@pytest.fixture
def session(client: anthropic.Anthropic, agent, environment):  # noqa: ANN001, ANN201
    return client.beta.sessions.create(agent=agent.id, environment_id=environment.id, title="a test session")
