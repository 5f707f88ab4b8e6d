"""The CLI's connection helper: shared with the admin server, in `balance_refill._connect`."""

from balance_refill._connect import (
    Client,
    Collection,
    Connection,
    Database,
    connect,
    mask_uri,
    redact,
)

__all__ = ["Client", "Collection", "Connection", "Database", "connect", "mask_uri", "redact"]
