"""How the egress proxy rewrites an intercepted request (`intercept.rewrite_head`) and which requests a
repository token or a credential applies to: the rules, on their own (the end-to-end tests drive them
through real sandboxes: tests/test_egress_credentials.py, tests/test_git_resources.py)."""

from __future__ import annotations

from corral.sandbox.credentials import EgressCredentials, HeaderInjection, Substitution
from corral.sandbox.intercept import rewrite_head

REPO = HeaderInjection("git.example.com", 443, "/team/app.git", "Authorization", "Basic dG9rZW4=")


def test_a_repository_token_applies_to_its_repository_only() -> None:
    for path in ("/team/app", "/team/app.git", "/team/app.git/info/refs?service=git-upload-pack", "/team/app/x"):
        assert REPO.applies_to("git.example.com", 443, path), path
        assert REPO.applies_to("GIT.example.com.", 443, path), path
    for host, port, path in (
        ("git.example.com", 443, "/team/application.git/info/refs"),
        ("git.example.com", 443, "/team"),
        ("git.example.com", 443, "/other/app.git"),
        ("git.example.com", 8443, "/team/app.git"),
        ("evil.example.com", 443, "/team/app.git"),
    ):
        assert not REPO.applies_to(host, port, path), (host, port, path)


def test_rewrite_head_swaps_placeholders_where_allowed_and_sets_the_token() -> None:
    creds = EgressCredentials(
        substitutions=(
            Substitution("PH_HEAD", "head-secret", ("api.example.com", "*.example.org"), header=True, body=False),
            Substitution("PH_BODY", "body-secret", None, header=False, body=True),
        ),
        injections=(REPO,),
    )
    headers = [(b"x-key", b"PH_HEAD"), (b"x-other", b"PH_BODY"), (b"proxy-authorization", b"x")]
    target, out, body = rewrite_head(creds, "api.example.com", 443, b"/v1?key=PH_HEAD", headers)
    assert target == b"/v1?key=head-secret"
    assert out == [(b"x-key", b"head-secret"), (b"x-other", b"PH_BODY")]  # hop-by-hop proxy header dropped
    assert body == [(b"PH_BODY", b"body-secret")]
    # another host: only the unrestricted, body-only credential applies
    target, out, body = rewrite_head(creds, "elsewhere.example.net", 443, b"/?key=PH_HEAD", headers[:2])
    assert target == b"/?key=PH_HEAD" and out == headers[:2] and body == [(b"PH_BODY", b"body-secret")]
    assert creds.intercepts("a.example.org", 443) and creds.intercepts("anything.net", 1)
    # the repository's Authorization replaces whatever the sandbox sent under that name
    _, out, _ = rewrite_head(
        creds, "git.example.com", 443, b"/team/app.git/git-upload-pack", [(b"authorization", b"mine")]
    )
    assert out == [(b"authorization", b"Basic dG9rZW4=")]
    only_repo = EgressCredentials(injections=(REPO,))
    assert only_repo.intercepts("git.example.com", 443) and not only_repo.intercepts("git.example.com", 22)
