"""`corral secrets`: make keys and rotate the key that encrypts vault credential secrets."""

from __future__ import annotations

import asyncio
from pathlib import Path

import typer

from ..config import Settings
from .crypto import InvalidKey, SecretBox, fingerprint, generate_key
from .keys import KeyRing

__all__ = ["secrets_app"]

secrets_app = typer.Typer(
    help="The keys that encrypt vault credential secrets at rest (see docs/configuration.md).", no_args_is_help=True
)


@secrets_app.command("generate-key")
def generate() -> None:
    """Print a new random key, e.g. for CORRAL_SECRET_KEY."""
    typer.echo(generate_key())


async def _reencrypt(settings: Settings, box: SecretBox) -> tuple[int, int, list[str]]:
    from ..service.vaults import reencrypt_secrets
    from ..store.store import Store

    store = Store(settings.async_database_url)
    try:
        await store.migrate()
        first = await reencrypt_secrets(store, box)
        # A second pass catches secrets another process wrote under an older key during the first.
        second = await reencrypt_secrets(store, box)
    finally:
        await store.close()
    return first.rotated + second.rotated, second.current, sorted(set(first.failed + second.failed))


@secrets_app.command("rotate")
def rotate(
    database: str | None = typer.Option(
        None,
        "--database",
        "-d",
        envvar="CORRAL_DATABASE_URL",
        help="SQLite file path or URL, or postgresql://user@host:port/db. Default: corral.db here.",
        show_default=False,
    ),
    key_file: Path | None = typer.Option(
        None,
        "--key-file",
        envvar="CORRAL_SECRET_KEY_FILE",
        help="The key file (default <data dir>/secret.key); ignored when CORRAL_SECRET_KEY is set.",
        show_default=False,
    ),
    keep_old: bool = typer.Option(
        False, "--keep-old", help="Keep the old keys in the key file (decrypt only) instead of removing them."
    ),
) -> None:
    """Re-encrypt every stored secret under a new key.

    With a key file: a new key is added first in the file, every secret is re-encrypted under it, then
    the old keys are removed. With CORRAL_SECRET_KEY: every secret is re-encrypted under its first key."""
    values: dict[str, object] = {}
    if database:
        values["database_url"] = database
    settings = Settings(**values)  # type: ignore[arg-type]
    ring = KeyRing.from_settings(settings, key_file)
    if not ring.exists():
        typer.echo(f"error: no key file at {ring.path} and CORRAL_SECRET_KEY is unset: nothing to rotate", err=True)
        raise typer.Exit(1)
    try:
        old = ring.box()
    except InvalidKey as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    new_key = old.keys[0]
    if not ring.from_env:
        new_key = generate_key().encode("ascii")
        ring.write([new_key, *old.keys])  # old keys stay readable until every secret is re-encrypted
    box = ring.box()
    rotated, current, failed = asyncio.run(_reencrypt(settings, box))
    if failed:
        typer.echo(
            f"error: {len(failed)} secret(s) could not be decrypted with any configured key and were left as "
            f"they are ({', '.join(failed[:10])}{', …' if len(failed) > 10 else ''}); the old keys were kept",
            err=True,
        )
        raise typer.Exit(1)
    typer.echo(f"re-encrypted {rotated} secret(s) under key {fingerprint(new_key)}; {current} stored secret(s) in all")
    if ring.from_env:
        if len(old.keys) > 1:
            typer.echo("now remove the other keys from CORRAL_SECRET_KEY on every corral process")
    elif keep_old:
        typer.echo(f"{ring.path}: new key first, {len(old.keys)} old key(s) kept for decryption only")
    else:
        ring.write([new_key])
        typer.echo(f"{ring.path}: old key(s) removed")
