"""The CLI's runtime settings, from the environment (and flags) via pydantic-settings."""

from __future__ import annotations

from urllib.parse import urlsplit

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from balance_refill.policy_store import DEFAULT_COLLECTION as POLICIES_COLLECTION

from ._connect import mask_uri, redact

DEFAULT_DATABASE = "LibreChat"

URI_SCHEMES = ("mongodb://", "mongodb+srv://")


def uri_problem(uri: str | None) -> str | None:
    """Why `uri` cannot be a MongoDB connection string, or None. Checked before any
    connection: the driver reads text without a scheme, such as `notauri`, as a host name
    and reports a DNS failure only after its server selection timeout (a wrong scheme it
    refuses at once, with its own reason). The value is not repeated: it may hold a
    password."""
    if uri is None or "://" in uri:
        return None
    return (
        "MONGODB_URI is malformed: it has no scheme; a MongoDB connection string starts "
        "with mongodb:// or mongodb+srv://, e.g. mongodb://user:password@host:27017/LibreChat"
    )


class Settings(BaseSettings):
    """Where the data lives. Defaults follow LibreChat: database `LibreChat`, collections
    `balances` and `transactions`; the library's own are `balance_refill_leases` and
    `balance_refill_policies` (the stored policy versions). With no `MONGODB_URI`, an
    in-memory mock is used."""

    model_config = SettingsConfigDict(env_prefix="BALANCE_REFILL_", extra="ignore", frozen=True)

    mongodb_uri: str | None = Field(default=None, validation_alias="MONGODB_URI")
    database: str | None = None
    balances_collection: str = "balances"
    transactions_collection: str = "transactions"
    leases_collection: str = "balance_refill_leases"
    policies_collection: str = POLICIES_COLLECTION
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
        if self.mongodb_uri:
            return mask_uri(self.mongodb_uri)
        return "(embedded mock: temporary, in memory, nothing saved)"


__all__ = ["DEFAULT_DATABASE", "URI_SCHEMES", "Settings", "mask_uri", "redact", "uri_problem"]
