"""Database engine, sessions and migrations."""

from tally.store.db import Base, BigInt, Store, open_store

__all__ = ["Base", "BigInt", "Store", "open_store"]
