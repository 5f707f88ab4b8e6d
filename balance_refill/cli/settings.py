"""The CLI's runtime settings, from the environment (and flags) via pydantic-settings."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DATABASE = "LibreChat"


class Settings(BaseSettings):
    """Where the data lives. Defaults follow LibreChat: database `LibreChat`, collections
    `balances` and `transactions`. With no `MONGODB_URI`, an in-memory mock is used."""

    model_config = SettingsConfigDict(env_prefix="BALANCE_REFILL_", extra="ignore", frozen=True)

    mongodb_uri: str | None = Field(default=None, validation_alias="MONGODB_URI")
    database: str | None = None
    balances_collection: str = "balances"
    transactions_collection: str = "transactions"
    leases_collection: str = "balance_refill_leases"
    policy_file: str | None = Field(default=None, validation_alias="BALANCE_REFILL_POLICY")

    def database_name(self) -> str:
        """The database flag or variable, else the URI's path, else LibreChat's default."""
        if self.database:
            return self.database
        if self.mongodb_uri:
            path = urlsplit(self.mongodb_uri).path.strip("/")
            if path:
                return path
        return DEFAULT_DATABASE

    def masked_uri(self) -> str:
        return mask_uri(self.mongodb_uri) if self.mongodb_uri else "(embedded mock, no server)"


def mask_uri(uri: str) -> str:
    """The URI with any password replaced by `***` (safe to print or log)."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return "***"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hosts = netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:***@{hosts}" if ":" in userinfo else f"{user}@{hosts}"
    query = parts.query
    if "password=" in query.lower():
        query = "&".join(
            f"{kv.split('=', 1)[0]}=***" if kv.lower().startswith("password=") else kv
            for kv in query.split("&")
        )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
