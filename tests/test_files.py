"""The Files API through the SDK: upload, list (pages, ids), metadata, download (exact bytes), delete,
the size limit, and errors that change nothing."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import anthropic
import httpx
import pytest
from anthropic.types.beta import BetaDeletedFile, BetaFileMetadata
from sqlalchemy import text

from corral.store.db import Database

from .conftest import API_KEY
from .servers import ServerThread, serving
from .wire import assert_exact

AUTH = {"x-api-key": API_KEY}


def _files_dir(server: ServerThread) -> Path:
    return Path(server.settings.data_dir) / "files"


def _leftovers(server: ServerThread) -> list[str]:
    tmp = _files_dir(server) / ".tmp"
    return sorted(os.listdir(tmp)) if tmp.exists() else []


def _all_ids(client: anthropic.Anthropic) -> list[str]:
    return [f.id for f in client.beta.files.list(limit=1000)]


def _url(client: anthropic.Anthropic, path: str) -> str:
    return str(client.base_url).rstrip("/") + path


def test_upload_returns_exact_metadata(client: anthropic.Anthropic, server: ServerThread) -> None:
    raw = client.beta.files.with_raw_response.upload(file=("notes.txt", b"hello\n", "text/plain"))
    meta = assert_exact(BetaFileMetadata, raw.http_response.json())
    assert meta.id.startswith("file_") and meta.type == "file"
    assert (meta.filename, meta.mime_type, meta.size_bytes) == ("notes.txt", "text/plain", 6)
    assert meta.downloadable is True and meta.expires_at is None and meta.scope is None
    assert raw.http_response.json()["created_at"].endswith("Z")
    again = client.beta.files.with_raw_response.retrieve_metadata(meta.id)
    assert assert_exact(BetaFileMetadata, again.http_response.json()) == meta
    assert (_files_dir(server) / meta.id).read_bytes() == b"hello\n"
    assert _leftovers(server) == []


def test_every_byte_value_comes_back_exactly(client: anthropic.Anthropic) -> None:
    data = bytes(range(256)) * 3
    meta = client.beta.files.upload(file=("all-bytes.bin", data, "application/octet-stream"))
    assert meta.size_bytes == len(data) and meta.mime_type == "application/octet-stream"
    response = client.beta.files.download(meta.id)
    assert response.read() == data
    headers = response.http_response.headers
    assert headers["content-type"] == "application/octet-stream"
    assert headers["content-length"] == str(len(data))
    assert headers["content-disposition"] == 'attachment; filename="all-bytes.bin"'


def test_multi_mib_file_streams_both_ways(client: anthropic.Anthropic, tmp_path: Path) -> None:
    data = os.urandom(5 * 1024 * 1024 + 17)
    source = tmp_path / "big.dat"
    source.write_bytes(data)
    meta = client.beta.files.upload(file=source)
    assert meta.filename == "big.dat" and meta.size_bytes == len(data)
    digest = hashlib.sha256()
    with client.beta.files.with_streaming_response.download(meta.id) as response:
        for chunk in response.iter_bytes():
            digest.update(chunk)
    assert digest.hexdigest() == hashlib.sha256(data).hexdigest()
    client.beta.files.download(meta.id).write_to_file(tmp_path / "back.dat")
    assert (tmp_path / "back.dat").read_bytes() == data


def test_filenames_and_media_types(client: anthropic.Anthropic) -> None:
    nested = client.beta.files.upload(file=("reports/2026/q1.csv", b"a,b\n1,2\n"))
    assert (nested.filename, nested.mime_type) == ("q1.csv", "text/csv")
    windows = client.beta.files.upload(file=("C:\\Users\\me\\data.json", b"{}", "application/json"))
    assert windows.filename == "data.json"
    anonymous = client.beta.files.upload(file=b"no name at all")
    assert (anonymous.filename, anonymous.mime_type) == ("unnamed.bin", "application/octet-stream")
    typed = client.beta.files.upload(file=("chart", b"\x89PNG\r\n\x1a\n", "image/png; foo=bar"))
    assert (typed.filename, typed.mime_type) == ("chart", "image/png")
    guessed = client.beta.files.upload(file=("page.html", b"<p>hi</p>", "application/octet-stream"))
    assert guessed.mime_type == "text/html"
    unicode = client.beta.files.upload(file=("résumé été.pdf", b"%PDF-1.4", "application/pdf"))
    assert unicode.filename == "résumé été.pdf"
    response = client.beta.files.download(unicode.id)
    assert response.http_response.headers["content-type"] == "application/pdf"
    disposition = response.http_response.headers["content-disposition"]
    ascii_name, exact = 'filename="r_sum_ _t_.pdf"', "filename*=UTF-8''r%C3%A9sum%C3%A9%20%C3%A9t%C3%A9.pdf"
    assert disposition == f"attachment; {ascii_name}; {exact}"
    text_file = client.beta.files.download(nested.id).http_response
    assert text_file.headers["content-type"] == "text/csv"  # no charset added to stored bytes


def test_empty_file(client: anthropic.Anthropic) -> None:
    meta = client.beta.files.upload(file=("empty.txt", b"", "text/plain"))
    assert meta.size_bytes == 0
    assert client.beta.files.download(meta.id).read() == b""


def test_expiry(client: anthropic.Anthropic, server: ServerThread) -> None:
    meta = client.beta.files.upload(file=("soon.txt", b"x"), expires_in_seconds=3600)
    assert meta.expires_at is not None and meta.expires_at - meta.created_at == timedelta(hours=1)
    assert client.beta.files.download(meta.id).read() == b"x"
    before = _all_ids(client)
    for bad in (3599, 7_776_001):
        with pytest.raises(anthropic.BadRequestError) as info:
            client.beta.files.upload(file=("x.txt", b"x"), expires_in_seconds=bad)
        assert "expires_in_seconds" in info.value.body["error"]["message"]
    assert _all_ids(client) == before and _leftovers(server) == []

    async def expire() -> None:
        db = Database(server.settings.async_database_url)
        try:
            body = json.loads(BetaFileMetadata.model_dump_json(meta))
            body["expires_at"] = "2020-01-01T00:00:00.000Z"
            async with db.write() as conn:
                await conn.execute(
                    text("UPDATE files SET body = :body WHERE id = :id"), {"body": json.dumps(body), "id": meta.id}
                )
        finally:
            await db.dispose()

    asyncio.run(expire())
    with pytest.raises(anthropic.NotFoundError) as info:
        client.beta.files.download(meta.id)
    assert info.value.body["error"]["details"] == {"error_code": "file_expired"}
    assert client.beta.files.retrieve_metadata(meta.id).expires_at is not None  # the metadata stays


def test_list_pages_newest_first(client: anthropic.Anthropic) -> None:
    made = [client.beta.files.upload(file=(f"page-{i}.txt", f"{i}".encode())).id for i in range(5)]
    seen: list[str] = []
    page = client.beta.files.list(limit=2)
    pages = 0
    while True:
        pages += 1
        raw = page.model_dump()
        assert set(raw) == {"data", "next_page"}
        assert len(page.data) <= 2
        seen.extend(f.id for f in page.data)
        if not page.has_next_page():
            break
        assert page.next_page.startswith("page_")
        page = page.get_next_page()
    assert pages >= 3 and len(seen) == len(set(seen))
    assert [i for i in seen if i in made] == list(reversed(made))
    assert [f.id for f in client.beta.files.list(limit=3)] == seen  # auto-pagination agrees
    raw = httpx.get(_url(client, "/v1/files"), params={"limit": 2}, headers=AUTH).json()
    assert set(raw) == {"data", "next_page"} and len(raw["data"]) == 2
    for item in raw["data"]:
        assert_exact(BetaFileMetadata, item)
    assert [f["id"] for f in raw["data"]] == list(reversed(made))[:2]


def test_list_by_ids(client: anthropic.Anthropic) -> None:
    a = client.beta.files.upload(file=("a.txt", b"a")).id
    b = client.beta.files.upload(file=("b.txt", b"b")).id
    gone = client.beta.files.upload(file=("c.txt", b"c")).id
    client.beta.files.delete(gone)
    page = client.beta.files.list(ids=[a, gone, "file_unknown", b, a])
    assert [f.id for f in page.data] == [b, a] and page.next_page is None
    with pytest.raises(anthropic.BadRequestError):
        client.beta.files.list(ids=[a], limit=5)
    with pytest.raises(anthropic.BadRequestError):
        client.beta.files.list(ids=[f"file_{i}" for i in range(101)])


def test_list_rejects_bad_params(client: anthropic.Anthropic) -> None:
    for params in ({"limit": 0}, {"limit": 1001}, {"page": "page_bogus"}, {"page": "nonsense"}):
        with pytest.raises(anthropic.BadRequestError):
            client.beta.files.list(**params)
    assert len(client.beta.files.list(limit=1000).data) <= 1000
    assert client.beta.files.list(scope_id="sesn_none").data == []


def test_delete(client: anthropic.Anthropic, server: ServerThread) -> None:
    meta = client.beta.files.upload(file=("doomed.txt", b"bye"))
    raw = client.beta.files.with_raw_response.delete(meta.id)
    deleted = assert_exact(BetaDeletedFile, raw.http_response.json())
    assert (deleted.id, deleted.type) == (meta.id, "file_deleted")
    assert not (_files_dir(server) / meta.id).exists()
    assert meta.id not in _all_ids(client)
    for call in (client.beta.files.retrieve_metadata, client.beta.files.download, client.beta.files.delete):
        with pytest.raises(anthropic.NotFoundError) as info:
            call(meta.id)
        assert info.value.body["error"]["type"] == "not_found_error"


def test_unknown_ids_are_404(client: anthropic.Anthropic) -> None:
    for call in (client.beta.files.retrieve_metadata, client.beta.files.download, client.beta.files.delete):
        with pytest.raises(anthropic.NotFoundError) as info:
            call("file_doesnotexist")
        assert info.value.body["error"]["type"] == "not_found_error"
        assert "file_doesnotexist" in info.value.body["error"]["message"]


def _post(client: anthropic.Anthropic, content: bytes, content_type: str) -> httpx.Response:
    return httpx.post(_url(client, "/v1/files"), content=content, headers={**AUTH, "content-type": content_type})


def test_malformed_uploads_are_400_and_store_nothing(client: anthropic.Anthropic, server: ServerThread) -> None:
    before, on_disk = _all_ids(client), sorted(os.listdir(_files_dir(server)))
    b = "BOUNDARY"
    part = f'--{b}\r\nContent-Disposition: form-data; name="file"; filename="x.txt"\r\n\r\nhello\r\n'
    cases = [
        (b"hello", "text/plain"),  # not multipart
        (b'{"file": "x"}', "application/json"),
        (part.encode() + f"--{b}--\r\n".encode(), "multipart/form-data"),  # no boundary parameter
        (part.encode(), f"multipart/form-data; boundary={b}"),  # never closed
        (part.encode()[:-9], f"multipart/form-data; boundary={b}"),  # cut inside the data
        (f"--{b}--\r\n".encode(), f"multipart/form-data; boundary={b}"),  # no file part
        (  # an unknown field
            (part + f'--{b}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nx\r\n--{b}--\r\n').encode(),
            f"multipart/form-data; boundary={b}",
        ),
        ((part + part + f"--{b}--\r\n").encode(), f"multipart/form-data; boundary={b}"),  # two files
        (b"garbage without boundaries", f"multipart/form-data; boundary={b}"),
        (  # a part without a name
            f"--{b}\r\nContent-Disposition: form-data\r\n\r\nx\r\n--{b}--\r\n".encode(),
            f"multipart/form-data; boundary={b}",
        ),
        (  # expires_in_seconds that is not a number
            (
                part + f'--{b}\r\nContent-Disposition: form-data; name="expires_in_seconds"\r\n\r\nsoon\r\n--{b}--\r\n'
            ).encode(),
            f"multipart/form-data; boundary={b}",
        ),
    ]
    for content, content_type in cases:
        response = _post(client, content, content_type)
        assert response.status_code == 400, (content, response.text)
        body = response.json()
        assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
        assert response.headers["x-should-retry"] == "false"
    ok = _post(client, part.encode() + f"--{b}--\r\n".encode(), f"multipart/form-data; boundary={b}")
    assert ok.status_code == 200 and ok.json()["filename"] == "x.txt" and ok.json()["size_bytes"] == 5
    assert _all_ids(client) == [ok.json()["id"], *before]
    assert sorted(os.listdir(_files_dir(server))) == sorted([*on_disk, ok.json()["id"]])
    assert _leftovers(server) == []


def test_interrupted_upload_leaves_nothing(client: anthropic.Anthropic, server: ServerThread) -> None:
    before = _all_ids(client)
    host, port = str(client.base_url).split("//")[1].rstrip("/").split(":")
    head = (
        "POST /v1/files HTTP/1.1\r\n"
        f"Host: {host}\r\nx-api-key: {API_KEY}\r\n"
        "Content-Type: multipart/form-data; boundary=B\r\nContent-Length: 10000000\r\n\r\n"
        '--B\r\nContent-Disposition: form-data; name="file"; filename="half.bin"\r\n\r\n'
    )
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(head.encode() + os.urandom(3 * 1024 * 1024))
        deadline = time.monotonic() + 10
        while not _leftovers(server) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _leftovers(server), "the upload should be in progress in a temp file"
    deadline = time.monotonic() + 10
    while _leftovers(server) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _leftovers(server) == []
    assert _all_ids(client) == before


def test_concurrent_uploads(client: anthropic.Anthropic) -> None:
    blobs = [os.urandom(300_000 + i) for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        metas = list(pool.map(lambda d: client.beta.files.upload(file=("c.bin", d)), blobs))
        back = list(pool.map(lambda m: client.beta.files.download(m.id).read(), metas))
    assert back == blobs and len({m.id for m in metas}) == 8


def test_files_need_auth_but_no_beta_header(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.AuthenticationError):
        anthropic.Anthropic(base_url=str(client.base_url), api_key="wrong", max_retries=0).beta.files.list()
    meta = client.beta.files.upload(file=("b.txt", b"beta"), betas=["files-api-2025-04-14"])
    assert client.beta.files.retrieve_metadata(meta.id, betas=["files-api-2025-04-14"]).id == meta.id
    response = httpx.get(_url(client, f"/v1/files/{meta.id}"), headers=AUTH)  # no anthropic-beta at all
    assert response.status_code == 200


@pytest.fixture(scope="module")
def small_server(db_kind: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    """A server that takes files of at most 1 KiB."""
    tmp: Path = tmp_path_factory.mktemp(f"files-small-{db_kind}")
    with serving(db_kind, tmp, api_key=API_KEY, data_dir=tmp / "data", workers=0, max_file_bytes=1024) as srv:
        yield srv


def test_size_limit(small_server: ServerThread) -> None:
    client = anthropic.Anthropic(base_url=small_server.url, api_key=API_KEY, max_retries=0)
    exact = client.beta.files.upload(file=("limit.bin", b"\x00" * 1024))
    assert exact.size_bytes == 1024
    for size in (1025, 64 * 1024, 8 * 1024 * 1024):  # streamed past the limit; refused on Content-Length
        with pytest.raises(anthropic.APIStatusError) as info:
            client.beta.files.upload(file=("big.bin", os.urandom(size)))
        assert info.value.status_code == 413
        assert info.value.body["error"]["type"] == "request_too_large"
        assert "1024" in info.value.body["error"]["message"]
    assert _all_ids(client) == [exact.id]
    assert sorted(os.listdir(_files_dir(small_server))) == sorted([".tmp", exact.id])
    assert _leftovers(small_server) == []
    after = client.beta.files.upload(file=("small.txt", b"still works"))
    assert client.beta.files.download(after.id).read() == b"still works"
