"""collab-server: a real-time Yjs collaboration server (y-websocket protocol) backed by PostgreSQL and Redis."""

__version__ = "0.1.0"
