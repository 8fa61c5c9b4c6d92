"""Fixtures: a real corral server per database kind, and the official SDK pointed at it."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import anthropic
import pytest

from .fake_model import FakeModel
from .servers import ServerThread, serving
from .tls_servers import GitServer, HttpsEcho, TestCA
from .web_site import WebSite

API_KEY = "test-key-7f3a"


def pytest_configure(config: pytest.Config) -> None:
    """Every harness run in the tests, in-process or in a worker process they start, checks its
    carried fold against a fold of the whole log (`corral.harness.runlog`)."""
    os.environ.setdefault("CORRAL_VERIFY_FOLD", "1")


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def db_kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="session")
def sandbox_root() -> Iterator[Path]:
    """A world-searchable temp dir for data dirs with sandboxes.

    pytest's tmp_path sits in a 0700 directory; sandboxes started as root run as their own
    unprivileged uids, which must be able to reach their workdirs.
    """
    root = Path(tempfile.mkdtemp(prefix="corral-sbx-test-"))
    os.chmod(root, 0o711)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def server(db_kind: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    tmp: Path = tmp_path_factory.mktemp(f"server-{db_kind}")
    with serving(
        db_kind, tmp, api_key=API_KEY, data_dir=tmp / "data", workers=0, poll_interval=0.1, sse_ping_seconds=1.0
    ) as srv:
        yield srv


@pytest.fixture(scope="session")
def fake() -> Iterator[FakeModel]:
    with FakeModel() as model:
        yield model


@pytest.fixture(scope="session")
def web_site() -> Iterator[WebSite]:
    with WebSite() as site:
        yield site


@pytest.fixture(scope="session")
def agent_server(
    db_kind: str, fake: FakeModel, sandbox_root: Path, web_site: WebSite, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerThread]:
    """A server whose workers run sessions against the scripted fake model."""
    tmp: Path = tmp_path_factory.mktemp(f"agents-{db_kind}")
    with serving(
        db_kind,
        tmp,
        api_key=API_KEY,
        data_dir=sandbox_root / f"agents-{db_kind}",
        workers=8,
        poll_interval=0.1,
        lease_seconds=5,
        sse_ping_seconds=1.0,
        anthropic_base_url=fake.url,
        anthropic_api_key="fake-key",
        openai_base_url=fake.openai_url,
        model_retry_base_seconds=0.05,
        model_max_retries=2,
        compact_at_tokens=5_000,
        model_prices={"claude-budget": [1_000_000.0, 1_000_000.0, 0.0, 0.0]},
        searxng_url=web_site.url,
        web_fetch_allowed_networks=["127.0.0.0/8"],
    ) as srv:
        yield srv


@pytest.fixture(scope="session")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    """The CA of the local HTTPS test servers (trusted by the egress proxy of `egress_server`)."""
    return TestCA(tmp_path_factory.mktemp("test-ca"))


@pytest.fixture(scope="session")
def https_echo(test_ca: TestCA) -> Iterator[HttpsEcho]:
    with HttpsEcho(test_ca) as echo:
        yield echo


@pytest.fixture(scope="session")
def git_server(test_ca: TestCA) -> Iterator[GitServer]:
    import uuid

    with GitServer(test_ca, token=f"tok-{uuid.uuid4().hex}") as server:
        yield server


@pytest.fixture(scope="session")
def egress_server(
    db_kind: str, fake: FakeModel, sandbox_root: Path, test_ca: TestCA, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerThread]:
    """A server running agents whose sandboxes' egress proxy may reach loopback (the local test servers)
    and trusts their CA upstream."""
    tmp: Path = tmp_path_factory.mktemp(f"egress-{db_kind}")
    with serving(
        db_kind,
        tmp,
        api_key=API_KEY,
        data_dir=sandbox_root / f"egress-{db_kind}",
        workers=4,
        poll_interval=0.1,
        lease_seconds=5,
        sse_ping_seconds=1.0,
        anthropic_base_url=fake.url,
        anthropic_api_key="fake-key",
        sandbox_prewarm=1,  # sessions adopt ready sandboxes; those with credentials get them on adoption
        sandbox_egress_allowed_networks=["127.0.0.0/8"],
        egress_upstream_ca_file=test_ca.ca_file,
    ) as srv:
        yield srv


@pytest.fixture(scope="session")
def egress_client(egress_server: ServerThread) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=egress_server.url, api_key=API_KEY, max_retries=0)


@pytest.fixture(scope="session")
def agents(agent_server: ServerThread) -> anthropic.Anthropic:
    """The SDK pointed at the server that runs agents."""
    return anthropic.Anthropic(base_url=agent_server.url, api_key=API_KEY, max_retries=0)


@pytest.fixture(autouse=True)
def _fresh_fake_script(request: pytest.FixtureRequest) -> None:
    if "fake" in request.fixturenames:
        request.getfixturevalue("fake").reset()


@pytest.fixture(scope="session")
def client(server: ServerThread) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=server.url, api_key=API_KEY, max_retries=0) as sdk:
        yield sdk  # closed with the server, so no pooled connection is left for the garbage collector


@pytest.fixture
def agent(client: anthropic.Anthropic):
    return client.beta.agents.create(name="Tester", model="claude-sonnet-4-6", system="You test things.")


@pytest.fixture
def environment(client: anthropic.Anthropic):
    import uuid

    return client.beta.environments.create(name=f"env-{uuid.uuid4().hex[:8]}")


@pytest.fixture
def session(client: anthropic.Anthropic, agent, environment):
    return client.beta.sessions.create(agent=agent.id, environment_id=environment.id, title="a test session")
