"""The `Store`: one object holding every repository over one database, for SQLite and PostgreSQL alike."""

from __future__ import annotations

from .db import Database
from .events import EventLog
from .files import FileRepo
from .hub import EventHub
from .keys import ApiKeyRepo
from .migrate import upgrade
from .resources import AgentRepo, EnvironmentRepo
from .session_resources import SessionResourceRepo
from .sessions import SessionRepo
from .vaults import CredentialRepo, VaultRepo

__all__ = ["Store"]


class Store:
    def __init__(
        self, database_url: str, hub: EventHub | None = None, prices: dict[str, list[float]] | None = None
    ) -> None:
        self.db = Database(database_url)
        self.hub = hub or EventHub()
        self.events = EventLog(self.db, self.hub)
        self.agents = AgentRepo(self.db)
        self.environments = EnvironmentRepo(self.db)
        self.sessions = SessionRepo(self.db, self.events, prices)
        self.keys = ApiKeyRepo(self.db)
        self.vaults = VaultRepo(self.db)
        self.credentials = CredentialRepo(self.db)
        self.files = FileRepo(self.db)
        self.session_resources = SessionResourceRepo(self.db)

    @property
    def is_sqlite(self) -> bool:
        return self.db.is_sqlite

    async def migrate(self) -> None:
        """Bring the schema to the newest migration (safe to run on every start)."""
        await upgrade(self.db)

    async def close(self) -> None:
        await self.events.aclose()
        await self.db.dispose()
