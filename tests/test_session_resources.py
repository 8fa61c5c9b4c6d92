"""Session resources through the SDK: file resources at create and added later, list pages, retrieve,
update (refused for files), delete, and what is refused (other types, bad mount paths, clashes)."""

from __future__ import annotations

import anthropic
import httpx
import pytest
from anthropic.types.beta import BetaManagedAgentsSession
from anthropic.types.beta.sessions import (
    BetaManagedAgentsDeleteSessionResource,
    BetaManagedAgentsFileResource,
)

from .conftest import API_KEY
from .wire import assert_exact

HEADERS = {"anthropic-beta": "managed-agents-2026-04-01", "x-api-key": API_KEY}


@pytest.fixture
def upload(client: anthropic.Anthropic):
    def make(name: str = "data.csv", data: bytes = b"a,b\n") -> str:
        return client.beta.files.upload(file=(name, data)).id

    return make


def test_file_resources_at_create(client: anthropic.Anthropic, agent, environment, upload) -> None:
    first, second = upload("one.csv"), upload("two.txt")
    raw = client.beta.sessions.with_raw_response.create(
        agent=agent.id,
        environment_id=environment.id,
        resources=[{"type": "file", "file_id": first}, {"type": "file", "file_id": second, "mount_path": "/data/two"}],
    )
    session = assert_exact(BetaManagedAgentsSession, raw.http_response.json())
    resources = session.resources
    assert [(r.type, r.file_id, r.mount_path) for r in resources] == [
        ("file", first, f"/mnt/session/uploads/{first}"),
        ("file", second, "/data/two"),
    ]
    assert all(r.id.startswith("sesrsc_") for r in resources)
    assert client.beta.sessions.retrieve(session.id).resources == resources
    listed = client.beta.sessions.resources.list(session.id)
    assert [r.id for r in listed] == [r.id for r in resources] and listed.next_page is None


def test_add_retrieve_list_delete(client: anthropic.Anthropic, session, upload) -> None:
    file_id = upload()
    raw = client.beta.sessions.resources.with_raw_response.add(session.id, type="file", file_id=file_id)
    added = assert_exact(BetaManagedAgentsFileResource, raw.http_response.json())
    assert added.id.startswith("sesrsc_") and added.file_id == file_id
    assert added.mount_path == f"/mnt/session/uploads/{file_id}" and added.created_at == added.updated_at
    raw = client.beta.sessions.resources.with_raw_response.retrieve(added.id, session_id=session.id)
    assert assert_exact(BetaManagedAgentsFileResource, raw.http_response.json()) == added
    after = client.beta.sessions.retrieve(session.id)
    assert [r.id for r in after.resources] == [added.id] and after.updated_at >= session.updated_at
    page = httpx.get(f"{str(client.base_url).rstrip('/')}/v1/sessions/{session.id}/resources", headers=HEADERS)
    assert set(page.json()) == {"data", "next_page"}
    assert_exact(BetaManagedAgentsFileResource, page.json()["data"][0])

    raw = client.beta.sessions.resources.with_raw_response.delete(added.id, session_id=session.id)
    deleted = assert_exact(BetaManagedAgentsDeleteSessionResource, raw.http_response.json())
    assert (deleted.id, deleted.type) == (added.id, "session_resource_deleted")
    assert client.beta.sessions.retrieve(session.id).resources == []
    assert client.beta.files.retrieve_metadata(file_id).id == file_id  # the file itself stays
    for call in (client.beta.sessions.resources.retrieve, client.beta.sessions.resources.delete):
        with pytest.raises(anthropic.NotFoundError):
            call(added.id, session_id=session.id)


def test_list_pages(client: anthropic.Anthropic, session, upload) -> None:
    file_id = upload()
    made = [
        client.beta.sessions.resources.add(session.id, type="file", file_id=file_id, mount_path=f"/in/{i}").id
        for i in range(5)
    ]
    page = client.beta.sessions.resources.list(session.id, limit=2)
    seen = [r.id for r in page.data]
    assert len(seen) == 2 and page.next_page and page.next_page.startswith("page_")
    while page.has_next_page():
        page = page.get_next_page()
        seen.extend(r.id for r in page.data)
    assert seen == made
    assert [r.id for r in client.beta.sessions.resources.list(session.id, limit=2)] == made  # auto-pagination
    assert [r.id for r in client.beta.sessions.resources.list(session.id)] == made  # no limit: all at once
    for params in ({"limit": 0}, {"limit": 1001}, {"page": "page_bogus"}):
        with pytest.raises(anthropic.BadRequestError):
            client.beta.sessions.resources.list(session.id, **params)


def test_update_is_refused_for_files(client: anthropic.Anthropic, session, upload) -> None:
    added = client.beta.sessions.resources.add(session.id, type="file", file_id=upload())
    with pytest.raises(anthropic.BadRequestError) as info:
        client.beta.sessions.resources.update(added.id, session_id=session.id, authorization_token="ghp_x")
    assert "github_repository" in info.value.body["error"]["message"]
    with pytest.raises(anthropic.NotFoundError):
        client.beta.sessions.resources.update("sesrsc_nope", session_id=session.id, authorization_token="ghp_x")
    assert client.beta.sessions.resources.retrieve(added.id, session_id=session.id) == added


def test_refusals_change_nothing(client: anthropic.Anthropic, session, agent, environment, upload) -> None:
    file_id = upload()
    kept = client.beta.sessions.resources.add(session.id, type="file", file_id=file_id, mount_path="/data/x")
    before = client.beta.sessions.retrieve(session.id)
    with pytest.raises(anthropic.ConflictError) as info:
        client.beta.sessions.resources.add(session.id, type="file", file_id=file_id, mount_path="/data/x")
    assert info.value.body["error"]["details"] == {"error_code": "mount_path_taken"}
    with pytest.raises(anthropic.NotFoundError) as info:
        client.beta.sessions.resources.add(session.id, type="file", file_id="file_missing")
    assert "file_missing" in info.value.body["error"]["message"]
    with pytest.raises(anthropic.NotFoundError) as info:
        client.beta.sessions.resources.add("sesn_missing", type="file", file_id=file_id)
    assert "sesn_missing" in info.value.body["error"]["message"]
    for bad in ("relative/path", "/", "/a/../b", "/a//b", "/a/", "/a/./b", "/a\x00b"):
        with pytest.raises(anthropic.BadRequestError) as info:
            client.beta.sessions.resources.add(session.id, type="file", file_id=file_id, mount_path=bad)
        assert "mount_path" in info.value.body["error"]["message"]
    # the sandbox's own places: its system files, its mounts, and the directories it needs
    for reserved in ("/usr/x", "/etc/passwd", "/proc/1", "/mnt/session/outputs/r.txt", "/opt/corral/recipe/x",
                     "/workspace", "/mnt/session", "/opt", "/tmp"):  # fmt: skip
        with pytest.raises(anthropic.BadRequestError) as info:
            client.beta.sessions.resources.add(session.id, type="file", file_id=file_id, mount_path=reserved)
        assert "mount_path" in info.value.body["error"]["message"], reserved
    for nested in ("/data/x/y", "/data"):  # a file cannot hold another one
        with pytest.raises(anthropic.ConflictError) as info:
            client.beta.sessions.resources.add(session.id, type="file", file_id=file_id, mount_path=nested)
        assert "one is inside the other" in info.value.body["error"]["message"]
    url = f"{str(client.base_url).rstrip('/')}/v1/sessions/{session.id}/resources"
    for body in (
        {"type": "github_repository", "url": "http://github.com/a/b"},
        {"type": "github_repository", "url": "https://user:tok@github.com/a/b"},
        {"type": "github_repository", "url": "https://github.com/"},
        {"type": "github_repository", "url": "https://github.com/a/b", "mount_path": "/srv/b"},
        {"type": "github_repository", "url": "https://github.com/a/b", "checkout": {"type": "commit", "sha": "xyz"}},
        {"type": "github_repository", "url": "https://github.com/a/b", "checkout": {"type": "branch", "name": "-x"}},
        {"type": "memory_store", "memory_store_id": "memstore_x"},
        {"type": "file", "file_id": file_id, "extra": 1},
        {"type": "bogus"},
        {"file_id": file_id},
    ):
        response = httpx.post(url, json=body, headers=HEADERS)
        assert response.status_code == 400, body
    response = httpx.post(url, json={"type": "memory_store", "memory_store_id": "memstore_x"}, headers=HEADERS)
    assert "not supported yet" in response.json()["error"]["message"]
    after = client.beta.sessions.retrieve(session.id)
    assert after.resources == [kept] and after.updated_at == before.updated_at

    for resources in (
        [{"type": "github_repository", "url": "ftp://github.com/a/b"}],
        [{"type": "file", "file_id": "file_missing"}],
        [
            {"type": "file", "file_id": file_id, "mount_path": "/x"},
            {"type": "file", "file_id": file_id, "mount_path": "/x"},
        ],
    ):
        ids = [s.id for s in client.beta.sessions.list(limit=100)]
        with pytest.raises(anthropic.APIStatusError) as info:
            client.beta.sessions.create(agent=agent.id, environment_id=environment.id, resources=resources)
        assert info.value.status_code in (400, 404, 409)
        assert [s.id for s in client.beta.sessions.list(limit=100)] == ids


def test_archived_sessions_take_no_new_resources(client: anthropic.Anthropic, session, upload) -> None:
    file_id = upload()
    kept = client.beta.sessions.resources.add(session.id, type="file", file_id=file_id)
    client.beta.sessions.archive(session.id)
    with pytest.raises(anthropic.BadRequestError) as info:
        client.beta.sessions.resources.add(session.id, type="file", file_id=file_id, mount_path="/other")
    assert info.value.body["error"]["details"] == {"error_code": "session_archived"}
    assert [r.id for r in client.beta.sessions.resources.list(session.id)] == [kept.id]
    client.beta.sessions.resources.delete(kept.id, session_id=session.id)  # removing is still allowed
    assert client.beta.sessions.retrieve(session.id).resources == []


def test_deleting_the_file_keeps_the_resource(client: anthropic.Anthropic, session, upload) -> None:
    file_id = upload()
    added = client.beta.sessions.resources.add(session.id, type="file", file_id=file_id)
    client.beta.files.delete(file_id)
    assert client.beta.sessions.resources.retrieve(added.id, session_id=session.id).file_id == file_id


def test_concurrent_updates_and_resource_adds_lose_nothing(client: anthropic.Anthropic, session, upload) -> None:
    """Both rewrite the session's stored body: the row lock must serialize them."""
    from concurrent.futures import ThreadPoolExecutor

    files = [upload(f"f{i}.txt", b"x") for i in range(12)]

    def add(file_id: str) -> None:
        client.beta.sessions.resources.add(session.id, type="file", file_id=file_id)

    def retitle(i: int) -> None:
        client.beta.sessions.update(session.id, title=f"title {i}")

    with ThreadPoolExecutor(8) as pool:
        jobs = [pool.submit(add, f) for f in files] + [pool.submit(retitle, i) for i in range(12)]
        for job in jobs:
            job.result()
    listed = client.beta.sessions.resources.list(session.id)
    assert sorted(r.file_id for r in listed.data) == sorted(files)
    assert client.beta.sessions.retrieve(session.id).title.startswith("title ")
