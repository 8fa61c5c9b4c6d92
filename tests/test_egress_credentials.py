"""Vault `environment_variable` credentials through the egress proxy, end to end: the SDK makes a vault and
a session; the fake model runs bash in the session's real bubblewrap sandbox; curl there reaches a local
HTTPS echo service (its own CA, trusted by the proxy upstream) through the proxy, which terminates TLS
with the installation's CA and swaps placeholders for secrets only where the credential allows."""

from __future__ import annotations

import json
import os
import stat
import uuid
from typing import Any

import anthropic

from .fake_model import FakeModel, Reply, tool_results
from .servers import ServerThread
from .tls_servers import HttpsEcho
from .turns import text, turn

TOOLSET = {"type": "agent_toolset_20260401"}
ALLOWED, OTHER = "127.0.0.2", "127.0.0.3"


def echo_results(body: dict) -> Reply:
    return Reply(text=" | ".join(result for _, result in tool_results(body)))


def bash(client: anthropic.Anthropic, fake: FakeModel, session_id: str, *commands: str) -> list[tuple[bool, str]]:
    """Run each command as one bash call in one turn; (is_error, output) of each."""
    for command in commands:
        fake.reply(tool_use=[("bash", {"command": command})])
    fake.respond_with(echo_results)
    seen = turn(client, session_id, [text("run")], timeout=60)
    return [(bool(e.is_error), "".join(b.text for b in e.content or [])) for e in seen if e.type == "agent.tool_result"]


def make_session(client: anthropic.Anthropic, vault_ids: list[str], **extra: Any) -> Any:
    agent = client.beta.agents.create(name="creds", model="claude-sonnet-4-6", tools=[TOOLSET])
    env = client.beta.environments.create(name=f"env-{uuid.uuid4().hex[:10]}")
    return client.beta.sessions.create(agent=agent.id, environment_id=env.id, vault_ids=vault_ids, **extra)


def env_credential(
    client: anthropic.Anthropic, vault_id: str, name: str, value: str, hosts: list[str] | None, **location: bool
) -> Any:
    networking = {"type": "limited", "allowed_hosts": hosts} if hosts is not None else {"type": "unrestricted"}
    auth: dict[str, Any] = {"type": "environment_variable", "secret_name": name, "secret_value": value}
    auth["networking"] = networking
    if location:
        auth["injection_location"] = location
    return client.beta.vaults.credentials.create(vault_id, auth=auth)


def sent(echo: HttpsEcho, marker: str) -> dict[str, Any]:
    (record,) = [r for r in echo.seen if marker in r["path"]]
    return record


def test_placeholders_become_secrets_only_for_allowed_hosts_and_locations(
    egress_client: anthropic.Anthropic, fake: FakeModel, https_echo: HttpsEcho
) -> None:
    header_secret, body_secret = f"hdr-{uuid.uuid4().hex}", f"bdy-{uuid.uuid4().hex}"
    vault = egress_client.beta.vaults.create(display_name="api keys")
    env_credential(egress_client, vault.id, "API_TOKEN", header_secret, [ALLOWED], header=True)
    env_credential(egress_client, vault.id, "BODY_TOKEN", body_secret, [ALLOWED], body=True)
    session = make_session(egress_client, [vault.id])
    mark = uuid.uuid4().hex[:8]
    allowed = f"https://{ALLOWED}:{https_echo.ports[ALLOWED]}"
    other = f"https://{OTHER}:{https_echo.ports[OTHER]}"
    post = '-H "Authorization: Bearer $API_TOKEN" -H "X-Body: $BODY_TOKEN" --data "a=$API_TOKEN&b=$BODY_TOKEN"'
    results = bash(
        egress_client,
        fake,
        session.id,
        'echo "$API_TOKEN $BODY_TOKEN"',
        # no -k: the sandbox trusts the installation's CA, which signed the proxy's certificate for the host
        f'curl -sS -o /dev/null -w "%{{http_code}}" {post} "{allowed}/a-{mark}?q=$API_TOKEN"',
        # another host (not intercepted: its own certificate, from the test CA the sandbox does not know)
        f'curl -sSk -o /dev/null -w "%{{http_code}}" {post} "{other}/o-{mark}?q=$API_TOKEN"',
        # a chunked body is read whole and re-framed; two requests on one kept-alive connection
        f'printf "k=$BODY_TOKEN" | curl -sS -H "Transfer-Encoding: chunked" --data-binary @- {allowed}/c-{mark} '
        f'-o /dev/null --next -H "X-Again: $API_TOKEN" {allowed}/k-{mark} -o /dev/null -w "%{{num_connects}}"',
    )
    (_, placeholders), (err_a, code_a), (err_o, code_o), (err_c, connects) = results
    api_placeholder, body_placeholder = placeholders.split()
    assert api_placeholder.startswith("corral_placeholder_") and body_placeholder.startswith("corral_placeholder_")
    assert header_secret not in placeholders and body_secret not in placeholders
    assert (err_a, code_a, err_o, code_o) == (False, "200", False, "200")

    at_allowed = sent(https_echo, f"a-{mark}")
    assert at_allowed["host"] == ALLOWED
    assert at_allowed["headers"]["authorization"] == f"Bearer {header_secret}"  # header: allowed
    assert at_allowed["path"].endswith(f"?q={header_secret}")  # the request target counts as the head
    assert at_allowed["headers"]["x-body"] == body_placeholder  # a body-only credential, in a header: kept
    assert at_allowed["body"] == f"a={api_placeholder}&b={body_secret}"  # header-only kept, body-only swapped

    at_other = sent(https_echo, f"o-{mark}")
    assert at_other["headers"]["authorization"] == f"Bearer {api_placeholder}"
    assert at_other["body"] == f"a={api_placeholder}&b={body_placeholder}"
    assert header_secret not in json.dumps(at_other) and body_secret not in json.dumps(at_other)

    assert not err_c and connects == "0"  # the second request reused the connection
    assert sent(https_echo, f"c-{mark}")["body"] == f"k={body_secret}"
    assert sent(https_echo, f"c-{mark}")["headers"]["content-length"] == str(len(f"k={body_secret}"))
    assert sent(https_echo, f"k-{mark}")["headers"]["x-again"] == header_secret


def test_a_secret_goes_only_to_a_server_that_proves_its_name(
    egress_client: anthropic.Anthropic, fake: FakeModel, https_echo: HttpsEcho
) -> None:
    """The server at OTHER presents a certificate that does not name it: the proxy, which must verify the
    server before it sends a secret there, refuses the connection instead (the agent sees why)."""
    secret = f"unverified-{uuid.uuid4().hex}"
    vault = egress_client.beta.vaults.create(display_name="strict")
    env_credential(egress_client, vault.id, "STRICT", secret, [OTHER])
    session = make_session(egress_client, [vault.id])
    mark = uuid.uuid4().hex[:8]
    url = f"https://{OTHER}:{https_echo.ports[OTHER]}/u-{mark}"
    ((failed, output),) = bash(egress_client, fake, session.id, f'curl -sS -H "X-Key: $STRICT" {url} 2>&1')
    assert failed and "CONNECT tunnel failed, response 502" in output, output
    assert not [r for r in https_echo.seen if f"u-{mark}" in r["path"]]


def test_an_updated_secret_applies_to_the_next_request_and_an_archived_one_is_not_sent(
    egress_client: anthropic.Anthropic, fake: FakeModel, https_echo: HttpsEcho
) -> None:
    first, second = f"one-{uuid.uuid4().hex}", f"two-{uuid.uuid4().hex}"
    vault = egress_client.beta.vaults.create(display_name="rotating")
    # a name the sandbox never gets from the server: a credential's placeholder may still use it
    credential = env_credential(egress_client, vault.id, "ANTHROPIC_API_KEY", first, ["127.0.0.2"])
    session = make_session(egress_client, [vault.id])
    url = f"https://{ALLOWED}:{https_echo.ports[ALLOWED]}"
    mark = uuid.uuid4().hex[:8]
    get = 'curl -sS -o /dev/null -H "X-Key: $ANTHROPIC_API_KEY" ' + url
    bash(egress_client, fake, session.id, f"{get}/r1-{mark}")
    assert sent(https_echo, f"r1-{mark}")["headers"]["x-key"] == first
    egress_client.beta.vaults.credentials.update(
        credential.id, vault_id=vault.id, auth={"type": "environment_variable", "secret_value": second}
    )
    bash(egress_client, fake, session.id, f"{get}/r2-{mark}")
    assert sent(https_echo, f"r2-{mark}")["headers"]["x-key"] == second
    egress_client.beta.vaults.credentials.archive(credential.id, vault_id=vault.id)
    bash(egress_client, fake, session.id, f'curl -sSk -o /dev/null -H "X-Key: $ANTHROPIC_API_KEY" {url}/r3-{mark}')
    assert sent(https_echo, f"r3-{mark}")["headers"]["x-key"].startswith("corral_placeholder_")


SOCKETS = """
import os, stat
for top in ("/run", "/tmp", "/workspace", "/dev", "/etc", "/var", "/home", "/sbx", "/mnt"):
    for dirpath, dirs, files in os.walk(top):
        for f in dirs + files:
            path = os.path.join(dirpath, f)
            if stat.S_ISSOCK(os.lstat(path).st_mode):
                print(path)
"""

MARK = "Qz7Wexfil"
"""Part of every secret in the exfiltration test; the search script only ever holds it split in two."""

EXFILTRATE = r"""
import os
needle = ("Qz7W" + "exfil").encode()
me = os.getpid()
hits = []
for pid in [p for p in os.listdir("/proc") if p.isdigit() and int(p) != me]:
    for name in ("environ", "cmdline"):
        try:
            if needle in open(f"/proc/{pid}/{name}", "rb").read():
                hits.append(f"{pid}/{name}")
        except OSError:
            pass
    try:  # every readable mapping of every process we may read (Yama may refuse non-descendants)
        with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", 0) as mem:
            for line in maps:
                span, perms = line.split()[:2]
                start, end = (int(x, 16) for x in span.split("-"))
                if "r" not in perms or end - start > 1 << 28:
                    continue
                try:
                    mem.seek(start)
                    if needle in mem.read(end - start):
                        hits.append(f"{pid}/mem")
                except (OSError, ValueError, OverflowError):
                    pass
    except OSError:
        pass
for root in ("/workspace", "/tmp", "/etc", "/run", "/sbx", "/dev/shm", "/proc/self/cwd"):
    for dirpath, _, files in os.walk(root):
        for f in files:
            try:
                if needle in open(os.path.join(dirpath, f), "rb").read():
                    hits.append(os.path.join(dirpath, f))
            except OSError:
                pass
print("FOUND " + " ".join(hits) if hits else "CLEAN")
"""


def test_the_sandbox_never_holds_a_secret_and_the_api_never_returns_one(
    egress_client: anthropic.Anthropic, fake: FakeModel, https_echo: HttpsEcho, egress_server: ServerThread
) -> None:
    secret = f"{uuid.uuid4().hex[:8]}-{MARK}-{uuid.uuid4().hex}"
    vault = egress_client.beta.vaults.create(display_name="guarded")
    credential = env_credential(egress_client, vault.id, "GUARDED", secret, [ALLOWED], header=True)
    session = make_session(egress_client, [vault.id])
    other = make_session(egress_client, [])  # no vaults
    url = f"https://{ALLOWED}:{https_echo.ports[ALLOWED]}"
    mark = uuid.uuid4().hex[:8]
    results = bash(
        egress_client,
        fake,
        session.id,
        # a keep-alive loop holding an intercepted connection open while the search runs
        f'(for i in 1 2 3; do curl -sS -o /dev/null -H "X-Key: $GUARDED" {url}/mine-{mark}-$i; sleep 1; done) &',
        f"env; ls -la /run/corral /tmp; python3 -c '{SOCKETS}'",
        f"cat > /tmp/x.py <<'EOF'\n{EXFILTRATE}\nEOF\npython3 /tmp/x.py; wait",
    )
    assert sent(https_echo, f"mine-{mark}-1")["headers"]["x-key"] == secret
    env_out = results[1][1]
    assert "GUARDED=corral_placeholder_" in env_out and MARK not in env_out
    sockets = [line for line in env_out.splitlines() if line.startswith("/") and ".sock" in line]
    assert sockets == ["/run/corral/proxy.sock"]  # no other session's socket is visible
    assert results[2] == (False, "CLEAN")  # env, cmdline, memory of every process, every writable file

    # Another session (no vaults) sending this session's placeholder gets nothing substituted.
    placeholder = next(line.split("=", 1)[1] for line in env_out.splitlines() if line.startswith("GUARDED="))
    bash(egress_client, fake, other.id, f"curl -sSk -o /dev/null -H 'X-Key: {placeholder}' {url}/theirs-{mark}")
    assert sent(https_echo, f"theirs-{mark}")["headers"]["x-key"] == placeholder

    # The proxy socket of the session's sandbox is its own: mode 0600, owned by its uid when run as root.
    pool = next(r.pool for r in egress_server.runtime.tools.runners if hasattr(r, "pool"))
    mine, theirs = pool.current(session.id), pool.current(other.id)
    info = os.stat(mine.egress.path)
    assert stat.S_IMODE(info.st_mode) == 0o600
    if os.geteuid() == 0:
        assert info.st_uid == mine.host_uid != theirs.host_uid

    # The CA's key stays on the host, private; sandboxes get only its certificate.
    ca_dir = egress_server.settings.data_dir / "egress-ca"
    assert stat.S_IMODE(os.stat(ca_dir).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(ca_dir / "ca.key").st_mode) == 0o600
    assert "ca.key" not in env_out and "PRIVATE KEY" not in env_out

    # Nothing the API returns holds the secret: credential, session, every event of both sessions.
    dumped = [
        egress_client.beta.vaults.credentials.retrieve(credential.id, vault_id=vault.id).model_dump_json(),
        egress_client.beta.vaults.credentials.list(vault.id).model_dump_json(),
        egress_client.beta.sessions.retrieve(session.id).model_dump_json(),
    ]
    for sid in (session.id, other.id):
        dumped += [e.model_dump_json() for e in egress_client.beta.sessions.events.list(sid, limit=1000)]
    assert all(MARK not in d for d in dumped)
