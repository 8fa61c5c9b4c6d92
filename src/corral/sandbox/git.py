"""Repository resources: cloning a session's `github_repository` resources inside its sandbox.

The clone runs *inside* the sandbox, with the sandbox's own git, through the egress proxy like any other
request of the agent: the proxy adds the repository's `Authorization` header (from the session's
`CredentialBroker`) on requests to that host and path, so the remote URL, `.git/config`, the environment
and the command line never hold the token, and the agent's own `git pull`/`git push` authenticate the
same way. Any git host that speaks smart HTTP over HTTPS works, not only github.com.

`RepositorySetup` runs before every tool call of a session (the runner calls it): each resource not yet
set up in this sandbox is cloned (skipped when its mount path already holds a clone: the workdir
outlives sandboxes). A failure is reported once per resource version, as a `session.error` of the
spec's repository kinds (retry status `retrying`: the session goes on without the repository) plus an
error result for the tool call that triggered it; updating the resource (a new token) retries it.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from typing import Any

from corral.sandbox.base import Sandbox, ToolResult

__all__ = ["CloneFailure", "RepositorySetup", "classify_failure", "clone_command"]

CLONE_TIMEOUT = 600.0
_STATUS = re.compile(r"CORRAL_GIT_STATUS=(\w+):(\d+)")


@dataclass(frozen=True)
class CloneFailure:
    """A repository that could not be set up: `kind` is the `session.error` type."""

    url: str
    kind: str
    message: str

    def error(self) -> dict[str, Any]:
        """The `error` object of the `session.error` event."""
        return {
            "type": self.kind,
            "message": self.message,
            "retry_status": {"type": "retrying"},
            "repository_url": self.url,
        }


def clone_command(resource: dict[str, Any]) -> str:
    """A bash command (a subshell: the persistent shell's state is untouched) that clones `resource` into
    its mount path unless a clone is already there, and prints `CORRAL_GIT_STATUS=<stage>:<code>`."""
    url, path = resource["url"], resource["mount_path"]
    checkout = resource.get("checkout") or {}
    branch = ["--branch", checkout["name"]] if checkout.get("type") == "branch" else []
    clone = shlex.join(["git", "clone", "--quiet", *branch, "--", url, path])
    lines = [
        "(",
        "export GIT_TERMINAL_PROMPT=0 GIT_ASKPASS=/bin/false",
        f"if [ -e {shlex.quote(path + '/.git')} ]; then echo CORRAL_GIT_STATUS=present:0; exit 0; fi",
        f"mkdir -p {shlex.quote(path.rsplit('/', 1)[0] or '/')}",
        f"{clone} 2>&1 || {{ code=$?; echo CORRAL_GIT_STATUS=clone:$code; exit 0; }}",
    ]
    if checkout.get("type") == "commit":
        sha = shlex.quote(checkout["sha"])
        lines.append(
            f"git -C {shlex.quote(path)} checkout --quiet --detach {sha} 2>&1 "
            "|| { code=$?; echo CORRAL_GIT_STATUS=checkout:$code; exit 0; }"
        )
    lines += ["echo CORRAL_GIT_STATUS=cloned:0", ")"]
    return "\n".join(lines)


def classify_failure(url: str, stage: str, output: str) -> CloneFailure:
    """Which repository error git's output shows (git prints the HTTP status it got)."""
    text = output.lower()
    tail = " ".join(line.strip() for line in output.strip().splitlines()[-4:] if "CORRAL_GIT_STATUS" not in line)
    if stage == "checkout" or ("remote branch" in text and "not found" in text):
        return CloneFailure(url, "repository_checkout_error", f"checking out {url} failed: {tail}")
    if "error: 401" in text or "authentication failed" in text or "could not read username" in text:
        kind, what = "repository_authentication_error", "the repository host refused the credentials"
    elif "error: 403" in text:
        kind, what = "repository_forbidden_error", "access to the repository is forbidden"
    elif "error: 404" in text or "not found" in text:
        kind, what = "repository_not_found_error", "the repository was not found"
    else:
        kind, what = "repository_clone_error", "cloning failed"
    return CloneFailure(url, kind, f"cloning {url}: {what} ({tail})")


class RepositorySetup:
    """What one sandbox has set up: resource id -> the `updated_at` it was last tried at."""

    def __init__(self) -> None:
        self.tried: dict[str, str] = {}

    def pending(self, resources: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [
            r
            for r in resources
            if r.get("type") == "github_repository" and self.tried.get(r["id"]) != r.get("updated_at")
        ]

    async def run(self, sandbox: Sandbox, resources: list[dict[str, Any]]) -> list[CloneFailure]:
        """Clone what is pending; the failures (each reported once per resource version)."""
        failures = []
        for resource in self.pending(resources):
            self.tried[resource["id"]] = resource.get("updated_at") or ""
            result = await sandbox.execute("bash", {"command": clone_command(resource)}, timeout=CLONE_TIMEOUT)
            output = _text(result)
            match = _STATUS.search(output)
            if match is not None and match.group(1) in ("present", "cloned"):
                continue
            stage = match.group(1) if match else "clone"
            failures.append(classify_failure(resource["url"], stage, output))
        return failures


def _text(result: ToolResult) -> str:
    return "".join(str(block.get("text", "")) for block in result.content if isinstance(block, dict))
