"""cinder's Python client (pyzmq + protobuf): see client.py and docs/clients.md."""
try:
    import google.protobuf  # noqa: F401
    import zmq  # noqa: F401
except ImportError as e:
    raise ImportError(f"cinder_client needs pyzmq and protobuf ({e}): on Debian, apt-get install python3-zmq "
                      "python3-protobuf (for /usr/bin/python3), or pip install pyzmq protobuf") from e

from ._proto import pb
from .client import (DEFAULT_ENDPOINT, Chunk, CinderError, CinderTimeout, Client, Result, Stream)

__all__ = ["Client", "Stream", "Chunk", "Result", "CinderError", "CinderTimeout", "DEFAULT_ENDPOINT", "pb"]
