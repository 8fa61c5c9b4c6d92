"""read / write / edit / glob / grep inside a real bubblewrap sandbox: results and error texts."""

from __future__ import annotations

import asyncio
import base64
import os
from pathlib import Path

import pytest

from corral.sandbox.base import Sandbox, SandboxSpec
from corral.sandbox.pool import SandboxPool

from .helpers import ISOLATED, err, ok

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)


@pytest.fixture
def host_dir(pool: SandboxPool) -> Path:
    return pool.workdir_for("shared")


async def test_write_creates_parents_and_is_owned_by_the_sandbox_uid(sbx: Sandbox, host_dir: Path) -> None:
    assert (
        await ok(sbx, "write", {"file_path": "w/deep/er/f.txt", "content": "héllo\n"})
        == "wrote 7 bytes to w/deep/er/f.txt"
    )
    host_file = host_dir / "w/deep/er/f.txt"
    assert host_file.read_text() == "héllo\n"
    assert isinstance(sbx, ISOLATED)
    if sbx.host_uid is not None:
        assert host_file.stat().st_uid == sbx.host_uid != 0
    assert (
        await ok(sbx, "write", {"file_path": "/workspace/w/abs.txt", "content": ""})
        == "wrote 0 bytes to /workspace/w/abs.txt"
    )
    assert (host_dir / "w/abs.txt").read_text() == ""


async def test_write_errors(sbx: Sandbox) -> None:
    await ok(sbx, "bash", {"command": "mkdir -p wdir"})
    assert await err(sbx, "write", {"file_path": "wdir", "content": "x"}) == "write: wdir: is a directory"
    denied = await err(sbx, "write", {"file_path": "/usr/evil", "content": "x"})  # gVisor checks permissions first
    assert denied in ("write: /usr/evil: read-only file system", "write: /usr/evil: permission denied")
    assert await err(sbx, "write", {"file_path": "x"}) == "write: content is required"


async def test_read_text_whole_and_ranges(sbx: Sandbox) -> None:
    await ok(sbx, "write", {"file_path": "r.txt", "content": "one\ntwo\nthree\nfour\n"})
    assert await ok(sbx, "read", {"file_path": "r.txt"}) == "one\ntwo\nthree\nfour\n"
    assert await ok(sbx, "read", {"file_path": "/workspace/r.txt", "view_range": [2, 3]}) == "two\nthree"
    assert await ok(sbx, "read", {"file_path": "r.txt", "view_range": [3, 0]}) == "three\nfour\n"
    assert await ok(sbx, "read", {"file_path": "r.txt", "view_range": [4, 4]}) == "four"
    assert await ok(sbx, "read", {"file_path": "r.txt", "view_range": [9, -1]}) == ""
    assert (
        await err(sbx, "read", {"file_path": "r.txt", "view_range": [1]})
        == "read: view_range must be [start_line, end_line]"
    )


async def test_read_errors(sbx: Sandbox) -> None:
    assert await err(sbx, "read", {"file_path": "nope.txt"}) == "read: nope.txt: no such file or directory"
    await ok(sbx, "bash", {"command": "mkdir -p adir; rm -f fifo; mkfifo fifo; printf '\\xff\\xfe' > bin.dat"})
    assert await err(sbx, "read", {"file_path": "adir"}) == "read: adir: not a regular file"
    assert await err(sbx, "read", {"file_path": "fifo"}) == "read: fifo: not a regular file"
    assert "not valid UTF-8 text" in await err(sbx, "read", {"file_path": "bin.dat"})
    assert await err(sbx, "read", {}) == "read: file_path is required"


async def test_read_large_file_needs_view_range(sbx: Sandbox) -> None:
    await ok(sbx, "bash", {"command": "seq 1 100000 > big.txt"})
    message = await err(sbx, "read", {"file_path": "big.txt"})
    assert message.startswith("read: big.txt is 588895 bytes, exceeds 262144-byte limit.")
    assert "view_range" in message
    assert await ok(sbx, "read", {"file_path": "big.txt", "view_range": [99999, 0]}) == "99999\n100000\n"
    assert "exceeds 262144-byte limit" in await err(sbx, "read", {"file_path": "big.txt", "view_range": [1, 0]})


async def test_read_image_and_pdf_blocks(sbx: Sandbox, host_dir: Path) -> None:
    await ok(sbx, "write", {"file_path": "placeholder", "content": ""})
    (host_dir / "pic.PNG").write_bytes(PNG)
    (host_dir / "doc.pdf").write_bytes(b"%PDF-1.4\n%%EOF\n")
    image = await sbx.execute("read", {"file_path": "pic.PNG"})
    assert not image.is_error
    assert image.content == [
        {
            "type": "image",
            "source": {"type": "base64", "media_type": "image/png", "data": base64.b64encode(PNG).decode()},
        }
    ]
    doc = await sbx.execute("read", {"file_path": "doc.pdf"})
    assert doc.content[0]["type"] == "document"
    assert doc.content[0]["source"]["media_type"] == "application/pdf"
    assert base64.b64decode(doc.content[0]["source"]["data"]) == b"%PDF-1.4\n%%EOF\n"
    assert (
        await err(sbx, "read", {"file_path": "pic.PNG", "view_range": [1, 2]})
        == "read: view_range is not supported for image/PDF files"
    )


async def test_edit(sbx: Sandbox, host_dir: Path) -> None:
    await ok(sbx, "write", {"file_path": "e.py", "content": "a = 1\nb = 1\nc = 2\n"})
    assert (
        await ok(sbx, "edit", {"file_path": "e.py", "old_string": "c = 2", "new_string": "c = 3"})
        == "edited e.py (1 replacement(s))"
    )
    assert (
        await err(sbx, "edit", {"file_path": "e.py", "old_string": "zzz", "new_string": "y"})
        == "edit: old_string not found in e.py"
    )
    assert (
        await err(sbx, "edit", {"file_path": "e.py", "old_string": "= 1", "new_string": "= 5"})
        == "edit: old_string appears 2 times in e.py (must be unique)"
    )
    assert (
        await ok(sbx, "edit", {"file_path": "e.py", "old_string": "= 1", "new_string": "= 5", "replace_all": True})
        == "edited e.py (2 replacement(s))"
    )
    assert (host_dir / "e.py").read_text() == "a = 5\nb = 5\nc = 3\n"
    assert (
        await err(sbx, "edit", {"file_path": "gone.py", "old_string": "a", "new_string": "b"})
        == "edit: gone.py: no such file or directory"
    )


async def test_glob_newest_first_capped_and_relative_only(sbx: Sandbox, host_dir: Path) -> None:
    await ok(
        sbx,
        "bash",
        {"command": "rm -rf g && mkdir -p g/sub/deeper && touch g/top.py g/sub/mid.py g/sub/deeper/low.py g/skip.txt"},
    )
    for age, name in enumerate(["g/sub/mid.py", "g/top.py", "g/sub/deeper/low.py"]):
        os.utime(host_dir / name, (1_000_000 - age * 1000, 1_000_000 - age * 1000))
    assert (
        await ok(sbx, "glob", {"pattern": "**/*.py", "path": "g"})
        == "/workspace/g/sub/mid.py\n/workspace/g/top.py\n/workspace/g/sub/deeper/low.py"
    )
    assert await ok(sbx, "glob", {"pattern": "*.py", "path": "/workspace/g"}) == "/workspace/g/top.py"
    assert await ok(sbx, "glob", {"pattern": "**/*.rs"}) == "no matches"
    await ok(sbx, "bash", {"command": "mkdir -p many && cd many && touch f{1..250}.log"})
    assert len((await ok(sbx, "glob", {"pattern": "many/*.log"})).splitlines()) == 200
    assert (
        await err(sbx, "glob", {"pattern": "/etc/*"})
        == "glob: absolute pattern not permitted; pass a relative pattern (and optionally path)"
    )
    assert await err(sbx, "glob", {"pattern": "../*"}) == "glob: '..' is not permitted in the pattern"
    assert await err(sbx, "glob", {"pattern": "*", "path": "missing"}) == "glob: missing: no such file or directory"


async def test_grep(sbx: Sandbox) -> None:
    await ok(
        sbx,
        "bash",
        {
            "command": "rm -rf s && mkdir -p s/.git s/in && printf 'alpha\\nbeta\\nalphabet\\n' > "
            "s/in/a.txt && echo alpha > s/.git/x && printf 'alpha\\0' > s/bin"
        },
    )
    assert (
        await ok(sbx, "grep", {"pattern": "^alpha", "path": "s"})
        == "/workspace/s/in/a.txt:1:alpha\n/workspace/s/in/a.txt:3:alphabet"
    )
    assert (
        await ok(sbx, "grep", {"pattern": "bet", "path": "s/in/a.txt"})
        == "/workspace/s/in/a.txt:2:beta\n/workspace/s/in/a.txt:3:alphabet"
    )
    assert await ok(sbx, "grep", {"pattern": "gamma", "path": "s"}) == "no matches"
    assert (await err(sbx, "grep", {"pattern": "(unclosed"})).startswith("grep: invalid regex:")
    assert await err(sbx, "grep", {"pattern": "x", "path": "nowhere"}) == "grep: nowhere: no such file or directory"


async def test_grep_output_is_capped(sbx: Sandbox) -> None:
    await ok(
        sbx,
        "bash",
        {
            "command": "mkdir -p gc && seq 1 3000 | sed 's/.*/match line & "
            "..................................................../' > gc/lots.txt"
        },
    )
    out = await ok(sbx, "grep", {"pattern": "match", "path": "gc"})
    assert out.endswith("\n[output truncated at 102400 bytes]")
    assert len(out.encode()) <= 102400 + 100


async def test_runaway_regex_hits_the_deadline_not_the_sandbox(pool: SandboxPool) -> None:
    sandbox = await pool.get(SandboxSpec("redos", ""))
    await ok(sandbox, "write", {"file_path": "evil.txt", "content": "a" * 40 + "!\n"})
    out = await err(sandbox, "grep", {"pattern": "^(a+)+$"}, timeout=0.5)
    assert out == "grep: timed out after 0.5s"
    assert sandbox.alive()
    assert await ok(sandbox, "bash", {"command": "echo alive"}) == "alive"


async def test_interrupt_aborts_a_runaway_regex(pool: SandboxPool) -> None:
    sandbox = await pool.get(SandboxSpec("redos", ""))
    await ok(sandbox, "write", {"file_path": "evil.txt", "content": "a" * 40 + "!\n"})
    call = asyncio.create_task(sandbox.execute("grep", {"pattern": "^(a+)+$"}, timeout=60))
    await asyncio.sleep(0.3)
    await sandbox.interrupt()
    result = await asyncio.wait_for(call, 5)
    assert result.is_error and result.content[0]["text"] == "grep: interrupted"
    assert await ok(sandbox, "glob", {"pattern": "*.txt"}) == "/workspace/evil.txt"
