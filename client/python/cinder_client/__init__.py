"""cinder's Python client (pyzmq + protobuf): see client.py and docs/clients.md."""
from ._proto import pb
from .client import (DEFAULT_ENDPOINT, Chunk, CinderError, CinderTimeout, Client, Result, Stream)

__all__ = ["Client", "Stream", "Chunk", "Result", "CinderError", "CinderTimeout", "DEFAULT_ENDPOINT", "pb"]
