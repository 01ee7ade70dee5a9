"""The subscription tests' real uvicorn server (HTTP and WebSocket on a loopback port)."""

from tests.subscriptions.conftest import server  # noqa: F401
