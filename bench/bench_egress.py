"""Egress proxy costs: sandbox cold start with and without it, and per-request latency through it.

Run alone: `python bench/bench_egress.py [--cold N] [--requests N]`. Prints one table (milliseconds).

- cold start: `BwrapSandbox.start` + first ping, with no egress vs. with a proxy socket + in-sandbox
  forwarder (alternating, so drift hits both alike); the proxy itself is started before timing.
- socket open: `EgressProxy.open()` alone (the per-sandbox host-side work).
- request: one HTTP GET on a fresh connection to a loopback server (a separate process on 127.0.0.2),
  read to EOF: direct from the host; from the host through the proxy's Unix socket; from inside a
  sandbox through the forwarder and the proxy (the path every sandbox request takes).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from corral.sandbox.base import SandboxSpec
from corral.sandbox.egress import EgressPolicy, EgressProxy
from corral.sandbox.local import BwrapSandbox

HOST = "127.0.0.2"

CLIENT = r"""
import json, socket, sys, time
host, port, n, proxy = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
def once():
    if proxy == "direct":
        s = socket.create_connection((host, port))
        s.sendall(("GET /f HTTP/1.1\r\nHost: %s:%d\r\nConnection: close\r\n\r\n" % (host, port)).encode())
    else:
        if proxy.startswith("/"):
            s = socket.socket(socket.AF_UNIX); s.connect(proxy)
        else:
            s = socket.create_connection(("127.0.0.1", int(proxy)))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1) if s.family != socket.AF_UNIX else None
        s.sendall(("GET http://%s:%d/f HTTP/1.1\r\nHost: %s:%d\r\n\r\n" % (host, port, host, port)).encode())
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    assert b" 200 " in data.split(b"\r\n", 1)[0], data[:200]
for _ in range(5):
    once()
out = []
for _ in range(n):
    t = time.perf_counter(); once(); out.append(time.perf_counter() - t)
print(json.dumps(out))
"""


def row(name: str, samples: list[float]) -> str:
    ms = sorted(s * 1000 for s in samples)
    p95 = ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))]
    return f"{name:<48} {len(ms):>4} {statistics.median(ms):>8.2f} {p95:>8.2f} {statistics.mean(ms):>8.2f}"


async def main(cold_n: int, requests: int) -> None:
    root = Path(tempfile.mkdtemp(prefix="corral-bench-egress-"))
    os.chmod(root, 0o711)
    site = root / "site"
    site.mkdir()
    (site / "f").write_bytes(b"x" * 1024)
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", "--bind", HOST, "0"],
        cwd=site,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    proxy = EgressProxy(allowed_networks=["127.0.0.0/8"])
    try:
        assert server.stdout is not None
        line = server.stdout.readline()  # "Serving HTTP on 127.0.0.2 port N ..."
        port = int(line.split(" port ")[1].split()[0])
        for _ in range(50):
            try:
                socket.create_connection((HOST, port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        rows = []
        spec = SandboxSpec("bench-egress", str(root / "w"))
        uid = 200_777 if os.geteuid() == 0 else None
        warm = await BwrapSandbox.start(spec, host_uid=uid, egress=proxy)  # starts the proxy's runtime dir
        await warm.close()
        cold: dict[str, list[float]] = {"off": [], "on": []}
        for i in range(cold_n + 3):
            for mode in ("off", "on"):
                t = time.perf_counter()
                sandbox = await BwrapSandbox.start(spec, host_uid=uid, egress=proxy if mode == "on" else None)
                elapsed = time.perf_counter() - t
                await sandbox.close()
                if i >= 3:
                    cold[mode].append(elapsed)
        rows.append(row("cold start, no egress (provision + ping)", cold["off"]))
        rows.append(row("cold start, with proxy socket + forwarder", cold["on"]))
        opens = []
        policy = EgressPolicy("unrestricted")
        for _ in range(200):
            t = time.perf_counter()
            listener = await proxy.open("bench", policy, uid=uid)
            opens.append(time.perf_counter() - t)
            await listener.close()
        rows.append(row("EgressProxy.open() (per-sandbox host work)", opens))

        script = root / "client.py"
        script.write_text(CLIENT)

        async def host_client(mode: str) -> list[float]:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, str(script), HOST, str(port), str(requests), mode, stdout=subprocess.PIPE
            )
            out, _ = await proc.communicate()
            return json.loads(out)

        rows.append(row("request: host -> server (direct loopback)", await host_client("direct")))
        listener = await proxy.open("bench", policy)
        rows.append(row("request: host -> proxy socket -> server", await host_client(listener.path)))
        await listener.close()
        sandbox = await BwrapSandbox.start(spec, host_uid=uid, egress=proxy)
        try:
            await sandbox.execute("write", {"file_path": "client.py", "content": CLIENT})
            result = await sandbox.execute(
                "bash", {"command": f"python3 client.py {HOST} {port} {requests} 3128"}, timeout=300
            )
            text = result.content[0]["text"]
            if result.is_error:
                raise RuntimeError(text)
            rows.append(row("request: sandbox -> forwarder -> proxy -> server", json.loads(text)))
        finally:
            await sandbox.close()
        print(f"{'operation':<48} {'n':>4} {'p50 ms':>8} {'p95 ms':>8} {'mean ms':>8}")
        print("\n".join(rows))
    finally:
        server.kill()
        server.wait()
        await proxy.aclose()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cold", type=int, default=50)
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()
    asyncio.run(main(args.cold, args.requests))
