"""Replica storage: the Store protocol and its SQLite and in-memory implementations."""

from grpc_messenger.store.base import FETCH_LIMIT_MAX, FetchPage, Store, StoreCounts
from grpc_messenger.store.memory import MemoryStore
from grpc_messenger.store.sqlite import SqliteStore

__all__ = ["FETCH_LIMIT_MAX", "FetchPage", "MemoryStore", "SqliteStore", "Store", "StoreCounts"]
