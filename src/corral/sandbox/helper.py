"""In-sandbox tool executor for the agent toolset (bash here; read/write/edit/glob/grep in helper_files.py).

Run *inside* the sandbox as `/usr/bin/python3 -I -S /sbx/helper.py`, with helper_files.py beside it. Both
are stdlib-only and must keep working on the image's own Python (3.8+), so they import nothing from
`corral`. Because every file operation happens in here, a symlink the agent plants (`ln -s /etc/shadow x`)
resolves inside the sandbox's mount namespace, never on the host.

Protocol: one JSON object per line in each direction.
  -> {"op": "call", "id": N, "name": "read", "input": {...}, "timeout": seconds}   (ids increase)
  <- {"id": N, "content": [blocks], "is_error": bool}
  -> {"op": "ping", "id": N}                 <- {"id": N, "pong": true}   (answered even mid-call)
  -> {"op": "interrupt"}                     every call received so far answers "... interrupted"
  -> {"op": "env", "id": N, "set": {...}}    <- {"id": N, "ok": true}   (for shells started from now on)
EOF on stdin kills the shell and exits. Calls run one at a time on the main thread; a reader thread
answers pings and handles interrupts. glob/grep walks run in a forked child, so that a runaway regex
(which holds the GIL) can be killed without starving the reader. With `--proxy-socket PATH`, a third
thread relays TCP connections on 127.0.0.1:`--proxy-port` to the host's egress proxy (helper_net.py).
"""

from __future__ import annotations

import _thread
import os
import select
import sys
import time
from _signal import SIGKILL, SIGPIPE, SIGXFSZ

# Cold start is on every session's critical path, and each stdlib module costs here (`json` alone pulls in
# re, enum, functools and collections: ~10 ms of a sandbox start on a slow machine). So the helper
# answers its first ping with builtin modules only: `_thread` rather than threading/queue, `_json` rather
# than json, `os.posix_spawn` rather than subprocess, try/except rather than contextlib; `re` is imported
# only when bash output holds an escape sequence, pathlib/base64 by the file tools that need them, and
# argparse/uuid/shlex never.

ANSI = None  # the escape-sequence regex, compiled on first use


def json_codec():
    """(loads, dumps, dumps_ascii) built on the C accelerator `_json` alone, which is what `json` runs
    on anyway; the `json` module itself where `_json` is missing."""
    try:
        import _json

        class Context:  # what `_json.make_scanner` reads off a `json.JSONDecoder`
            strict = True
            object_hook = object_pairs_hook = None
            parse_float, parse_int = float, int
            parse_constant = {"-Infinity": float("-inf"), "Infinity": float("inf"), "NaN": float("nan")}.__getitem__

        scan = _json.make_scanner(Context)

        def default(o):
            raise TypeError(f"Object of type {type(o).__name__} is not JSON serializable")

        def encoder(strings):
            encode = _json.make_encoder(None, default, strings, None, ": ", ", ", False, False, True)
            return lambda obj: "".join(encode(obj, 0))

        dumps, dumps_ascii = encoder(_json.encode_basestring), encoder(_json.encode_basestring_ascii)
    except (ImportError, AttributeError, TypeError):
        import json

        return json.loads, lambda obj: json.dumps(obj, ensure_ascii=False), json.dumps

    def loads(data):
        text = (data.decode("utf-8", "surrogatepass") if isinstance(data, bytes) else data).strip(" \t\n\r")
        try:
            obj, end = scan(text, 0)
        except StopIteration:
            raise ValueError("not a JSON document") from None
        if end != len(text):
            raise ValueError("extra data after the JSON document")
        return obj

    return loads, dumps, dumps_ascii


json_loads, json_dumps, json_dumps_ascii = json_codec()


class Flag:
    """threading.Event's set/clear/is_set without importing threading: set by the reader, polled by calls."""

    def __init__(self) -> None:
        self.value = False

    def set(self) -> None:
        self.value = True

    def clear(self) -> None:
        self.value = False

    def is_set(self) -> bool:
        return self.value


def load_sibling(name: str):
    """`name` from beside this file, by path (`-I` keeps our directory off sys.path): its bytecode
    `name.pyc` when the host compiled it (a sandbox cannot cache bytecode itself), else `name.py`.
    Without importlib, whose import costs ~1 ms."""
    import marshal

    base = os.path.join(os.path.dirname(os.path.abspath(__file__)), name)
    module = type(sys)("corral_" + name)
    try:
        with open(base + ".pyc", "rb") as f:
            code = marshal.loads(f.read()[16:])  # header: magic, flags, 8 bytes unused when run this way
        module.__file__ = base + ".pyc"
    except FileNotFoundError:
        with open(base + ".py", "rb") as f:
            code = compile(f.read(), base + ".py", "exec", dont_inherit=True)
        module.__file__ = base + ".py"
    sys.modules[module.__name__] = module
    exec(code, module.__dict__)
    return module


def start_forwarder(port: int, path: str) -> None:
    """Listen on 127.0.0.1:`port` now (~0.2 ms, so it exists before any command runs); a daemon thread
    waits for the first connection, then loads helper_net.py and relays every connection to the egress
    proxy's Unix socket at `path`. `_socket`, not `socket`: importing socket costs ~2 ms."""
    import _socket

    listener = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
    listener.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(128)

    def run() -> None:
        try:
            select.select([listener], [], [])
            load_sibling("helper_net").Forwarder(listener, path).run()
        except BaseException as e:  # never leave connections hanging in a backlog nobody accepts
            sys.stderr.write(f"helper: egress forwarder stopped: {e!r}\n")
            listener.close()

    _thread.start_new_thread(run, ())


files = load_sibling("helper_files")
ToolError = files.ToolError


class Shell:
    """A persistent /bin/bash in its own session: cwd, env and jobs survive between calls.

    Started with `os.posix_spawn` (vfork + exec; `subprocess` costs ~10 ms to import here) the way
    `subprocess.Popen(start_new_session=True)` would: stdin and stdout+stderr on pipes, SIGPIPE and
    SIGXFSZ back to their defaults (Python ignores them), every other inheritable descriptor closed. The
    cwd is the helper's own, the workdir."""

    def __init__(self, cwd: str, env: dict, limit: int) -> None:
        self.limit = limit
        self.returncode = None
        in_r, self.in_fd = os.pipe()
        self.out_fd, out_w = os.pipe()
        inherited = [int(fd) for fd in os.listdir("/proc/self/fd") if int(fd) > 2]
        inherited = [fd for fd in inherited if fd not in (in_r, out_w) and _inheritable(fd)]
        actions = [(os.POSIX_SPAWN_DUP2, in_r, 0), (os.POSIX_SPAWN_DUP2, out_w, 1), (os.POSIX_SPAWN_DUP2, out_w, 2)]
        actions += [(os.POSIX_SPAWN_CLOSE, fd) for fd in inherited]
        try:
            if os.path.realpath(".") != os.path.realpath(cwd):
                os.chdir(cwd)
            self.pid = os.posix_spawn(
                "/bin/bash",
                ["/bin/bash", "--noprofile", "--norc"],
                env,
                file_actions=actions,
                setsid=True,
                setsigdef=(SIGPIPE, SIGXFSZ),
            )
        except BaseException:
            os.close(self.in_fd)
            os.close(self.out_fd)
            raise
        finally:
            os.close(in_r)
            os.close(out_w)

    def poll(self):
        """The shell's exit status (negative: killed by that signal), or None while it runs."""
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                self.returncode = -1
            else:
                if pid:
                    self.returncode = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        return self.returncode

    def wait(self, timeout: float):
        """`poll()` until the shell exits or `timeout` passes (like `Popen.wait`, None on timeout)."""
        deadline, delay = time.monotonic() + timeout, 0.0005
        while self.poll() is None:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            time.sleep(min(delay, left))
            delay = min(delay * 2, 0.05)
        return self.returncode

    def kill(self) -> None:
        """SIGKILL the shell's whole process group (repeatedly: a fork bomb keeps adding members)."""
        for _ in range(50):
            try:
                os.killpg(self.pid, SIGKILL)
            except (ProcessLookupError, PermissionError):
                break
            if self.poll() is None:
                self.wait(0.5)
            time.sleep(0.002)
        self.poll()
        for fd in (self.in_fd, self.out_fd):
            if fd >= 0:
                try:  # noqa: SIM105 (contextlib is one import more on the cold start)
                    os.close(fd)
                except OSError:
                    pass
        self.in_fd = self.out_fd = -1

    def run(self, command: str, timeout: float, wake_fd: int, cancelled: Flag):
        """Run one command; returns (output_bytes, truncated, status, exit_code)."""
        marker = f"__CORRAL_{os.urandom(16).hex()}__"
        split = marker[:9] + "''" + marker[9:]  # the literal marker never appears in what we send
        quoted = "'" + command.replace("'", "'\"'\"'") + "'"
        # eval of one quoted word: a syntax error in `command` fails the call instead of hanging the shell
        # (not `{ ...\n}`: bash 5.2 stops recognising `{` on the next line after an eval syntax error)
        data = f"eval {quoted} </dev/null 2>&1; printf '\\n{split}%d\\n' \"$?\"\n".encode("utf-8", "surrogateescape")
        while data:
            data = data[os.write(self.in_fd, data) :]
        mark = marker.encode()
        buf, truncated, scan_from = bytearray(), False, 0
        poller = select.poll()
        poller.register(self.out_fd, select.POLLIN)
        poller.register(wake_fd, select.POLLIN)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return bytes(buf), truncated, "timeout", None
            events = dict(poller.poll(min(left, 0.25) * 1000))
            if cancelled.is_set():
                return bytes(buf), truncated, "interrupted", None
            if self.out_fd in events:
                chunk = os.read(self.out_fd, 65536)
                if not chunk:
                    return bytes(buf), truncated, "exited", self._exit_code()
                buf += chunk
                at = buf.find(mark, scan_from)
                if at >= 0:
                    end = buf.find(b"\n", at + len(mark))
                    if end >= 0:
                        return bytes(buf[:at]), truncated, "done", int(buf[at + len(mark) : end] or b"-1")
                    scan_from = at
                    continue
                if len(buf) > self.limit + 65536:  # keep only the tail (plus room to spot the marker)
                    del buf[: len(buf) - self.limit - len(mark)]
                    truncated = True
                scan_from = max(0, len(buf) - len(mark))
            elif not events and self.poll() is not None:  # exited, but a background job holds stdout
                return bytes(buf), truncated, "exited", self._exit_code()

    def _exit_code(self) -> int:
        rc = self.wait(1)
        if rc is None:
            return -1
        return 128 - rc if rc < 0 else rc


def _sandbox_env(values) -> dict:
    """`values` without server variables; a vault credential's placeholder may have any name."""
    return {
        k: v
        for k, v in values.items()
        if not k.startswith(("ANTHROPIC_", "CORRAL_")) or v.startswith("corral_placeholder_")
    }


def _inheritable(fd: int) -> bool:
    try:
        return os.get_inheritable(fd)
    except OSError:
        return False


class Helper:
    def __init__(self, workdir: str, output_limit: int, default_timeout: float) -> None:
        self.workdir = workdir
        self.limit = output_limit
        self.default_timeout = default_timeout
        self.shell: Shell | None = None
        self.tools = files.FileTools(workdir, self.guard)
        self.out_lock = _thread.allocate_lock()
        self.state_lock = _thread.allocate_lock()
        self.received = 0  # highest call id queued so far
        self.cancel_upto = 0  # calls with an id up to this were interrupted
        self.current = 0  # id of the call running now (0 = none)
        self.cancelled = Flag()
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        try:
            from _queue import SimpleQueue
        except ImportError:
            from queue import SimpleQueue
        self.calls = SimpleQueue()
        self.env = _sandbox_env(os.environ)
        self.env.update(PS1="", PS2="", TERM="dumb")

    # -- plumbing --------------------------------------------------------------------------------
    def send(self, obj: dict) -> None:
        line = json_dumps(obj).encode("utf-8", "replace") + b"\n"
        with self.out_lock:
            sys.stdout.buffer.write(line)
            sys.stdout.buffer.flush()

    def read_loop(self) -> None:
        """Reader thread: queue calls, answer pings, handle interrupts; on EOF, or when replies can no
        longer be written (the host is gone), stop everything: a helper left waiting would keep the
        sandbox of a dead server alive."""
        try:
            for raw in sys.stdin.buffer:
                try:
                    req = json_loads(raw)
                except ValueError:
                    continue
                op = req.get("op")
                if op == "ping":
                    self.send({"id": req.get("id"), "pong": True})
                elif op == "call":
                    with self.state_lock:
                        self.received = max(self.received, int(req.get("id") or 0))
                    self.calls.put(req)
                elif op == "interrupt":
                    self.interrupt()
                elif op == "env":  # variables for every shell started from now on (sent before any call)
                    values = req.get("set")
                    if isinstance(values, dict):
                        self.env.update(_sandbox_env({str(k): str(v) for k, v in values.items()}))
                    self.send({"id": req.get("id"), "ok": True})
        except OSError:  # stdout (or stdin) broke
            pass
        finally:
            self.interrupt()
            self.calls.put(None)

    def interrupt(self) -> None:
        """Cancel every call received so far: the running one now, queued ones when they come up."""
        with self.state_lock:
            self.cancel_upto = self.received
            if not self.current:
                return
            self.cancelled.set()
        try:  # noqa: SIM105
            os.write(self.wake_w, b"x")
        except BlockingIOError:
            pass

    def serve(self) -> None:
        _thread.start_new_thread(self.read_loop, ())
        while True:
            req = self.calls.get()
            if req is None:
                break
            call_id = int(req.get("id") or 0)
            with self.state_lock:
                skip = call_id <= self.cancel_upto
                self.current = 0 if skip else call_id
                self.cancelled.clear()
                try:
                    while os.read(self.wake_r, 4096):
                        pass
                except BlockingIOError:
                    pass
            if skip:
                reply = {"content": [{"type": "text", "text": f"{req.get('name')}: interrupted"}], "is_error": True}
            else:
                reply = self.dispatch(req)
            with self.state_lock:
                self.current = 0
            try:
                self.send({"id": req.get("id"), **reply})
            except OSError:  # the host is gone
                break
        if self.shell is not None:
            self.shell.kill()

    def dispatch(self, req: dict) -> dict:
        name, inp = req.get("name"), req.get("input")
        timeout = float(req.get("timeout") or self.default_timeout)
        if name not in ("bash", "read", "write", "edit", "glob", "grep"):
            return {"content": [{"type": "text", "text": f"unknown tool: {name}"}], "is_error": True}
        tool = self.tool_bash if name == "bash" else getattr(self.tools, str(name))
        try:
            if not isinstance(inp, dict):
                raise ToolError("input must be an object")
            result = tool(inp, timeout)
        except ToolError as e:
            msg = str(e)
            text = msg if msg.startswith(f"{name}:") else f"{name}: {msg}"
            return {"content": [{"type": "text", "text": text}], "is_error": True}
        except Exception as e:  # a helper bug must not take the sandbox down
            return {"content": [{"type": "text", "text": f"{name}: internal error: {e!r}"}], "is_error": True}
        if isinstance(result, tuple):
            return {"content": [{"type": "text", "text": result[0]}], "is_error": result[1]}
        if isinstance(result, dict):
            return {"content": [result], "is_error": False}
        return {"content": [{"type": "text", "text": result}], "is_error": False}

    def guard(self, op: str, timeout: float, fn):
        """Run a tree walk in a forked child that we can kill on interrupt or deadline.

        Not a thread: a runaway regex holds the GIL inside `re`, which would starve the reader thread
        (no pings, no interrupts). The child shares our memory copy-on-write and sends back JSON.
        """
        try:
            r, w = os.pipe()
            pid = os.fork()
        except OSError as e:
            raise ToolError(f"{op}: cannot start the search: {files.fs_reason(e)}") from None
        if pid == 0:  # child: never return into the helper's loop
            try:
                os.close(r)
                try:
                    outcome = ["ok", fn()]
                except ToolError as e:
                    outcome = ["error", str(e)]
                except Exception as e:
                    outcome = ["error", f"{op}: internal error: {e!r}"]
                data = json_dumps_ascii(outcome).encode()
                while data:
                    data = data[os.write(w, data) :]
            finally:
                os._exit(0)
        os.close(w)
        data, status = b"", "failed"
        try:
            data, status = self.collect(r, timeout)
        finally:
            os.close(r)
            if status != "done":
                os.kill(pid, SIGKILL)
            os.waitpid(pid, 0)
        if status == "timeout":
            raise ToolError(f"{op}: timed out after {timeout:g}s")
        if status == "interrupted":
            raise ToolError(f"{op}: interrupted")
        try:
            kind, value = json_loads(data)
        except ValueError:
            raise ToolError(f"{op}: the search process died") from None
        if kind == "error":
            raise ToolError(value)
        return value

    def collect(self, fd: int, timeout: float):
        """Read `fd` to EOF unless the deadline passes or an interrupt arrives first."""
        chunks: list[bytes] = []
        deadline = time.monotonic() + timeout
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        poller.register(self.wake_r, select.POLLIN)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return b"", "timeout"
            events = dict(poller.poll(left * 1000))
            if self.cancelled.is_set():
                return b"", "interrupted"
            if fd in events:
                chunk = os.read(fd, 65536)
                if not chunk:
                    return b"".join(chunks), "done"
                chunks.append(chunk)

    # -- bash ------------------------------------------------------------------------------------
    def tool_bash(self, inp: dict, timeout: float):
        command, restart = files.arg(inp, "command", str), files.arg(inp, "restart", bool)
        if restart:
            if self.shell is not None:
                self.shell.kill()
            self.shell = Shell(self.workdir, self.env, self.limit)
            return "bash session restarted"
        if not command:
            raise ToolError("bash: command is required")
        if self.shell is None or self.shell.poll() is not None:
            self.shell = Shell(self.workdir, self.env, self.limit)
        try:
            out, truncated, status, code = self.shell.run(command, timeout, self.wake_r, self.cancelled)
        except OSError as e:  # the shell vanished between calls (killed from inside, say)
            self.shell.kill()
            self.shell = None
            raise ToolError(f"bash: shell is gone ({files.fs_reason(e)}); the next call starts a new one") from None
        if status in ("timeout", "interrupted", "exited"):
            self.shell.kill()
            self.shell = None
        text = self.clip(out.rstrip(b"\n"), truncated)
        if status == "timeout":
            note = f"bash: bash command timed out after {timeout:g}s (shell killed; cwd and env were reset)"
            return (note + ("\n" + text if text else ""), True)
        if status == "interrupted":
            note = "bash: command interrupted (shell killed; cwd and env were reset)"
            return (note + ("\n" + text if text else ""), True)
        if status == "exited":
            note = f"[shell exited with status {code}; the next call starts a fresh shell]"
            return ((text + "\n" if text else "") + note, code != 0)
        return text, code != 0

    def clip(self, out: bytes, truncated: bool) -> str:
        """Keep the last `limit` bytes, strip ANSI escapes, mark truncation like the reference toolset."""
        if len(out) > self.limit:
            out, truncated = out[-self.limit :], True
        if truncated:
            while out and out[0] & 0xC0 == 0x80:  # don't start in the middle of a UTF-8 sequence
                out = out[1:]
        if b"\x1b" in out:
            global ANSI
            if ANSI is None:
                import re

                ANSI = re.compile(rb"\x1b\[[0-9;?]*[ -/]*[@-~]")
            out = ANSI.sub(b"", out)
        text = out.decode("utf-8", "replace")
        return "[output truncated]\n" + text if truncated else text


def main() -> None:
    """`helper.py [--workdir DIR] [--output-limit BYTES] [--timeout SECONDS] [--proxy-socket PATH
    --proxy-port PORT]` (hand-parsed: no argparse). With a proxy socket, the forwarder listens before the
    first reply, so every command sees it."""
    opts = {
        "--workdir": "/workspace",
        "--output-limit": str(100 * 1024),
        "--timeout": "120",
        "--proxy-socket": "",
        "--proxy-port": "3128",
    }
    argv = sys.argv[1:]
    for i in range(0, len(argv) - 1, 2):
        if argv[i] not in opts:
            sys.exit(f"helper.py: unknown option {argv[i]}")
        opts[argv[i]] = argv[i + 1]
    os.chdir(opts["--workdir"])
    if opts["--proxy-socket"]:
        start_forwarder(int(opts["--proxy-port"]), opts["--proxy-socket"])
    Helper(opts["--workdir"], int(opts["--output-limit"]), float(opts["--timeout"])).serve()


if __name__ == "__main__":
    main()
