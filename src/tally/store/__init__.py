"""Database engine, sessions and migrations."""

from tally.store.db import Base, Store, open_store

__all__ = ["Base", "Store", "open_store"]
